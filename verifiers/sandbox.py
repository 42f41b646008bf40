"""Running untrusted Python in a fresh, limited subprocess.

Each run gets a new temporary directory, a ``python -I`` interpreter started with
``asyncio.create_subprocess_exec`` (never a fork of our own, possibly threaded, process), a
scrubbed environment (only what :func:`scrubbed_environment` lists; no key of ours), stdin from
``/dev/null``, its own session (so the whole process group is killed on timeout), capped captured
output, and resource limits set by a small bootstrap script before any untrusted code runs.

The bootstrap is itself the first line of defence, and its layout matters:

- it sets ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and
  ``RLIMIT_CORE``;
- where the kernel allows it (unprivileged user namespaces, or root) and ``namespaces`` is on,
  it moves into new user, mount and PID namespaces, mapping only its own uid and gid;
- it then forks once: the untrusted code runs in the child, and the bootstrap stays behind as its
  parent, so killing the parent (or the process group) hits the bootstrap, never the verifier;
- in namespaces, the child is PID 1 of its own with a fresh ``/proc``: it sees no outside
  process (so no ``/proc/PID/environ`` or ``cmdline`` of ours), the kernel's ptrace check
  refuses it every outside process even of the same uid, and all it starts dies with it, whether
  it left the process group or not. ``details["namespaces"]`` and ``details["proc_private"]``
  say what held (a kernel without user namespaces leaves only the guard between the code and
  the ``/proc`` entries of processes of its uid);
- the child drops every capability it holds (best effort, through ``prctl``/``capset``): as
  root, or inside its user namespace, it would otherwise be able to read other processes'
  ``/proc/PID/environ`` or files it should not;
- the child installs an audit hook (``guard``) that refuses process creation, network
  connections, signals to other processes, writes outside the run's directory and reads of other
  processes' ``/proc`` entries.

``RLIMIT_NPROC`` does not bind root: the kernel exempts uid 0 whatever its capabilities. Run as
root, a fork bomb that gets past the guard is stopped only by the wall-clock kill of its process
group (or the end of its PID namespace), and thousands of processes may exist until then. Run
the verifier as an unprivileged user where that matters.

What the plain subprocess backend can and cannot do: the audit hook is a guard against accidents
and naive attacks, not a security boundary. Code that reaches ``ctypes`` can call ``connect``
directly and so escape the hook; without namespaces it can also ``fork`` and ``setsid`` out of
the process group. Then only the resource limits and file permissions hold. For a real boundary
use the ``bwrap`` backend (bubblewrap): no network namespace access, a read-only root, a private
``/tmp``, its own PID namespace and death with its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ttscale.errors import ConfigError, SandboxRefused

__all__ = [
    "ALLOW_ENV_VAR",
    "Backend",
    "RunMode",
    "RunOutcome",
    "RunResult",
    "SandboxConfig",
    "bwrap_available",
    "check_code_execution_allowed",
    "count_processes_of_user",
    "run_untrusted",
    "scrubbed_environment",
]

log = logging.getLogger(__name__)

ALLOW_ENV_VAR = "TTSCALE_ALLOW_CODE_EXECUTION"

Backend = Literal["auto", "subprocess", "bwrap"]
RunMode = Literal["script", "pytest"]
RunOutcome = Literal["pass", "fail", "timeout", "error"]

_MIB = 1024 * 1024
# Seconds to wait for the output pipes to close after the process group was killed. Thousands of
# processes of a fork bomb take seconds to exit on two cores; a pipe kept open by something that
# escaped the group must still not hang the verifier.
_DRAIN_GRACE_S = 15.0
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation of one run of untrusted code.

    ``timeout_s`` is wall-clock time; the CPU limit is set just above it so a busy loop dies even
    if the wall-clock kill were missed. ``max_processes`` is how many more processes the run's
    user may start (``RLIMIT_NPROC`` counts every process of a user, so the limit is set to the
    user's current count plus this). ``guard`` installs the audit hook described in the module
    docstring. ``backend`` "auto" uses bubblewrap when ``bwrap`` is on the PATH. ``namespaces``
    gives a subprocess run its own user, mount and PID namespaces where the kernel allows it.
    """

    timeout_s: float = 10.0
    memory_bytes: int = 2048 * _MIB
    max_processes: int = 32
    max_file_bytes: int = 16 * _MIB
    max_open_files: int = 256
    max_output_bytes: int = 64 * 1024
    guard: bool = True
    backend: Backend = "subprocess"
    python: str = field(default_factory=lambda: sys.executable)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    drop_capabilities: bool = True
    namespaces: bool = True

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        for name in ("memory_bytes", "max_processes", "max_file_bytes", "max_open_files"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_output_bytes < 0:
            raise ConfigError(f"max_output_bytes must be >= 0, got {self.max_output_bytes}")
        if self.backend not in ("auto", "subprocess", "bwrap"):
            raise ConfigError(f"backend must be auto, subprocess or bwrap, got {self.backend!r}")
        if self.backend == "bwrap" and not bwrap_available():
            raise ConfigError("backend 'bwrap' was asked for but bwrap is not on the PATH")
        object.__setattr__(self, "extra_env", dict(self.extra_env))

    @property
    def resolved_backend(self) -> Literal["subprocess", "bwrap"]:
        if self.backend == "auto":
            return "bwrap" if bwrap_available() else "subprocess"
        return self.backend


@dataclass(frozen=True)
class RunResult:
    """What one run came to. ``blocked`` lists what the guard refused, in order."""

    outcome: RunOutcome
    reason: str
    duration_s: float
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_truncated: bool = False
    exit_status: int | None = None
    blocked: tuple[str, ...] = ()
    backend: str = "subprocess"
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_details(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "duration_s": round(self.duration_s, 4),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "output_truncated": self.output_truncated,
            "exit_status": self.exit_status,
            "blocked": list(self.blocked),
            "backend": self.backend,
            **self.details,
        }


def check_code_execution_allowed(allowed: bool, what: str) -> None:
    """Raise :class:`SandboxRefused` unless running model-written code was explicitly allowed."""
    if allowed or os.environ.get(ALLOW_ENV_VAR, "").strip() == "1":
        return
    raise SandboxRefused(
        f"{what} runs model-written code, which is refused by default; pass "
        f"allow_code_execution=True or set {ALLOW_ENV_VAR}=1 to allow it (it runs in a limited "
        "subprocess, or under bubblewrap when available, but no sandbox is perfect)"
    )


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None


def scrubbed_environment(workdir: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment a run sees: nothing is inherited from ours (keys stay ours)."""
    environment = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # BLAS libraries reserve memory per thread; under an address-space limit that fails.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    environment.update(extra or {})
    return environment


def count_processes_of_user(uid: int) -> int:
    """How many processes ``uid`` owns now (Linux /proc); 0 where /proc cannot tell."""
    count = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += 1
        except OSError:
            continue  # the process ended while we looked
    return count


# The bootstrap runs as ``python -I -c BOOTSTRAP spec.json``. It is kept dependency-free (stdlib
# only) and is the only code that runs before the limits are in place.
_BOOTSTRAP = r"""
import json, os, resource, signal, sys

spec_path = sys.argv[1]
with open(spec_path) as handle:
    spec = json.load(handle)
os.remove(spec_path)
workdir = spec["workdir"]
report_fd = spec["report_fd"]

for name, value in spec["limits"].items():
    try:
        resource.setrlimit(getattr(resource, name), tuple(value))
    except (ValueError, OSError) as exc:
        sys.stderr.write("ttscale sandbox: could not set %s: %s\n" % (name, exc))

def drop_capabilities():
    # Capabilities of the user namespace the process is in (all of them after unshare).
    if not spec["drop_capabilities"]:
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
        for capability in range(64):
            libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        return libc.capset(header, data) == 0
    except Exception as exc:
        sys.stderr.write("ttscale sandbox: could not drop capabilities: %s\n" % exc)
        return False

# New user, mount and PID namespaces: the code then cannot read any outside process's
# /proc/PID/environ or cmdline (a process in a child user namespace fails the kernel's ptrace
# access check even for its own uid, and a fresh /proc lists only the run's processes), and
# everything it starts dies with it, setsid or not, when the namespace's first process ends.
namespaces = False
if spec["namespaces"]:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
        uid, gid = os.geteuid(), os.getegid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) != 0:
            raise OSError(ctypes.get_errno(), "unshare failed")
        namespaces = True
    except Exception as exc:
        sys.stderr.write("ttscale sandbox: no private namespaces: %s\n" % exc)
if namespaces:
    # Map only our own ids, which needs no privilege in the parent namespace, except for uid 0
    # without CAP_SETFCAP (Linux 5.12+). Unmapped, the code sees itself as the overflow uid;
    # the namespaces hold all the same.
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)),
                           ("gid_map", "%d %d 1" % (gid, gid))):
            with open("/proc/self/" + name, "w") as handle:
                handle.write(text)
    except OSError:
        pass

