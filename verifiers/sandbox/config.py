"""The sandbox's settings, what a run comes to, and the opt-in to run model-written code."""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ttscale.errors import ConfigError, SandboxRefused

__all__ = [
    "ALLOW_ENV_VAR",
    "Backend",
    "RunOutcome",
    "RunResult",
    "SandboxConfig",
    "bwrap_available",
    "check_code_execution_allowed",
    "scrubbed_environment",
]

log = logging.getLogger(__name__)

ALLOW_ENV_VAR = "TTSCALE_ALLOW_CODE_EXECUTION"

Backend = Literal["auto", "subprocess", "bwrap"]
RunOutcome = Literal["pass", "fail", "timeout", "error"]
_MIB = 1024 * 1024
_warned: set[str] = set()


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation of the runs of one verifier.

    ``timeout_s`` is the wall-clock limit of a run; the solution's CPU limit is set just above it
    (``cpu_limit_s``) so that a busy loop dies even if the wall-clock kill were missed.
    ``memory_bytes`` limits the address space of each side. ``max_processes`` is how many more
    processes the run's user may start (``RLIMIT_NPROC``, which root is exempt from).
    ``tmpfs_bytes`` caps each private tmpfs (``/sandbox``, ``/tmp``, ``/dev/shm``).
    ``run_group`` puts each run in a control group of its own (:mod:`.child.cgroups`), so that
    its processes together hold at most ``memory_bytes`` (plus what its tmpfs folders hold),
    run at most ``max_processes`` + 64 processes and threads, and use at most ``cpus_per_run``
    cores: a run that forks can neither exceed its memory nor starve the runs beside it. Where
    no group can be made, the limits above bind each process alone (``details["isolation"]``
    says which).
    ``readonly_paths`` are host folders the solution may read besides the standard library
    (a ``site-packages`` for solutions that import packages). ``backend`` ``auto`` is bubblewrap
    when ``bwrap`` is on the PATH. ``namespaces`` off runs the solution without its own
    namespaces (weaker: see the module docstring of :mod:`ttscale.verifiers.sandbox`).
    """

    timeout_s: float = 10.0
    memory_bytes: int = 2048 * _MIB
    max_processes: int = 32
    max_file_bytes: int = 16 * _MIB
    max_open_files: int = 256
    max_output_bytes: int = 64 * 1024
    max_message_bytes: int = 16 * _MIB
    tmpfs_bytes: int = 64 * _MIB
    guard: bool = True
    backend: Backend = "auto"
    python: str = field(default_factory=lambda: sys.executable)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    namespaces: bool = True
    readonly_paths: tuple[str, ...] = ()
    run_group: bool = True
    cpus_per_run: float = 1.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        for name in (
            "memory_bytes",
            "max_processes",
            "max_file_bytes",
            "max_open_files",
            "max_message_bytes",
            "tmpfs_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.01 <= self.cpus_per_run <= 1024:
            raise ConfigError(f"cpus_per_run must be in [0.01, 1024], got {self.cpus_per_run}")
        if self.max_output_bytes < 0:
            raise ConfigError(f"max_output_bytes must be >= 0, got {self.max_output_bytes}")
        if self.backend not in ("auto", "subprocess", "bwrap"):
            raise ConfigError(f"backend must be auto, subprocess or bwrap, got {self.backend!r}")
        if self.backend == "bwrap" and not bwrap_available():
            raise ConfigError("backend 'bwrap' was asked for but bwrap is not on the PATH")
        for path in self.readonly_paths:
            if not os.path.isabs(path):
                raise ConfigError(f"readonly_paths must be absolute, got {path!r}")
        object.__setattr__(self, "extra_env", dict(self.extra_env))
        object.__setattr__(self, "readonly_paths", tuple(self.readonly_paths))

    def group_limits(self) -> dict[str, Any] | None:
        """What the run's control group holds it to, or ``None`` when it gets none."""
        if not self.run_group:
            return None
        return {
            "memory_bytes": self.memory_bytes + 3 * self.tmpfs_bytes,
            "max_processes": self.max_processes + 64,  # threads count too
            "cpus": self.cpus_per_run,
        }

    @property
    def cpu_limit_s(self) -> int:
        return math.ceil(self.timeout_s) + 1

    @property
    def resolved_backend(self) -> Literal["subprocess", "bwrap"]:
        if self.backend != "auto":
            return self.backend
        if bwrap_available():
            return "bwrap"
        if "bwrap" not in _warned:
            _warned.add("bwrap")
            log.warning(
                "bwrap (bubblewrap) is not installed: model-written code runs on the subprocess "
                "backend (its own namespaces where the kernel allows them); install bubblewrap "
                "for the stronger boundary"
            )
        return "subprocess"

    def limits(self, process_count: int) -> dict[str, list[int]]:
        """The ``RLIMIT_*`` limits of the solution's process, by name."""
        return {
            # The soft CPU limit sends SIGXCPU, the hard one a second later SIGKILL.
            "RLIMIT_CPU": [self.cpu_limit_s, self.cpu_limit_s + 1],
            "RLIMIT_AS": [self.memory_bytes, self.memory_bytes],
            "RLIMIT_NPROC": [process_count + self.max_processes] * 2,
            "RLIMIT_FSIZE": [self.max_file_bytes, self.max_file_bytes],
            "RLIMIT_NOFILE": [self.max_open_files, self.max_open_files],
            "RLIMIT_CORE": [0, 0],
        }


@dataclass(frozen=True)
class RunResult:
    """What one run came to.

    ``outcome`` is the verdict (``pass``, ``fail``, ``timeout``, ``error``); ``cause`` says
    what decided it: ``assertion``/``output`` (a test failed), ``exception``, ``load``,
    ``wall_clock``, ``cpu_limit``, ``memory``, ``signal``, ``exit``, ``died``, ``guard``,
    ``unsupported_type``, ``unsupported_argument``, ``protocol``, ``tests``, ``harness``,
    ``sandbox`` (the isolation could not be set up: nothing ran); None
    for a pass. ``blocked`` lists what the guard refused; ``isolation`` what held.
    """

    outcome: RunOutcome
    reason: str
    duration_s: float
    cause: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_truncated: bool = False
    blocked: tuple[str, ...] = ()
    backend: str = "subprocess"
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_details(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "cause": self.cause,
            "duration_s": round(self.duration_s, 4),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "output_truncated": self.output_truncated,
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
        f"allow_code_execution=True or set {ALLOW_ENV_VAR}=1 to allow it (it runs in a sandbox "
        "of its own, under bubblewrap when available, but no sandbox is perfect)"
    )


def scrubbed_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment the sandbox's processes see: nothing is inherited from ours."""
    environment = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/sandbox",
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONHASHSEED": "0",
        # BLAS libraries reserve memory per thread; under an address-space limit that fails.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    environment.update(extra or {})
    return environment
