"""Generate the sample bank of the embedded model, resumably, with ``ttscale solve``.

Each set (HumanEval x 16, GSM8K x 32) is drawn in chunks of a few problems. A chunk is one
``ttscale solve`` run (the project's own runner, journal and resume) writing under ``work/``; once
it is finished it is packed into ``<set>/part-NNN.jsonl.gz`` (text and metadata) and
``<set>/part-NNN.npz`` (float16 token logprobs), and its working files are removed. Packed parts
never change, so the repository grows by what is new.

Stopping at any moment loses nothing paid for: the chunk in progress keeps every sample in its
journal. ``--checkpoint`` writes that journal gzipped beside it (``work/*.samples.jsonl.gz``), which
is what gets committed; a fresh clone restores the journal from it and resumes the chunk.

    nice -n 19 python benchmarks/bank/generate.py            # draw until done (or Ctrl-C)
    python benchmarks/bank/generate.py --checkpoint          # gzip the live journal, for a commit
    python benchmarks/bank/generate.py --status              # what is packed and what is left
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ttscale.datasets import load_dataset
from ttscale.errors import TTScaleError
from ttscale.local_model import LLAMA_CPP_PYTHON_VERSION, LocalModelServer, assemble_model
from ttscale.solve import SolveConfig, solve

log = logging.getLogger("bank")

BANK = Path(__file__).resolve().parent
WORK = BANK / "work"
TOP_LOGPROBS = 5
SEED = 20261206
TEMPERATURE = 0.8
MAX_TOKENS = 512


@dataclass(frozen=True)
class BankSet:
    """One dataset of the bank and how it is drawn."""

    name: str
    samples: int
    chunk: int
    grader: str | None
    code: bool


SETS = (
    BankSet("humaneval", samples=16, chunk=8, grader=None, code=True),
    BankSet("gsm8k", samples=32, chunk=4, grader="math", code=False),
)


def chunk_ids(bank_set: BankSet) -> list[list[str]]:
    ids = [problem.id for problem in load_dataset(bank_set.name)]
    return [ids[start : start + bank_set.chunk] for start in range(0, len(ids), bank_set.chunk)]


def part_paths(bank_set: BankSet, number: int) -> tuple[Path, Path]:
    stem = BANK / bank_set.name / f"part-{number:03d}"
    return stem.with_suffix(".jsonl.gz"), stem.with_suffix(".npz")


def work_out(bank_set: BankSet, number: int) -> Path:
    return WORK / f"{bank_set.name}-{number:03d}.jsonl"


def config_for(bank_set: BankSet, out: Path) -> SolveConfig:
    return SolveConfig(
        dataset=bank_set.name,
        out=out,
        strategy="majority",
        samples=bank_set.samples,
        grader=bank_set.grader,
        temperature=TEMPERATURE,
        max_tokens=MAX_TOKENS,
        seed=SEED,
        concurrency=8,
        problem_concurrency=4,
        allow_code_execution=bank_set.code,
        logprobs=TOP_LOGPROBS,
        # Under nice on a shared CPU a request can take many minutes; one that times out is
        # drawn again, so wait rather than pay twice.
        request_timeout_s=3600.0,
    )


def _journal(out: Path) -> Path:
    return out.with_name(out.name + ".samples.jsonl")


def restore(out: Path) -> None:
    """Unpack a committed checkpoint of the chunk's journal when the live one is missing."""
    journal = _journal(out)
    packed = journal.with_name(journal.name + ".gz")
    if packed.exists() and not journal.exists():
        with gzip.open(packed, "rb") as source, journal.open("wb") as target:
            shutil.copyfileobj(source, target)
        log.info("restored %s from its checkpoint", journal.name)


def checkpoint() -> None:
    """Gzip every live journal under work/ (the committed form of a chunk in progress)."""
    for journal in sorted(WORK.glob("*.samples.jsonl")):
        packed = journal.with_name(journal.name + ".gz")
        # No name or time in the header: an unchanged journal packs to the same bytes, so a
        # checkpoint of a chunk that did not grow adds nothing to the history.
        with (
            journal.open("rb") as source,
            packed.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as target,
        ):
            shutil.copyfileobj(source, target)
        log.info("checkpoint %s (%d bytes)", packed.name, packed.stat().st_size)


