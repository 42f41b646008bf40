"""ttscale against its peers on the same loopback server, row by row, in one process tree.

The rows of issue 22's table: 1,000 samples with the server's ``n`` on and off (wall time, and
client CPU with it off), 64 samples, majority@16 over 20 prompts, ``import`` time, and the proxy's
start-up, idle memory and pass-through latency. Two loopback servers (``python -m
ttscale.testing``, 50 ms latency; one honours ``n``, one rejects it) serve every system; the
client concurrency is 32 and ``max_n`` 16. Each system runs in a worker process of its own,
kept for the whole run, and the systems take turns: every round runs a row on ttscale, then on
each peer, and the median of ``--rounds`` rounds (>= 5) is printed with each peer's ratio to
ttscale (peer / ttscale: above 1 is ttscale ahead for times, below 1 for throughputs). Without
a peer the script says so and prints ttscale's rows against the bounds.

Peers: its_hub 1.2 (``OpenAICompatibleLanguageModel`` and ``LMOrchestrator(32)``, the path its
algorithms use). Its rows run in a worker of ``--peer-python`` (default: this interpreter when
it can import ``its_hub``), so its_hub lives in an environment of its own; this script installs
nothing. Set one up once with:

    python -m venv /tmp/itshub/venv && /tmp/itshub/venv/bin/pip install its-hub==1.2.0

then run:

    python benchmarks/vs_peers.py --peer-python /tmp/itshub/venv/bin/python [--rounds 5]

Not covered: optillm (not installed here).

How the proxy rows are measured, the same way for every server: start-up is the time from
spawning its process to the first HTTP answer to a ``GET`` (``/health``; its_hub's server has
none, so ``/v1/models``), with the CPU seconds the process had used by then; idle RSS is
``VmRSS`` in ``/proc/PID/status`` one second later. Each server is started once before the
measured rounds, with bytecode writing on, so every system runs from its compiled modules as an
installed package does (a checkout under ``PYTHONDONTWRITEBYTECODE`` would otherwise compile its
own modules at every start), and the servers take turns within each round. Beside ``ttscale
serve`` run the floors of its stack: a bare Starlette app and a bare FastAPI app with one route,
each on uvicorn with the proxy's settings, in this interpreter; and its_hub's own server
(``its-iaas``) when the peer's environment has fastapi and uvicorn, which ``its-hub`` does not
install (``/tmp/itshub/venv/bin/pip install fastapi uvicorn``). ``import`` time is a whole
``python -c "import X"`` process less a bare ``python -c pass``.

    python benchmarks/vs_peers.py --only startup [--rounds 7]

runs the start-up rows alone. The proxies' request rows (``--only proxy`` alone) put ``ttscale
serve`` and its_hub's server in front of the ``n``-on loopback server: the latency a one-sample
request gains through each (every request less the median of the same requests sent directly in
that round; median and p99 over all rounds, 100 requests a round; its_hub at ``X-Its-Budget:
1``; a ``(direct)`` row gives the upstream's own spread about its median, the floor of any p99),
and majority@16 requests answered a second with 16 clients at once (ttscale: ``{"ttscale":
{"strategy": "majority", "samples": 16}}``; its_hub: configured by ``POST /configure`` for
self-consistency with budget 16).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

LATENCY = 0.05
CONCURRENCY = 32
MAX_N = 16
ROWS = {  # row -> (server n support, samples, prompts, bound in seconds or None)
    "n_on_1000": ("yes", 1000, 1, 0.10),
    "n_off_1000": ("reject", 1000, 1, 1.60),
    "n_off_64": ("reject", 64, 1, 0.10),
    "majority16_x20": ("reject", 16, 20, 0.50),
}
LABELS = {
    "n_on_1000": "1,000 samples, n on: wall s",
    "n_off_1000": "1,000 samples, n off: wall s",
    "n_off_1000_cpu": "1,000 samples, n off: client CPU s",
    "n_off_64": "64 samples, n off: wall s",
    "majority16_x20": "majority@16 x 20 prompts, n off: wall s",
    "import": "import ttscale | its_hub, less bare python s",
}
CPU_BOUND_PER_REQUEST = 0.20e-3
PROXY_BOUNDS = {"startup_s": 0.4, "idle_rss_mib": 60.0}


# -- workers: one process per system, one JSON line per task ---------------------------------


async def ttscale_task(row: str, base_url: str) -> dict[str, Any]:
    from ttscale import OpenAISampler, Problem, SamplingParams
    from ttscale.strategies.majority import Majority

    _, samples, prompts, _ = ROWS[row]
    sampler = OpenAISampler(
        model="loopback",
        base_url=base_url,
        api_key="bench",
        concurrency=CONCURRENCY,
        max_n=MAX_N,
        params=SamplingParams(temperature=0.8, max_tokens=32, seed=0),
    )
    async with sampler:
        # Warm the pool (and learn the server's n) so the figure is the steady state.
        await asyncio.gather(*(sampler.sample("warm-up", 2) for _ in range(CONCURRENCY)))
        cpu, started = time.process_time(), time.perf_counter()
        if row == "majority16_x20":
            strategy = Majority(samples=samples)
            problems = [Problem(id=str(i), prompt=f"prompt {i}") for i in range(prompts)]
            results = await asyncio.gather(*(strategy.run(p, sampler) for p in problems))
            requests = sum(result.usage.requests for result in results)
        else:
            batch = await sampler.sample("prompt", samples)
            requests = batch.usage.requests
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"wall": wall, "cpu": cpu, "requests": requests}


async def its_hub_task(row: str, base_url: str) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore")
    from its_hub import SelfConsistency  # type: ignore[import-not-found]
    from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel  # type: ignore[import-not-found]
    from its_hub.core.orchestrator import LMOrchestrator  # type: ignore[import-not-found]

    _, samples, prompts, _ = ROWS[row]
    lm = OpenAICompatibleLanguageModel(
        endpoint=base_url, api_key="bench", model_name="loopback", temperature=0.8, max_tokens=32
    )
    orchestrator = LMOrchestrator(max_concurrency=CONCURRENCY)
    warm = [[{"role": "user", "content": "warm-up"}]] * CONCURRENCY
    await orchestrator.agenerate(lm, warm)
    cpu, started = time.process_time(), time.perf_counter()
    if row == "majority16_x20":
        algorithm = SelfConsistency(orchestrator=orchestrator)
        await asyncio.gather(
            *(algorithm.ainfer(lm, f"prompt {i}", samples) for i in range(prompts))
        )
        requests = samples * prompts
    else:
        await orchestrator.agenerate(lm, [[{"role": "user", "content": "prompt"}]] * samples)
        requests = samples
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    await lm.close()
    return {"wall": wall, "cpu": cpu, "requests": requests}


def worker(system: str) -> None:
    task = {"ttscale": ttscale_task, "its_hub": its_hub_task}[system]
    for line in sys.stdin:
        request = json.loads(line)
        result = asyncio.run(task(request["row"], request["base_url"]))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


class Worker:
    def __init__(self, system: str, python: str) -> None:
        self.system = system
        self.process = subprocess.Popen(
            [python, os.path.abspath(__file__), "--worker", system],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, row: str, base_url: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"row": row, "base_url": base_url}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.system} worker died")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


# -- servers ---------------------------------------------------------------------------------


@contextmanager
def loopback(n_support: str) -> Iterator[str]:
    command = [sys.executable, "-m", "ttscale.testing", "--latency", str(LATENCY)]
    process = subprocess.Popen(
        [*command, "--n-support", n_support], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"loopback server did not start: {line!r}")
        yield line.split(" ", 1)[1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(port: int, path: str) -> int:
    """The status of ``GET path`` on 127.0.0.1:port, by hand (nothing imported for it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = connection.recv(64).decode("latin-1")
    return int(head.split(" ", 2)[1])


# A bare app on uvicorn with the proxy's settings: the floor of ttscale serve's stack (``{app}``
# is Starlette or FastAPI; argv: the port).
BARE_APP = """
import sys, uvicorn
from {module} import {app}
from starlette.responses import JSONResponse
from starlette.routing import Route
async def health(request):
    return JSONResponse({{"status": "ok"}})
app = {app}(routes=[Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, ws="none")
"""


# -- the proxies: pass-through latency and majority@16 throughput ---------------------------

PROXY_REQUESTS = 100  # sequential pass-through requests per system and round (p99 over 5 rounds:
# the 5th worst of 500; with 40 it was the 2nd worst of 200, one stray request)
PROXY_CLIENTS = 16  # concurrent clients of the majority@16 row
PROXY_PER_CLIENT = 4  # majority@16 requests each client sends per round
ITS_HUB_CONFIG = {
    "endpoint": "{upstream}",
    "model": "loopback",
    "alg": "self-consistency",
    "regex_patterns": [r"The answer is (\S+)"],
    "budget": 16,
    "api_key": "bench",
}


@contextmanager
def proxy(command: list[str], path: str, configure: dict[str, Any] | None) -> Iterator[int]:
    """A proxy server started from ``command`` (``{port}`` for the port), answering ``GET path``,
    configured by ``POST /configure`` with ``configure`` if given; yields its port."""
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in command]
    env = {**os.environ, "OPENAI_API_KEY": "x"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.perf_counter()
        while True:
            try:
                http_get(port, path)
                break
            except (OSError, ValueError, IndexError):
                if process.poll() is not None or time.perf_counter() - started > 60:
                    raise RuntimeError(f"{argv[:4]} did not start") from None
                time.sleep(0.05)
        if configure is not None:
            asyncio.run(_post(port, "/configure", configure))
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _post(port: int, path: str, body: dict[str, Any]) -> None:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"http://127.0.0.1:{port}", api_key="bench") as client:
        await client.post(path, body=body, cast_to=object)


