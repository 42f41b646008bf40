"""The ttscale proxy in front of a model server, used by the unmodified `openai` client.

    python examples/proxy_client.py                      # the embedded model (llama.cpp on CPU)
    python examples/proxy_client.py --base-url http://127.0.0.1:8000/v1 --model my-model

The same proxy runs standalone as `ttscale serve --preset maj8=strategy=majority,samples=8`.
"""

from __future__ import annotations

import argparse
import contextlib
import json

from openai import OpenAI

from ttscale.datasets import load_dataset
from ttscale.local_model import LocalModelServer
from ttscale.proxy import BackgroundProxy, ProxyConfig
from ttscale.scaling import ScaleSettings


def demo(client: OpenAI, model: str, question: str) -> None:
    messages = [{"role": "user", "content": question}]

    # 1. A preset named as the model; the client's n is the number of answers (k) returned.
    # Ordinary parameters (temperature, max_tokens) go upstream with every sample drawn.
    reply = client.chat.completions.create(
        model="maj8", messages=messages, n=2, temperature=0.8, max_tokens=256
    )
    info = reply.model_extra["ttscale"]
    print("preset maj8 answers:", [choice.message.content for choice in reply.choices])
    print("  votes:", info["votes"], "samples_used:", info["samples_used"], "k:", info["k"])
    # usage counts every sample drawn, not just the two answers returned.
    print("  usage:", reply.usage and reply.usage.model_dump(exclude_none=True))

    # 2. Any upstream model, scaled per request through the body's `ttscale` field.
    reply = client.chat.completions.create(
        model=model,
        messages=messages,
        extra_body={"ttscale": {"strategy": "majority", "samples": 6, "budget": {"tokens": 20000}}},
        temperature=0.8,
        max_tokens=256,
    )
    print("extra_body answer:", reply.choices[0].message.content)
    print("  ttscale:", json.dumps(reply.model_extra["ttscale"], sort_keys=True))

    # 3. Streaming: the proxy sends keep-alives while it samples, then the answer as deltas,
    # then a usage chunk that also carries the ttscale metadata.
    stream = client.chat.completions.create(
        model="maj8",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.8,
        max_tokens=256,
    )
    text, last = "", None
    for chunk in stream:
        text += "".join(choice.delta.content or "" for choice in chunk.choices)
        last = chunk
    print("streamed answer:", text)
    if last is not None and last.usage is not None:
        print("  stream usage:", last.usage.model_dump(exclude_none=True))
        print("  stream votes:", (last.model_extra or {}).get("ttscale", {}).get("votes"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (default: embedded)")
    parser.add_argument("--model", default="default", help="the model name on that server")
    args = parser.parse_args()
    question = load_dataset("arithmetic", limit=1)[0].prompt or ""
    with contextlib.ExitStack() as stack:
        if args.base_url is None:
            local = stack.enter_context(LocalModelServer())
            args.base_url, args.model = local.base_url, local.model
        config = ProxyConfig(
            base_url=args.base_url,
            model=args.model,  # the upstream model presets use
            presets={"maj8": ScaleSettings(strategy="majority", samples=8)},
            # llama.cpp reports one choice's tokens for n > 1; logprobs make the counts exact.
            count_with_logprobs=True,
        )
        proxy = stack.enter_context(BackgroundProxy(config))
        # A plain OpenAI client: nothing ttscale-specific but the base URL.
        with OpenAI(base_url=proxy.base_url, api_key="not-needed") as client:
            demo(client, args.model, question)


if __name__ == "__main__":
    main()
