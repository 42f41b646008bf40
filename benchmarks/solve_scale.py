"""How `ttscale solve`, its resume and `ttscale fit` scale with the dataset: peak memory and time.

For each size (default 1,000, 10,000 and 100,000 problems) it writes a JSONL dataset of arithmetic
problems, starts the loopback server in its own process, and runs, each as a subprocess of its
own (so that its peak RSS is its own, read with ``wait4``):

1. ``ttscale solve DATA --out RUN -n 16 --no-plot`` (majority voting, 16 samples a problem);
2. the same command again: the resume of a finished run (reads the results and the journal);
3. ``ttscale fit RUN``.

Printed per size: the solve's wall time, and its CPU time (user + system) per problem, peak RSS
of each of the three, and the resume's and fit's wall times; then the ratio of the largest size's
time per problem to the smallest's, in CPU and wall time (1.0 is linear scaling). CPU time is
the steadier measure on a machine shared with other work, where wall time follows the load.
Target: peak RSS <= 300 MB at 100,000 problems for each.

    python benchmarks/solve_scale.py [--sizes 1000,10000,100000] [--samples 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def loopback_process() -> Iterator[str]:
    command = [sys.executable, "-m", "ttscale.testing", "--default-answer", "The answer is 42."]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"loopback server did not start: {line!r}")
        yield line.split(" ", 1)[1]
    finally:
        process.terminate()
        process.wait(timeout=30)


def write_dataset(path: Path, size: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for index in range(size):
            row = {"id": f"p{index}", "prompt": f"What is {index} + 42 - {index}?", "answer": "42"}
            handle.write(json.dumps(row) + "\n")


def measured(command: list[str]) -> tuple[float, float, float]:
    """Run ``command``; its wall time (s), peak RSS (MB) and CPU time (s, user + system)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed:\n{errors.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # RSS in KB on Linux


def run_size(size: int, samples: int, base_url: str, folder: Path) -> dict[str, float]:
    data = folder / f"data-{size}.jsonl"
    out = folder / f"run-{size}.jsonl"
    write_dataset(data, size)
    ttscale = [sys.executable, "-m", "ttscale.cli"]
    solve = [
        *ttscale, "solve", str(data), "--out", str(out), "--base-url", base_url,
        "--model", "loopback", "-n", str(samples), "--concurrency", "16", "--no-plot",
    ]  # fmt: skip
    solve_s, solve_mb, solve_cpu = measured(solve)
    resume_s, resume_mb, _ = measured(solve)
    fit_s, fit_mb, _ = measured([*ttscale, "fit", str(out)])
    lines = sum(1 for _ in out.open(encoding="utf-8"))
    if lines != size:
        raise RuntimeError(f"{out} holds {lines} records, not {size}")
    for path in (data, out, out.with_name(out.name + ".samples.jsonl")):
        path.unlink()
    return {
        "problems": size,
        "solve_s": solve_s,
        "ms_per_problem": 1000 * solve_s / size,
        "cpu_ms_per_problem": 1000 * solve_cpu / size,
        "solve_mb": solve_mb,
        "resume_s": resume_s,
        "resume_mb": resume_mb,
        "fit_s": fit_s,
        "fit_mb": fit_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = []
    header = (
        f"{'problems':>9} {'solve s':>8} {'ms/problem':>10} {'CPU ms/problem':>14} {'solve MB':>9} "
        f"{'resume s':>9} {'resume MB':>10} {'fit s':>7} {'fit MB':>7}"
    )
    print(header, flush=True)
    with tempfile.TemporaryDirectory(prefix="solve-scale-") as temporary, loopback_process() as url:
        for size in sizes:
            row = run_size(size, args.samples, url, Path(temporary))
            rows.append(row)
            print(
                f"{size:>9,} {row['solve_s']:>8.1f} {row['ms_per_problem']:>10.2f} "
                f"{row['cpu_ms_per_problem']:>14.2f} "
                f"{row['solve_mb']:>9.0f} {row['resume_s']:>9.1f} {row['resume_mb']:>10.0f} "
                f"{row['fit_s']:>7.1f} {row['fit_mb']:>7.0f}",
                flush=True,
            )
    if len(rows) > 1:
        cpu = rows[-1]["cpu_ms_per_problem"] / rows[0]["cpu_ms_per_problem"]
        wall = rows[-1]["ms_per_problem"] / rows[0]["ms_per_problem"]
        print(
            f"time per problem at {rows[-1]['problems']:,} / at {rows[0]['problems']:,}: "
            f"CPU {cpu:.2f}, wall {wall:.2f} (1.00 is linear)"
        )
    worst = max(max(row["solve_mb"], row["resume_mb"], row["fit_mb"]) for row in rows)
    print(f"largest peak RSS {worst:.0f} MB (target <= 300 MB)")


if __name__ == "__main__":
    main()