async def _latencies(base_url: str, extra: dict[str, Any]) -> list[float]:
    """Seconds of ``PROXY_REQUESTS`` one-sample requests sent one after another."""
    from openai import AsyncOpenAI

    seconds = []
    async with AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
        for index in range(PROXY_REQUESTS + 2):
            started = time.perf_counter()
            await client.chat.completions.create(
                model="loopback", messages=[{"role": "user", "content": f"p {index}"}],
                max_tokens=32, **extra,
            )  # fmt: skip
            if index >= 2:  # the first two open the connections
                seconds.append(time.perf_counter() - started)
    return seconds


async def _throughput(base_url: str, extra: dict[str, Any]) -> float:
    """Majority@16 requests answered a second, ``PROXY_CLIENTS`` clients at once."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:

        async def one_client(number: int) -> None:
            for index in range(PROXY_PER_CLIENT):
                await client.chat.completions.create(
                    model="loopback",
                    messages=[{"role": "user", "content": f"q {number} {index}"}],
                    max_tokens=32, temperature=0.8, **extra,
                )  # fmt: skip

        await one_client(-1)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(one_client(n) for n in range(PROXY_CLIENTS)))
        return PROXY_CLIENTS * PROXY_PER_CLIENT / (time.perf_counter() - started)


def proxy_rows(upstream: str, peer: str | None, rounds: int) -> None:
    """Pass-through latency added to the upstream's (median and p99 over every round) and
    majority@16 throughput of ``ttscale serve`` and, with its server runnable, its_hub's."""
    ttscale_serve = [
        sys.executable, "-m", "ttscale.cli", "serve", "--base-url", upstream,
        "--model", "loopback", "--port", "{port}",
    ]  # fmt: skip
    systems: dict[str, tuple[list[str], str, dict[str, Any] | None, dict[str, Any], dict[str, Any]]]
    systems = {
        "ttscale": (
            ttscale_serve, "/health", None, {},
            {"extra_body": {"ttscale": {"strategy": "majority", "samples": 16}}},
        ),
    }  # fmt: skip
    if peer is not None and importable(peer, "fastapi") and importable(peer, "uvicorn"):
        its_hub = "from its_hub.integration.iaas.app_server import main; main()"
        configure = {**ITS_HUB_CONFIG, "endpoint": upstream}
        systems["its_hub"] = (
            [peer, "-c", its_hub, "--port", "{port}", "--log-level", "WARNING"],
            "/v1/models", configure, {"extra_headers": {"X-Its-Budget": "1"}}, {},
        )  # fmt: skip
    direct: list[float] = []
    spread: list[float] = []  # direct requests less their round's median: the upstream's own jitter
    added: dict[str, list[float]] = {name: [] for name in systems}
    rates: dict[str, list[float]] = {name: [] for name in systems}
    with contextlib.ExitStack() as stack:
        ports = {
            name: stack.enter_context(proxy(command, path, configure))
            for name, (command, path, configure, _, _) in systems.items()
        }
        for _ in range(rounds):
            plain_latencies = asyncio.run(_latencies(upstream, {}))
            base = statistics.median(plain_latencies)
            direct.append(base)
            spread.extend(s - base for s in plain_latencies)
            for name, (_, _, _, plain, scaled) in systems.items():
                url = f"http://127.0.0.1:{ports[name]}/v1"
                added[name].extend(s - base for s in asyncio.run(_latencies(url, plain)))
                rates[name].append(asyncio.run(_throughput(url, scaled)))
    print(
        f"\nproxies on the n-on upstream (direct median {statistics.median(direct) * 1000:.1f} ms)"
    )
    print(f"{'proxy':<12}{'added median ms':>16}{'added p99 ms':>14}{'majority@16 req/s':>19}")
    for name, seconds in {"(direct)": spread, **added}.items():
        values = sorted(seconds)
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        rate = f"{statistics.median(rates[name]):>19.1f}" if name in rates else f"{'-':>19}"
        print(f"{name:<12}{statistics.median(values) * 1000:>16.2f}{p99 * 1000:>14.2f}{rate}")
    print("(direct): the upstream's own requests less their round's median, the jitter floor")


