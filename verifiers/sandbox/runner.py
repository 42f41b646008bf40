"""Running one check: the two fork servers, the pipes between the sides, the verdict's labels.

A :class:`Sandbox` keeps two warm fork servers (:mod:`.child.forkserver`) for the life of the
verifier: one forks solution processes (under bubblewrap on the ``bwrap`` backend), the other
harness processes. :meth:`Sandbox.run` joins a pair with a socket pair, hands each its spec in a
sealed memory file, reads the harness's verdict and the solution's wait status, kills both
process groups at the end, and labels the result with :func:`interpret` (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ttscale.errors import VerifierError
from ttscale.verifiers.sandbox.config import (
    RunOutcome,
    RunResult,
    SandboxConfig,
    scrubbed_environment,
)

__all__ = ["Sandbox", "count_processes_of_user", "interpret"]

log = logging.getLogger(__name__)

NOBODY = 65534
_CHILD_ROOT = str(Path(__file__).resolve().parent)
_LAUNCH = "import sys; sys.path.insert(0, {root!r}); from child.forkserver import main; main()"
# After the verdict, how long the solution's side has to end and report its status.
_STATUS_GRACE_S = 2.0
# After any other verdict, how long the solution's side has to quit before it is killed.
_QUIT_GRACE_S = 0.5
# How long a killed side has to let go of its pipes; beyond it the verifier stops reading them.
_KILL_WAIT_S = 5.0
_READ_CHUNK = 65536


def count_processes_of_user(uid: int) -> int:
    """How many processes ``uid`` owns now (Linux /proc); 0 where /proc cannot tell."""
    count = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    count += entry.stat().st_uid == uid
    return count


def _memfd(data: dict[str, Any]) -> int:
    fd = os.memfd_create("ttscale-spec", os.MFD_CLOEXEC)
    os.write(fd, json.dumps(data).encode("utf-8"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _hidden_by_fresh_tmp(python: str, readonly: Sequence[str]) -> list[str]:
    """Host folders the run needs that bubblewrap's fresh /tmp would hide: the interpreter's (a
    venv under /tmp), this package's child code (a checkout under /tmp) and ``readonly_paths``."""
    roots = {sys.prefix, sys.base_prefix, str(Path(python).parent.parent), _CHILD_ROOT, *readonly}
    roots.add(str(Path(os.path.realpath(python)).parent.parent))
    return sorted(r for r in roots if Path(r).is_dir() and (r == "/tmp" or r.startswith("/tmp/")))


def _bwrap_command(inner: list[str], readonly: Sequence[str] = ()) -> list[str]:
    keep = [
        arg
        for root in _hidden_by_fresh_tmp(inner[0], readonly)
        for arg in ("--ro-bind", root, root)
    ]
    return [
        "bwrap",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        *keep,
        # Every namespace but a user namespace: as root, the server inside stays the host's
        # root (with only the capabilities to change ids), so that each run can become nobody
        # before it makes its own namespaces (child.forkserver).
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
        *(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if os.geteuid() == 0 else []),
        "--die-with-parent",
        "--new-session",
        "--",
        *inner,
    ]  # fmt: skip


class ForkServer:
    """One warm fork server process and its control socket; restarted if it died."""

    def __init__(self, role: str, config: SandboxConfig, backend: str) -> None:
        self.role = role
        self.config = config
        self.backend = backend
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = threading.Lock()
        self._scratch: weakref.finalize[Any, Any] | None = None

    def _environment(self) -> dict[str, str]:
        """The server's environment, with a temporary folder of its own: everything its runs
        leave under it (killed runs too) goes when the server does, not into /tmp for good."""
        environment = scrubbed_environment(self.config.extra_env)
        if "TMPDIR" not in self.config.extra_env:
            scratch = tempfile.mkdtemp(prefix=f"ttscale-sandbox-{self.role}-")
            # Removed when the server is closed, or else when this process exits.
            self._scratch = weakref.finalize(self, shutil.rmtree, scratch, True)
            environment["TMPDIR"] = scratch
        return environment

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags = ["-I", "-S"] if self.role == "solution" else ["-I"]
        command = [
            self.config.python,
            *flags,
            "-c",
            _LAUNCH.format(root=_CHILD_ROOT),
            self.role,
            str(theirs.fileno()),
        ]
        if self.role == "solution" and self.backend == "bwrap":
            command = _bwrap_command(command, self.config.readonly_paths)
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self._environment(),
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
        )
        theirs.close()
        self._control = ours

    def spawn(self, fds: list[int]) -> None:
        """Ask for a child holding ``fds`` (a message of one byte; the child reports its pid)."""
        with self._lock:
            for attempt in range(2):
                if self._process is None or self._process.poll() is not None:
                    self.close()
                    self._start()
                assert self._control is not None
                try:
                    socket.send_fds(self._control, [b"r"], fds)
                    return
                except OSError as exc:
                    log.warning("the %s fork server is gone (%s); starting another", self.role, exc)
                    self.close()
                    if attempt:
                        raise VerifierError(
                            f"the sandbox's {self.role} fork server failed"
                        ) from exc

    def kill(self, pid: int | None) -> None:
        """Kill the process group of our child ``pid`` (a pid as the server sees it)."""
        if pid is None:
            return
        with self._lock:
            if self._control is not None:
                with contextlib.suppress(OSError):
                    self._control.send(b"k%d" % pid)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch()


