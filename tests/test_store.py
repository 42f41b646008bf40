"""The sample store's crash safety: per-sample journalling under SIGKILL, torn tails, a full disk.

Each guard has a control: the same test with the guard taken out (in the subprocess, by patching
the one function that provides it) shows that the test notices.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ttscale import store
from ttscale.store import SampleJournal, journal_key
from ttscale.testing import LoopbackServer, ScriptRequest
from ttscale.testing.server import Fault
from ttscale.types import Candidate, SampleBatch, Usage

PROBLEMS = 6
SAMPLES = 8

# Run the CLI in a subprocess, optionally with one guard patched out first.
_RUNNER = """
import sys
patch = sys.argv.pop(1)
if patch == "no-arrivals":
    import ttscale.samplers.openai_sampler as sampler
    sampler.deliver = lambda batch: None
elif patch == "no-stop":
    import ttscale.store as store
    store.SampleJournal.check_writable = lambda self: None
from ttscale.cli import main
sys.argv[0] = "ttscale"
main()
"""


def write_dataset(path: Path, problems: int = PROBLEMS) -> Path:
    lines = [
        json.dumps({"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)})
        for i in range(problems)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def right(request: ScriptRequest) -> str:
    number = int(request.prompt.split()[2])
    return f"The answer is {2 * number}."


def command(dataset: Path, out: Path, server: LoopbackServer, patch: str = "none") -> list[str]:
    return [
        sys.executable, "-c", _RUNNER, patch, "solve", str(dataset), "--out", str(out),
        "--base-url", server.base_url, "--model", "loopback", "-n", str(SAMPLES),
        "--concurrency", "3", "--no-plot",
    ]  # fmt: skip


def journalled(out: Path) -> int:
    journal = out.with_name(out.name + ".samples.jsonl")
    return len(journal.read_text().splitlines()) if journal.exists() else 0


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


# -- SIGKILL mid-run ---------------------------------------------------------------------------


def killed_run(tmp_path: Path, patch: str) -> tuple[int, int, int, int]:
    """SIGKILL a real `ttscale solve` at concurrency 3 while one request hangs: what the server
    delivered, what was journalled, and what the resumed run bought and used."""
    dataset = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "results.jsonl"
    # One sample per request (n rejected), so a draw call of 8 samples is 8 requests; request 12
    # hangs, so its problem's draw call never returns while its other samples have arrived.
    hang = Fault("slow", on_requests=frozenset({12}), delay=60.0)
    with LoopbackServer(answers=right, n_support="reject", faults=(hang,)) as server:
        victim = subprocess.Popen(
            command(dataset, out, server, patch),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Everything but the hanging sample gets delivered; then give the client time to
            # journal what it received (it needs none when it journals on arrival).
            everything = PROBLEMS * SAMPLES - 1
            assert wait_for(lambda: server.delivered_usage()["samples"] >= everything, 60)
            wait_for(lambda: journalled(out) >= everything, 10)
        finally:
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
        delivered = server.delivered_usage()["samples"]
        kept = journalled(out)
        resumed = subprocess.run(
            command(dataset, out, server), capture_output=True, text=True, timeout=120
        )
        assert resumed.returncode == 0, resumed.stderr
        bought_again = server.delivered_usage()["samples"] - delivered
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(PROBLEMS))
    used = sum(r["n"] for r in records)
    return delivered, kept, bought_again, used


def test_sigkill_at_concurrency_3_journals_every_delivered_sample(tmp_path: Path) -> None:
    delivered, kept, bought_again, used = killed_run(tmp_path, "none")
    assert delivered == kept == PROBLEMS * SAMPLES - 1
    assert bought_again == used - kept == 1  # the resumed run re-buys none: only the lost one


def test_control_journalling_per_draw_call_loses_delivered_samples(tmp_path: Path) -> None:
    # Without per-response arrivals the journal is written when a draw call returns: the
    # hanging request's problem journals none of the 7 samples it was delivered.
    delivered, kept, bought_again, used = killed_run(tmp_path, "no-arrivals")
    assert kept == delivered - (SAMPLES - 1)
    assert bought_again == used - kept == SAMPLES


# -- a torn last line --------------------------------------------------------------------------


def sample(index: int) -> SampleBatch:
    candidate = Candidate(text=f"answer {index}", index=index, completion_tokens=2)
    return SampleBatch((candidate,), Usage(samples=1, prompt_tokens=5, completion_tokens=2))


def test_a_torn_last_line_is_repaired_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = SampleJournal(path)
    journal.record("p", "k", sample(0))
    journal.close()
    with path.open("a") as handle:
        handle.write('{"problem": "p", "params": "k", "prompt_to')  # killed mid-write
    again = SampleJournal(path)
    again.record("p", "k", sample(1))
    again.close()
    assert path.read_text().endswith("\n")
    reread = SampleJournal(path)
    assert set(reread.get(journal_key("p", "k"), range(3))) == {0, 1}
    reread.close()


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = SampleJournal(path)
    journal.record("p", "k", sample(0))
    journal.close()
    path.write_text(path.read_text().rstrip("\n"))
    again = SampleJournal(path)
    again.record("p", "k", sample(1))
    again.close()
    assert len(path.read_text().splitlines()) == 2
    assert set(SampleJournal(path).get(journal_key("p", "k"), range(3))) == {0, 1}


def test_control_without_repair_the_next_entry_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "repair_tail", lambda path: False)
    path = tmp_path / "j.jsonl"
    journal = SampleJournal(path)
    journal.record("p", "k", sample(0))
    journal.close()
    with path.open("a") as handle:
        handle.write('{"problem": "p", "params": "k", "prompt_to')
    again = SampleJournal(path)
    again.record("p", "k", sample(1))
    again.close()
    assert set(SampleJournal(path).get(journal_key("p", "k"), range(3))) == {0}  # glued, lost


# -- a full disk -------------------------------------------------------------------------------


def full_disk_run(tmp_path: Path, patch: str) -> tuple[subprocess.CompletedProcess[str], int, int]:
    """A run whose files may not grow past 24 KB (RLIMIT_FSIZE), then a rerun without the limit:
    the first run's result, the samples it was delivered and what the rerun bought again."""
    problems = 40
    dataset = write_dataset(tmp_path / "data.jsonl", problems)
    out = tmp_path / "results.jsonl"
    limit = 24 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with LoopbackServer(answers=right) as server:
        full = subprocess.run(
            command(dataset, out, server, patch),
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=small_files,  # only sets a resource limit
        )
        delivered = server.delivered_usage()["samples"]
        kept = journalled(out)
        rerun = subprocess.run(command(dataset, out, server), capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        bought_again = server.delivered_usage()["samples"] - delivered
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == problems
    # Nothing journalled is bought again.
    assert bought_again == sum(r["n"] for r in records) - kept
    return full, delivered, kept


def test_a_full_disk_stops_the_run_with_one_clear_message(tmp_path: Path) -> None:
    full, delivered, kept = full_disk_run(tmp_path, "none")
    said = " ".join((full.stdout + full.stderr).split())
    assert full.returncode == 2, said
    assert "Traceback" not in said
    assert said.count("error:") == 1
    assert re.search(r"cannot write the (sample journal|results file) \S*results\.jsonl", said)
    found = re.search(r"Kept: (\d+) samples in results\.jsonl\.samples\.jsonl", said)
    assert found is not None and int(found.group(1)) == kept
    lost = re.search(r"; (\d+) that arrived after the failure", said)
    unwritten = int(lost.group(1)) if lost else 0
    assert delivered == kept + unwritten  # every sample delivered is accounted for
    # Drawing stopped at the failure: at most what was in flight then (3 requests of 8).
    assert unwritten <= 3 * SAMPLES


def test_control_a_run_that_keeps_drawing_after_the_failure_is_caught(tmp_path: Path) -> None:
    _full, delivered, kept = full_disk_run(tmp_path, "no-stop")
    assert delivered - kept > 3 * SAMPLES  # what the test above bounds


_QUEUED_RUNNER = """
import asyncio, json, resource, sys
from pathlib import Path
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.store import JournalledSampler, SampleJournal

base_url, journal_path, patch = sys.argv[1:4]
if patch == "no-admission":
    import ttscale.samplers.openai_sampler as sampler
    sampler.check_admission = lambda: None
journal = SampleJournal(Path(journal_path))
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))  # the journal's first line cannot be written


async def main():
    # One request at a time: problem b's draw waits for its turn behind problem a's.
    config = OpenAISamplerConfig(model="loopback", base_url=base_url, concurrency=1)
    async with OpenAISampler(config) as inner:
        views = [JournalledSampler(inner, journal, problem) for problem in ("a", "b")]
        outcomes = await asyncio.gather(
            *(view.sample("What is 1 + 1?", 8) for view in views), return_exceptions=True
        )
    print(json.dumps([repr(o) for o in outcomes]))


asyncio.run(main())
"""


def queued_draw_run(tmp_path: Path, patch: str) -> tuple[int, list[str]]:
    """Two problems' draws through one journal, the second queued behind the first, whose samples
    cannot be written: the requests the server got, and what each draw ended with."""
    with LoopbackServer(answers=right) as server:
        child = subprocess.run(
            [sys.executable, "-c", _QUEUED_RUNNER, server.base_url, str(tmp_path / "j"), patch],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.returncode == 0, child.stderr
        return server.request_count, json.loads(child.stdout)


def test_a_draw_queued_when_the_journal_fails_sends_no_request(tmp_path: Path) -> None:
    requests, outcomes = queued_draw_run(tmp_path, "none")
    assert requests == 1  # the queued draw asked the journal at its turn, and was refused
    assert len(outcomes) == 2
    assert all("cannot write the sample journal" in outcome for outcome in outcomes), outcomes


def test_control_a_queued_draw_that_is_not_asked_at_its_turn_buys_samples_it_cannot_keep(
    tmp_path: Path,
) -> None:
    requests, _ = queued_draw_run(tmp_path, "no-admission")
    assert requests == 2


# -- streamed (watched) samples ----------------------------------------------------------------


class StopAfter:
    """A watcher that stops a streamed sample after ``tokens`` tokens."""

    def __init__(self, tokens: int) -> None:
        self.left = tokens

    def feed(self, token: object) -> bool:
        self.left -= 1
        return self.left <= 0


def test_streamed_samples_are_journalled_one_by_one(tmp_path: Path) -> None:
    lines = asyncio.run(journal_streams(tmp_path, wait=20.0))
    # Which stream reaches the server third (and is held) is a race between three connections.
    indices = sorted(line["candidate"]["index"] for line in lines)
    assert len(indices) == 2 and set(indices) < {0, 1, 2}, indices
    assert all(line["candidate"]["finish_reason"] == "early_stop" for line in lines)
    assert all(line["params"].endswith("/watched") for line in lines)  # kept apart from whole ones


def test_control_streams_without_arrivals_are_journalled_only_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ttscale.samplers.openai_sampler as sampler

    monkeypatch.setattr(sampler, "deliver", lambda batch: None)
    assert asyncio.run(journal_streams(tmp_path, wait=2.0)) == []


async def journal_streams(tmp_path: Path, wait: float) -> list[dict[str, Any]]:
    """Three streamed samples stopped after 3 tokens, the third held back by the server: the
    journal's lines while that draw call is still waiting for it."""
    from ttscale.samplers.openai_sampler import OpenAISampler
    from ttscale.store import JournalledSampler
    from ttscale.types import SamplingParams

    path = tmp_path / "j.jsonl"
    # The third stream (request 2) is held back: the first two must be journalled meanwhile.
    held = Fault("slow", on_requests=frozenset({2}), delay=30.0)
    answer = "one two three four five six seven eight"
    async with LoopbackServer(default_answer=answer, token_interval=0.01, faults=(held,)) as srv:
        sampler = OpenAISampler(model="loopback", base_url=srv.base_url, concurrency=3)
        journal = SampleJournal(path)
        view = JournalledSampler(sampler, journal, "p")
        params = SamplingParams(logprobs=0, seed=1)
        draw = asyncio.ensure_future(
            view.sample_watched("q", 3, params, watcher=lambda index: StopAfter(3))
        )
        deadline = time.monotonic() + wait
        for _ in range(int(wait / 0.05) + 1):  # polling a file: no event to wait on
            if len(path.read_text().splitlines()) >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert not draw.done()  # the draw call has not returned, its samples are journalled
        draw.cancel()
        with pytest.raises(asyncio.CancelledError):
            await draw
        journal.close()
        await sampler.aclose()
    return lines


# -- reading records back --------------------------------------------------------------------


def test_sample_rows_evaluate_as_the_whole_records_do(tmp_path: Path) -> None:
    from ttscale.report import offline_result, sample_rows

    results = tmp_path / "results.jsonl"
    with results.open("w") as handle:
        for problem in range(12):
            samples = [
                {"index": i, "text": "...", "answer": str((problem + i) % 3), "correct": i % 3 == 0,
                 "score": None, "latency": 0.1}
                for i in range(8)
            ]  # fmt: skip
            record = {"id": f"p{problem}", "strategy": "majority", "samples": samples}
            handle.write(json.dumps(record) + "\n")
    whole = [json.loads(line) for line in results.read_text().splitlines()]
    rows = sample_rows(results)
    expected, _ = offline_result(whole, subsets=10)
    got, _ = offline_result(rows, subsets=10)
    for name, values in expected.accuracy.items():
        assert list(got.accuracy[name]) == list(values)
    # Equal samples share one row: 3 answers x 2 verdicts at most, whatever the file's size.
    assert len({id(sample) for row in rows for sample in row["samples"]}) <= 6


# -- a sample cut short by a failure ------------------------------------------------------------


class NeverStop:
    def feed(self, token: object) -> bool:
        return False


async def cut_then_resume(tmp_path: Path) -> tuple[list[dict[str, Any]], SampleBatch, int]:
    """A watched draw of 3 whose second stream breaks off half way, then the same draw resumed
    from the journal on a healthy server: the journal's lines after the first run, the resumed
    batch, and how many streams the healthy server was asked for."""
    from ttscale.errors import SamplerError
    from ttscale.samplers.openai_sampler import OpenAISampler
    from ttscale.store import JournalledSampler
    from ttscale.types import SamplingParams

    path = tmp_path / "j.jsonl"
    params = SamplingParams(logprobs=0, seed=1)
    answer = "one two three four five six seven eight"
    cut = Fault("cut_stream", on_requests=frozenset({1}))
    async with LoopbackServer(default_answer=answer, faults=(cut,)) as broken:
        sampler = OpenAISampler(model="loopback", base_url=broken.base_url, concurrency=1)
        journal = SampleJournal(path)
        with pytest.raises(SamplerError, match="broke off") as failed:
            await JournalledSampler(sampler, journal, "p").sample_watched(
                "q", 3, params, watcher=lambda index: NeverStop()
            )
        journal.close()
        partial = failed.value.partial
        assert isinstance(partial, SampleBatch)
        assert [c.finish_reason for c in partial.candidates] == ["stop", "error", "stop"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    async with LoopbackServer(default_answer=answer) as healthy:
        sampler = OpenAISampler(model="loopback", base_url=healthy.base_url, concurrency=1)
        journal = SampleJournal(path)
        batch = await JournalledSampler(sampler, journal, "p").sample_watched(
            "q", 3, params, watcher=lambda index: NeverStop()
        )
        journal.close()
        asked = healthy.request_count
        # Resumed once more: everything replays, and reports the same spend as the first resume.
        journal = SampleJournal(path)
        again = await JournalledSampler(sampler, journal, "p").sample_watched(
            "q", 3, params, watcher=lambda index: NeverStop()
        )
        journal.close()
        assert healthy.request_count == asked
        assert [c.text for c in again.candidates] == [c.text for c in batch.candidates]
        assert again.usage.replace(wall_time_s=0) == batch.usage.replace(wall_time_s=0)
    return lines, batch, asked


def test_a_stream_cut_by_a_failure_is_kept_as_paid_but_drawn_again_on_resume(
    tmp_path: Path,
) -> None:
    lines, batch, asked = asyncio.run(cut_then_resume(tmp_path))
    cut = [line for line in lines if line["candidate"]["finish_reason"] == "error"]
    assert len(cut) == 1 and cut[0]["candidate"]["completion_tokens"] > 0  # paid, so kept
    assert cut[0]["candidate"]["text"] != "one two three four five six seven eight"
    # The resumed draw gives three whole samples: the cut one is drawn again, not replayed.
    assert [c.text for c in batch.candidates] == ["one two three four five six seven eight"] * 3
    assert [c.finish_reason for c in batch.candidates] == ["stop"] * 3
    assert asked == 1  # index 1, the cut one
    # What the cut stream cost is part of what the resumed draw reports as spent.
    drawn_again = sum(c.completion_tokens for c in batch.candidates)
    assert batch.usage.completion_tokens == drawn_again + cut[0]["candidate"]["completion_tokens"]


# -- the same draw asked twice at once ----------------------------------------------------------


async def twice_at_once(tmp_path: Path) -> tuple[int, Usage, Usage]:
    """A judge's view asked the same prompt twice at once, then the same on a resumed journal:
    the server's requests, and the usage each run reports."""
    from ttscale.samplers.openai_sampler import OpenAISampler
    from ttscale.store import JournalledSampler

    path = tmp_path / "j.jsonl"
    usages = []
    async with LoopbackServer(default_answer="Yes", latency=0.05) as server:
        sampler = OpenAISampler(model="loopback", base_url=server.base_url)
        for _ in range(2):
            journal = SampleJournal(path)
            view = JournalledSampler(sampler, journal, "p", by_prompt=True)
            batches = await asyncio.gather(*(view.sample("Is 7 right?", 1) for _ in range(2)))
            journal.close()
            assert [b.candidates[0].text for b in batches] == ["Yes", "Yes"]
            usages.append(batches[0].usage + batches[1].usage)
        requests = server.request_count
    return requests, usages[0].replace(wall_time_s=0), usages[1].replace(wall_time_s=0)


def test_the_same_draw_asked_twice_at_once_is_paid_once_and_resumes_the_same() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        requests, clean, resumed = asyncio.run(twice_at_once(Path(directory)))
    assert requests == 1  # the second ask waited for the first's sample
    assert clean == resumed and clean.requests == 1 and clean.completion_tokens > 0


def test_every_sample_cut_short_at_an_index_is_kept_and_counted(tmp_path: Path) -> None:
    from ttscale.store import StoredSample

    path = tmp_path / "j.jsonl"
    key = journal_key("p", "k")
    spent = Usage(requests=1, samples=1, prompt_tokens=10)
    drawn = [
        Candidate("a b c", 0, finish_reason="error", completion_tokens=3),
        Candidate("a b c d e f", 0, finish_reason="cancelled", completion_tokens=6),
        Candidate("a b c d e f g h", 0, finish_reason="stop", completion_tokens=8),
    ]
    for candidate in drawn:  # three runs: cut, cut again on resume, then whole
        journal = SampleJournal(path)
        assert journal.put(key, [StoredSample(candidate, spent)]) == 1
        journal.close()
    journal = SampleJournal(path)
    (hit,) = journal.get(key, [0]).values()
    assert hit.candidate.text == "a b c d e f g h"
    assert (hit.usage.completion_tokens, hit.usage.requests, hit.usage.prompt_tokens) == (17, 3, 30)
    # Control: a whole sample, once held, is never replaced, nor its cost added to.
    assert journal.put(key, [StoredSample(drawn[0], spent)]) == 0
    assert journal.get(key, [0])[0].usage.completion_tokens == 17
    journal.close()


@pytest.mark.parametrize("keep", [-1, -2], ids=["before-done", "before-usage"])
def test_a_stream_that_breaks_after_the_models_end_is_a_whole_sample(keep: int) -> None:
    from ttscale.samplers.openai_sampler import OpenAISampler
    from ttscale.types import SamplingParams

    async def draw() -> SampleBatch:
        tail = Fault("cut_stream", on_requests=frozenset({0}), keep_events=keep)
        async with LoopbackServer(default_answer="one two three", faults=(tail,)) as server:
            sampler = OpenAISampler(model="loopback", base_url=server.base_url)
            params = SamplingParams(logprobs=0, seed=1)
            return await sampler.sample_watched("q", 1, params, watcher=lambda index: NeverStop())

    (candidate,) = asyncio.run(draw()).candidates
    assert (candidate.text, candidate.finish_reason) == ("one two three", "stop")
    assert not candidate.cut_short and candidate.completion_tokens == 3


def test_control_a_stream_that_breaks_before_the_models_end_is_cut_short() -> None:
    from ttscale.errors import SamplerError
    from ttscale.samplers.openai_sampler import OpenAISampler
    from ttscale.types import SamplingParams

    async def draw() -> None:
        cut = Fault("cut_stream", on_requests=frozenset({0}), keep_events=-3)  # before the finish
        async with LoopbackServer(default_answer="one two three", faults=(cut,)) as server:
            sampler = OpenAISampler(model="loopback", base_url=server.base_url)
            params = SamplingParams(logprobs=0, seed=1)
            await sampler.sample_watched("q", 1, params, watcher=lambda index: NeverStop())

    with pytest.raises(SamplerError, match="broke off") as failed:
        asyncio.run(draw())
    assert [c.finish_reason for c in failed.value.partial.candidates] == ["error"]
