"""Majority vote (self-consistency) on a few arithmetic word problems.

    python examples/majority_embedded.py                 # the embedded model (llama.cpp on CPU)
    python examples/majority_embedded.py --base-url http://127.0.0.1:8000/v1 --model my-model

The embedded model needs `ttscale local-setup` to have run once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from ttscale import OpenAISampler, Problem, SamplingParams
from ttscale.datasets import load_dataset
from ttscale.local_model import LocalModelServer
from ttscale.registry import create
from ttscale.strategies import Majority


async def solve(problems: list[Problem], args: argparse.Namespace) -> None:
    # logprobs=0 asks for the chosen token's logprob only: with it, llama.cpp's per-sample token
    # counts are exact even when one request returns several choices.
    params = SamplingParams(temperature=0.8, max_tokens=args.max_tokens, logprobs=0, seed=0)
    strategy = Majority(samples=args.samples, params=params)
    # The grader is separate from the strategy: majority needs no verifier to pick an answer,
    # but saying whether the pick is right needs the reference.
    grader = create("verifier", "exact_match")
    async with OpenAISampler(model=args.model, base_url=args.base_url) as sampler:
        # One sampler for every problem: its concurrency bound is shared, so drawing all problems
        # at once keeps the server busy without overloading it.
        results = await asyncio.gather(*(strategy.run(p, sampler) for p in problems))
        correct = 0
        for problem, result in zip(problems, results, strict=True):
            votes = next(event.data["votes"] for event in result.trace if event.step == "vote")
            verdict = bool((await grader.score(problem, result.selected))[0].verdict)
            correct += verdict
            print(
                f"{problem.id}: votes={dict(votes)} chosen={result.answers[0]} "
                f"expected={problem.answer} correct={verdict}"
            )
            u = result.usage
            print(
                f"  usage: samples={u.samples} requests={u.requests} "
                f"prompt_tokens={u.prompt_tokens} completion_tokens={u.completion_tokens}"
            )
    print(f"accuracy: {correct}/{len(problems)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (default: embedded)")
    parser.add_argument("--model", default="default", help="the model name on that server")
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    problems = load_dataset("arithmetic", limit=args.problems)
    with contextlib.ExitStack() as stack:
        if args.base_url is None:
            # Starts llama-server on a free 127.0.0.1 port; it is stopped when the block ends.
            local = stack.enter_context(LocalModelServer())
            args.base_url, args.model = local.base_url, local.model
        asyncio.run(solve(problems, args))


if __name__ == "__main__":
    main()