def _journal_logprobs(out: Path) -> dict[tuple[str, int], list[dict[str, Any]]]:
    found: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with _journal(out).open(encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            candidate = entry["candidate"]
            if candidate.get("logprobs") is not None:
                found[(entry["problem"], int(candidate["index"]))] = candidate["logprobs"]
    return found


def pack(bank_set: BankSet, number: int) -> None:
    """Turn a finished chunk's records and journal into the part's two files."""
    out = work_out(bank_set, number)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line]
    # Records are written as problems finish; the part keeps the dataset's order.
    ids = chunk_ids(bank_set)[number]
    order = {problem_id: position for position, problem_id in enumerate(ids)}
    records.sort(key=lambda record: order[record["id"]])
    logprobs = _journal_logprobs(out)
    rows: list[dict[str, Any]] = []
    chosen: list[np.ndarray] = []
    top: list[np.ndarray] = []
    chars: list[np.ndarray] = []
    offsets = [0]
    for record in records:
        for sample in sorted(record["samples"], key=lambda s: s["index"]):
            tokens = logprobs.get((record["id"], sample["index"]))
            if tokens is None:
                raise SystemExit(f"{out}: sample {record['id']}#{sample['index']} has no logprobs")
            chosen.append(np.array([t["logprob"] for t in tokens], dtype=np.float16))
            alternatives = np.full((len(tokens), TOP_LOGPROBS), np.nan, dtype=np.float16)
            for row, token in enumerate(tokens):
                values = [value for _, value in token["top"]][:TOP_LOGPROBS]
                alternatives[row, : len(values)] = values
            top.append(alternatives)
            chars.append(np.array([len(t["token"]) for t in tokens], dtype=np.uint16))
            offsets.append(offsets[-1] + len(tokens))
            rows.append(
                {
                    "problem": record["id"],
                    "index": sample["index"],
                    "seed": sample["seed"],
                    "text": sample["text"],
                    "answer": sample["answer"],
                    "finish_reason": sample["finish_reason"],
                    "completion_tokens": sample["completion_tokens"],
                    "correct_at_generation": sample["correct"],
                    "grade_reason": sample["grade_reason"],
                }
            )
    text_path, array_path = part_paths(bank_set, number)
    text_path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(text_path, "wt", encoding="utf-8", compresslevel=9) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    np.savez_compressed(
        array_path,
        chosen=np.concatenate(chosen),
        top=np.concatenate(top),
        token_chars=np.concatenate(chars),
        offsets=np.array(offsets, dtype=np.int64),
    )
    for path in WORK.glob(f"{out.stem}*"):
        path.unlink()
    log.info("packed %s (%d samples)", text_path.relative_to(BANK), len(rows))


def write_manifest(server: LocalModelServer) -> None:
    """What the bank holds and how it was drawn: model file hash, llama.cpp, settings, counts."""
    path = BANK / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    model = assemble_model()
    if manifest.get("model", {}).get("bytes") != model.stat().st_size:
        digest = hashlib.sha256()
        with model.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        manifest["model"] = {
            "name": server.model,
            "file": model.name,
            "bytes": model.stat().st_size,
            "sha256": digest.hexdigest(),
        }
    manifest["server"] = f"llama.cpp llama-server from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}"
    manifest["settings"] = {
        "temperature": TEMPERATURE,
        "max_tokens": MAX_TOKENS,
        "seed": SEED,
        "top_logprobs": TOP_LOGPROBS,
        "runner": "ttscale solve (strategy majority: every sample drawn)",
    }
    today = time.strftime("%Y-%m-%d", time.gmtime())
    manifest.setdefault("dates", {}).setdefault("first", today)
    manifest["dates"]["last"] = today
    manifest["sets"] = {}
    for bank_set in SETS:
        parts = sorted((BANK / bank_set.name).glob("part-*.npz"))
        samples = tokens = 0
        for part in parts:
            offsets = np.load(part)["offsets"]
            samples += len(offsets) - 1
            tokens += int(offsets[-1])
        manifest["sets"][bank_set.name] = {
            "problems_planned": sum(len(ids) for ids in chunk_ids(bank_set)),
            "samples_per_problem": bank_set.samples,
            "parts": len(parts),
            "samples": samples,
            "completion_tokens": tokens,
        }
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def status(first: str | None = None) -> list[tuple[BankSet, int, list[str]]]:
    """The chunks not packed yet, in drawing order (the set named ``first`` before the others)."""
    left = []
    for bank_set in sorted(SETS, key=lambda candidate: candidate.name != first):
        for number, ids in enumerate(chunk_ids(bank_set)):
            if not part_paths(bank_set, number)[0].exists():
                left.append((bank_set, number, ids))
    return left


async def generate(server: LocalModelServer, first: str | None = None) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    for bank_set, number, ids in status(first):
        out = work_out(bank_set, number)
        restore(out)
        started = time.monotonic()
        try:
            summary = await solve(
                config_for(bank_set, out), base_url=server.base_url, model=server.model, only=ids
            )
        except TTScaleError as exc:
            # What arrived is journalled; the next pass over the chunks resumes it.
            log.warning(
                "%s chunk %d stopped (%s); going on with the next", bank_set.name, number, exc
            )
            continue
        tokens = summary.usage.completion_tokens
        log.info(
            "%s chunk %d: %d problems, %d completion tokens in %.0f s (%.1f tokens/s)",
            bank_set.name,
            number,
            len(summary.records),
            tokens,
            time.monotonic() - started,
            tokens / max(time.monotonic() - started, 1e-9),
        )
        pack(bank_set, number)
        write_manifest(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="store_true", help="gzip the live journals")
    parser.add_argument("--status", action="store_true", help="print what is left and stop")
    parser.add_argument(
        "--first",
        choices=[bank_set.name for bank_set in SETS],
        help="draw this set's chunks before the others' (a chunk left midway resumes later)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.checkpoint:
        checkpoint()
        return 0
    left = status()
    if args.status:
        for bank_set in SETS:
            total = len(chunk_ids(bank_set))
            todo = sum(1 for entry in left if entry[0] is bank_set)
            log.info("%s: %d of %d chunks packed", bank_set.name, total - todo, total)
        return 0
    if not left:
        log.info("the bank is complete")
        return 0
    with LocalModelServer() as server:
        while status():
            asyncio.run(generate(server, args.first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
