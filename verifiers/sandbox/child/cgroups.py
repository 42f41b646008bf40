"""A control group per run: the run's processes held together to its memory, process count and CPU.

Resource limits (``RLIMIT_*``) bind each process alone: a solution that forks can hold
``memory_bytes`` in every child, and a crowd of busy children can take every core, so that the
other candidates of a batch time out and the verdicts depend on who ran beside whom. A group of
the run's own, made by its job before it enters the namespaces and inherited by every process the
run starts, bounds them together:

- ``memory``: the group's memory (the tmpfs pages the run writes included); the kernel kills in
  the group beyond it, and the job reads how often it did (``oom_kills``);
- ``pids``: the number of the group's processes and threads;
- ``cpu``: a quota of ``cpus`` cores over each 100 ms, so a run cannot take the machine; and
  ``cpuacct`` (v1), or ``cpu.stat`` (v2), for the CPU time of the whole run.

Both layouts are read: cgroup v1, a hierarchy per controller under ``/sys/fs/cgroup/<name>``,
and v2, one unified hierarchy. The group is made inside the group the job is in, so every limit
above ours still holds. Where no group can be made (no permission, no controller) the run goes on
under its resource limits alone, and the status says why.

Stdlib only: the sandbox's processes import nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

__all__ = ["RunGroup", "group_name", "join", "join_job", "remove_left"]

MOUNT = "/sys/fs/cgroup"
PERIOD_US = 100_000
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")


def _own_paths() -> dict[str, str]:
    """Our group's path in each hierarchy, by controller name ("" for the unified one)."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        for line in handle:
            _, names, path = line.rstrip("\n").split(":", 2)
            for name in names.split(",") if names else [""]:
                paths[name] = path
    return paths


def _write(folder: str, name: str, value: object) -> None:
    with open(os.path.join(folder, name), "w", encoding="ascii") as handle:
        handle.write(str(value))


def _read(folder: str, name: str) -> str:
    with open(os.path.join(folder, name), encoding="ascii") as handle:
        return handle.read()


class RunGroup:
    """The folders of one run's group (one per v1 controller, or one in v2), joined by us.

    What is read or changed once the run has ended is opened now: the job that joined the group
    then enters a mount namespace whose root the run's first process pivots away, and after
    that no path under ``/sys`` leads anywhere for it, while open descriptors still do.
    """

    def __init__(self, folders: dict[str, str], unified: bool) -> None:
        self.folders = folders
        self.unified = unified
        self._fds: dict[str, int] = {}

    def open_for_the_end(self) -> None:
        """Open what :meth:`oom_kills`, :meth:`cpu_s` and :meth:`remove` use."""
        memory, cpu = self.folders["memory"], self.folders.get("cpuacct", self.folders["cpu"])
        wanted = {
            "oom": (memory, "memory.events" if self.unified else "memory.oom_control", os.O_RDONLY),
            "cpu": (cpu, "cpu.stat" if self.unified else "cpuacct.usage", os.O_RDONLY),
        }
        wanted["members"] = (memory, "cgroup.procs", os.O_RDONLY)
        for folder in set(self.folders.values()):
            parent = os.path.dirname(folder)
            wanted[f"procs:{folder}"] = (parent, "cgroup.procs", os.O_WRONLY)
            wanted[f"dir:{folder}"] = (parent, "", os.O_RDONLY | os.O_DIRECTORY)
        for key, (folder, name, flags) in wanted.items():
            self._fds[key] = os.open(os.path.join(folder, name) if name else folder, flags)

    def _text(self, key: str) -> str:
        return os.pread(self._fds[key], 1 << 16, 0).decode("ascii", "replace")

    def oom_kills(self) -> int:
        """How many of the group's processes the kernel killed for its memory limit."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            for line in self._text("oom").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def cpu_s(self) -> float | None:
        """The CPU time of every process the run had."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            text = self._text("cpu")
            if not self.unified:
                return int(text) / 1e9
            stat = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
            return int(stat["usage_usec"]) / 1e6
        return None

    def end_the_rest(self, within_s: float = 1.0) -> int:
        """Kill what is left in the group but us (a daemon that left the run's process group,
        with no PID namespace to end it) and reap it: we are its subreaper. How many were killed;
        repeated, for forks on the way."""
        killed = 0
        deadline = time.monotonic() + within_s
        while True:
            with contextlib.suppress(ChildProcessError):  # the run's ended processes, first
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            try:
                found = [int(pid) for pid in self._text("members").split()]
            except (OSError, ValueError, KeyError):
                return killed
            others = [pid for pid in found if pid != os.getpid()]
            if not others or time.monotonic() > deadline:
                return killed
            for pid in others:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.002)

    def describe(self) -> dict[str, Any]:
        return {
            "layout": "v2" if self.unified else "v1",
            "controllers": sorted(self.folders),
            "name": os.path.basename(self.folders["memory"]),
        }

    def remove(self) -> None:
        """Leave the group and remove it (the run's processes have all ended)."""
        for folder in set(self.folders.values()):  # v2: one folder serves every controller
            procs, parent = self._fds.get(f"procs:{folder}"), self._fds.get(f"dir:{folder}")
            with contextlib.suppress(OSError):
                if procs is not None:
                    os.write(procs, str(os.getpid()).encode())
                else:
                    _write(os.path.dirname(folder), "cgroup.procs", os.getpid())
            with contextlib.suppress(OSError):
                if parent is not None:
                    os.rmdir(os.path.basename(folder), dir_fd=parent)
                else:
                    os.rmdir(folder)
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def group_name(job_pid: int) -> str:
    return f"ttscale-run-{job_pid}"


