"""Best-of-Majority returning k answers per problem (pass@k), scored by a plain function verifier.

    python examples/best_of_majority_k.py                # the embedded model (llama.cpp on CPU)
    python examples/best_of_majority_k.py --base-url http://127.0.0.1:8000/v1 --model m --k 2

Best-of-Majority keeps the answers that at least a fraction alpha of the samples agree on, then
ranks those by a verifier's score; the top k are returned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
from collections.abc import Sequence

from ttscale import Candidate, OpenAISampler, Problem, SamplingParams, Score, as_verifier
from ttscale.datasets import load_dataset
from ttscale.local_model import LocalModelServer
from ttscale.registry import create
from ttscale.strategies import BestOfMajority


def confidence(problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
    """The model's own confidence: the geometric mean probability of the tokens it sampled.

    Any function (problem, candidates) -> scores is a verifier once adapted with as_verifier; this
    one needs no extra model calls, since token logprobs came back with the samples (logprobs=0).
    """
    scores = []
    for candidate in candidates:
        logprobs = [token.logprob for token in candidate.logprobs or ()]
        value = math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0
        scores.append(Score(value, reason=f"{len(logprobs)} tokens"))
    return scores


async def solve(problems: list[Problem], args: argparse.Namespace) -> None:
    params = SamplingParams(temperature=0.8, max_tokens=args.max_tokens, logprobs=0, seed=0)
    strategy = BestOfMajority(samples=args.samples, k=args.k, alpha=args.alpha, params=params)
    # pass@k is judged on the k answers returned: the problem counts when any of them is right.
    grader = create("verifier", "exact_match")
    # Strategies call verifier.score(...), so the plain function is adapted to the protocol here.
    verifier = as_verifier(confidence)
    async with OpenAISampler(model=args.model, base_url=args.base_url) as sampler:
        results = await asyncio.gather(*(strategy.run(p, sampler, verifier) for p in problems))
    solved = 0
    for problem, result in zip(problems, results, strict=True):
        vote = next(event.data for event in result.trace if event.step == "vote")
        verdicts = [score.verdict for score in await grader.score(problem, result.selected)]
        solved += any(verdicts)
        print(f"{problem.id}: votes={dict(vote['votes'])} survive at >= {vote['threshold']} votes")
        print(
            f"  top {args.k}: {list(result.answers)} expected={problem.answer} "
            f"correct={verdicts} pass@{args.k}={any(verdicts)}"
        )
        print(f"  usage: samples={result.usage.samples} tokens={result.usage.total_tokens}")
    print(f"pass@{args.k}: {solved}/{len(problems)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (default: embedded)")
    parser.add_argument("--model", default="default", help="the model name on that server")
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--k", type=int, default=2)
    # alpha=0 is best-of-N over distinct answers: a confidently stated rare answer can win.
    parser.add_argument("--alpha", type=float, default=0.2, help="least share of votes to survive")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    problems = load_dataset("arithmetic", limit=args.problems)
    with contextlib.ExitStack() as stack:
        if args.base_url is None:
            local = stack.enter_context(LocalModelServer())
            args.base_url, args.model = local.base_url, local.model
        asyncio.run(solve(problems, args))


if __name__ == "__main__":
    main()
