"""A third-party strategy and verifier, found by name through their entry points.

    pip install examples/plugin                          # registers `quorum` and `answer_format`
    python examples/custom_plugin.py                     # the embedded model (llama.cpp on CPU)
    python examples/custom_plugin.py --base-url http://127.0.0.1:8000/v1 --model my-model

Nothing here imports the plugin: ttscale looks it up by name, as `ttscale plugins`,
`ttscale solve --strategy quorum` and the proxy's `{"ttscale": {"strategy": "quorum"}}` do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from ttscale import OpenAISampler, Problem, SamplingParams
from ttscale.datasets import load_dataset
from ttscale.local_model import LocalModelServer
from ttscale.registry import GROUPS, available, create


async def solve(problems: list[Problem], args: argparse.Namespace) -> None:
    params = SamplingParams(temperature=0.8, max_tokens=args.max_tokens, logprobs=0, seed=0)
    # Options are passed by name and checked by the plugin's config, as for built-ins.
    quorum = create("strategy", "quorum", samples=args.samples, quorum=3, batch=2, params=params)
    # The plugin's verifier works with a built-in strategy just as well. Another base seed: the
    # same seeds on the same prompt would redraw the very samples quorum already drew.
    best_of_n = create("strategy", "best_of_n", samples=4, params=params.replace(seed=1))
    answer_format = create("verifier", "answer_format", extractor="answer_is")
    async with OpenAISampler(model=args.model, base_url=args.base_url) as sampler:
        for problem in problems:
            result = await quorum.run(problem, sampler)
            stop = next(event.data for event in result.trace if event.step == "stop")
            print(
                f"{problem.id} quorum: answer={result.answers[0]} expected={problem.answer} "
                f"samples={len(result.candidates)} stop={stop['reason']}"
            )
            result = await best_of_n.run(problem, sampler, answer_format)
            reasons = [score.reason for score in result.scores]
            print(
                f"{problem.id} best_of_n+answer_format: answer={result.answers[0]} scores={reasons}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (default: embedded)")
    parser.add_argument("--model", default="default", help="the model name on that server")
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    # What `ttscale plugins` prints: every name registered in each entry-point group.
    for kind, group in GROUPS.items():
        print(f"{kind} ({group}): {', '.join(available(kind))}")
    if "quorum" not in available("strategy") or "answer_format" not in available("verifier"):
        sys.exit("the example plugin is not installed: pip install examples/plugin")
    problems = load_dataset("arithmetic", limit=args.problems)
    with contextlib.ExitStack() as stack:
        if args.base_url is None:
            local = stack.enter_context(LocalModelServer())
            args.base_url, args.model = local.base_url, local.model
        asyncio.run(solve(problems, args))


if __name__ == "__main__":
    main()