status_read, status_write = os.pipe()
child = os.fork()
if child == 0:
    os.close(status_read)
    os.close(report_fd)
    proc_private = False
    if namespaces:
        # The child is PID 1 of the new namespace; mount a /proc that shows only its processes.
        try:
            MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
            if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                raise OSError(ctypes.get_errno(), "making mounts private failed")
            if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                          None) != 0:
                raise OSError(ctypes.get_errno(), "mounting /proc failed")
            proc_private = True
        except Exception as exc:
            sys.stderr.write("ttscale sandbox: /proc is not private: %s\n" % exc)
    capabilities_dropped = drop_capabilities()
    status = {"outcome": "error", "reason": "the sandbox child failed before running the code"}
    blocked = []
    exit_code = 2

    class SandboxViolation(PermissionError):
        pass

    def run():
        global status, exit_code
        import traceback
        sys.dont_write_bytecode = True
        sys.path.insert(0, workdir)
        if spec["guard"]:
            install_guard()
        entry = os.path.join(workdir, spec["entry"])
        try:
            if spec["mode"] == "pytest":
                status = run_pytest(entry)
            else:
                import runpy
                runpy.run_path(entry, run_name="__main__")
                status = {"outcome": "pass", "reason": "the program ran to the end"}
        except AssertionError as exc:
            status = {"outcome": "fail", "reason": describe_assertion(exc, entry)}
        except SystemExit as exc:
            status = {
                "outcome": "error",
                "reason": "the program called exit(%r) before its tests finished" % (exc.code,),
            }
        except MemoryError:
            status = {"outcome": "error", "reason": "MemoryError: the memory limit was reached"}
        except BaseException as exc:
            traceback.print_exc()
            status = {"outcome": "error", "reason": "%s: %s" % (type(exc).__name__, exc)}
        if blocked and status["outcome"] == "pass":
            status["reason"] += " (the guard refused: %s)" % "; ".join(blocked[:3])
        exit_code = {"pass": 0, "fail": 1}.get(status["outcome"], 2)

    def describe_assertion(exc, entry):
        import traceback
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == entry]
        message = str(exc)
        where = ""
        if frames:
            last = frames[-1]
            where = " at line %d: %s" % (last.lineno, (last.line or "").strip())
        return "assertion failed%s%s" % (where, (" (%s)" % message) if message else "")

    def run_pytest(entry):
        import pytest

        class Collect:
            def __init__(self):
                self.passed = 0
                self.failed = []

            def pytest_runtest_logreport(self, report):
                if report.passed and report.when == "call":
                    self.passed += 1
                elif report.failed:
                    self.failed.append("%s: %s" % (report.nodeid, report.longreprtext[-300:]))

        collect = Collect()
        code = pytest.main(
            [entry, "-q", "-p", "no:cacheprovider", "--basetemp",
             os.path.join(workdir, ".pytest_tmp")],
            plugins=[collect],
        )
        counts = "%d passed, %d failed" % (collect.passed, len(collect.failed))
        if code == 0:
            return {"outcome": "pass", "reason": "pytest: " + counts}
        if code == 1:
            first = collect.failed[0] if collect.failed else ""
            return {"outcome": "fail", "reason": "pytest: %s; first: %s" % (counts, first)}
        if code == 5:
            return {"outcome": "error", "reason": "pytest collected no tests"}
        return {"outcome": "error", "reason": "pytest exited with %s (%s)" % (int(code), counts)}

    def install_guard():
        own_pid = os.getpid()
        root = os.path.realpath(workdir) + os.sep
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        process_events = {
            "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
            "subprocess.Popen", "os.startfile", "pty.spawn",
        }
        network_events = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
        path_events = {
            "os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,),
            "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,),
            "os.truncate": (0,), "os.utime": (0,), "os.chflags": (0,), "os.mkfifo": (0,),
            "shutil.rmtree": (0,),
        }

        def inside(path):
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if not isinstance(path, str):
                return True  # a file descriptor was opened before, so it was checked then
            resolved = os.path.realpath(path)
            return resolved + os.sep == root or resolved.startswith(root) or resolved == "/dev/null"

        def refuse(what):
            blocked.append(what)
            raise SandboxViolation("ttscale sandbox: %s is not allowed" % what)

        def other_process_proc(path):
            if not isinstance(path, str):
                return False
            parts = os.path.realpath(path).split(os.sep)
            return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and (
                int(parts[2]) != own_pid
            )

        def guard(event, args):
            if event in process_events:
                refuse("starting a process (%s)" % event)
            elif event in network_events:
                refuse("network access (%s to %r)" % (event, args[1] if len(args) > 1 else None))
            elif event in ("os.kill", "os.killpg"):
                # Pid 0 is the whole process group, which includes the supervisor.
                if event == "os.killpg" or args[0] != own_pid:
                    refuse("signalling another process (%s %r)" % (event, args[0]))
            elif event == "open":
                path, mode, flags = args
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & write_flags
                )
                if writing and not inside(path):
                    refuse("writing outside the run's directory (%s)" % (path,))
                if other_process_proc(path):
                    refuse("reading another process's /proc entry (%s)" % (path,))
            elif event in path_events:
                for position in path_events[event]:
                    if position < len(args) and not inside(args[position]):
                        refuse("changing files outside the run's directory (%s %s)"
                               % (event, args[position]))

        sys.addaudithook(guard)

    try:
        run()
    finally:
        try:
            status["blocked"] = blocked
            status["capabilities_dropped"] = capabilities_dropped
            status["proc_private"] = proc_private
            os.write(status_write, json.dumps(status).encode()[:60000])
        except BaseException:
            pass
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(exit_code)

