"""benchmarks/search.py end to end without its_hub (its sequential baseline stands in): the floor
it measures, the requests each side sends, and the lower bound no search can beat."""

from __future__ import annotations

import subprocess
import sys

import pytest
from benchmark_script import BENCHMARKS


def test_the_benchmark_reports_a_floor_under_every_search() -> None:
    problems, latency, depth = 8, 0.02, 3  # floor ~0.5 s: the 0.01 s rounding stays ~1%
    command = [
        sys.executable,
        str(BENCHMARKS / "search.py"),
        "--its-hub-python",
        "",
        "--problems",
        str(problems),
        "--n",
        "4",
        "--repeats",
        "1",
        "--latency",
        str(latency),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "peer: sequential baseline (its_hub not installed)" in lines[0]
    floor = float(lines[1].split(": ")[-1].split(" s")[0])
    bound = problems * depth * latency  # each round waits on at least one sleeping request
    assert floor >= bound
    rows = {(r[0], r[2]): r for r in (line.split() for line in lines[3:]) if len(r) == 15}
    assert len(rows) == 4
    for (method, side), row in rows.items():
        wall, over_floor = float(row[11]), float(row[13])
        assert wall >= bound, (method, side)
        assert over_floor == pytest.approx(wall / floor, rel=0.05)  # both printed to 0.01 s
    # ttscale's beam search draws a round's 4 paths in one request (n): 3 rounds, 3 PRM calls a
    # problem. The baseline sends one request a path: 4 a round (control: the counts differ).
    assert rows[("beam_search", "ttscale")][9] == str(problems * depth)
    assert rows[("beam_search", "ttscale")][10] == str(problems * depth)
    assert int(rows[("beam_search", "baseline")][9]) == problems * depth * 4
