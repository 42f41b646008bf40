"""The warm processes that fork one child per run, and what those children do.

``python -I [-S] -c "...; main()" ROLE FD``: a fork server of ``ROLE`` (``solution`` or
``harness``) reads requests on the unix socket ``FD``: ``r`` with file descriptors attached
forks a child for a run; ``k PID`` kills a child's process group (the pids are the server's:
under bubblewrap the verifier's differ). It has imported what its children need once, so
a run costs a fork rather than an interpreter's start. The solution's server never sees tests;
the harness's never runs model-written code.

A solution job (descriptors: channel, status, stdout, stderr, spec) forks three deep: the child
enters new namespaces (:mod:`.confine`), its child is the first process of the new PID
namespace, which builds the file view and forks the worker that loads the solution and serves
the harness (:mod:`.solution`). When the worker ends, that first process writes its wait status
and CPU time to the status pipe and exits, and the kernel ends whatever the worker left in the
namespace. A harness job (descriptors: channel, report, spec) runs the tests
(:mod:`.harness`) and writes the verdict to the report pipe. Each child first writes its pid on
its pipe, so that the verifier can kill its process group.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from typing import Any

from . import cgroups, confine

__all__ = ["main"]

_PRELOAD = (
    "bisect collections copy datetime decimal fractions functools hashlib heapq itertools json "
    "math operator random re statistics string typing"
)


def _read_spec(fd: int) -> dict[str, Any]:
    with os.fdopen(fd, "rb") as handle:
        spec: dict[str, Any] = json.loads(handle.read().decode("utf-8"))
    return spec


def _close_others(keep: list[int]) -> None:
    top = 3
    for fd in sorted(keep):
        if fd > top:
            os.closerange(top, fd)
        top = max(top, fd + 1)
    os.closerange(top, 65536)


def _line(fd: int, data: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(data) + "\n").encode())


def _worker(
    spec: dict[str, Any], channel: int, out: int, err: int, isolation: dict[str, Any]
) -> None:
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        os.close(fd)
    confine.limit(spec["limits"])
    namespaces = bool(isolation.get("namespaces"))
    become_nobody = os.geteuid() == 0 and (isolation.get("nobody_mapped") or not namespaces)
    isolation.update(confine.drop_privileges(become_nobody))
    from . import guard, solution

    # Started with -S, the server has no site-packages; folders the run was given are added.
    sys.path.extend(spec.get("readonly_paths", []))
    if spec.get("guard", True):
        guard.install(os.getcwd())
    try:
        solution.serve(channel, spec)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


def _first_process(
    spec: dict[str, Any], fds: dict[str, int], isolation: dict[str, Any], base: str
) -> None:
    """PID 1 of the run's namespace (or the run's supervisor without namespaces)."""
    confine.set_parent_death_signal(signal.SIGKILL)
    workdir = None
    if isolation.get("namespaces"):
        isolation["pid_namespace"] = os.readlink("/proc/self/ns/pid")
        try:
            shown, hidden = confine.readonly_paths(list(spec.get("readonly_paths", [])))
            has_proc = confine.build_root(base, shown, hidden, int(spec["tmpfs_bytes"]))
        except OSError as exc:
            # Namespaces held but the file view did not: never run the code half-confined.
            _line(
                fds["status"],
                {"sandbox_error": f"the file view failed: {exc}", "isolation": isolation},
            )
            return
        isolation["private_root"] = True
        isolation["proc"] = "private" if has_proc else "none"
    else:
        workdir = tempfile.mkdtemp(prefix="ttscale-run-")
        if os.geteuid() == 0:
            # (nobody may not be mapped here: a user namespace of bubblewrap's)
            with contextlib.suppress(OSError):
                os.chown(workdir, confine.NOBODY, confine.NOBODY)
        os.chdir(workdir)
    confine.make_undumpable()
    worker = os.fork()
    if worker == 0:
        os.close(fds["status"])
        _worker(spec, fds["channel"], fds["stdout"], fds["stderr"], isolation)
        os._exit(0)
    for name in ("channel", "stdout", "stderr"):
        os.close(fds[name])
    _, status, usage = os.wait4(worker, 0)
    _line(
        fds["status"],
        {
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
            "max_rss_kb": usage.ru_maxrss,
            "isolation": isolation,
        },
    )
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


def solution_job(fds: list[int], base: str) -> None:
    """Namespaces, then the run's first process; we end once it (and its namespace) has.

    SIGTERM (what the server sends to end a run) kills the first process; the kernel then ends
    the rest of its PID namespace, and only when that is empty does our wait return and the
    status pipe close: so its end tells the verifier that nothing of the run is left.
    """
    channel, status, out, err, spec_fd = fds
    first = 0
    group: cgroups.RunGroup | None = None

    def end_the_run(number: int, frame: object) -> None:
        if first:
            with contextlib.suppress(ProcessLookupError):  # our wait below returns, and cleans up
                os.kill(first, signal.SIGKILL)
        else:
            if group is not None:
                group.remove()
            os._exit(0)

    signal.signal(signal.SIGTERM, end_the_run)
    confine.become_subreaper()  # what escapes the run's process group is still ours to end
    _line(status, {"pid": os.getpid()})
    spec = _read_spec(spec_fd)
    _close_others([channel, status, out, err])
    isolation: dict[str, Any] = {"namespaces": False}
    if spec.get("run_group"):
        # Before the namespaces: the group is made and joined as the host sees it.
        group, why = cgroups.join_job(spec["run_group"])
        isolation["run_group"] = group.describe() if group else {"error": why}
    if spec.get("namespaces", True):
        try:
            isolation["nobody_mapped"] = confine.enter_namespaces()
            isolation["namespaces"] = True
        except OSError as exc:
            isolation["namespaces_error"] = str(exc)
    first = os.fork()
    if first == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        named = {"channel": channel, "status": status, "stdout": out, "stderr": err}
        try:
            _first_process(spec, named, isolation, base)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)
    for fd in (channel, out, err):
        os.close(fd)
    os.waitpid(first, 0)
    if group is not None:  # what the whole run spent; then nothing of it is left, nor its group
        left = group.end_the_rest()
        spent = {"oom_kills": group.oom_kills(), "cpu_s": group.cpu_s(), "killed_after": left}
        _line(status, {"run_group": spent})
        group.remove()
    os.close(status)


def harness_job(fds: list[int]) -> None:
    channel, report, spec_fd = fds
    _line(report, {"pid": os.getpid()})
    spec = _read_spec(spec_fd)
    _close_others([channel, report])
    # The tests' side has a group of its own too: decoding what a solution sends costs memory and
    # CPU here, which must not come out of the runs beside it either.
    group = cgroups.join_job(spec["run_group"])[0] if spec.get("run_group") else None
    confine.limit(spec["limits"])
    folder = tempfile.mkdtemp(prefix="ttscale-harness-")
    os.chdir(folder)
    from . import harness

    try:
        _line(report, harness.run(spec, channel))
    finally:
        os.chdir("/")
        shutil.rmtree(folder, ignore_errors=True)
        if group is not None:
            group.end_the_rest()
            group.remove()


MAX_INT_DIGITS = 100_000


def _preload(role: str) -> None:
    # Values cross between the processes as JSON text: a right answer of thousands of digits
    # must cross too (Python's default refuses over 4,300). Reading digits costs quadratic time,
    # so a bound stays: 100,000 digits read in milliseconds.
    bound = getattr(sys, "set_int_max_str_digits", None)  # Python >= 3.11 has the limit
    if bound is not None:
        bound(MAX_INT_DIGITS)
    for name in _PRELOAD.split():
        __import__(name)
    if "exit" not in vars(builtins):
        # Started with -S, the interpreter lacks what site adds; programs call exit() and quit().
        import _sitebuiltins

        builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
        builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    from . import guard, harness, solution  # noqa: F401 - imported once, for every fork

    if role == "harness":
        with contextlib.suppress(ImportError):
            import pytest  # noqa: F401


def _reap(number: int, frame: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while True:
            pid = os.waitpid(-1, os.WNOHANG)[0]
            if not pid:
                return
            cgroups.remove_left(pid)  # a job killed before it removed its run's group


def main() -> None:
    role, control_fd = sys.argv[1], int(sys.argv[2])
    control = socket.socket(fileno=control_fd)
    confine.set_parent_death_signal(signal.SIGKILL)
    # Reap our children as they end (waited for, their CPU time counts as ours, for benchmarks).
    signal.signal(signal.SIGCHLD, _reap)
    _preload(role)
    base = tempfile.mkdtemp(prefix="ttscale-root-")
    try:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(control, 4096, 8)
            except OSError:
                return
            if not data:
                return  # the verifier has gone
            if data[:1] == b"k":
                # End a child's run: asked of us because pids are ours (under bubblewrap the
                # verifier sees other numbers). A solution's child ends its namespace itself.
                for fd in fds:
                    os.close(fd)
                try:
                    if role == "solution":
                        os.kill(int(data[1:]), signal.SIGTERM)
                    else:
                        os.killpg(int(data[1:]), signal.SIGKILL)
                except (ValueError, OSError):
                    pass
                continue
            child = os.fork()
            if child == 0:
                control.close()
                os.setsid()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                # A solution's job ends its run and removes the run's group on SIGTERM; the
                # harness's has nothing to clean up.
                ending = signal.SIGTERM if role == "solution" else signal.SIGKILL
                confine.set_parent_death_signal(ending)
                try:
                    if role == "solution":
                        solution_job(fds, base)
                    else:
                        harness_job(fds)
                except BaseException:
                    traceback.print_exc()  # to the server's stderr (a log, or nowhere)
                finally:
                    os._exit(0)
            for fd in fds:
                os.close(fd)
    finally:
        os.rmdir(base)
