"""benchmarks/search_embedded.py's summary: accuracy, the paired gap to majority and tokens per
cell, recomputed by hand from rows written the way the benchmark writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmark_script import load


def _cell(correct: bool, completion: int, all_tokens: int) -> dict[str, Any]:
    return {"answer": "x", "correct": correct, "completion": completion, "all": all_tokens}


def _write(path: Path) -> None:
    """Four arithmetic problems at N = 2 (one of them also at N = 4, written on its own line as
    a resumed run appends it): majority right on 1 and 2, beam search with the judge right on
    2, 3 and 4; the 4th problem lacks majority's cell, so it is left out of the paired gap."""
    outcomes = [(True, False), (True, True), (False, True), (None, True)]
    with path.open("w") as handle:
        for number, (majority, beam) in enumerate(outcomes):
            cells = {"beam_search/judge@2": _cell(beam, 100 + number, 1000 + number)}
            cells["beam_search/judge@2"]["cached"] = 450  # of 900 prompt tokens, near enough
            if majority is not None:
                cells["majority@2"] = _cell(majority, 10, 20)
            row = {"dataset": "arithmetic", "id": f"a{number}", "n": 2, "cells": cells}
            handle.write(json.dumps(row) + "\n")
        later = {"majority@4": _cell(True, 30, 40)}
        handle.write(json.dumps({"dataset": "arithmetic", "id": "a0", "n": 4, "cells": later}))


def test_each_cell_is_summarised_over_the_problems_it_has(tmp_path: Path) -> None:
    script = load("search_embedded")
    rows_file = tmp_path / "rows.jsonl"
    _write(rows_file)
    rows = script.read_rows(rows_file)
    assert sorted(r["id"] for r in rows) == ["a0", "a1", "a2", "a3"]
    assert next(r for r in rows if r["id"] == "a0")["budgets"] == [2, 4]
    lines = {
        (line["set"], line["method"], line["n"]): line for line in script.summarise(rows, [2, 4])
    }
    beam = lines[("arithmetic", "beam_search/judge", 2)]
    assert beam["problems"] == 4
    assert beam["accuracy"] == 3 / 4
    # Paired over a0..a2 only: beam - majority = (0 - 1, 1 - 1, 1 - 0) -> mean 0.
    assert beam["vs_majority"] == 0.0
    low, high = beam["vs_majority_ci"]
    assert -1.0 <= low < 0.0 < high <= 1.0
    assert beam["completion"] == (100 + 101 + 102 + 103) / 4
    assert beam["all"] == (1000 + 1001 + 1002 + 1003) / 4
    majority = lines[("arithmetic", "majority", 2)]
    assert (majority["problems"], majority["accuracy"], majority["vs_majority"]) == (3, 2 / 3, 0.0)
    assert lines[("arithmetic", "majority", 4)]["problems"] == 1
    assert ("arithmetic", "beam_search/judge", 4) not in lines  # no such cell: no line
    table = script.table(script.summarise(rows, [2, 4]))
    assert "| arithmetic | beam_search/judge | 2 | 4 | 0.75 |" in table
    assert "+0.00 [" in table
    # Cached: 4 x 450 of (1000 + 1001 + 1002 + 1003) - (100 + 101 + 102 + 103) prompt tokens.
    assert beam["cached"] == 1800 / 3600
    assert majority["cached"] is None  # whole samples record no cache use
    assert "| 1,002 | 50% |" in table and "| 20 | - |" in table
