"""Confining the solution's process: namespaces, a minimal read-only file view, limits.

The steps, in the order the solution's job takes them (:mod:`.forkserver`):

1. :func:`enter_namespaces`: new user, mount, PID, network, IPC and UTS namespaces, mapping only
   our own uid and gid. The network namespace has nothing in it (its loopback is down), so no
   TCP listener and no abstract unix socket of the host is reachable.
2. In the first process of the new PID namespace, :func:`build_root` mounts a fresh tmpfs root
   holding read-only binds of only what the interpreter needs (``/usr``, the ``/lib`` folders,
   the standard library, without its ``site-packages``), a private ``/proc``, a minimal ``/dev``,
   and private tmpfs ``/tmp``, ``/dev/shm`` and ``/sandbox`` (the run's directory, size-capped),
   then pivots into it. Home folders, the project, ``/etc`` and every other host path are not
   there; nothing written survives the namespace.
3. :func:`limit` sets the resource limits, :func:`drop_privileges` drops every capability (and,
   as root without namespaces, becomes ``nobody``) and sets ``no_new_privs``.

Stdlib only (with ``ctypes`` for the system calls Python does not wrap).
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import sysconfig
from typing import Any

__all__ = [
    "NOBODY",
    "become_subreaper",
    "build_root",
    "drop_privileges",
    "enter_namespaces",
    "limit",
    "readonly_paths",
    "set_parent_death_signal",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_SET_CHILD_SUBREAPER = 36
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
# Mount flags a bind inside a user namespace must keep when remounted (the kernel locks them).
_LOCKED = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
_DEVICES = ("null", "zero", "full", "random", "urandom")
NOBODY = 65534

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, kind: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            kind.encode() if kind else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or kind} on {target}",
    )


def set_parent_death_signal(number: int) -> None:
    """Have the kernel send ``number`` to this process when its parent ends."""
    _libc.prctl(PR_SET_PDEATHSIG, number, 0, 0, 0)


def become_subreaper() -> None:
    """Orphans among our descendants become our children (not init's), for us to end and reap."""
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def enter_namespaces() -> bool:
    """New user, mount, PID, network, IPC and UTS namespaces; whether ``nobody`` is mapped.

    Root inside is us outside. As root, a helper left in the parent namespace also maps
    ``nobody`` (only the parent namespace's privilege can map a second id), so that the
    solution's process can then become an unprivileged user to the host: file permissions and
    ``RLIMIT_NPROC`` bind it, as they do not bind root. Without root, the one id we map is
    already unprivileged.
    """
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    helper = _map_helper() if uid == 0 else None
    try:
        _check(_libc.unshare(flags), "unshare")
    except OSError:
        if helper is not None:
            _finish_helper(helper, go=False)
        raise
    if helper is not None and _finish_helper(helper, go=True):
        return True
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    return False


def _map_helper() -> tuple[int, int, int]:
    """A child, still outside, that writes our id maps once we have unshared."""
    go_read, go_write = os.pipe()
    done_read, done_write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        os.close(done_read)
        ok = b"0"
        if os.read(go_read, 1) == b"1":
            try:
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{parent}/{name}", "w") as handle:
                        handle.write(f"0 0 1\n{NOBODY} {NOBODY} 1\n")
                ok = b"1"
            except OSError:
                pass
        os.write(done_write, ok)
        os._exit(0)
    os.close(go_read)
    os.close(done_write)
    return pid, go_write, done_read


def _finish_helper(helper: tuple[int, int, int], *, go: bool) -> bool:
    pid, go_write, done_read = helper
    os.write(go_write, b"1" if go else b"0")
    mapped = os.read(done_read, 1) == b"1"
    for fd in (go_write, done_read):
        os.close(fd)
    os.waitpid(pid, 0)
    return mapped and go


def readonly_paths(extra: list[str]) -> tuple[list[str], list[str]]:
    """What the solution sees read-only, and the folders inside them hidden (pure over the host)."""
    stdlib = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    system = [
        p
        for p in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
        if os.path.lexists(p)
    ]
    shown = system + sorted(p for p in stdlib if not p.startswith("/usr/")) + list(extra)
    hidden = sorted(
        {os.path.join(p, "site-packages") for p in stdlib}
        | {os.path.join(p, "dist-packages") for p in stdlib}
    )
    return shown, [h for h in hidden if os.path.isdir(h)]


def _bind_readonly(source: str, target: str) -> None:
    if os.path.islink(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(source), target)
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY
    found = os.statvfs(source).f_flag
    for statvfs_flag, mount_flag in _LOCKED:
        if found & statvfs_flag:
            flags |= mount_flag
    _mount(None, target, None, flags)


def _tmpfs(target: str, size: int, mode: str = "1777") -> None:
    os.makedirs(target, exist_ok=True)
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode}")


def build_root(base: str, shown: list[str], hidden: list[str], tmpfs_bytes: int) -> bool:
    """Mount the solution's file view at ``base`` and pivot into it; cwd is then ``/sandbox``.

    Whether the view has a ``/proc`` (its own, showing only the run's processes).

    Run in the first process of the new PID namespace (mounting its ``/proc`` needs that).
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    # The private tmpfs first, so that a read-only path under /tmp (a venv there) shows on top.
    for path in ("/dev/shm", "/tmp", "/sandbox"):
        _tmpfs(base + path, tmpfs_bytes)
    for path in shown:
        _bind_readonly(path, base + path)
    for path in hidden:
        _mount("tmpfs", base + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=755")
    os.makedirs(base + "/proc", exist_ok=True)
    try:
        _mount("proc", base + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        has_proc = True
    except OSError:
        # The kernel refuses a new procfs where the current one is partly covered (inside
        # bubblewrap); then the solution has no /proc at all, which hides even more.
        has_proc = False
    os.makedirs(base + "/dev", exist_ok=True)
    for device in _DEVICES:
        open(f"{base}/dev/{device}", "a").close()
        _mount(f"/dev/{device}", f"{base}/dev/{device}", None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{base}/dev/{name}")
    os.chdir(base)
    syscall = _PIVOT_ROOT.get(platform.machine())
    if syscall is None:
        raise OSError(0, f"pivot_root: unknown system call number on {platform.machine()}")
    _check(_libc.syscall(syscall, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/sandbox")
    return has_proc


def limit(limits: dict[str, list[int]]) -> list[str]:
    """Set ``RLIMIT_*`` limits by name; what could not be set."""
    failed = []
    for name, (soft, hard) in limits.items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError) as exc:
            failed.append(f"{name}: {exc}")
    return failed


def drop_privileges(become_nobody: bool) -> dict[str, Any]:
    """Drop every capability, set ``no_new_privs``, and (``become_nobody``) switch to nobody.

    Inside our namespaces, nobody is only there to become when :func:`enter_namespaces` mapped
    it; outside them, as the host's root, it always is.
    """
    done: dict[str, Any] = {}
    if become_nobody:
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            done["uid"] = NOBODY
        except OSError as exc:
            done["uid_error"] = str(exc)
    for capability in range(64):
        _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    done["capabilities_dropped"] = _libc.capset(header, data) == 0
    return done


def make_undumpable() -> None:
    """No ptrace and no ``/proc/PID/mem`` of this process for anything without privilege."""
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