class _PipeReader:
    """Reads a non-blocking pipe on the running loop until its writers close it, keeping at most
    ``cap`` bytes and counting the rest; what it has so far is readable at any time."""

    def __init__(self, fd: int, cap: int) -> None:
        self.fd = fd
        self.cap = cap
        self.kept = bytearray()
        self.total = 0
        loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.stop()
                return
            self.total += len(chunk)
            self.kept.extend(chunk[: max(self.cap - len(self.kept), 0)])

    def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        if not self.finished.done():
            self.finished.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Whether the pipe was closed within ``timeout`` seconds."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.finished), timeout)
        return self.finished.done()

    def lines(self) -> list[dict[str, Any]]:
        return _lines(bytes(self.kept))

    def pid(self) -> int | None:
        found = self.lines()
        pid = found[0].get("pid") if found else None
        return pid if isinstance(pid, int) and pid > 1 else None


def _second(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The line after the pid line: the verdict, or the solution's status."""
    found = [line for line in lines[1:] if "run_group" not in line]
    return found[0] if found else None


def _with_group(
    status: dict[str, Any] | None, lines: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The solution's status with what its run's control group counted (the job's last line)."""
    spent = next((line["run_group"] for line in lines if type(line.get("run_group")) is dict), None)
    if spent is None:
        return status
    return {**(status or {}), "run_group": spent}


def _lines(raw: bytes) -> list[dict[str, Any]]:
    found = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


@dataclass
class _Pipes:
    """The verifier's ends of one run's pipes, and the children's ends until they are handed."""

    ours: dict[str, int]
    theirs: dict[str, int]

    @classmethod
    def open(cls) -> _Pipes:
        ours: dict[str, int] = {}
        theirs: dict[str, int] = {}
        for name in ("report", "status", "stdout", "stderr"):
            ours[name], theirs[name] = os.pipe()
            os.set_blocking(ours[name], False)
        return cls(ours, theirs)

    def close_theirs(self) -> None:
        for fd in self.theirs.values():
            os.close(fd)
        self.theirs.clear()

    def close(self) -> None:
        self.close_theirs()
        for fd in self.ours.values():
            os.close(fd)
        self.ours.clear()


class Sandbox:
    """Runs checks: a solution's process and a harness's process per run, from warm servers.

    :meth:`shared` gives every caller with the same settings one sandbox for the life of the
    process (a proxy building a verifier per request, say), so that the servers start once.
    """

    _shared: ClassVar[dict[str, Sandbox]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def shared(cls, config: SandboxConfig) -> Sandbox:
        """The process's sandbox for ``config`` (made at the first call)."""
        key = repr(sorted((k, repr(v)) for k, v in vars(config).items()))
        with cls._shared_lock:
            found = cls._shared.get(key)
            if found is None:
                found = cls._shared[key] = cls(config)
            return found

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.backend = self.config.resolved_backend
        self._solutions = ForkServer("solution", self.config, self.backend)
        self._harnesses = ForkServer("harness", self.config, self.backend)
        self._count, self._counted_at = 0, -1e9
        self._warned = False

    @property
    def server_pids(self) -> tuple[int | None, int | None]:
        """The pids of the solutions' and the harnesses' fork servers (None: not running)."""
        return self._solutions.pid, self._harnesses.pid

    def _warn_weaker(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "model-written code runs without its own namespaces here (%s): host files are "
                "readable and a process can outlive its run; see ttscale.verifiers.sandbox",
                why,
            )

    def _process_count(self) -> int:
        """Processes of our user now (RLIMIT_NPROC counts them all), refreshed each second."""
        now = time.monotonic()
        if now - self._counted_at > 1.0:
            # As root, the code runs as nobody (see child.confine): count nobody's processes.
            user = NOBODY if os.geteuid() == 0 else os.getuid()
            self._count, self._counted_at = count_processes_of_user(user), now
        return self._count

    def close(self) -> None:
        self._solutions.close()
        self._harnesses.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _specs(self, solution: dict[str, Any], harness: dict[str, Any]) -> tuple[int, int]:
        config = self.config
        solution_spec = {
            **solution,
            "limits": config.limits(self._process_count()),
            "guard": config.guard,
            "namespaces": config.namespaces,
            "tmpfs_bytes": config.tmpfs_bytes,
            "readonly_paths": list(config.readonly_paths),
            "run_group": config.group_limits(),
        }
        harness_limits = {
            "RLIMIT_CPU": [config.cpu_limit_s + 1, config.cpu_limit_s + 2],
            "RLIMIT_AS": [config.memory_bytes, config.memory_bytes],
            "RLIMIT_CORE": [0, 0],
        }
        harness_spec = {
            **harness,
            "limits": harness_limits,
            "max_message_bytes": config.max_message_bytes,
            "run_group": config.group_limits(),
        }
        return _memfd(solution_spec), _memfd(harness_spec)

    async def run(self, solution: dict[str, Any], harness: dict[str, Any]) -> RunResult:
        """One check: ``solution`` (code, format, module) against ``harness`` (the tests)."""
        started = time.monotonic()
        pipes = _Pipes.open()
        ours, theirs = socket.socketpair()
        solution_fd, harness_fd = self._specs(solution, harness)
        try:
            self._solutions.spawn(
                [theirs.fileno(), pipes.theirs["status"], pipes.theirs["stdout"],
                 pipes.theirs["stderr"], solution_fd]
            )  # fmt: skip
            self._harnesses.spawn([ours.fileno(), pipes.theirs["report"], harness_fd])
        finally:
            for handle in (ours, theirs):
                handle.close()
            for fd in (solution_fd, harness_fd):
                os.close(fd)
            pipes.close_theirs()
        try:
            return await self._collect(pipes, started)
        finally:
            pipes.close()

    async def _collect(self, pipes: _Pipes, started: float) -> RunResult:
        config = self.config
        report = _PipeReader(pipes.ours["report"], 1 << 20)
        status = _PipeReader(pipes.ours["status"], 1 << 16)
        stdout = _PipeReader(pipes.ours["stdout"], config.max_output_bytes)
        stderr = _PipeReader(pipes.ours["stderr"], config.max_output_bytes)
        readers = (report, status, stdout, stderr)
        try:
            timed_out = not await report.wait(config.timeout_s)
            verdict = _second(report.lines())
            if timed_out:
                self._harnesses.kill(report.pid())
            if timed_out:
                self._solutions.kill(status.pid())
            # The solution's side ends once the harness has closed the channel (at once, for an
            # honest one), and its status pipe closes only when nothing of the run is left. A
            # side that died by itself is waited for longer: how it ended names the cause.
            died = (verdict or {}).get("cause") == "died"
            grace = _KILL_WAIT_S if timed_out else (_STATUS_GRACE_S if died else _QUIT_GRACE_S)
            if not await status.wait(grace):
                self._solutions.kill(status.pid())
                await status.wait(_KILL_WAIT_S)
            self._solutions.kill(status.pid())
            self._harnesses.kill(report.pid())
            closed = await asyncio.gather(stdout.wait(_KILL_WAIT_S), stderr.wait(_KILL_WAIT_S))
            if not all(closed):
                log.warning("a sandbox run's output is held open by a process that escaped it")
        finally:
            for reader in readers:
                reader.stop()
        return self._result(report, status, stdout, stderr, timed_out, started)

    def _result(
        self,
        report: _PipeReader,
        status: _PipeReader,
        stdout: _PipeReader,
        stderr: _PipeReader,
        timed_out: bool,
        started: float,
    ) -> RunResult:
        verdict = _second(report.lines())
        ended = _with_group(_second(status.lines()), status.lines())
        outcome, cause, reason = interpret(verdict, ended, timed_out, self.config)
        isolation = dict(ended.get("isolation", {})) if ended else {}
        # Only a status that says how the run was isolated can say it lacked namespaces (a run
        # killed on its timeout may have left no more than its group's line).
        if self.config.namespaces and isolation and not isolation.get("namespaces"):
            self._warn_weaker(str(isolation.get("namespaces_error", "unknown")))
        truncated = stdout.total > len(stdout.kept) or stderr.total > len(stderr.kept)
        return RunResult(
            outcome=outcome,
            reason=reason,
            cause=cause,
            duration_s=time.monotonic() - started,
            stdout=stdout.kept.decode("utf-8", "replace"),
            stderr=stderr.kept.decode("utf-8", "replace"),
            stdout_bytes=stdout.total,
            stderr_bytes=stderr.total,
            output_truncated=truncated,
            blocked=tuple(map(str, verdict.get("blocked", ()))) if verdict else (),
            backend=self.backend,
            details={
                "isolation": isolation,
                "calls": verdict.get("calls") if verdict else None,
                "solution_exit": (
                    {key: ended.get(key) for key in ("exit_code", "signal", "cpu_s", "run_group")}
                    if ended
                    else None
                ),
            },
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _from_status(
    status: dict[str, Any], config: SandboxConfig
) -> tuple[RunOutcome, str, str] | None:
    """A label from how the solution's process ended, where that decides it (pure)."""
    number = status.get("signal")
    cpu = float(status.get("cpu_s") or 0.0)
    if number is None:
        return None
    if number == signal.SIGXCPU or (number == signal.SIGKILL and cpu >= config.cpu_limit_s - 0.5):
        return "timeout", "cpu_limit", f"the CPU limit ({config.cpu_limit_s} s) was reached"
    return (
        "error",
        "signal",
        f"the solution's process was killed by {_signal_name(number)} after {cpu:.2f} s of CPU",
    )


def interpret(
    report: dict[str, Any] | None,
    status: dict[str, Any] | None,
    timed_out: bool,
    config: SandboxConfig,
) -> tuple[RunOutcome, str | None, str]:
    """The run's outcome, cause and reason from the harness's report and the solution's status.

    The verdict is the harness's; the solution's status only names why its side ended, where that
    is what ended the run. Pure.
    """
    if status and status.get("sandbox_error"):
        return "error", "sandbox", f"the sandbox could not be set up: {status['sandbox_error']}"
    group = (status or {}).get("run_group") or {}
    if isinstance(group.get("oom_kills"), int) and group["oom_kills"] > 0:
        # Whatever the tests said: a run over its memory is over it, as a judge's would be.
        limit = (config.memory_bytes + 3 * config.tmpfs_bytes) // (1024 * 1024)
        return (
            "error",
            "memory",
            f"the run's processes together went over its memory ({limit} MiB, tmpfs included); "
            f"the kernel killed {group['oom_kills']} of them",
        )
    by_status = _from_status(status, config) if status else None
    if timed_out:
        if by_status is not None and by_status[1] == "cpu_limit":
            return by_status
        return (
            "timeout",
            "wall_clock",
            f"no verdict within {config.timeout_s:g} s; the run was killed",
        )
    if report is None or report.get("outcome") not in ("pass", "fail", "error"):
        return "error", "harness", "the harness ended without a verdict (are the tests too heavy?)"
    outcome: RunOutcome = report["outcome"]
    cause = report.get("cause")
    reason = str(report.get("reason") or f"{outcome} ({cause or 'no cause given'})")
    if outcome == "pass":
        blocked = report.get("blocked") or []
        if blocked:
            reason += f" (the guard refused: {'; '.join(map(str, blocked[:3]))})"
        return "pass", None, reason
    if cause in ("died", "protocol") and by_status is not None:
        return by_status
    if cause == "memory":
        return "error", "memory", f"{reason} (limit {config.memory_bytes // (1024 * 1024)} MiB)"
    if report.get("blocked") and cause in ("exception", "load", "died"):
        return (
            "error",
            "guard",
            f"{reason} (the guard refused: {'; '.join(map(str, report['blocked'][:3]))})",
        )
    return outcome, cause, reason
