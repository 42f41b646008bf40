"""Offline evaluation's parallel runner: forked processes where safe, threads otherwise, with the
same results, failures raised in the caller, and no hang when a worker dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from ttscale.errors import ConfigError, TTScaleError
from ttscale.strategies.offline_parallel import FORK_STEPS, FORK_WORTH, choose_mode, run_jobs

needs_fork = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="worker processes are forked on Linux only"
)


def test_the_mode_follows_the_work_the_request_and_whether_forking_is_safe() -> None:
    big, small = FORK_WORTH, FORK_WORTH - 1
    assert choose_mode("auto", big, 2, True) == "processes"
    assert choose_mode("auto", small, 2, True) == "threads"  # a fork would cost more than it saves
    assert choose_mode("auto", big, 2, False) == "threads"  # another thread is running
    assert choose_mode("processes", small, 2, True) == "processes"
    assert choose_mode("processes", big, 2, False) == "threads"  # asked, but not safe here
    assert choose_mode("threads", big, 2, True) == "threads"
    assert choose_mode("auto", big, 1, True) == "serial"
    assert choose_mode("auto", big, 2, True, steps=FORK_STEPS) == "processes"
    assert choose_mode("auto", big, 2, True, steps=FORK_STEPS - 1) == "threads"  # a short scan
    assert choose_mode("processes", big, 2, True, steps=2) == "processes"  # asked for
    with pytest.raises(ConfigError, match="parallel must be"):
        choose_mode("fork", big, 2, True)  # type: ignore[arg-type]


def test_forking_is_unsafe_while_another_thread_runs() -> None:
    """Checked in a fresh interpreter (one thread: safe), then with a second thread (unsafe)."""
    code = textwrap.dedent(
        """
        import threading
        from ttscale.strategies.offline_parallel import can_fork
        alone = can_fork()
        stop = threading.Event()
        other = threading.Thread(target=stop.wait)
        other.start()
        print(alone, can_fork())
        stop.set()
        other.join()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == [str(sys.platform.startswith("linux")), "False"]


def _pid() -> int:
    return os.getpid()


@needs_fork
def test_processes_return_every_result_in_order_from_other_processes() -> None:
    jobs = [lambda number=number: (number, os.getpid()) for number in range(5)]  # type: ignore[misc]
    results = run_jobs(jobs, "processes", 2)
    assert [number for number, _ in results] == [0, 1, 2, 3, 4]
    assert all(pid != os.getpid() for _, pid in results)
    assert len({pid for _, pid in results}) == 5  # a fresh child per job
    # Control: threads and serial run in this process.
    assert {pid for _, pid in run_jobs(jobs, "threads", 2)} == {os.getpid()}
    assert {pid for _, pid in run_jobs(jobs, "serial", 2)} == {os.getpid()}


def _overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = running = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def _sleeper(seconds: float) -> Callable[[], tuple[float, float]]:
    def job() -> tuple[float, float]:
        started = time.monotonic()  # one clock for every process of the machine
        time.sleep(seconds)
        return started, time.monotonic()

    return job


@needs_fork
def test_at_most_workers_processes_run_at_once() -> None:
    jobs = [_sleeper(0.3) for _ in range(4)]
    assert _overlap(run_jobs(jobs, "processes", 2)) == 2
    assert _overlap(run_jobs(jobs, "processes", 4)) == 4  # control: the bound is what limits


@needs_fork
def test_meanwhile_runs_here_while_the_workers_run() -> None:
    ran_in: list[int] = []
    spans = run_jobs([_sleeper(0.3)], "processes", 2, meanwhile=lambda: ran_in.append(_pid()))
    assert ran_in == [os.getpid()] and len(spans) == 1


@needs_fork
def test_a_failing_job_raises_its_own_error_here_and_stops_the_others() -> None:
    def bad() -> None:
        raise ConfigError("chunk 3 has no samples", param="answers")

    started = time.monotonic()
    with pytest.raises(ConfigError, match="chunk 3 has no samples") as raised:
        run_jobs([_sleeper(30.0), bad, _sleeper(30.0)], "processes", 3)
    assert raised.value.param == "answers"
    assert time.monotonic() - started < 10  # the sleepers were stopped, not waited for


@needs_fork
def test_a_worker_killed_by_a_signal_is_an_error_not_a_hang() -> None:
    def killed() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(TTScaleError, match="exit code -9"):
        run_jobs([killed, _sleeper(0.1)], "processes", 2)


@needs_fork
def test_a_result_that_cannot_be_sent_back_is_an_error() -> None:
    lock = threading.Lock()  # locks cannot be pickled
    with pytest.raises(TTScaleError, match="could not be sent back"):
        run_jobs([lambda: lock, lambda: 1], "processes", 2)


@needs_fork
def test_evaluate_gives_the_same_numbers_on_processes_threads_and_one_worker() -> None:
    """In a fresh interpreter (one thread, so forking is allowed), with the runner's log showing
    that processes really ran. Control: another seed changes the numbers."""
    code = textwrap.dedent(
        """
        import json, logging, sys
        import numpy as np
        from ttscale.strategies.offline import evaluate
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        rng = np.random.default_rng(5)
        answers = rng.integers(-1, 5, size=(40, 16))
        correct = answers == 0
        scores = rng.integers(0, 4, size=(40, 16)) / 3  # ties between right and wrong samples
        out = {}
        for label, kwargs in (
            ("processes", dict(workers=2, parallel="processes")),
            ("threads", dict(workers=2, parallel="threads")),
            ("one", dict(workers=1)),
            ("other_seed", dict(workers=2, parallel="processes", seed=9)),
        ):
            result = evaluate(answers, correct, scores, subsets=30, **{"seed": 4, **kwargs})
            out[label] = {
                name: [values.tolist(), result.per_problem_samples[name].tolist()]
                for name, values in result.per_problem.items()
            }
        print(json.dumps(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert "on at most 2 forked processes" in done.stderr
    out = json.loads(done.stdout)
    assert out["processes"] == out["threads"] == out["one"]
    assert out["other_seed"]["majority"] != out["one"]["majority"]


def _orphans_after_the_parent_is_killed(guarded: bool) -> list[int]:
    """Start a run of two 60-second jobs in a subprocess, SIGKILL it once its workers have
    reported their pids, and return the workers still alive a moment later."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from ttscale.strategies import offline_parallel
        if not {guarded}:
            offline_parallel._die_with = lambda parent: None
        def job():
            os.write(1, b"%d\\n" % os.getpid())  # one write: the two lines cannot mix
            time.sleep(60)
        offline_parallel.run_jobs([job, job], "processes", 2)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    workers = [int(parent.stdout.readline()) for _ in range(2)]
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + 3
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in workers if _alive(pid)]
    for pid in alive:  # the control's orphans: not left behind by the test
        os.kill(pid, signal.SIGKILL)
    return alive


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@needs_fork
def test_workers_die_with_a_parent_killed_by_sigkill() -> None:
    assert _orphans_after_the_parent_is_killed(guarded=True) == []
    # Control: without the request to the kernel, both workers outlive their parent.
    assert len(_orphans_after_the_parent_is_killed(guarded=False)) == 2
