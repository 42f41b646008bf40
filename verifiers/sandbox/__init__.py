"""Running model-written code so that it cannot forge its verdict or reach the host.

Two processes per run, from two warm fork servers:

- the **solution's process** loads the model-written code and answers calls. It runs in new
  user, mount, PID, network, IPC and UTS namespaces, in a file view of only what the interpreter
  needs (read-only ``/usr``, ``/lib*`` and the standard library; private size-capped tmpfs
  ``/sandbox``, ``/tmp`` and ``/dev/shm``; its own ``/proc``; no ``/etc``, home, project or
  ``site-packages``), with resource limits, no capabilities, ``no_new_privs``, and the audit
  hook of :mod:`.child.guard` as a second line. It never sees the tests, the expected values or
  the verdict's channel;
- the **harness's process** (trusted: the dataset's tests) runs the tests with the entry point
  as a proxy whose calls cross a socket as plain data (:mod:`.child.codec`), and writes the
  verdict on a pipe only it holds.

Backends: ``bwrap`` (the default when bubblewrap is installed) starts the solutions' fork server
inside bubblewrap (read-only host, no network, private ``/tmp``, its own PID namespace, dies with
us), and each run adds its namespaces and file view inside that; ``subprocess`` starts it
directly, and each run makes the same namespaces and view itself. Where the kernel refuses user
namespaces, a run falls back to a private directory, resource limits, the guard, and (as root)
the ``nobody`` user: then the host's world-readable files can be read, a process can outlive
the run, and ``details["isolation"]`` says so.

Public API: :class:`SandboxConfig`, :class:`Sandbox`, :class:`RunResult`,
:func:`check_code_execution_allowed`, :func:`bwrap_available`.
"""

from ttscale.verifiers.sandbox.config import (
    ALLOW_ENV_VAR,
    Backend,
    RunOutcome,
    RunResult,
    SandboxConfig,
    bwrap_available,
    check_code_execution_allowed,
    scrubbed_environment,
)
from ttscale.verifiers.sandbox.runner import Sandbox, count_processes_of_user, interpret

__all__ = [
    "ALLOW_ENV_VAR",
    "Backend",
    "RunOutcome",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "bwrap_available",
    "check_code_execution_allowed",
    "count_processes_of_user",
    "interpret",
    "scrubbed_environment",
]
