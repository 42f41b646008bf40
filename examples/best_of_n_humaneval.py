"""Best-of-N with unit tests on a few HumanEval problems.

    python examples/best_of_n_humaneval.py               # the embedded model (llama.cpp on CPU)
    python examples/best_of_n_humaneval.py --base-url http://127.0.0.1:8000/v1 --model my-model

This runs model-written code (in ttscale's sandboxed subprocesses); only point it at models whose
output you are willing to execute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from ttscale import OpenAISampler, Problem, SamplingParams
from ttscale.datasets import load_dataset
from ttscale.local_model import LocalModelServer
from ttscale.registry import create
from ttscale.solve import CODE_INSTRUCTION, InstructedSampler
from ttscale.strategies import BestOfN


async def solve(problems: list[Problem], args: argparse.Namespace) -> None:
    params = SamplingParams(temperature=0.8, max_tokens=args.max_tokens, logprobs=0, seed=0)
    # extractor="code" makes the answer key the normalised code, so identical programs count once.
    strategy = BestOfN(samples=args.samples, extractor="code", params=params)
    # The verifier runs HumanEval's own tests; without allow_code_execution it refuses to run.
    tests = create("verifier", "unit_tests", allow_code_execution=True)
    async with OpenAISampler(model=args.model, base_url=args.base_url) as raw:
        # A chat model does better when told what to do with a bare function stub; this is the
        # same instruction `ttscale solve` uses for code datasets.
        sampler = InstructedSampler(raw, CODE_INSTRUCTION)
        results = await asyncio.gather(*(strategy.run(p, sampler, tests) for p in problems))
    solved = 0
    for problem, result in zip(problems, results, strict=True):
        # With a perfect verifier (the real tests) best-of-N solves a problem exactly when any
        # sample passes, so its accuracy is pass@N.
        outcomes = [score.details.get("outcome") for score in result.scores]
        chosen = result.selected[0]
        passed = bool(result.scores[result.candidates.index(chosen)].verdict)
        solved += passed
        print(
            f"{problem.id} ({problem.entry_point}): outcomes={outcomes} "
            f"chosen=sample {chosen.index} passed={passed}"
        )
        print(
            f"  usage: samples={result.usage.samples} "
            f"completion_tokens={result.usage.completion_tokens}"
        )
    print(f"solved: {solved}/{len(problems)}")
    if results:
        print("best program of the first problem:\n" + (results[0].text or ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (default: embedded)")
    parser.add_argument("--model", default="default", help="the model name on that server")
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=384)
    args = parser.parse_args()
    problems = load_dataset("humaneval", limit=args.problems)
    with contextlib.ExitStack() as stack:
        if args.base_url is None:
            local = stack.enter_context(LocalModelServer())
            args.base_url, args.model = local.base_url, local.model
        asyncio.run(solve(problems, args))


if __name__ == "__main__":
    main()
