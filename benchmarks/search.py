"""Step-level search side by side: ttscale against its_hub on the loopback step environment.

One loopback server (``ttscale.testing.step_env``: scripted reasoning trees, ``latency`` seconds
per request like a model server's round trip) serves both libraries, and its ``/v1/pooling``
endpoint is the scripted PRM both are pointed at (ttscale through ``ServedStepScorer``, its_hub
through a 15-line ``AbstractProcessRewardModel`` posting to the same endpoint, ``last``
aggregation on both sides). For each N, beam search (N paths a round, N/4 kept, as its_hub's
``BeamSearch(beam_width=N/4)`` with budget N) and particle filtering (N particles, multinomial
resampling, argmax answer, as its_hub's ``ParticleFiltering``) run over the same problems, one
problem at a time on each side. Printed per method and N: accuracy (with the environment's exact
expectation), tokens and requests as the server counted them (generation and PRM), and the wall
time of the searches (summed per problem, so neither side's start-up counts), with ttscale's as
a ratio of its_hub's. Goal: equal or better accuracy at equal tokens, wall <= 0.5x.

its_hub runs in its own interpreter (``--its-hub-python``, a venv with ``pip install
'its_hub[lm]'``); without one the benchmark says so and runs a faithful sequential baseline
instead (one request per path, no ``n``, rounds in order: what its_hub does), labelled as such.

Both sides run in interpreters of their own (the loopback server lives in this one, and a
search sharing its interpreter lock would wait on the server's work). ``floor`` is measured in
the same run: per problem, ``depth`` times one bare generation request and one bare PRM request
in turn, on a kept-alive connection, with no search logic. No search of ``depth`` rounds can be
faster, whoever runs it: a round's steps must be drawn and scored before the next round starts.
``/floor`` is each side's wall over it, and ``above floor`` is ttscale's time above the floor
over its_hub's (the part a library controls).

Run on 2026-12-07 (2 shared cores, one llama-server busy beside it under ``nice``; its_hub
1.2.0), ``--problems 40 --n 4 8 16 --repeats 3``, wall medians of 3 interleaved repeats::

    floor: 3 rounds a problem of one bare generation and one bare PRM request: 2.68 s
    method              N side      acc  exact  tokens requests wall s ratio /floor above
    beam_search         4 ttscale  0.742  0.768   5,560      120   2.86  0.83   1.07  0.24
    beam_search         4 its_hub  0.725  0.768  12,640      480   3.43  1.00   1.28  1.00
    beam_search         8 ttscale  0.842  0.866  10,680      200   3.04  0.74   1.14  0.26
    beam_search         8 its_hub  0.850  0.866  22,560      800   4.09  1.00   1.53  1.00
    beam_search        16 ttscale  0.917  0.885  20,920      360   3.35  0.59   1.25  0.23
    beam_search        16 its_hub  0.825  0.885  42,400    1,440   5.65  1.00   2.11  1.00
    particle_filtering  4 ttscale  0.850  0.825   7,723      211   3.12  0.82   1.16  0.39
    particle_filtering  4 its_hub  0.842  0.825  12,640      480   3.81  1.00   1.42  1.00
    particle_filtering  8 ttscale  0.908  0.879  14,676      367   3.22  0.71   1.20  0.29
    particle_filtering  8 its_hub  0.883  0.879  25,280      960   4.55  1.00   1.70  1.00
    particle_filtering 16 ttscale  0.900  0.887  28,872      692   3.39  0.57   1.27  0.22
    particle_filtering 16 its_hub  0.925  0.887  50,560    1,920   5.90  1.00   2.20  1.00

Accuracy is within two standard errors of the exact expectation on both sides (ttscale's is
seeded, so it repeats exactly), and ttscale's is equal or better in 4 of the 6 rows; in the other
two (beam N = 8: 0.842 against 0.850; particle filtering N = 16: 0.900 against 0.925) the gap is
within one standard error. ttscale spends 0.44-0.61x its_hub's tokens (a path's continuations
share one request and its prompt, ``n``) and 0.25-0.44x its requests; one PRM request a round
instead of one a path. (its_hub's beam search starts from N/M paths, so it draws fewer completion
tokens at N = 8 and 16.)

The wall ratio is 0.57-0.83, not the <= 0.5 the issue set: its_hub draws a round's paths
concurrently too, so both wait on the same 3 round trips a problem, and its_hub's whole wall is
only 1.28-2.20x the floor. Half of it is below the floor at N = 4 and 8, out of any library's
reach. Above the floor, ttscale takes 0.22-0.39x its_hub's time. With ``--latency 0`` (no
round trip to wait on: the libraries' own work and the server's) the same run gives a wall ratio
of 0.23-0.33 (floor 0.10 s; ttscale 0.31-0.81 s, its_hub 0.95-3.54 s).

The server keeps a prefix cache (as llama.cpp and vLLM do), cleared before each side's run, and
reports the prompt tokens it held; ``cached`` is their share of the prompt tokens: ttscale's
59-79%, its_hub's 86-94% (it re-sends the same prefixes in 2.3-4x the requests).

    python -m venv /tmp/itshub && /tmp/itshub/bin/pip install 'its_hub[lm]'
    python benchmarks/search.py --its-hub-python /tmp/itshub/bin/python \
        [--problems 40] [--n 4 8 16] [--repeats 3] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Any

from ttscale.samplers.openai_sampler import OpenAISampler
from ttscale.strategies.beam_search import BeamSearch
from ttscale.strategies.extract import extract_answer_is
from ttscale.strategies.particle_filtering import ParticleFiltering
from ttscale.testing.step_env import StepEnvironment, expected_accuracy
from ttscale.types import SamplingParams
from ttscale.verifiers.process_reward_models import ServedStepScorer

ITS_HUB_DRIVER = r'''
import asyncio, json, sys, time, urllib.request
from its_hub.api import AbstractProcessRewardModel
from its_hub.core.algorithms.beam_search import BeamSearch
from its_hub.core.algorithms.particle_gibbs import ParticleFiltering
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel
from its_hub.core.lms.step_generation import StepGeneration

job = json.load(open(sys.argv[1]))

class PoolingPRM(AbstractProcessRewardModel):
    """The scripted PRM at /v1/pooling: the last step's P(right) (aggregation 'last')."""
    def _one(self, prompt, response):
        steps = [s for s in response.split("\n\n") if s.strip()]
        text = prompt + "\n\n" + "".join(s + "<extra_0>" for s in steps)
        body = json.dumps({"model": "prm", "input": text}).encode()
        request = urllib.request.Request(job["base_url"] + "/pooling", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as reply:
            return json.loads(reply.read())["data"][0]["data"][-1][1]
    async def ascore(self, prompt, responses):
        prompt = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        if isinstance(responses, str):
            return await asyncio.to_thread(self._one, prompt, responses)
        return list(await asyncio.gather(*(asyncio.to_thread(self._one, prompt, r)
                                           for r in responses)))
    def score(self, prompt, responses):
        return asyncio.run(self.ascore(prompt, responses))

async def main():
    lm = OpenAICompatibleLanguageModel(endpoint=job["base_url"], api_key="x",
                                       model_name="loopback", temperature=0.8)
    sg = StepGeneration(max_steps=job["max_steps"], step_token="\n\n",
                        stop_token="the answer is", temperature=0.8)
    prm = PoolingPRM()
    n = job["n"]
    if job["method"] == "beam_search":
        algorithm = BeamSearch(sg, prm, beam_width=n // 4)
    else:
        algorithm = ParticleFiltering(sg, prm)
    out = []
    for prompt in job["prompts"]:
        started = time.perf_counter()
        reply = await algorithm.ainfer(lm, prompt, n)
        out.append({"text": reply["content"], "wall": time.perf_counter() - started})
    print(json.dumps(out))

asyncio.run(main())
'''


def its_hub_available(python: str | None) -> bool:
    if not python:
        return False
    probe = subprocess.run(
        [python, "-c", "import its_hub.core.algorithms.particle_gibbs"], capture_output=True
    )
    return probe.returncode == 0


def run_its_hub(python: str, job: dict[str, Any]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        driver = os.path.join(folder, "driver.py")
        spec = os.path.join(folder, "job.json")
        with open(driver, "w") as handle:
            handle.write(ITS_HUB_DRIVER)
        with open(spec, "w") as handle:
            json.dump(job, handle)
        done = subprocess.run([python, driver, spec], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"its_hub run failed:\n{done.stderr[-3000:]}")
    results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


async def baseline(
    env: StepEnvironment, base_url: str, method: str, n: int, max_steps: int
) -> list[dict[str, Any]]:
    """A faithful sequential baseline (its_hub's loop): one request per path, no ``n``."""
    from ttscale.testing.step_env import StepTask  # noqa: F401 - documents what is searched

    sampler = OpenAISampler(base_url=base_url, model="loopback", api_key="x", max_n=1)
    reward = ServedStepScorer(base_url=base_url)
    strategy: Any
    if method == "beam_search":
        strategy = BeamSearch(samples=n, beam_width=4, reward=reward, max_steps=max_steps)
    else:
        strategy = ParticleFiltering(samples=n, reward=reward, max_steps=max_steps)
    out = []
    for problem in env.problems():
        started = time.perf_counter()
        result = await strategy.run(problem, sampler)
        out.append({"text": result.text or "", "wall": time.perf_counter() - started})
    return out


async def run_ttscale(
    env: StepEnvironment, base_url: str, method: str, n: int, max_steps: int, seed: int
) -> list[dict[str, Any]]:
    sampler = OpenAISampler(
        base_url=base_url, model="loopback", api_key="x", params=SamplingParams(seed=seed)
    )
    reward = ServedStepScorer(base_url=base_url, concurrency=64)
    strategy: Any
    if method == "beam_search":
        strategy = BeamSearch(
            samples=n, beam_width=4, reward=reward, max_steps=max_steps, seed=seed
        )
    else:
        strategy = ParticleFiltering(samples=n, reward=reward, max_steps=max_steps, seed=seed)
    out = []
    for problem in env.problems():
        started = time.perf_counter()
        result = await strategy.run(problem, sampler)
        out.append({"text": result.text or "", "wall": time.perf_counter() - started})
    await sampler.aclose()
    return out


def run_ttscale_apart(job: dict[str, Any]) -> list[dict[str, Any]]:
    """ttscale's searches in an interpreter of their own, as its_hub's run: the loopback server
    lives in this process, and a search sharing its interpreter lock would wait on its work."""
    with tempfile.TemporaryDirectory() as folder:
        spec = os.path.join(folder, "job.json")
        with open(spec, "w") as handle:
            json.dump(job, handle)
        command = [sys.executable, __file__, "--ttscale-job", spec]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"ttscale run failed:\n{done.stderr[-3000:]}")
    results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def ttscale_child(spec: str) -> None:
    """The child side of :func:`run_ttscale_apart`: run the job, print its rows as JSON."""
    with open(spec) as handle:
        job = json.load(handle)
    env = StepEnvironment.uniform(job["problems"], depth=job["depth"])
    if job["method"] == "floor":
        rows = floor(env, job["base_url"], job["depth"])
    else:
        rows = asyncio.run(
            run_ttscale(
                env, job["base_url"], job["method"], job["n"], job["max_steps"], job["seed"]
            )
        )
    print(json.dumps(rows))


def floor(env: StepEnvironment, base_url: str, depth: int) -> list[dict[str, Any]]:
    """The bound under any search of ``depth`` rounds: per problem, ``depth`` times one bare
    generation request and one bare PRM request, in turn, on one kept-alive connection (plain
    HTTP, no search logic). A round cannot start before the last one's steps are drawn and
    scored, whoever searches."""
    address = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port)
    post = functools.partial(_post, connection, address.path)
    rows = []
    for task in env.tasks:
        messages = [{"role": "user", "content": task.prompt}]
        started = time.perf_counter()
        for _ in range(depth):
            post("/chat/completions", {"model": "m", "messages": messages, "stop": ["\n\n"]})
            post("/pooling", {"model": "prm", "input": f"{task.prompt}\n\nstep<extra_0>"})
        rows.append({"text": "", "wall": time.perf_counter() - started})
    connection.close()
    return rows


def _post(connection: http.client.HTTPConnection, root: str, path: str, body: Any) -> None:
    headers = {"Content-Type": "application/json"}
    connection.request("POST", root + path, json.dumps(body).encode(), headers)
    reply = connection.getresponse()
    reply.read()
    if reply.status != 200:
        raise SystemExit(f"the floor's {path} request got HTTP {reply.status}")


def accuracy(env: StepEnvironment, rows: list[dict[str, Any]]) -> float:
    right = sum(
        extract_answer_is(row["text"]) == str(task.answer)
        for task, row in zip(env.tasks, rows, strict=True)
    )
    return right / len(rows)


def measure(server: Any, env: StepEnvironment, run: Any) -> dict[str, Any]:
    server.reset_log()
    server.clear_prefix_cache()  # each side starts with a cold cache
    rows = run()
    generated = [r for r in server.records if r.path.endswith("completions")]
    return {
        "right": round(accuracy(env, rows) * len(rows)),
        "count": len(rows),
        "tokens": sum(r.prompt_tokens + r.completion_tokens for r in generated),
        "completion": sum(r.completion_tokens for r in generated),
        # Prompt tokens the server's prefix cache held (it reports them as vLLM and llama.cpp do).
        "cached": sum(r.cached_tokens or 0 for r in generated),
        "prompt": sum(r.prompt_tokens for r in generated),
        "requests": len(generated),
        "prm_requests": sum(1 for r in server.records if r.path.endswith("/pooling")),
        # The searches' own time, problem by problem: start-up (an interpreter, clients) excluded.
        "wall": sum(row["wall"] for row in rows),
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats pooled: accuracy over every problem of every repeat, tokens and requests per
    repeat (means), wall the median repeat's."""
    count = sum(r["count"] for r in runs)
    keys = ("tokens", "completion", "cached", "prompt", "requests", "prm_requests")
    out: dict[str, Any] = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
    out["accuracy"] = sum(r["right"] for r in runs) / count
    out["se"] = (out["accuracy"] * (1 - out["accuracy"]) / count) ** 0.5
    out["wall"] = statistics.median(r["wall"] for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--its-hub-python", default=os.environ.get("ITS_HUB_PYTHON"))
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--n", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ttscale-job", help=argparse.SUPPRESS)  # the child side of a run
    args = parser.parse_args()
    if args.ttscale_job:
        ttscale_child(args.ttscale_job)
        return
    env = StepEnvironment.uniform(args.problems, depth=args.depth)
    peer_ok = its_hub_available(args.its_hub_python)
    peer = "its_hub" if peer_ok else "sequential baseline (its_hub not installed)"
    print(
        f"{args.problems} problems x {args.repeats} repeats, depth {args.depth}, "
        f"latency {args.latency}s; peer: {peer}"
    )
    max_steps = args.depth + 1
    with env.server(latency=args.latency, prefix_cache=True) as server:
        base_url = server.base_url
        bare = {"base_url": base_url, "method": "floor", "n": 1, "max_steps": max_steps}
        bare.update(problems=args.problems, depth=args.depth, seed=args.seed)
        bound = statistics.median(
            sum(row["wall"] for row in run_ttscale_apart(bare)) for _ in range(args.repeats)
        )
        print(
            f"floor: {args.depth} rounds a problem of one bare generation and one bare PRM "
            f"request, in turn: {bound:.2f} s (median of {args.repeats})"
        )
        print(
            f"{'method':<19}{'N':>3} {'side':<9}{'acc':>6} {'+-se':>6} {'exact':>6} {'tokens':>8} "
            f"{'compl.':>7} {'cached':>7} {'requests':>9} {'prm req':>8} {'wall s':>7} {'ratio':>6}"
            f"{'/floor':>7} {'above floor':>12}"
        )
        for method in ("beam_search", "particle_filtering"):
            for n in args.n:
                ours, theirs = [], []
                for repeat in range(args.repeats):  # interleaved, so drift hits both alike
                    job = {
                        "base_url": base_url,
                        "prompts": [t.prompt for t in env.tasks],
                        "n": n,
                        "method": method,
                        "max_steps": max_steps,
                    }
                    mine = {**job, "problems": args.problems, "depth": args.depth}
                    mine["seed"] = args.seed + repeat
                    ours.append(measure(server, env, lambda j=mine: run_ttscale_apart(j)))
                    if peer_ok:
                        theirs.append(
                            measure(server, env, lambda j=job: run_its_hub(args.its_hub_python, j))
                        )
                    else:
                        theirs.append(
                            measure(
                                server,
                                env,
                                lambda m=method, k=n: asyncio.run(
                                    baseline(env, base_url, m, k, max_steps)
                                ),
                            )
                        )
                exact = expected_accuracy(env, method, n, m=4)
                mine, peer_row = pooled(ours), pooled(theirs)
                for side, row in (
                    ("ttscale", mine),
                    ("its_hub" if peer_ok else "baseline", peer_row),
                ):
                    ratio = mine["wall"] / peer_row["wall"] if side == "ttscale" else 1.0
                    # The time each side spends above the floor: the part a library controls.
                    above = (mine["wall"] - bound) / max(peer_row["wall"] - bound, 1e-9)
                    print(
                        f"{method:<19}{n:>3} {side:<9}{row['accuracy']:>6.3f} {row['se']:>6.3f} "
                        f"{exact:>6.3f} {row['tokens']:>8,.0f} {row['completion']:>7,.0f} "
                        f"{row['cached'] / max(1, row['prompt']):>7.0%} "
                        f"{row['requests']:>9,.0f} {row['prm_requests']:>8,.0f} "
                        f"{row['wall']:>7.2f} {ratio:>6.2f}{row['wall'] / bound:>7.2f} "
                        f"{above if side == 'ttscale' else 1.0:>12.2f}",
                        flush=True,
                    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
