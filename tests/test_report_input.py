"""ttscale.report_input: a results file read into compact arrays reads back as the records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ttscale.errors import DataError
from ttscale.report_input import ResultColumns, SampleTable, sample_rows

SAMPLES = [
    {"answer": "7", "correct": True, "score": 0.5},
    {"answer": None, "correct": None, "score": None},
    {"answer": [1, 2], "correct": False, "score": True},  # a bool is no score
    {"answer": 7, "correct": False, "score": math.inf},  # nor is infinity
    {"answer": "7", "correct": True, "score": 0.5},
]


def test_a_sample_table_reads_back_as_the_records_samples() -> None:
    records = [{"strategy": "majority", "samples": SAMPLES}, {"strategy": "other", "samples": []}]
    table = SampleTable.from_records(records)
    assert len(table) == 2 and table[1] == {"strategy": "other", "samples": []}
    got = [(s.get("answer"), s.get("correct"), s["score"]) for s in table[0]["samples"]]
    expected = [("7", True, 0.5), (None, None, None), ([1, 2], False, None), (7, False, None)]
    assert got == [*expected, ("7", True, 0.5)]
    assert table[0]["samples"][0] is table[0]["samples"][4]  # equal samples share one row
    assert table.answers.dtype.itemsize == 4 and table.answers.size == len(SAMPLES)
    answers, correct, scores = table.block([0], 5)
    assert answers.tolist() == [[0, -1, 1, 2, 0]]  # "7" and 7 differ; none is -1
    assert correct.tolist() == [[True, False, False, False, True]]
    assert math.isnan(scores[0, 1]) and scores[0, 0] == 0.5


def test_result_columns_hold_each_records_counts_and_spend(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.25}
    lines = [
        {"id": f"p{i}", "strategy": "majority", "n": 2, "num_correct": i % 3,
         "samples": [{"correct": j < i % 3} for j in range(2)], "usage": usage}
        for i in range(3)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    columns = ResultColumns.read(path)
    assert columns.ids == ("p0", "p1", "p2") and columns.strategies == ("majority",)
    assert columns.num_correct.tolist() == [0, 1, 2] and columns.tokens.tolist() == [15.0] * 3
    assert columns.take(columns.num_correct.nonzero()[0]).ids == ("p1", "p2")
    assert len(sample_rows(path)) == 3
    # Control: a line the reader checks is still refused, naming its place.
    path.write_text(path.read_text() + json.dumps({**lines[0], "num_correct": 5}) + "\n")
    with pytest.raises(DataError, match="num_correct"):
        ResultColumns.read(path)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1, "5", True])
def test_usage_that_is_no_finite_count_is_refused_naming_it(tmp_path: Path, value: object) -> None:
    path = tmp_path / "results.jsonl"
    line = {"id": "p", "strategy": "majority", "n": 1, "num_correct": 1,
            "samples": [{"correct": True}], "usage": {"prompt_tokens": 1, "cost": 0.5}}  # fmt: skip
    path.write_text(json.dumps(line) + "\n")
    assert ResultColumns.read(path).ids == ("p",)  # control: a finite cost reads
    line["usage"] = {"prompt_tokens": 1, "cost": value}
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match=r"usage\.cost") as caught:
        ResultColumns.read(path)
    assert "finite numbers >= 0" in str(caught.value)
