"""How `ttscale solve`, its resume and `ttscale fit` scale with the dataset: peak memory and time.

For each size (default 1,000, 10,000 and 100,000 problems) it writes a JSONL dataset of arithmetic
problems, starts the loopback server in its own process, and runs, each as a subprocess of its
own (so that its peak memory is its own: its peak RSS from ``wait4``, or the summed PSS of its
process tree sampled every 20 ms where that is more, for offline evaluation's forked workers):

1. the runner, ``ttscale.solve.solve`` (majority voting, 16 samples a problem, as ``ttscale solve
   DATA --out RUN -n 16``): "solve";
2. the runner again: the resume of a finished run (reads the results and the journal): "resume";
3. ``ttscale solve ... --no-plot`` again: the resume with the CLI's summary table ("CLI resume");
4. the record reading ``ttscale fit`` does (``read_results`` and ``sample_rows``): "fit read";
5. ``ttscale fit RUN``: "CLI fit".

Printed per size: the solve's wall time, and its CPU time (user + system) per problem, peak RSS
of each, and the fit's wall time; then the ratio of the largest size's time per problem to the
smallest's, in CPU and wall time (1.0 is linear scaling). CPU time is the steadier measure on a
machine shared with other work, where wall time follows the load. Target: peak RSS <= 300 MB at
100,000 problems for each. The CLI's summary and fit add bootstrap bands over problems, whose
arrays grow with the number of problems (resamples x problems); columns 3 and 5 show them.

    python benchmarks/solve_scale.py [--sizes 1000,10000,100000] [--samples 16]
    python benchmarks/solve_scale.py --fit-only --sizes 100000   # ttscale fit alone

``--fit-only`` writes a synthetic results file of each size (16 samples a problem, right at a
rate drawn per problem, so the laws have something to fit) and measures ``ttscale fit`` on it
alone, without a solve run.

Measured on 2026-12-07 on the shared 2-core machine under ``nice -n 10`` (beside a llama-server
generating; load average 3-5), ``--sizes 1000,10000,100000`` in one run:

    problems  CPU ms/problem  solve MB  resume MB  CLI resume MB  fit read MB  CLI fit MB
       1,000            3.04        67         65            108           31          88
      10,000            2.43        73         69            114           37          97
     100,000            2.40       139        109            173           81         217

Every peak is within the 300 MB target at 100,000 problems, and the CPU time per problem falls
with size (0.79 of the smallest's at 100,000: a fixed start-up spread wider), so the time is
linear. Two fixes brought ``ttscale fit`` there from 607 MB on the same run: offline evaluation
bounds the lanes of a chunk, not only lanes times distinct answers (every sample says 42 here, so
7,500 problems x 100 orders went in one chunk), and the DeepConf check streams the records
instead of holding every sample's key. ``--fit-only --sizes 100000`` (mixed answers): 266 MB
before those fixes (561 MB before the compact reading of the records). Before the split of the
runner, it peaked at 310 MB (solve), 435 MB (resume) and 296 MB (fit's reading) at 10,000
problems; and the CLI's bootstrap bands, before they were drawn a block at a time, grew about
31 KB a problem.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ttscale.testing import loopback_process


def write_dataset(path: Path, size: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for index in range(size):
            row = {"id": f"p{index}", "prompt": f"What is {index} + 42 - {index}?", "answer": "42"}
            handle.write(json.dumps(row) + "\n")


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from ``/proc/PID/task/TID/children``."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as children:
                    queue.extend(int(child) for child in children.read().split())
        except OSError:
            continue  # gone meanwhile
    return found


def _tree_pss_mb(pid: int) -> float:
    """The proportional set size of ``pid``'s process tree, in MB: shared pages (a forked
    worker's copy of its parent) counted once in all."""
    total = 0
    for member in _descendants(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup", encoding="ascii") as rollup:
                total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def measured(command: list[str]) -> tuple[float, float, float]:
    """Run ``command``; its wall time (s), peak memory (MB) and CPU time (s, user + system).

    The peak is the larger of the process's own peak RSS (``wait4``) and the highest summed PSS
    of its process tree, sampled every 20 ms: offline evaluation forks workers, and the peak RSS
    of one process would not count theirs."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    tree_peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            tree_peak[0] = max(tree_peak[0], _tree_pss_mb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    errors = process.stderr.read()
    done.set()  # before reaping: the sampler must not read a reused pid
    sampler.join()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed:\n{errors.decode()[-2000:]}")
    peak = max(usage.ru_maxrss / 1024, tree_peak[0])  # RSS in KB on Linux
    return wall, peak, usage.ru_utime + usage.ru_stime


def write_results(path: Path, size: int, samples: int, seed: int = 0) -> None:
    """A results file as ``ttscale solve`` writes it, of ``size`` problems whose samples are right
    at a rate drawn per problem (Beta(0.5, 1.5)), wrong ones with one of a few wrong answers: for
    measuring ``ttscale fit`` alone at sizes whose solve would take long."""
    import random

    rng = random.Random(seed)
    params = {"samples": samples, "k": 1, "temperature": 0.8, "max_tokens": 512, "seed": 0}
    with path.open("w", encoding="utf-8") as handle:
        for index in range(size):
            rate = rng.betavariate(0.5, 1.5)
            rows = []
            for position in range(samples):
                right = rng.random() < rate
                answer = "42" if right else str(40 + rng.randrange(2))
                rows.append(
                    {"index": position, "text": f"The answer is {answer}.", "answer": answer,
                     "correct": right, "score": None, "finish_reason": "stop",
                     "completion_tokens": 5, "seed": index, "latency": 0.01}
                )  # fmt: skip
            solved = sum(row["correct"] for row in rows)
            record = {
                "id": f"p{index}", "strategy": "majority", "model": "loopback", "params": params,
                "reference": "42", "samples": rows, "n": samples, "num_correct": solved,
                "answer": "42", "correct": solved > samples // 2,
                "usage": {"prompt_tokens": 20 * samples, "completion_tokens": 5 * samples,
                          "requests": 1, "samples": samples, "cost": 0.0},
            }  # fmt: skip
            handle.write(json.dumps(record) + "\n")


RUNNER = """
import asyncio, sys
from pathlib import Path
from ttscale.solve import SolveConfig, solve
data, out, url, samples = sys.argv[1:5]
config = SolveConfig(dataset=data, out=Path(out), samples=int(samples), concurrency=16)
asyncio.run(solve(config, base_url=url, model="loopback"))
"""

READER = """
import sys
from ttscale.report import read_results, sample_rows
read_results(sys.argv[1])
sample_rows(sys.argv[1])
"""


def run_size(size: int, samples: int, base_url: str, folder: Path) -> dict[str, float]:
    data = folder / f"data-{size}.jsonl"
    out = folder / f"run-{size}.jsonl"
    write_dataset(data, size)
    python = sys.executable
    runner = [python, "-c", RUNNER, str(data), str(out), base_url, str(samples)]
    cli = [
        python, "-m", "ttscale.cli", "solve", str(data), "--out", str(out), "--base-url",
        base_url, "--model", "loopback", "-n", str(samples), "--concurrency", "16", "--no-plot",
    ]  # fmt: skip
    row: dict[str, float] = {"problems": size}
    row["solve_s"], row["solve_mb"], cpu = measured(runner)
    row["ms_per_problem"] = 1000 * row["solve_s"] / size
    row["cpu_ms_per_problem"] = 1000 * cpu / size
    row["resume_s"], row["resume_mb"], _ = measured(runner)
    row["cli_resume_s"], row["cli_resume_mb"], _ = measured(cli)
    row["read_s"], row["read_mb"], _ = measured([python, "-c", READER, str(out)])
    row["fit_s"], row["fit_mb"], _ = measured([python, "-m", "ttscale.cli", "fit", str(out)])
    lines = sum(1 for _ in out.open(encoding="utf-8"))
    if lines != size:
        raise RuntimeError(f"{out} holds {lines} records, not {size}")
    for path in (data, out, out.with_name(out.name + ".samples.jsonl")):
        path.unlink()
    return row


COLUMNS = (
    ("problems", "problems", "{:,.0f}"),
    ("solve_s", "solve s", "{:.1f}"),
    ("ms_per_problem", "ms/problem", "{:.2f}"),
    ("cpu_ms_per_problem", "CPU ms/problem", "{:.2f}"),
    ("solve_mb", "solve MB", "{:.0f}"),
    ("resume_mb", "resume MB", "{:.0f}"),
    ("cli_resume_mb", "CLI resume MB", "{:.0f}"),
    ("read_mb", "fit read MB", "{:.0f}"),
    ("fit_mb", "CLI fit MB", "{:.0f}"),
    ("fit_s", "fit s", "{:.1f}"),
)


def fit_alone(sizes: list[int], samples: int) -> None:
    """``ttscale fit`` (and its record reading) on synthetic results files of each size."""
    python = sys.executable
    print(f"{'problems':>10} {'fit read MB':>12} {'CLI fit MB':>11} {'fit s':>8}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fit-scale-") as temporary:
        for size in sizes:
            out = Path(temporary) / f"run-{size}.jsonl"
            write_results(out, size, samples)
            _, read_mb, _ = measured([python, "-c", READER, str(out)])
            fit_s, fit_mb, _ = measured([python, "-m", "ttscale.cli", "fit", str(out)])
            print(f"{size:>10,} {read_mb:>12.0f} {fit_mb:>11.0f} {fit_s:>8.1f}", flush=True)
            out.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument(
        "--fit-only",
        action="store_true",
        help="measure ttscale fit alone, on synthetic results files (no solve run)",
    )
    args = parser.parse_args()
    if args.fit_only:
        fit_alone([int(size) for size in args.sizes.split(",")], args.samples)
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = []
    print(" ".join(f"{title:>14}" for _, title, _ in COLUMNS), flush=True)
    server = loopback_process(["--default-answer", "The answer is 42."])
    with tempfile.TemporaryDirectory(prefix="solve-scale-") as temporary, server as url:
        for size in sizes:
            row = run_size(size, args.samples, url, Path(temporary))
            rows.append(row)
            print(" ".join(f"{form.format(row[key]):>14}" for key, _, form in COLUMNS), flush=True)
    if len(rows) > 1:
        cpu = rows[-1]["cpu_ms_per_problem"] / rows[0]["cpu_ms_per_problem"]
        wall = rows[-1]["ms_per_problem"] / rows[0]["ms_per_problem"]
        print(
            f"time per problem at {rows[-1]['problems']:,} / at {rows[0]['problems']:,}: "
            f"CPU {cpu:.2f}, wall {wall:.2f} (1.00 is linear)"
        )
    worst = max(max(row["solve_mb"], row["resume_mb"], row["read_mb"]) for row in rows)
    print(f"largest peak RSS of the runner and the record reading {worst:.0f} MB (target <= 300)")


if __name__ == "__main__":
    main()
