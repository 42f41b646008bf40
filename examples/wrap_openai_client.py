"""Wrap an `openai` client with `ttscale.wrap`: the same calls, answered by a strategy.

    python examples/wrap_openai_client.py                # the embedded model (llama.cpp on CPU)
    python examples/wrap_openai_client.py --base-url http://127.0.0.1:8000/v1 --model my-model

The wrapped client is a drop-in for `OpenAI` (or `AsyncOpenAI`): calls without `ttscale` settings
are the client's own; calls with them draw many samples and return the selected answers, with
`usage` counting every token drawn.
"""

from __future__ import annotations

import argparse
import contextlib

from openai import OpenAI

import ttscale
from ttscale.budget import max_samples
from ttscale.datasets import load_dataset
from ttscale.local_model import LocalModelServer


def per_call(base_url: str, model: str, question: str) -> None:
    messages = [{"role": "user", "content": question}]
    # No settings here: only calls that carry `ttscale` settings are scaled. Closing the wrapped
    # client closes the client it wraps.
    with ttscale.wrap(OpenAI(base_url=base_url, api_key="not-needed")) as client:
        plain = client.chat.completions.create(model=model, messages=messages, max_tokens=256)
        print("plain call:", plain.choices[0].message.content)

        reply = client.chat.completions.create(
            model=model,
            messages=messages,
            n=2,  # the number of answers returned (k), not of samples drawn
            temperature=0.8,
            max_tokens=256,
            # llama.cpp reports one choice's tokens when asked for several; logprobs fix the count.
            logprobs=True,
            extra_body={"ttscale": {"strategy": "majority", "samples": 8}},
        )
    info = reply.model_extra["ttscale"]  # what the strategy did
    print("scaled call answers:", [choice.message.content for choice in reply.choices])
    print("  votes:", info["votes"], "samples_used:", info["samples_used"])
    print("  usage:", reply.usage and reply.usage.model_dump(exclude_none=True))


def with_defaults(base_url: str, model: str, questions: list[str]) -> None:
    # Settings given to wrap() apply to every call. A budget given as a stop condition spans all
    # calls of the client: 12 samples in all, so the second question gets 4 and the third none.
    client = ttscale.wrap(
        OpenAI(base_url=base_url, api_key="not-needed"),
        strategy="majority",
        samples=8,
        budget=max_samples(12),
    )
    with client:
        for question in questions:
            try:
                reply = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": question}],
                    temperature=0.8,
                    max_tokens=256,
                    logprobs=True,
                )
            except ttscale.BudgetExhausted as exc:
                print("budget spent:", exc)
                continue
            info = reply.model_extra["ttscale"]
            print(f"answer {info['answers'][0]} from {info['samples_used']} samples")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (default: embedded)")
    parser.add_argument("--model", default="default", help="the model name on that server")
    args = parser.parse_args()
    questions = [p.prompt or "" for p in load_dataset("arithmetic", limit=3)]
    with contextlib.ExitStack() as stack:
        if args.base_url is None:
            # Starts llama-server on a free 127.0.0.1 port; it is stopped when the block ends.
            local = stack.enter_context(LocalModelServer())
            args.base_url, args.model = local.base_url, local.model
        per_call(args.base_url, args.model, questions[0])
        with_defaults(args.base_url, args.model, questions)


if __name__ == "__main__":
    main()