os.close(status_write)
drop_capabilities()
# Read the status while waiting for the child, and stop when the child has ended, not at the
# pipe's end: a process the code left behind holds the pipe open until it dies.
import select
os.set_blocking(status_read, False)
chunks = []
kept = 0
wait_status = None
while True:
    if wait_status is None:
        pid, status_now = os.waitpid(child, os.WNOHANG)
        if pid:
            wait_status = status_now
    finished = wait_status is not None
    if not finished:
        select.select([status_read], [], [], 0.05)
    try:
        while True:
            chunk = os.read(status_read, 65536)
            if not chunk:
                finished = True
                break
            if kept < 65536:  # the child's status is at most 60000 bytes; the rest is noise
                chunks.append(chunk)
                kept += len(chunk)
    except BlockingIOError:
        pass
    if finished:
        break
if wait_status is None:
    _, wait_status = os.waitpid(child, 0)
report = {
    "status": b"".join(chunks).decode("utf-8", "replace"),
    "exit_code": os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else None,
    "signal": os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None,
    "namespaces": namespaces,
}
os.write(report_fd, json.dumps(report).encode())
os._exit(0)
"""


def _limits(config: SandboxConfig, process_count: int) -> dict[str, list[int]]:
    cpu_seconds = math.ceil(config.timeout_s) + 1
    return {
        # Soft CPU limit sends SIGXCPU; the hard one a second later SIGKILL.
        "RLIMIT_CPU": [cpu_seconds, cpu_seconds + 1],
        "RLIMIT_AS": [config.memory_bytes, config.memory_bytes],
        "RLIMIT_NPROC": [process_count + config.max_processes] * 2,
        "RLIMIT_FSIZE": [config.max_file_bytes, config.max_file_bytes],
        "RLIMIT_NOFILE": [config.max_open_files, config.max_open_files],
        "RLIMIT_CORE": [0, 0],
    }


def _python_roots(python: str) -> list[str]:
    """Folders the interpreter needs that a fresh /tmp would hide (a venv made under /tmp)."""
    roots = {sys.prefix, sys.base_prefix, str(Path(python).parent.parent)}
    roots.add(str(Path(os.path.realpath(python)).parent.parent))
    return sorted(r for r in roots if Path(r).is_dir() and (r == "/tmp" or r.startswith("/tmp/")))


def _bwrap_command(workdir: str, inner: list[str]) -> list[str]:
    # The sandbox gets an empty /tmp; an interpreter living under /tmp is shown again read-only.
    keep = [arg for root in _python_roots(inner[0]) for arg in ("--ro-bind", root, root)]
    return [
        "bwrap",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        *keep,
        "--bind", workdir, workdir,
        "--chdir", workdir,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        # The bootstrap is the namespace's PID 1: when it ends, the kernel ends every process
        # the code left there before bwrap (so the verdict) sees it gone. Under bwrap's own init
        # they would die later, after the verdict.
        "--as-pid-1",
        "--",
        *inner,
    ]  # fmt: skip


class _CappedReader:
    """Reads a stream to its end, keeping at most ``cap`` bytes and counting the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while True:
            chunk = await stream.read(_READ_CHUNK)
            if not chunk:
                return
            self.total += len(chunk)
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept.extend(chunk[:room])

    @property
    def text(self) -> str:
        return self.kept.decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _read_to_eof(fd: int) -> bytes:
    """Everything written to a non-blocking pipe until its last writer closes it."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    finished: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if not finished.done():
                    finished.set_exception(exc)
                return
            if not chunk:
                if not finished.done():
                    finished.set_result(None)
                return
            chunks.append(chunk)

    loop.add_reader(fd, on_readable)
    try:
        await finished
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


def _parse_report(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        report = json.loads(raw)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _interpret(
    report: dict[str, Any] | None, exit_status: int | None, config: SandboxConfig
) -> tuple[RunOutcome, str, tuple[str, ...], dict[str, Any]]:
    """Turn the bootstrap's report into an outcome and a reason (pure)."""
    if report is None:
        how = (
            f"was killed by signal {-exit_status}"
            if exit_status is not None and exit_status < 0
            else f"exited with status {exit_status}"
        )
        return (
            "error",
            f"the sandbox's supervisor {how} without a report (did the code kill its parent?)",
            (),
            {},
        )
    try:
        status = json.loads(report.get("status") or "null")
    except ValueError:
        status = None
    blocked: tuple[str, ...] = ()
    # What isolated the code: told by the child that ran it (unknown if it died silently).
    extra: dict[str, Any] = {"namespaces": bool(report.get("namespaces"))}
    if isinstance(status, dict):
        blocked = tuple(str(item) for item in status.get("blocked", ()))
        extra["capabilities_dropped"] = bool(status.get("capabilities_dropped"))
        extra["proc_private"] = bool(status.get("proc_private"))
    child_signal = report.get("signal")
    if child_signal is not None:
        if child_signal in (signal.SIGXCPU, signal.SIGKILL) and not isinstance(status, dict):
            # SIGKILL with no status is what the hard CPU limit sends (the soft one, SIGXCPU,
            # comes first); out-of-memory kills are rare under RLIMIT_AS, which fails allocations.
            reason = f"the CPU time limit ({math.ceil(config.timeout_s) + 1} s) was reached"
            return "timeout", reason, blocked, extra
        name = signal.Signals(child_signal).name if child_signal in signal.Signals else ""
        return (
            "error",
            f"the code was killed by signal {child_signal} {name}".strip(),
            blocked,
            {**extra},
        )
    if not isinstance(status, dict) or status.get("outcome") not in ("pass", "fail", "error"):
        code = report.get("exit_code")
        reason = f"the code exited (status {code}) before its tests finished"
        return "error", reason, blocked, extra
    outcome: RunOutcome = status["outcome"]
    if outcome == "pass" and report.get("exit_code") != 0:
        return "error", f"inconsistent exit status {report.get('exit_code')}", blocked, extra
    return outcome, str(status.get("reason", "")), blocked, extra


