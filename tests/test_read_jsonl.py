"""ttscale.datasets.read_jsonl: the one JSON Lines reader of datasets and results files."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ttscale.datasets import load_dataset, read_jsonl
from ttscale.errors import DataError
from ttscale.records import iter_records
from ttscale.report_input import read_results, sample_rows

RECORD = {
    "id": "p0",
    "strategy": "majority",
    "n": 1,
    "num_correct": 1,
    "samples": [{"answer": "4", "correct": True}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    "correct": True,
}
PROBLEM = {"id": "p0", "prompt": "2 + 2?", "answer": "4"}


def test_lines_are_read_with_their_numbers_blank_ones_skipped(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}')  # the last line whole, though without a newline
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]
    # Gzipped whatever its name, plain whatever its name.
    packed = tmp_path / "data.jsonl"
    packed.write_bytes(gzip.compress(b'{"a": 1}\n'))
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text('{"a": 1}\n')
    assert list(read_jsonl(packed)) == list(read_jsonl(plain)) == [(1, {"a": 1})]


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object, got list")],
)
def test_a_bad_line_names_the_file_and_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(f'{{"a": 1}}\n\n{line}\n{{"a": 2}}\n')
    for torn_tail in (False, True):  # a bad line inside the file is refused either way
        with pytest.raises(DataError, match=message) as caught:
            list(read_jsonl(path, torn_tail=torn_tail))
        assert (caught.value.path, caught.value.line) == (str(path), 3)
    assert str(caught.value).startswith(f"{path}:3: {message}")


def test_a_torn_last_line_is_dropped_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')  # a killed writer's last line
    assert list(read_jsonl(path, torn_tail=True)) == [(1, {"a": 1}), (2, {"a": 2})]
    # Control: read strictly, the same line is refused, named.
    with pytest.raises(DataError, match="not valid JSON") as caught:
        list(read_jsonl(path))
    assert caught.value.line == 3
    # A whole last line (ended by its newline) that is not JSON is no torn line.
    path.write_text('{"a": 1}\n{"a": 3, "b"\n')
    with pytest.raises(DataError, match="not valid JSON"):
        list(read_jsonl(path, torn_tail=True))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="cannot read results") as caught:
        list(read_jsonl(missing, what="results"))
    assert caught.value.path == str(missing)


READERS: dict[str, tuple[dict[str, Any], Callable[[Path], object]]] = {
    "dataset": (PROBLEM, lambda path: load_dataset(path)),
    "report": (RECORD, lambda path: read_results(path)),
    "offline rows": (RECORD, lambda path: sample_rows(path)),
    "resume": (RECORD, lambda path: list(iter_records(path))),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_reads_through_it(tmp_path: Path, reader: str) -> None:
    good, read = READERS[reader]
    path = tmp_path / "lines.jsonl"
    path.write_text(json.dumps(good) + "\n")
    read(path)  # control: the good line is read
    path.write_text(json.dumps(good) + "\n" + "[]\n")
    with pytest.raises(DataError, match="expected a JSON object, got list") as caught:
        read(path)
    assert (caught.value.path, caught.value.line) == (str(path), 2)


def test_bytes_that_are_not_utf8_are_named_by_their_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match="not UTF-8 text") as caught:
        list(read_jsonl(path))
    assert caught.value.line == 3 and caught.value.path == str(path)
    # Control: the same file with valid text reads.
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": "\xc3\xbf"}\n')
    assert [record["a"] for _, record in read_jsonl(path)] == [1, 2, "\u00ff"]


def test_a_damaged_or_cut_gzip_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    whole = gzip.compress(b"".join(b'{"a": %d}\n' % i for i in range(2000)))
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])  # cut short
    with pytest.raises(DataError, match="damaged or cut short") as caught:
        list(read_jsonl(path, what="results"))
    assert caught.value.path == str(path) and (caught.value.line or 0) > 1
    damaged = bytearray(whole)
    damaged[len(whole) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="damaged or cut short"):
        list(read_jsonl(path, what="results"))
    path.write_bytes(whole)  # control: the whole stream reads
    assert len(list(read_jsonl(path))) == 2000
