"""Each bank sample's verdicts, recomputed from the packed parts: ``<set>/verdicts.json``.

HumanEval samples are run through the unit-test verifier (its harness and sandbox) on the full
tests and on the weak tests (``ttscale.bank.weak_tests``: ``check`` cut after its first
assert); GSM8K samples are checked by the math verifier against the reference answer. Verdicts
are kept apart from the samples so that a better verifier re-judges the bank without drawing
again.

    python benchmarks/bank/verdicts.py [--sets humaneval gsm8k]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import time
from typing import Any

from ttscale.bank import DEFAULT_ROOT, load_bank_set, weak_tests
from ttscale.datasets import load_dataset
from ttscale.registry import create
from ttscale.types import Candidate, Problem

log = logging.getLogger("bank")


async def judge(name: str) -> dict[str, dict[str, Any]]:
    bank = load_bank_set(name, verdicts=False)  # the verdicts are what this makes
    problems = {problem.id: problem for problem in load_dataset(name)}
    if name == "humaneval":
        verifier = create("verifier", "unit_tests", allow_code_execution=True, concurrency=4)
    else:
        verifier = create("verifier", "math")
    verdicts: dict[str, dict[str, Any]] = {}

    async def one(problem: Problem) -> None:
        samples = bank.samples[problem.id]
        candidates = [Candidate(text=s.text, index=s.index) for s in samples]
        full = await verifier.score(problem, candidates)
        weak = None
        if name == "humaneval":
            assert problem.tests is not None
            cut = dataclasses.replace(problem, tests=weak_tests(problem.tests))
            weak = await verifier.score(cut, candidates)
        for position, sample in enumerate(samples):
            verdicts[f"{sample.problem}#{sample.index}"] = {
                "full": bool(full[position].verdict),
                **({"weak": bool(weak[position].verdict)} if weak is not None else {}),
                "reason": full[position].reason[:200],
            }

    await asyncio.gather(*(one(problems[p]) for p in bank.problems))
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=["humaneval", "gsm8k"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in args.sets:
        if not any((DEFAULT_ROOT / name).glob("part-*.jsonl.gz")):
            log.info("%s: nothing packed yet", name)
            continue
        started = time.perf_counter()
        verdicts = asyncio.run(judge(name))
        path = DEFAULT_ROOT / name / "verdicts.json"
        path.write_text(json.dumps(verdicts, sort_keys=True, indent=0) + "\n", encoding="utf-8")
        passed = sum(v["full"] for v in verdicts.values())
        log.info(
            "%s: %d samples, %d pass the full tests, in %.1f s",
            name,
            len(verdicts),
            passed,
            time.perf_counter() - started,
        )


if __name__ == "__main__":
    main()
