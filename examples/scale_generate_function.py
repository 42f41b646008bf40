"""Scale your own generate function with `ttscale.scale`: majority vote over its answers.

    python examples/scale_generate_function.py           # the embedded model (llama.cpp on CPU)
    python examples/scale_generate_function.py --base-url http://127.0.0.1:8000/v1 --model my-model

`ask` below is an ordinary function that asks a model once. Decorated, it is called `--samples`
times per question (in worker threads) and returns the majority answer with the whole result.
"""

from __future__ import annotations

import argparse
import contextlib

from openai import OpenAI
from openai.types.chat import ChatCompletion

import ttscale
from ttscale.datasets import load_dataset
from ttscale.local_model import LocalModelServer


def run(client: OpenAI, args: argparse.Namespace) -> None:
    # A `seed` parameter is optional; with one, every sample gets its own seed, derived from the
    # call's seed (here 0) and the sample's index, so a rerun draws the same samples.
    @ttscale.scale(strategy="majority", samples=args.samples, seed=0)
    def ask(question: str, seed: int | None = None) -> ChatCompletion:
        # Returning the ChatCompletion (not just its text) lets ttscale count the tokens spent.
        return client.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": question}],
            seed=seed,
            temperature=0.8,
            max_tokens=args.max_tokens,
        )

    correct = 0
    for problem in load_dataset("arithmetic", limit=args.problems):
        answer, result = ask(problem.prompt or "")  # the chosen sample's text, and the result
        votes = next(event.data["votes"] for event in result.trace if event.step == "vote")
        chosen = result.answers[0]  # the answer extracted from that text
        correct += chosen == problem.answer
        print(
            f"{problem.id}: votes={dict(votes)} chosen={chosen} expected={problem.answer} "
            f"samples={len(result.candidates)} tokens={result.usage.total_tokens}"
        )
        print(f"  chosen text: {answer!r}")
    print(f"accuracy: {correct}/{args.problems}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (default: embedded)")
    parser.add_argument("--model", default="default", help="the model name on that server")
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.base_url is None:
            # Starts llama-server on a free 127.0.0.1 port; it is stopped when the block ends.
            local = stack.enter_context(LocalModelServer())
            args.base_url, args.model = local.base_url, local.model
        with OpenAI(base_url=args.base_url, api_key="not-needed") as client:
            run(client, args)


if __name__ == "__main__":
    main()
