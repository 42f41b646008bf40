"""Sampler throughput against the loopback server.

1,000 samples (10 prompts x 100) at 20 ms server latency with a concurrency bound of 64, once with
the server's ``n`` on and once with it off. The server runs in its own process so that its work does
not share our interpreter. Printed per mode: wall time, the bound ceil(requests / concurrency) x
latency, their ratio, HTTP requests per sample and samples per second.

Targets: ratio <= 1.10 with ``n`` off; requests per sample <= 1 / max_n with ``n`` on.

A third row sends the same 1,000 requests with the bare HTTP client that ``openai`` is built on
(``httpx2``, the same number of connections) and no sampler: the transport's own floor on this
machine, so the sampler's share of the wall time can be read off. Client CPU seconds are shown too.

    python benchmarks/sampler_throughput.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time

import httpx2

from ttscale import OpenAISampler, SamplingParams, Usage
from ttscale.testing import loopback_process

PROMPTS = 10
SAMPLES_PER_PROMPT = 100
LATENCY = 0.020
CONCURRENCY = 64
MAX_N = 20  # divides 100, so every request can carry a full max_n


async def transport_floor(base_url: str) -> tuple[float, float, Usage, int]:
    """The same requests with bare httpx2: no openai client, no sampler."""
    limits = httpx2.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx2.AsyncClient(base_url=base_url, limits=limits) as client:
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(prompt: str, seed: int) -> dict[str, object]:
            body = {
                "model": "loopback",
                "messages": [{"role": "user", "content": prompt}],
                "seed": seed,
                "temperature": 0.8,
                "max_tokens": 32,
            }
            async with semaphore:
                response = await client.post("/chat/completions", content=json.dumps(body))
                return response.json()  # type: ignore[no-any-return]

        await asyncio.gather(*(one("warm-up", i) for i in range(CONCURRENCY)))
        cpu, started = time.process_time(), time.perf_counter()
        answers = await asyncio.gather(
            *(one(f"prompt {i}", j) for i in range(PROMPTS) for j in range(SAMPLES_PER_PROMPT))
        )
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    usage = Usage(requests=len(answers), samples=len(answers))
    return wall, cpu, usage, len(answers)


async def run_once(base_url: str, n_mode: str) -> tuple[float, float, Usage, int]:
    sampler = OpenAISampler(
        model="loopback",
        base_url=base_url,
        api_key="bench",
        concurrency=CONCURRENCY,
        max_n=MAX_N,
        n_mode=n_mode,  # type: ignore[arg-type]
        params=SamplingParams(temperature=0.8, max_tokens=32, seed=0),
    )
    async with sampler:
        # Warm the connection pool so the figure is the steady state, not TCP handshakes.
        await asyncio.gather(*(sampler.sample("warm-up", 1) for _ in range(CONCURRENCY)))
        cpu, started = time.process_time(), time.perf_counter()
        batches = await asyncio.gather(
            *(sampler.sample(f"prompt {i}", SAMPLES_PER_PROMPT) for i in range(PROMPTS))
        )
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    usage = Usage.total([batch.usage for batch in batches])
    samples = sum(len(batch.candidates) for batch in batches)
    return wall, cpu, usage, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; the median is shown")
    args = parser.parse_args()
    print(
        f"{PROMPTS} prompts x {SAMPLES_PER_PROMPT} samples, latency {LATENCY * 1000:.0f} ms, "
        f"concurrency {CONCURRENCY}, max_n {MAX_N}, median of {args.repeats} runs"
    )
    print(
        f"{'mode':<14}{'wall s':>8}{'bound s':>9}{'ratio':>7}{'req/sample':>12}"
        f"{'samples/s':>11}{'client cpu s':>14}"
    )
    modes = (
        ("n off", "reject", "never"),
        ("n on", "yes", "auto"),
        ("httpx2 floor", "reject", None),
    )
    for label, n_support, n_mode in modes:
        server = ["--latency", str(LATENCY), "--n-support", n_support]
        with loopback_process(server) as base_url:
            runs = [
                asyncio.run(run_once(base_url, n_mode) if n_mode else transport_floor(base_url))
                for _ in range(args.repeats)
            ]
        runs.sort(key=lambda run: run[0])
        wall, cpu, usage, samples = runs[len(runs) // 2]
        if samples != PROMPTS * SAMPLES_PER_PROMPT:
            raise SystemExit(f"{label}: got {samples} samples, expected 1000")
        bound = math.ceil(usage.requests / CONCURRENCY) * LATENCY
        print(
            f"{label:<14}{wall:>8.3f}{bound:>9.3f}{wall / bound:>7.2f}"
            f"{usage.requests / samples:>12.3f}{samples / wall:>11.0f}{cpu:>14.3f}"
        )
    print(f"targets: ratio <= 1.10 with n off; req/sample <= {1 / MAX_N:.3f} with n on")


if __name__ == "__main__":
    main()
