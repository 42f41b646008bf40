"""A synthetic GSM8K set in the sample bank's format, for the tests of the scripts that read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ttscale.bank import write_part


def write_gsm8k(folder: Path, problems: int = 12, samples: int = 32, seed: int = 7) -> None:
    """A GSM8K set in the bank's format: numeric answers, wrong ones drawn less confidently."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    runs = []
    verdicts = {}
    for number in range(problems):
        problem = f"gsm8k-test-{number:04d}"
        truth = int(rng.integers(2, 400))
        skill = [0.9, 0.7, 0.55, 0.35][number % 4]
        decoys = [truth + 1, 2 * truth, truth - 1]
        for index in range(samples):
            right = bool(rng.random() < skill)
            answer = str(truth) if right else str(decoys[int(rng.integers(0, 3))])
            length = int(rng.integers(20, 90))
            spread = 1.0 if right else 0.6  # a wrong trace's alternatives are closer: less sure
            top = -np.sort(rng.exponential(spread * 3, (length, 5)), axis=1)
            top[:, 0] = -rng.exponential(0.2 if right else 0.6, length)
            runs.append((top[:, 0].copy(), top, np.ones(length)))
            rows.append(
                {
                    "problem": problem,
                    "index": index,
                    "seed": index,
                    "text": f"So the answer is {answer}.",
                    "answer": None if index % 29 == 28 else answer,
                    "finish_reason": "length" if index % 31 == 30 else "stop",
                    "completion_tokens": length,
                    "correct_at_generation": right,
                    "grade_reason": "",
                }
            )
            verdicts[f"{problem}#{index}"] = {"full": right and index % 29 != 28}
    write_part(folder, 0, rows, runs)
    (folder / "verdicts.json").write_text(json.dumps(verdicts), encoding="utf-8")
