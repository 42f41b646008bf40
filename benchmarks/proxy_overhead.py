"""What the proxy adds: latency on pass-through, and throughput with 64 concurrent clients.

The loopback server and ``ttscale serve`` each run in their own process (as in production, the
proxy does not share an interpreter with its clients). In the same run:

1. Latency, one request at a time with a plain ``httpx2`` client (so the client's own cost is the
   same on both paths and small): ``--requests`` pass-through chat completions sent directly to the
   loopback server and the same through the proxy, interleaved so that drift hits both alike.
   Printed: median and p99 of each, and the difference of medians (the added latency; target
   <= 2 ms) and its ratio to the direct median.
2. Throughput: 64 concurrent clients x 20 requests, directly and through the proxy, both for
   pass-through and for scaled requests (majority over 4 samples: the proxy then sends 1 request
   with n=4 upstream). Printed: requests per second and the proxy/direct ratio.

    python benchmarks/proxy_overhead.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2

from ttscale.testing import loopback_process

BODY = {
    "model": "loopback",
    "messages": [{"role": "user", "content": "What is 6 * 7?"}],
    "max_tokens": 16,
}
CLIENTS = 64
PER_CLIENT = 20


@contextmanager
def proxy(upstream: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "ttscale.cli", "serve", "--base-url", upstream,
        "--model", "loopback", "--port", str(port), "--preset", "maj4=strategy=majority,samples=4",
        "--max-concurrent-requests", "1024",
    ]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, "OPENAI_API_KEY": "x"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            time.sleep(0.05)
        yield base + "/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(direct: str, proxied: str, requests: int) -> None:
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    with httpx2.Client(timeout=30) as client:
        for url in (direct, proxied):  # warm both connections and code paths
            for _ in range(50):
                client.post(url + "/chat/completions", json=BODY).raise_for_status()
        for _ in range(requests):
            for name, url in (("direct", direct), ("proxy", proxied)):
                started = time.perf_counter()
                client.post(url + "/chat/completions", json=BODY).raise_for_status()
                times[name].append(time.perf_counter() - started)
    print(f"latency, pass-through, {requests} sequential requests each (ms)")
    print(f"{'path':8} {'median':>8} {'p99':>8}")
    for name, values in times.items():
        print(
            f"{name:8} {statistics.median(values) * 1e3:8.3f} {percentile(values, 0.99) * 1e3:8.3f}"
        )
    added = statistics.median(times["proxy"]) - statistics.median(times["direct"])
    added_p99 = percentile(times["proxy"], 0.99) - percentile(times["direct"], 0.99)
    ratio = statistics.median(times["proxy"]) / statistics.median(times["direct"])
    print(
        f"added by the proxy: median {added * 1e3:.3f} ms (target <= 2 ms: "
        f"{'met' if added <= 0.002 else 'missed'}), p99 {added_p99 * 1e3:.3f} ms; "
        f"proxy/direct median ratio {ratio:.2f}"
    )


async def throughput(url: str, model: str) -> float:
    limits = httpx2.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as client:
        body = {**BODY, "model": model}

        async def one_client() -> None:
            for _ in range(PER_CLIENT):
                response = await client.post(url + "/chat/completions", json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
        return CLIENTS * PER_CLIENT / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with loopback_process() as direct, proxy(direct) as proxied:
        latency(direct, proxied, args.requests)
        print(f"\nthroughput, {CLIENTS} concurrent clients x {PER_CLIENT} requests (requests/s)")
        base = asyncio.run(throughput(direct, "loopback"))
        passing = asyncio.run(throughput(proxied, "loopback"))
        scaled = asyncio.run(throughput(proxied, "maj4"))
        print(f"direct to the loopback server   {base:8.0f}")
        print(f"through the proxy, pass-through {passing:8.0f}  ratio {passing / base:.2f}")
        print(f"through the proxy, majority@4   {scaled:8.0f}  ratio {scaled / base:.2f}")


if __name__ == "__main__":
    main()
