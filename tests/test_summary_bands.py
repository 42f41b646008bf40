"""The summary `ttscale solve` prints: coverage and the strategy's accuracy with their bands."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from ttscale.testing import LoopbackServer, ScriptRequest

# Problem q<i> is answered right unless (sample index + i) % (i + 2) == 0; q5 never: coverage,
# majority and the strategy's pick differ between problems, so the bands are not zero.
QUESTIONS = {f"q{i}": str(i * 3 + 1) for i in range(6)}


def answer_for(request: ScriptRequest) -> str:
    qid = request.prompt.split()[-1].rstrip("?")
    number = int(qid[1:])
    right = int(QUESTIONS[qid])
    wrong = number == 5 or (request.index + number) % (number + 2) == 0
    return f"The answer is {right + 1 + request.index % 2 if wrong else right}."


def solve(tmp_path: Path, *extra: str) -> tuple[str, list[dict[str, object]]]:
    dataset = tmp_path / "data.jsonl"
    dataset.write_text(
        "".join(
            json.dumps({"id": qid, "prompt": f"What is {qid}?", "answer": answer}) + "\n"
            for qid, answer in QUESTIONS.items()
        )
    )
    out = tmp_path / "run.jsonl"
    with LoopbackServer(answers=answer_for) as server:
        command = [sys.executable, "-m", "ttscale.cli", "solve", str(dataset), "--out", str(out)]
        command += ["--base-url", server.base_url, "--model", "loopback", "-n", "4", *extra]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "220"},  # the fit table whole, not squeezed
            timeout=180,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return " ".join(done.stdout.split()), records


def percentile_bootstrap(values: list[float], seed: int = 0) -> tuple[float, float]:
    """The documented interval, computed here independently: 1000 resamples of the problems by
    default_rng(seed).integers(0, P, (1000, P)), linear 5% and 95% quantiles of their means."""
    rows = np.random.default_rng(seed).integers(0, len(values), size=(1000, len(values)))
    means = [sum(values[i] for i in row) / len(values) for row in rows.tolist()]
    low, high = np.quantile(means, [0.05, 0.95])
    return float(low), float(high)


def test_summary_gives_coverage_and_accuracy_their_standard_errors_and_intervals(
    tmp_path: Path,
) -> None:
    printed, records = solve(tmp_path, "--strategy", "majority")
    # Coverage at k = 4 (all samples): a problem is covered when any sample is right.
    covered = [float(r["num_correct"] > 0) for r in records]  # type: ignore[operator]
    se = statistics.stdev(covered) / math.sqrt(len(covered))
    low, high = percentile_bootstrap(covered)
    mean = sum(covered) / len(covered)
    assert se > 0 and low < mean < high  # a real spread: the control for the checks below
    assert f"4 │ {mean:.3f} ± {se:.3f} [{low:.3f}, {high:.3f}]" in printed
    # The strategy's accuracy, with the same two measures over problems.
    solved = [float(bool(r["correct"])) for r in records]
    se = statistics.stdev(solved) / math.sqrt(len(solved))
    low, high = percentile_bootstrap(solved)
    share = sum(solved) / len(solved)
    expected = (
        f"strategy accuracy {share:.3f} ({int(sum(solved))}/6) ± {se:.3f} [{low:.3f}, {high:.3f}]"
    )
    assert expected in printed
    # The law-fit table after it: every offline strategy's cell carries its interval.
    cells = re.findall(r"(\d\.\d{4}) \[(\d\.\d{3}), (\d\.\d{3})\]", printed)
    assert len(cells) >= 3 * 4  # coverage, majority, adaptive and ahead_by_k at k = 1..4 at least
    for value, cell_low, cell_high in cells:
        assert float(cell_low) - 5e-4 <= float(value) <= float(cell_high) + 5e-4
    assert re.search(r"majority acc", printed)