def startup_commands(upstream: str, peer: str | None) -> dict[str, tuple[list[str], str]]:
    """Each server to start: its command (``{port}`` for the port) and the path first asked."""
    ttscale = [
        sys.executable, "-m", "ttscale.cli", "serve", "--base-url", upstream,
        "--model", "loopback", "--port", "{port}",
    ]  # fmt: skip
    starlette = BARE_APP.format(module="starlette.applications", app="Starlette")
    fastapi = BARE_APP.format(module="fastapi", app="FastAPI")
    servers = {
        "ttscale serve": (ttscale, "/health"),
        "bare Starlette app": ([sys.executable, "-c", starlette, "{port}"], "/health"),
    }
    if importable(sys.executable, "fastapi"):
        servers["bare FastAPI app"] = ([sys.executable, "-c", fastapi, "{port}"], "/health")
    if peer is not None and importable(peer, "fastapi") and importable(peer, "uvicorn"):
        its_hub = "from its_hub.integration.iaas.app_server import main; main()"
        servers["its_hub (its-iaas)"] = (
            [peer, "-c", its_hub, "--port", "{port}", "--log-level", "WARNING"],
            "/v1/models",
        )
    return servers


def importable(python: str, module: str) -> bool:
    command = [python, "-c", f"import {module}"]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def server_startup(command: list[str], path: str) -> StartUp:
    """Seconds from spawning ``command`` to its first answer to ``GET path``; the CPU seconds
    it had used by then; its idle RSS in MiB one second later."""
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in command]
    env = {**os.environ, "OPENAI_API_KEY": "x"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: modules run from their bytecode
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                http_get(port, path)
                break
            except (OSError, ValueError, IndexError):
                pass
            if process.poll() is not None or time.perf_counter() - started > 60:
                raise RuntimeError(f"{argv[:4]} did not start")
            time.sleep(0.005)
        startup = time.perf_counter() - started
        with open(f"/proc/{process.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
        startup_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        time.sleep(1.0)
        with open(f"/proc/{process.pid}/status", encoding="ascii") as status:
            rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    finally:
        process.terminate()
        process.wait(timeout=10)
    return StartUp(startup, startup_cpu, rss_kib / 1024)


@dataclass(frozen=True)
class StartUp:
    seconds: float
    cpu: float
    rss_mib: float


def startup_rows(upstream: str, peer: str | None, rounds: int) -> None:
    """The servers' start-up, CPU by then and idle RSS: medians of ``rounds`` alternating runs
    after one warm-up run each (which also writes their bytecode)."""
    servers = startup_commands(upstream, peer)
    for command, path in servers.values():
        server_startup(command, path)
    runs: dict[str, list[StartUp]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, (command, path) in servers.items():
            runs[name].append(server_startup(command, path))
    load = os.getloadavg()[0]
    print(f"\nproxy start-up, median of {rounds} alternating runs (load average {load:.1f})")
    print(f"{'server':<24}{'start-up s':>12}{'CPU s':>8}{'idle RSS MiB':>14}{'vs ttscale':>12}")
    ours = statistics.median(run.seconds for run in runs["ttscale serve"])
    for name, measured in runs.items():
        seconds = statistics.median(run.seconds for run in measured)
        cpu = statistics.median(run.cpu for run in measured)
        rss = statistics.median(run.rss_mib for run in measured)
        print(f"{name:<24}{seconds:>12.3f}{cpu:>8.2f}{rss:>14.1f}{seconds / ours:>11.2f}x")
    print(
        f"bounds: start-up {PROXY_BOUNDS['startup_s']} s, idle RSS "
        f"{PROXY_BOUNDS['idle_rss_mib']:.0f} MiB; ttscale's start-up is "
        f"{ours / PROXY_BOUNDS['startup_s']:.2f}x the bound"
    )


def command_time(command: list[str]) -> tuple[float, float]:
    """Seconds of a whole process from spawn to exit, and the CPU seconds it used (which a busy
    machine inflates less than the wall time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def import_time(python: str, module: str) -> tuple[float, float]:
    """``import module`` less a bare interpreter: wall and CPU seconds."""
    loaded = command_time([python, "-c", f"import {module}"])
    bare = command_time([python, "-c", "pass"])
    return loaded[0] - bare[0], loaded[1] - bare[1]


# -- the table -------------------------------------------------------------------------------


def peer_python(given: str | None) -> str | None:
    candidate = given or os.environ.get("TTSCALE_PEER_PYTHON") or sys.executable
    if not shutil.which(candidate) and not os.path.exists(candidate):
        return None
    found = subprocess.run(
        [candidate, "-c", "import its_hub"], capture_output=True, check=False
    ).returncode
    return candidate if found == 0 else None


def print_row(label: str, ours: float, peer: float | None, bound: float | None = None) -> None:
    text = f"{label:<44}{ours:>10.3f}"
    text += f"{peer:>10.3f}{peer / ours:>8.2f}x" if peer is not None else f"{'-':>10}{'-':>9}"
    if bound is not None:
        text += f"   bound {bound:.3f}: {ours / bound:.2f}x"
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (>= 5)")
    parser.add_argument("--peer-python", help="an interpreter that can import its_hub")
    parser.add_argument(
        "--only",
        choices=["all", "startup", "proxy"],
        default="all",
        help="startup: the proxies' start-up rows alone; proxy: their request rows alone",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    rounds = max(5, args.rounds)
    peer = peer_python(args.peer_python)
    if peer is None:
        print("its_hub is not importable (see --peer-python): ttscale's rows against the bounds")
    else:
        print(f"peer: its_hub in {peer}")
    print(
        f"loopback latency {LATENCY * 1000:.0f} ms, concurrency {CONCURRENCY}, max_n {MAX_N}, "
        f"median of {rounds} alternating rounds; ratio = its_hub / ttscale"
    )
    if args.only == "startup":
        with loopback("reject") as upstream:
            startup_rows(upstream, peer, rounds)
        return
    if args.only == "proxy":
        with loopback("yes") as upstream:
            proxy_rows(upstream, peer, rounds)
        return
    workers = {"ttscale": Worker("ttscale", sys.executable)}
    if peer is not None:
        workers["its_hub"] = Worker("its_hub", peer)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        with loopback("yes") as n_on, loopback("reject") as n_off:
            urls = {"yes": n_on, "reject": n_off}
            for _ in range(rounds):
                for row, (support, *_rest) in ROWS.items():
                    for system, running in workers.items():
                        outcome = running.run(row, urls[support])
                        results.setdefault((row, system), []).append(outcome)
            startup_rows(n_off, peer, rounds)
            proxy_rows(n_on, peer, rounds)
    finally:
        for running in workers.values():
            running.close()

    def median(row: str, system: str, key: str = "wall") -> float | None:
        runs = results.get((row, system))
        return statistics.median(run[key] for run in runs) if runs else None

    print(f"\n{'row':<44}{'ttscale':>10}{'its_hub':>10}{'ratio':>9}")
    for row, (_, _, _, bound) in ROWS.items():
        ours = median(row, "ttscale")
        assert ours is not None
        print_row(LABELS[row], ours, median(row, "its_hub"), bound)
        if row == "n_off_1000":
            cpu = median(row, "ttscale", "cpu")
            assert cpu is not None
            print_row(
                LABELS["n_off_1000_cpu"],
                cpu,
                median(row, "its_hub", "cpu"),
                CPU_BOUND_PER_REQUEST * 1000,
            )
    requests = results[("n_on_1000", "ttscale")][0]["requests"]
    print(f"(n on: ttscale sent {requests} requests; its_hub sends one per sample)")
    imports = [import_time(sys.executable, "ttscale") for _ in range(rounds)]
    peer_imports = [import_time(peer, "its_hub") for _ in range(rounds)] if peer else []
    for index, what in ((0, "wall"), (1, "CPU")):
        print_row(
            LABELS["import"].replace(" s", f" {what} s"),
            statistics.median(run[index] for run in imports),
            statistics.median(run[index] for run in peer_imports) if peer_imports else None,
            0.15,
        )
    for words in (["--help"], ["plugins"]):
        command = [sys.executable, "-m", "ttscale.cli", *words]
        runs = [command_time(command) for _ in range(rounds)]
        for index, what in ((0, "wall"), (1, "CPU")):
            took = statistics.median(run[index] for run in runs)
            label = f"ttscale {' '.join(words)} (whole process) {what} s"
            print(f"{label:<44}{took:>10.3f}{'-':>10}{'-':>9}   bound 0.250: {took / 0.25:.2f}x")


if __name__ == "__main__":
    main()
