"""Running offline evaluation's chunk scans at once: on forked processes where that is safe, else
on threads.

Why processes: a chunk's scan makes about 60 short numpy calls per step, and on threads every
call passes the interpreter lock between them; two threads gained only 1.2x on 2 cores, where
forked processes share nothing.

Why only sometimes: a forked child holds only the thread that forked. If another Python thread
held a lock at that moment (logging's, an event loop's), the child could wait on it for ever.
So processes are used only on Linux (macOS's system libraries are not fork-safe), from a process
running one Python thread, and for long scans (:data:`FORK_STEPS` samples a problem and
:data:`FORK_WORTH` lane-steps in all); threads otherwise. Both run the same jobs, so results
never depend on the choice.

A worker dies with its parent: on Linux each child asks the kernel (``prctl``'s
``PR_SET_PDEATHSIG``) for SIGKILL when the parent dies, so a run killed by SIGKILL leaves no
worker computing for nobody.

Speed: ``benchmarks/offline_eval.py`` (500 problems x 1,000 samples, 100 orders) took 1.41 s on 2
forked processes against 2.11 s on 2 threads and 2.16 s on one worker (medians of 5, alternating).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Literal, TypeVar

from ttscale.errors import ConfigError, TTScaleError

__all__ = [
    "FORK_STEPS",
    "FORK_WORTH",
    "Mode",
    "can_fork",
    "check_mode",
    "choose_mode",
    "run_jobs",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Mode = Literal["auto", "processes", "threads"]

FORK_WORTH = 20_000_000
"""Lane-steps of work (lanes times samples) from which forking pays: below it, threads."""

FORK_STEPS = 128
"""Samples per problem from which forking pays. A scan's lock hand-overs grow with its steps;
with fewer steps threads did as well as processes on a quiet machine (16, 64 samples) and better
beside a busy model server, without the forks' memory."""

PR_SET_PDEATHSIG = 1
"""Linux's ``prctl`` option: the signal a process gets when its parent dies."""


def choose_mode(
    mode: Mode, work: int, jobs: int, forkable: bool, steps: int = FORK_STEPS
) -> Literal["processes", "threads", "serial"]:
    """How ``jobs`` jobs of ``work`` lane-steps in all, ``steps`` each, run; ``forkable`` says
    whether this process may fork (:func:`can_fork`; see the module docstring)."""
    check_mode(mode)
    if jobs <= 1:
        return "serial"
    if mode != "auto":
        return mode if mode == "threads" or forkable else "threads"
    worth = work >= FORK_WORTH and steps >= FORK_STEPS
    return "processes" if worth and forkable else "threads"


def check_mode(mode: object) -> None:
    """Refuse a ``parallel`` setting that is not a :data:`Mode`."""
    if mode not in ("auto", "processes", "threads"):
        raise ConfigError(f"parallel must be 'auto', 'processes' or 'threads', got {mode!r}")


def can_fork() -> bool:
    """Whether forking is safe here: on Linux (macOS's system libraries, numpy's Accelerate among
    them, are not fork-safe), from a process running one Python thread."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


def run_jobs(
    jobs: Sequence[Callable[[], T]],
    mode: Literal["processes", "threads", "serial"],
    workers: int,
    meanwhile: Callable[[], None] | None = None,
) -> list[T]:
    """Every job's result, in order, with at most ``workers`` running at once as ``mode`` says;
    ``meanwhile`` runs in this thread while they do. A failed job's exception is raised here."""
    if mode == "serial" or workers <= 1:
        if meanwhile is not None:
            meanwhile()
        return [job() for job in jobs]
    if mode == "threads":
        with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            running = [pool.submit(job) for job in jobs]
            if meanwhile is not None:
                meanwhile()
            return [future.result() for future in running]
    logger.debug("running %d jobs on at most %d forked processes", len(jobs), workers)
    return _run_forked(jobs, workers, meanwhile)


def _run_forked(
    jobs: Sequence[Callable[[], T]], workers: int, meanwhile: Callable[[], None] | None
) -> list[T]:
    context = multiprocessing.get_context("fork")
    parent = os.getpid()
    waiting = list(enumerate(jobs))[::-1]  # popped from the end: first job first
    running: dict[Connection, tuple[int, Any]] = {}
    outcomes: dict[int, T] = {}

    def start_next() -> None:
        number, job = waiting.pop()
        reader, writer = context.Pipe(duplex=False)
        # With fork the target is not pickled: the child runs this very closure.
        child = context.Process(target=_answer, args=(job, writer, parent), daemon=True)
        child.start()
        writer.close()
        running[reader] = (number, child)

    try:
        while waiting and len(running) < workers:
            start_next()
        if meanwhile is not None:
            meanwhile()
        while running:
            for reader in multiprocessing.connection.wait(list(running)):
                assert isinstance(reader, Connection)
                number, child = running.pop(reader)
                failed, value = _receive(child, reader)
                reader.close()
                child.join()
                if failed:  # the run ends: the others are stopped (below), none started
                    raise value
                outcomes[number] = value
                if waiting:
                    start_next()
    finally:
        for reader, (_, child) in running.items():
            reader.close()
            child.terminate()
            child.join()
    return [outcomes[number] for number in range(len(jobs))]


def _answer(job: Callable[[], Any], writer: Connection, parent: int) -> None:
    """In the child: send back ``(False, result)`` or ``(True, exception)``."""
    _die_with(parent)
    try:
        outcome: tuple[bool, Any] = (False, job())
    except BaseException as exc:  # every failure, KeyboardInterrupt too, goes back to the parent
        outcome = (True, exc)
    try:
        try:
            writer.send(outcome)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            writer.send((True, TTScaleError(f"a worker's outcome could not be sent back: {exc}")))
    except OSError:
        pass  # the parent is gone (killed, say): nobody is left to tell
    writer.close()


def _die_with(parent: int) -> None:
    """In the child: be killed when ``parent`` dies (Linux only; elsewhere a worker finishes its
    job, finds nobody to answer and exits)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)


def _receive(child: Any, reader: Connection) -> tuple[bool, Any]:
    try:
        outcome: tuple[bool, Any] = reader.recv()
    except EOFError:
        child.join()
        return True, TTScaleError(
            f"an offline evaluation worker process ended without an answer "
            f"(exit code {child.exitcode}; a negative code is the signal that killed it)"
        )
    return outcome
