"""What exact token counts cost on the embedded model (llama.cpp), and what they fix.

llama-server reports one choice's completion tokens for a request of several (issue 18, item 11).
Three ways to draw N samples of one prompt, each measured as the median of --rounds, in turns:

- ``n``: one request of N choices, no logprobs: the server's usage (what was counted before);
- ``n+logprobs``: the same with ``logprobs: true``, which the sampler now asks to count each
  choice (ttscale.samplers.usage);
- ``singles``: N concurrent requests of one choice (exact usage, no ``n``).

Every choice runs to --max-tokens (a prompt asking for a long text, the end token banned), so each
way generates the same number of tokens. Prints the completion tokens each way reports against
the server's own ``/tokenize``, each way's median seconds, and the median over rounds of its
ratio to ``n`` in the same round (the ways alternate, so a busy machine weighs on all three).

    .venv/bin/python benchmarks/usage_counting.py --samples 8 --max-tokens 32 --rounds 3

Measured (2 cores, under a load average of about 12: a sample-bank generator's llama-server and
test suites sharing them, so wall times are inflated and noisy): every round, ``n`` reported 32
completion tokens for 8 choices holding 256 by ``/tokenize``; ``n+logprobs`` counted 256 from the
logprobs, ``singles`` reported 256. Seconds by round, n / n+logprobs / singles: 241.1 / 222.6 /
179.8, 148.1 / 206.6 / 208.9, 156.7 / 149.5 / 166.1; median ratios to ``n``: n+logprobs 0.95,
singles 1.06 (on a quiet machine the issue measured 13.1 s for n against 15.5 s for singles).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ttscale.local_model import LocalModelConfig, LocalModelServer

PROMPT = "Write a long story about a lighthouse keeper."


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=1200) as response:
        return json.loads(response.read())


def body(model: str, n: int, max_tokens: int, seed: int, logprobs: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "n": n,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "logit_bias": [[151645, False], [151643, False]],  # Qwen's end tokens: run to the limit
    }
    if logprobs:
        payload["logprobs"] = True
    return payload


def way(server: LocalModelServer, name: str, samples: int, max_tokens: int, seed: int) -> Any:
    """One draw of ``samples``: (seconds, reported completion tokens, texts)."""
    url = f"{server.base_url}/chat/completions"
    started = time.perf_counter()
    if name == "singles":
        with ThreadPoolExecutor(samples) as pool:
            answers = list(
                pool.map(
                    lambda i: post(url, body(server.model, 1, max_tokens, seed + i, False)),
                    range(samples),
                )
            )
    else:
        answers = [post(url, body(server.model, samples, max_tokens, seed, name != "n"))]
    seconds = time.perf_counter() - started
    reported = sum(int(a["usage"]["completion_tokens"]) for a in answers)
    counted = sum(
        len((c.get("logprobs") or {}).get("content") or []) for a in answers for c in a["choices"]
    )
    texts = [c["message"]["content"] for a in answers for c in a["choices"]]
    return seconds, reported, counted, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ways = ("n", "n+logprobs", "singles")
    times: dict[str, list[float]] = {name: [] for name in ways}
    with LocalModelServer(LocalModelConfig(parallel=args.samples, context=4096)) as server:
        tokenize = f"http://127.0.0.1:{server.port}/tokenize"
        way(server, "n", 2, 4, 0)  # warm-up: the prompt's cache, the first allocation
        for round_number in range(args.rounds):
            for name in ways:
                seconds, reported, counted, texts = way(
                    server, name, args.samples, args.max_tokens, 100 * round_number
                )
                times[name].append(seconds)
                truth = sum(len(post(tokenize, {"content": t})["tokens"]) for t in texts)
                print(
                    f"round {round_number} {name:>10}: {seconds:6.2f} s, server reported "
                    f"{reported} completion tokens, logprobs hold {counted}, /tokenize of the "
                    f"texts {truth}"
                )
    for name in ways:
        ratios = [mine / base for mine, base in zip(times[name], times["n"], strict=True)]
        print(
            f"{name:>10}: median {statistics.median(times[name]):6.2f} s; "
            f"median ratio to n in the same round {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