def remove_left(job_pid: int) -> None:
    """Remove the group of a job that ended without removing it (killed): empty by now."""
    with contextlib.suppress(OSError, ValueError):
        paths = _own_paths()
        unified = os.path.exists(os.path.join(MOUNT, "cgroup.controllers"))
        for controller in ("",) if unified else _V1_CONTROLLERS:
            parent = os.path.join(MOUNT, controller, paths.get(controller, "/").lstrip("/"))
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(parent, group_name(job_pid)))


def join_job(wanted: dict[str, Any]) -> tuple[RunGroup | None, str]:
    """:func:`join` for the calling job, with the limits a run's spec asks for."""
    return join(
        group_name(os.getpid()),
        int(wanted["memory_bytes"]),
        int(wanted["max_processes"]),
        float(wanted["cpus"]),
    )


def join(
    name: str, memory_bytes: int, max_processes: int, cpus: float
) -> tuple[RunGroup | None, str]:
    """Make the run's group ``name`` with these limits and move this process into it; the group,
    or ``None`` and why not."""
    limits = {"memory": memory_bytes, "pids": max_processes, "cpu": cpus}
    unified = os.path.exists(os.path.join(MOUNT, "cgroup.controllers"))
    group = RunGroup({}, unified)
    try:
        paths = _own_paths()
        if unified:
            _make_unified(group, os.path.join(MOUNT, paths.get("", "/").lstrip("/")), name, limits)
        else:
            _make_v1(group, paths, name, limits)
        for folder in set(group.folders.values()):
            _write(folder, "cgroup.procs", os.getpid())
        group.open_for_the_end()
    except OSError as exc:
        group.remove()
        return None, f"no control group for the run: {exc}"
    return group, ""


def _quota(cpus: float) -> int:
    return max(1000, int(PERIOD_US * cpus))


def _make_v1(group: RunGroup, paths: dict[str, str], name: str, limits: dict[str, Any]) -> None:
    for controller in _V1_CONTROLLERS:
        parent = os.path.join(MOUNT, controller, paths.get(controller, "/").lstrip("/"))
        if not os.path.isdir(parent):
            raise OSError(f"no {controller} hierarchy at {parent}")
        folder = os.path.join(parent, name)
        os.mkdir(folder)
        group.folders[controller] = folder
    memory = group.folders["memory"]
    _write(memory, "memory.limit_in_bytes", limits["memory"])
    with contextlib.suppress(OSError):  # swap accounting is not always on
        _write(memory, "memory.memsw.limit_in_bytes", limits["memory"])
    _write(group.folders["pids"], "pids.max", limits["pids"])
    _write(group.folders["cpu"], "cpu.cfs_period_us", PERIOD_US)
    _write(group.folders["cpu"], "cpu.cfs_quota_us", _quota(limits["cpu"]))


def _make_unified(group: RunGroup, parent: str, name: str, limits: dict[str, Any]) -> None:
    missing = {"memory", "pids", "cpu"} - set(_read(parent, "cgroup.subtree_control").split())
    if missing:
        raise OSError(f"{', '.join(sorted(missing))} not delegated to {parent}")
    folder = os.path.join(parent, name)
    os.mkdir(folder)
    group.folders.update(dict.fromkeys(("memory", "pids", "cpu"), folder))
    _write(folder, "memory.max", limits["memory"])
    with contextlib.suppress(OSError):
        _write(folder, "memory.swap.max", 0)
    _write(folder, "pids.max", limits["pids"])
    _write(folder, "cpu.max", f"{_quota(limits['cpu'])} {PERIOD_US}")
