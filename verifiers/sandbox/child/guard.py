"""The audit hook installed in the solution's process: a second line, not the boundary.

It refuses, through ``sys.addaudithook``, starting processes, network access, signals to other
processes, file changes outside the run's directory and reads of other processes' ``/proc``
entries, and records each refusal. Code that reaches ``ctypes`` or raw system calls passes it by;
the namespaces and the read-only file view (:mod:`.confine`) are what hold then. What it records
travels to the harness with every reply, as information: the solution's process is untrusted, so
nothing in the verdict depends on it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["SandboxViolation", "blocked", "install"]

blocked: list[str] = []

_PROCESS_EVENTS = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "os.system",
        "subprocess.Popen",
        "os.startfile",
        "pty.spawn",
    }
)
_NETWORK_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
# Audit events that change a path, and which of their arguments are paths.
_PATH_EVENTS = {
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.chflags": (0,),
    "os.mkfifo": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
    "sqlite3.connect": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class SandboxViolation(PermissionError):
    """What the guard raises in the solution's process for a refused action."""


def install(workdir: str) -> None:
    """Install the hook for a run whose only writable place is ``workdir``."""
    own_pid = os.getpid()
    root = os.path.realpath(workdir) + os.sep

    def inside(path: Any) -> bool:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return True  # a descriptor: the file was checked when it was opened
        if path == ":memory:":
            return True  # an in-memory sqlite database
        resolved = os.path.realpath(path)
        return resolved + os.sep == root or resolved.startswith(root) or resolved == "/dev/null"

    def refuse(what: str) -> None:
        blocked.append(what)
        raise SandboxViolation(f"ttscale sandbox: {what} is not allowed")

    def other_process_proc(path: Any) -> bool:
        if not isinstance(path, str):
            return False
        parts = os.path.realpath(path).split(os.sep)
        return (
            len(parts) > 2
            and parts[1] == "proc"
            and parts[2].isdigit()
            and (int(parts[2]) != own_pid)
        )

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in _PROCESS_EVENTS:
            refuse(f"starting a process ({event})")
        elif event in _NETWORK_EVENTS:
            refuse(f"network access ({event} to {args[1] if len(args) > 1 else None!r})")
        elif event in ("os.kill", "os.killpg"):
            # Pid 0 is the whole process group.
            if event == "os.killpg" or args[0] != own_pid:
                refuse(f"signalling another process ({event} {args[0]!r})")
        elif event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writing and not inside(path):
                refuse(f"writing outside the run's directory ({path})")
            if other_process_proc(path):
                refuse(f"reading another process's /proc entry ({path})")
        elif event in _PATH_EVENTS:
            for position in _PATH_EVENTS[event]:
                if position < len(args) and not inside(args[position]):
                    refuse(f"changing files outside the run's directory ({event} {args[position]})")

    sys.addaudithook(hook)
