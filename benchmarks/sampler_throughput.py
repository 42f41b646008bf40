"""Sampler throughput against the loopback server, beside a bare client's floor in the same run.

By default 1,000 samples (10 prompts x 100) at 20 ms server latency with a concurrency bound of 64
and ``max_n`` 20, once with the server's ``n`` on and once with it off; ``--vs-peers`` takes
``benchmarks/vs_peers.py``'s geometry instead (1 prompt x 1,000, 50 ms, concurrency 32, ``max_n``
16). The server runs in its own process so that its work does not share our interpreter. Printed
per row, medians of ``--repeats`` runs: wall time, the bound ceil(requests / concurrency) x
latency, their ratio, HTTP requests per sample, samples per second, the client's CPU seconds, and
from the server's ``/proc/PID/schedstat`` (Linux): its CPU milliseconds per request and the
milliseconds it spent runnable but waiting for a CPU during the run (``waited ms``: the machine).

Targets: ratio <= 1.10 with ``n`` off; requests per sample <= 1 / max_n with ``n`` on.

The floors, run alternately with the sampler so that all of them see the same machine:

- ``bare``: the same requests (the sizes the sampler's plan sends, the same concurrency) through
  the sampler's own HTTP client (``LeanClient``) with nothing else: no sampler, just the JSON. The
  column ``/bare`` is the sampler's wall over it: what the sampler adds to its transport.
- ``bare, 1 each`` (``n`` on): as many requests, one choice each: the same waves with less work
  for the server.
- ``httpx2`` (``n`` off): the same single requests with bare ``httpx2`` (what ``openai`` is
  built on) and the same number of connections.

Why the ``n``-on ratio stays above 1 even for the bare client: the loopback server builds each
answer (every choice's text and token counts, the JSON) in its one Python thread before the
answer's latency starts, so the requests of a wave start their latency one server-CPU-per-request
apart, and the last answer of the last wave comes about (requests in that wave + 1) x the
server's CPU per request after the bound. On a machine shared with other work each of those
milliseconds takes longer (``waited ms``; the load average is printed too).

    python benchmarks/sampler_throughput.py [--repeats 5] [--vs-peers]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass

import httpx2

from ttscale import OpenAISampler, SamplingParams
from ttscale.samplers.transport import LeanClient
from ttscale.testing import loopback_process


@dataclass(frozen=True)
class Geometry:
    prompts: int
    samples: int  # per prompt
    latency: float
    concurrency: int
    max_n: int

    @property
    def total(self) -> int:
        return self.prompts * self.samples

    def sizes(self, n_on: bool) -> list[int]:
        """Choices per request of one prompt's draw, as the sampler plans them."""
        if not n_on:
            return [1] * self.samples
        full, rest = divmod(self.samples, self.max_n)
        return [self.max_n] * full + ([rest] if rest else [])


DEFAULT = Geometry(prompts=10, samples=100, latency=0.020, concurrency=64, max_n=20)
VS_PEERS = Geometry(prompts=1, samples=1000, latency=0.050, concurrency=32, max_n=16)


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float  # the client's
    server_cpu: float
    server_wait: float  # runnable, waiting for a CPU
    requests: int
    samples: int