def _prepare_workdir(workdir: str, files: Mapping[str, str], spec: dict[str, Any]) -> str:
    """Write the run's files and the bootstrap's spec; the spec's path."""
    root = os.path.realpath(workdir) + os.sep
    for name, content in files.items():
        path = os.path.realpath(os.path.join(workdir, name))
        if not path.startswith(root):
            raise ConfigError(f"file name {name!r} points outside the run's directory")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(content)
    spec_path = os.path.join(workdir, ".ttscale_spec.json")
    with open(spec_path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    return spec_path


async def run_untrusted(
    files: Mapping[str, str],
    entry: str,
    config: SandboxConfig,
    *,
    mode: RunMode = "script",
) -> RunResult:
    """Run ``entry`` (one of ``files``, written into a fresh directory) under ``config``."""
    backend = config.resolved_backend
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="ttscale-run-")
    report_read, report_write = os.pipe()
    os.set_blocking(report_read, False)
    try:
        spec = {
            "workdir": workdir,
            "entry": entry,
            "mode": mode,
            "guard": config.guard,
            # bwrap makes its own namespaces; nesting more inside them gains nothing.
            "namespaces": config.namespaces and backend == "subprocess",
            "report_fd": report_write,
            "drop_capabilities": config.drop_capabilities,
            "limits": _limits(config, count_processes_of_user(os.getuid())),
        }
        spec_path = _prepare_workdir(workdir, files, spec)
        command = [config.python, "-I", "-c", _BOOTSTRAP, spec_path]
        if backend == "bwrap":
            command = _bwrap_command(workdir, command)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workdir,
            env=scrubbed_environment(workdir, config.extra_env),
            start_new_session=True,
            pass_fds=(report_write,),
            close_fds=True,
        )
        os.close(report_write)
        report_write = -1
        stdout = _CappedReader(config.max_output_bytes)
        stderr = _CappedReader(config.max_output_bytes)
        readers = asyncio.gather(stdout.drain(process.stdout), stderr.drain(process.stderr))
        # The run ends when the bootstrap exits, which closes the report pipe: only it holds the
        # pipe's write end. Process.wait() would also wait for stdout and stderr to close, which
        # anything the code left running can hold open.
        timed_out = False
        raw_report = b""
        try:
            raw_report = await asyncio.wait_for(_read_to_eof(report_read), config.timeout_s)
        except asyncio.TimeoutError:
            timed_out = True
        finally:
            # Whatever the code left behind in its process group goes too.
            _kill_group(process.pid)
        try:
            await asyncio.wait_for(asyncio.gather(process.wait(), readers), timeout=_DRAIN_GRACE_S)
        except asyncio.TimeoutError:
            log.warning(
                "sandbox run %s: processes outside the group still hold its output", workdir
            )
            # Let go of the pipes now: the transport would otherwise outlive the event loop and
            # keep reading from whatever escaped (asyncio.subprocess.Process has no public close).
            transport = getattr(process, "_transport", None)
            if transport is not None:
                transport.close()
        report = _parse_report(raw_report)
        exit_status = process.returncode
        if timed_out:
            outcome: RunOutcome = "timeout"
            reason = f"no result within {config.timeout_s:g} s; the process group was killed"
            blocked: tuple[str, ...] = ()
            extra: dict[str, Any] = {}
        else:
            outcome, reason, blocked, extra = _interpret(report, exit_status, config)
        truncated = stdout.total > len(stdout.kept) or stderr.total > len(stderr.kept)
        if truncated:
            reason += (
                f" (output truncated: {stdout.total} stdout and {stderr.total} stderr bytes,"
                f" kept {config.max_output_bytes} of each)"
            )
        return RunResult(
            outcome=outcome,
            reason=reason,
            duration_s=time.monotonic() - started,
            stdout=stdout.text,
            stderr=stderr.text,
            stdout_bytes=stdout.total,
            stderr_bytes=stderr.total,
            output_truncated=truncated,
            exit_status=exit_status,
            blocked=blocked,
            backend=backend,
            details={**extra, "workdir": workdir},
        )
    finally:
        os.close(report_read)
        if report_write >= 0:
            os.close(report_write)
        shutil.rmtree(workdir, ignore_errors=True)