def process_times(pid: int | None) -> tuple[float, float]:
    """Seconds ``pid``'s main thread has run so far, and waited runnable for a CPU
    (``/proc/PID/schedstat``); NaN where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as schedstat:
            ran, waited = schedstat.read().split()[:2]
        return int(ran) / 1e9, int(waited) / 1e9
    except (OSError, ValueError, TypeError):
        return math.nan, math.nan


def server_pid() -> int | None:
    """The loopback server this process started (its only ``ttscale.testing`` child), if /proc
    shows it."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in filter(str.isdigit, entries):
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                parent = int(stat.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"ttscale.testing" in command:
            return int(entry)
    return None


async def measured(pid: int | None, work: Callable[[], Awaitable[tuple[int, int]]]) -> Run:
    server, cpu, started = process_times(pid), time.process_time(), time.perf_counter()
    requests, samples = await work()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    ran, waited = process_times(pid)
    return Run(wall, cpu, ran - server[0], waited - server[1], requests, samples)


def body(prompt: str, seed: int, count: int) -> dict[str, object]:
    chosen = {"n": count} if count > 1 else {}
    return {
        "model": "loopback",
        "messages": [{"role": "user", "content": prompt}],
        "seed": seed,
        "temperature": 0.8,
        "max_tokens": 32,
        **chosen,
    }


async def run_sampler(base_url: str, shape: Geometry, n_on: bool, pid: int | None) -> Run:
    sampler = OpenAISampler(
        model="loopback",
        base_url=base_url,
        api_key="bench",
        concurrency=shape.concurrency,
        max_n=shape.max_n,
        n_mode="auto" if n_on else "never",
        params=SamplingParams(temperature=0.8, max_tokens=32, seed=0),
    )
    async with sampler:
        # Warm the connection pool (and learn the server's n) so the figure is the steady state.
        await asyncio.gather(*(sampler.sample("warm-up", 2) for _ in range(shape.concurrency)))

        async def work() -> tuple[int, int]:
            batches = await asyncio.gather(
                *(sampler.sample(f"prompt {i}", shape.samples) for i in range(shape.prompts))
            )
            requests = sum(batch.usage.requests for batch in batches)
            return requests, sum(len(batch.candidates) for batch in batches)

        return await measured(pid, work)


async def run_bare(
    base_url: str, shape: Geometry, n_on: bool, pid: int | None, *, one_choice: bool = False
) -> Run:
    """The sampler's requests through its HTTP client alone: the transport's floor. With
    ``one_choice`` each of them asks for one choice: as many requests, less for the server."""
    client = LeanClient(base_url, api_key="bench")
    semaphore = asyncio.Semaphore(shape.concurrency)

    async def one(prompt: str, seed: int, count: int) -> int:
        async with semaphore:
            answer = await client.post("/chat/completions", body(prompt, seed, count))
        return len(answer["choices"])

    await asyncio.gather(*(one("warm-up", i, 1) for i in range(shape.concurrency)))
    sizes = [1 if one_choice else size for size in shape.sizes(n_on)]

    async def work() -> tuple[int, int]:
        counts = await asyncio.gather(
            *(
                one(f"prompt {i}", j, size)
                for i in range(shape.prompts)
                for j, size in enumerate(sizes)
            )
        )
        return len(counts), sum(counts)

    try:
        return await measured(pid, work)
    finally:
        await client.aclose()


async def run_bare_one_choice(base_url: str, shape: Geometry, n_on: bool, pid: int | None) -> Run:
    return await run_bare(base_url, shape, n_on, pid, one_choice=True)


async def run_httpx2(base_url: str, shape: Geometry, n_on: bool, pid: int | None) -> Run:
    """The same single requests with bare httpx2: no openai client, no sampler."""
    limits = httpx2.Limits(
        max_connections=shape.concurrency, max_keepalive_connections=shape.concurrency
    )
    async with httpx2.AsyncClient(base_url=base_url, limits=limits) as client:
        semaphore = asyncio.Semaphore(shape.concurrency)

        async def one(prompt: str, seed: int) -> int:
            async with semaphore:
                response = await client.post(
                    "/chat/completions", content=json.dumps(body(prompt, seed, 1))
                )
                return len(response.json()["choices"])

        await asyncio.gather(*(one("warm-up", i) for i in range(shape.concurrency)))

        async def work() -> tuple[int, int]:
            counts = await asyncio.gather(
                *(one(f"prompt {i}", j) for i in range(shape.prompts) for j in range(shape.samples))
            )
            return len(counts), sum(counts)

        return await measured(pid, work)


Runner = Callable[[str, Geometry, bool, int | None], Coroutine[object, object, Run]]
BARE = "  bare"
ONE_CHOICE = "  bare, 1 each"


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda run: run.wall)[len(runs) // 2]


def print_row(label: str, runs: list[Run], shape: Geometry, bare: list[Run] | None) -> None:
    run = median_run(runs)
    if run.samples != shape.total and label != ONE_CHOICE:
        raise SystemExit(f"{label}: got {run.samples} samples, expected {shape.total}")
    bound = math.ceil(run.requests / shape.concurrency) * shape.latency
    server_ms = statistics.median(r.server_cpu for r in runs) / run.requests * 1000
    waited_ms = statistics.median(r.server_wait for r in runs) * 1000
    over_bare = f"{run.wall / median_run(bare).wall:>7.2f}" if bare else f"{'-':>7}"
    print(
        f"{label:<16}{run.wall:>8.3f}{bound:>9.3f}{run.wall / bound:>7.2f}{over_bare}"
        f"{run.requests / run.samples:>12.3f}{run.samples / run.wall:>11.0f}"
        f"{run.cpu:>14.3f}{server_ms:>15.3f}{waited_ms:>13.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per row; the median is shown")
    parser.add_argument(
        "--vs-peers", action="store_true", help="vs_peers.py's geometry: 1 x 1,000 at 50 ms, 32"
    )
    args = parser.parse_args()
    shape = VS_PEERS if args.vs_peers else DEFAULT
    print(
        f"{shape.prompts} prompt(s) x {shape.samples} samples, latency "
        f"{shape.latency * 1000:.0f} ms, concurrency {shape.concurrency}, max_n {shape.max_n}, "
        f"median of {args.repeats} runs (sampler and floors alternating)"
    )
    print(
        f"{'row':<16}{'wall s':>8}{'bound s':>9}{'ratio':>7}{'/bare':>7}{'req/sample':>12}"
        f"{'samples/s':>11}{'client cpu s':>14}{'server ms/req':>15}{'waited ms':>13}"
    )
    modes: list[tuple[bool, str, list[tuple[str, Runner]]]] = [
        (False, "reject", [("n off", run_sampler), (BARE, run_bare), ("  httpx2", run_httpx2)]),
        (True, "yes", [("n on", run_sampler), (BARE, run_bare), (ONE_CHOICE, run_bare_one_choice)]),
    ]
    loads = []
    for n_on, support, runners in modes:
        server = ["--latency", str(shape.latency), "--n-support", support]
        results: dict[str, list[Run]] = {label: [] for label, _ in runners}
        with loopback_process(server) as base_url:
            pid = server_pid()
            for _ in range(args.repeats):
                for label, runner in runners:
                    results[label].append(asyncio.run(runner(base_url, shape, n_on, pid)))
                loads.append(os.getloadavg()[0])
        for label, runs in results.items():
            print_row(label, runs, shape, results[BARE] if label in ("n on", "n off") else None)
    print(
        f"targets: ratio <= 1.10 with n off; req/sample <= {1 / shape.max_n:.3f} with n on; "
        f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
