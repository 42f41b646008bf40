"""The sample store: where every paid-for sample is kept, and the one sampler that answers from it.

A :class:`SampleStore` keeps samples under a string key (what decides the samples of a draw) and
an index. Two stores implement it: the run's JSONL journal (:class:`SampleJournal`, here, which
makes a killed run resumable) and the SQLite cache that outlives runs
(:class:`~ttscale.cache.SampleCache`). :class:`StoredSampler` puts either in front of any Sampler:
it answers what the store holds, draws only the runs of indices it lacks (with their own
``start_index``, so seeds are the ones the inner sampler would have used anyway), and stores
each response's samples the moment they arrive (:func:`ttscale.protocols.arrivals`), not when
the draw call returns. Samples of a draw that failed part way are stored too: they were paid.

The journal's guarantees:

- Every sample is written to the file as its response arrives, one ``write`` per sample, so a
  process killed (even with SIGKILL) loses only responses still on the wire. The file is fsynced
  at most every :data:`FSYNC_INTERVAL_S` seconds and on close, so a power cut loses at most that
  last second.
- A torn last line (a kill mid-write) is repaired before anything is appended: cut off, or ended
  with its newline when it is whole, so the next entry is never glued onto it.
- A write that fails (disk full, file size limit) stops further drawing: the sample stays in
  memory for the run and :class:`StoreWriteError` names the file and what it holds.
- A sample a failure cut short (:attr:`~ttscale.types.Candidate.cut_short`: a stream that broke
  off, a draw cancelled) is journalled, since it was paid for, but never replayed as a sample: a
  resumed run draws its index again and reports what the cut one cost beside what the new one
  did.
- Only entries of problems in progress are held in memory: a finished problem's are dropped
  (:meth:`SampleJournal.forget`), and a resumed run loads only the problems not yet finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ttscale.errors import SamplerError, TTScaleError
from ttscale.protocols import (
    Sampler,
    TokenWatcher,
    WrappedSampler,
    arrivals,
    check_draw,
    draw_from,
)
from ttscale.types import Candidate, Prompt, SampleBatch, SamplingParams, Usage

__all__ = [
    "FSYNC_INTERVAL_S",
    "JournalEntry",
    "JournalledSampler",
    "SampleJournal",
    "SampleStore",
    "StoreWriteError",
    "StoredSample",
    "StoredSampler",
    "index_runs",
    "iter_journal",
    "journal_key",
    "params_key",
    "prompt_key",
    "repair_tail",
    "usage_shares",
]

log = logging.getLogger(__name__)

FSYNC_INTERVAL_S = 1.0
"""The journal is fsynced at most this often (and on close); every write is flushed at once."""


class StoreWriteError(TTScaleError):
    """A store could not write a sample (disk full, file too large); ``path`` names the file."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


@dataclass(frozen=True)
class StoredSample:
    """A stored sample and its share of what drawing it cost."""

    candidate: Candidate
    usage: Usage


class SampleStore(Protocol):
    """Keeps samples by draw key and index; a sample, once stored, never changes."""

    def get(self, key: str, indices: Iterable[int]) -> Mapping[int, StoredSample]:
        """The stored samples of ``key`` among ``indices``; a missing index is a miss."""
        ...

    def put(
        self,
        key: str,
        samples: Sequence[StoredSample],
        *,
        description: Mapping[str, Any] | None = None,
    ) -> int:
        """Store ``samples`` under ``key``; returns how many were new. May raise
        :class:`StoreWriteError`, after keeping them for this process."""
        ...

    def check_writable(self) -> None:
        """Raise the :class:`StoreWriteError` of an earlier failed write, if any."""
        ...

    def close(self) -> None: ...


# -- pure helpers -----------------------------------------------------------------------------


def index_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Indices as sorted runs of consecutive indices ``(start, count)`` (pure)."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indices):
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def usage_shares(batch: SampleBatch) -> list[Usage]:
    """Each candidate's share of a batch's usage; the shares add up to the batch's usage.

    Whole-number fields are split as evenly as they go (the first candidates take the remainder);
    completion tokens are the candidates' own counts where those add up to the batch's total;
    cost follows the tokens. Wall time is not shared: a sample from a store takes none.
    """
    count = len(batch.candidates)
    if count == 0:
        return []
    total = batch.usage

    def split(amount: int) -> list[int]:
        share, rest = divmod(amount, count)
        return [share + (1 if position < rest else 0) for position in range(count)]

    own = [candidate.completion_tokens for candidate in batch.candidates]
    completion = own if sum(own) == total.completion_tokens else split(total.completion_tokens)
    prompt = split(total.prompt_tokens)
    requests = split(total.requests)
    failed = split(total.failed_requests)
    tokens = [p + c for p, c in zip(prompt, completion, strict=True)]
    all_tokens = sum(tokens)
    return [
        Usage(
            requests=requests[position],
            samples=1,
            prompt_tokens=prompt[position],
            completion_tokens=completion[position],
            cost=total.cost * (tokens[position] / all_tokens if all_tokens else 1 / count),
            failed_requests=failed[position],
        )
        for position in range(count)
    ]


def _stored(batch: SampleBatch) -> list[StoredSample]:
    return [
        StoredSample(candidate, share)
        for candidate, share in zip(batch.candidates, usage_shares(batch), strict=True)
    ]


def _unaccounted(total: Usage, stored: Usage) -> Usage:
    """What ``total`` holds beyond what was already stored from it (never below 0)."""
    return Usage(
        requests=max(total.requests - stored.requests, 0),
        samples=max(total.samples - stored.samples, 0),
        prompt_tokens=max(total.prompt_tokens - stored.prompt_tokens, 0),
        completion_tokens=max(total.completion_tokens - stored.completion_tokens, 0),
        cost=max(total.cost - stored.cost, 0.0),
    )


# -- the stored sampler -------------------------------------------------------------------------


class StoredSampler(WrappedSampler):
    """A Sampler that answers from a :class:`SampleStore` and draws only what it lacks.

    Subclasses say how a draw is keyed (:meth:`key`), what a replayed sample costs now
    (:meth:`replay_usage`: nothing by default) and what form of a sample is stored
    (:meth:`stored_form`). Concurrent calls on one event loop never draw the same sample twice: a
    call waits for samples another call is drawing, and draws them itself only if that call did
    not get them (with ``shared`` True). ``strict`` makes a draw that returns fewer samples than
    asked an error.
    """

    strict = True
    shared = True

    def __init__(self, sampler: Sampler, store: SampleStore) -> None:
        super().__init__(sampler)
        self.store = store
        self.hits = 0
        self.misses = 0
        self.saved = Usage()
        self.drawn = Usage()
        self._pending: dict[tuple[str, int], asyncio.Future[None]] = {}

    # -- what subclasses decide --------------------------------------------------------------

    def key(self, prompt: Prompt, params: SamplingParams | None = None) -> str:
        raise NotImplementedError

    def keyed(
        self, prompt: Prompt, params: SamplingParams | None, *, watched: bool
    ) -> tuple[str, Mapping[str, Any] | None]:
        """A draw's key, and what it was made of where the store keeps that beside it.
        Streamed (watched) samples may stop early, so they are keyed apart."""
        key = self.key(prompt, params)
        return (f"{key}/watched" if watched else key), None

    def replay_usage(self, key: str, index: int, stored: StoredSample) -> Usage:
        """What a sample answered from the store is reported to cost now: nothing."""
        return Usage()

    def stored_form(self, candidate: Candidate, params: SamplingParams | None) -> Candidate:
        return candidate

    # -- drawing ----------------------------------------------------------------------------

    async def forward(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None,
        *,
        start_index: int,
        watcher: Callable[[int], TokenWatcher] | None,
    ) -> SampleBatch:
        """Samples ``start_index .. start_index + n - 1``: stored ones, then drawn ones (through the
        inner ``sample_watched`` when a watcher is given: each streamed sample is stored as its
        stream ends)."""
        check_draw(n, start_index)
        key, description = self.keyed(prompt, params, watched=watcher is not None)
        started = time.perf_counter()
        found: dict[int, Candidate] = {}
        usage = Usage()
        drew = False
        remaining = list(range(start_index, start_index + n))
        while remaining:
            usage = usage + self._take_stored(key, remaining, found)
            rest = [index for index in remaining if index not in found]
            if not rest:
                break
            self.store.check_writable()  # a store that cannot write stops the drawing
            pending = self._pending if self.shared else {}
            waiting = [pending[(key, i)] for i in rest if (key, i) in pending]
            to_draw = [index for index in rest if (key, index) not in pending]
            drew = drew or bool(to_draw)
            arrived = _Arrivals(self, key, description, params, frozenset(to_draw))
            error, drawn = await self._draw_and_wait(
                prompt, params, arrived, waiting, found, watcher
            )
            usage = usage + drawn
            short = [index for index in to_draw if index not in found]
            if error is None and short and self.strict:
                error = SamplerError(
                    f"{type(self.sampler).__name__} returned no sample for {len(short)} of the "
                    f"{len(to_draw)} indices asked for (first {short[0]})"
                )
            if error is not None:
                self._raise(error, found, usage, started)
            # What another call was drawing is stored now, unless that call failed to get it:
            # then this call draws it in the next round.
            remaining = [index for index in rest if index not in found and index not in short]
        if drew:
            usage = usage.replace(wall_time_s=time.perf_counter() - started)
        return SampleBatch(tuple(found[index] for index in sorted(found)), usage)

    def _take_stored(self, key: str, indices: Sequence[int], found: dict[int, Candidate]) -> Usage:
        usage = Usage()
        for index, hit in self.store.get(key, indices).items():
            usage = usage + self.replay_usage(key, index, hit)
            if hit.candidate.cut_short:
                continue  # paid for (counted once), but drawn again: it is not a sample
            found[index] = hit.candidate
            self.hits += 1
            self.saved = self.saved + hit.usage
        return usage

    @staticmethod
    def _raise(
        error: BaseException, found: Mapping[int, Candidate], usage: Usage, started: float
    ) -> None:
        partial = SampleBatch(
            tuple(found[index] for index in sorted(found)),
            usage.replace(wall_time_s=time.perf_counter() - started),
        )
        if isinstance(error, SamplerError):
            error.partial = partial
            raise error
        if isinstance(error, Exception) and not isinstance(error, StoreWriteError):
            raise SamplerError(f"sampling failed: {error}", partial=partial) from error
        raise error

    async def _draw_and_wait(
        self,
        prompt: Prompt,
        params: SamplingParams | None,
        arrived: _Arrivals,
        waiting: Sequence[asyncio.Future[None]],
        found: dict[int, Candidate],
        watcher: Callable[[int], TokenWatcher] | None,
    ) -> tuple[BaseException | None, Usage]:
        loop = asyncio.get_running_loop()
        key = arrived.key
        owned = {index: loop.create_future() for index in arrived.wanted}
        for index, future in owned.items():
            self._pending[(key, index)] = future
        self.misses += len(owned)
        try:
            runs = index_runs(arrived.wanted)
            with arrivals(arrived.take, admit=self.store.check_writable):
                draws = [
                    draw_from(
                        self.sampler, prompt, count, params, start_index=start, watcher=watcher
                    )
                    for start, count in runs
                ]
                # asyncio.wait, unlike awaiting them, never cancels the futures of other calls.
                waited = asyncio.wait(waiting) if waiting else asyncio.sleep(0)
                outcomes = await asyncio.gather(*draws, waited, return_exceptions=True)
            error: BaseException | None = None
            usage = Usage()
            for outcome in outcomes[: len(runs)]:
                batch = outcome if isinstance(outcome, SampleBatch) else None
                if isinstance(outcome, BaseException):
                    error = error or outcome
                    partial = getattr(outcome, "partial", None)
                    batch = partial if isinstance(partial, SampleBatch) else None
                if batch is not None:
                    usage = usage + batch.usage.replace(wall_time_s=0.0)
                    arrived.settle(batch)
            found.update(arrived.kept)
            self.drawn = self.drawn + usage
            waited_outcome = outcomes[len(runs)]
            if isinstance(waited_outcome, BaseException) and error is None:
                error = waited_outcome
            return arrived.failure or error, usage
        finally:
            for index, future in owned.items():
                if self._pending.get((key, index)) is future:
                    del self._pending[(key, index)]
                if not future.done():
                    future.set_result(None)


class _Arrivals:
    """One draw call's samples as they arrive: each stored at once, the rest when the call ends.

    A response's samples come with that response's usage (:func:`ttscale.protocols.deliver`);
    what the call returns beyond what arrived that way (an inner sampler that does not report
    arrivals, a cache's hits) is stored when the call returns, with the usage not yet accounted.
    """

    def __init__(
        self,
        owner: StoredSampler,
        key: str,
        description: Mapping[str, Any] | None,
        params: SamplingParams | None,
        wanted: frozenset[int],
    ) -> None:
        self.owner = owner
        self.key = key
        self.description = description
        self.params = params
        self.wanted = wanted
        self.kept: dict[int, Candidate] = {}
        self.accounted = Usage()
        self.failure: StoreWriteError | None = None

    def take(self, batch: SampleBatch) -> None:
        fresh = tuple(
            c for c in batch.candidates if c.index in self.wanted and c.index not in self.kept
        )
        if not fresh:
            return
        self.accounted = self.accounted + batch.usage.replace(wall_time_s=0.0)
        self._put(SampleBatch(fresh, batch.usage))

    def settle(self, batch: SampleBatch) -> None:
        fresh = tuple(
            c for c in batch.candidates if c.index in self.wanted and c.index not in self.kept
        )
        if fresh:
            self._put(SampleBatch(fresh, _unaccounted(batch.usage, self.accounted)))

    def _put(self, batch: SampleBatch) -> None:
        for candidate in batch.candidates:
            self.kept.setdefault(candidate.index, candidate)
        form = self.owner.stored_form
        samples = [StoredSample(form(s.candidate, self.params), s.usage) for s in _stored(batch)]
        try:
            self.owner.store.put(self.key, samples, description=self.description)
        except StoreWriteError as exc:
            self.failure = self.failure or exc


# -- the journal ----------------------------------------------------------------------------------


def journal_key(problem: str, params: str) -> str:
    """A journal's store key: the problem and the settings (and prompt) key of its draw."""
    return f"{problem}\x1f{params}"


def _split_key(key: str) -> tuple[str, str]:
    problem, _, params = key.rpartition("\x1f")
    return problem, params


@dataclass(frozen=True)
class JournalEntry:
    """One line of a journal: a sample of a problem's draw, with its share of prompt tokens and
    of requests (a request that returned n samples is counted on one of them)."""

    problem: str
    params: str
    prompt_tokens: int
    candidate: Candidate
    requests: int = 0
    earlier: Usage = field(default_factory=Usage)  # in memory: what samples cut short here cost

    @property
    def usage(self) -> Usage:
        """What this sample, and any cut short before it at its index, cost."""
        own = Usage(
            requests=self.requests,
            samples=1,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.candidate.completion_tokens,
        )
        return own + self.earlier

    def to_dict(self, *, logprobs: bool = True) -> dict[str, Any]:
        data = self.candidate.to_dict()
        if not logprobs or data.get("logprobs") is None:
            data.pop("logprobs", None)
        entry: dict[str, Any] = {
            "problem": self.problem,
            "params": self.params,
            "prompt_tokens": self.prompt_tokens,
        }
        if self.requests:
            entry["requests"] = self.requests
        entry["candidate"] = data
        return entry

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JournalEntry:
        candidate = data["candidate"]
        if not isinstance(candidate, Mapping):
            raise TypeError("candidate must be an object")
        int(candidate["index"])  # an entry without an index is no entry
        return cls(
            problem=str(data["problem"]),
            params=str(data["params"]),
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            candidate=Candidate.from_dict(candidate),
            # Journals written before entries counted requests replay them as none.
            requests=int(data.get("requests", 0)),
        )


_PREFIX = '{"problem": '
_DECODER = json.JSONDecoder()


def _problem_of(line: str) -> str | None:
    """The problem an entry line is of, read without parsing the whole line where it can be."""
    if line.startswith(_PREFIX):
        try:
            value, _ = _DECODER.raw_decode(line, len(_PREFIX))
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, str) else None
    return None


def iter_journal(path: Path, *, skip: Container[str] = ()) -> Iterator[tuple[JournalEntry, str]]:
    """The entries of a journal file and their lines, streamed; entries of problems in ``skip``
    are passed over unparsed, unreadable lines (a torn tail) silently."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            problem = _problem_of(line)
            if problem is not None and problem in skip:
                continue
            try:
                entry = JournalEntry.from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue
            if entry.problem in skip:
                continue
            yield entry, line if line.endswith("\n") else line + "\n"


def repair_tail(path: Path) -> bool:
    """End ``path`` on a whole line before anything is appended: a torn last line is cut off,
    or given its newline when it is a whole JSON value. Whether anything changed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with path.open("rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        start = max(size - (1 << 20), 0)
        while True:
            handle.seek(start)
            chunk = handle.read(size - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0 or start == 0:
                break
            start = max(start - (1 << 20), 0)
        tail_start = start + cut + 1
        tail = chunk[cut + 1 :]
        try:
            json.loads(tail)
        except ValueError:
            handle.truncate(tail_start)
            log.warning("%s: cut off a torn last line (%d bytes) of a killed run", path, len(tail))
        else:
            handle.seek(size)
            handle.write(b"\n")
            log.warning("%s: ended a whole last line that had lost its newline", path)
    return True


class SampleJournal:
    """The run's append-only JSONL of every sample received (``<out>.samples.jsonl``).

    A :class:`SampleStore` whose key is :func:`journal_key` (problem and settings). Each entry's
    usage is counted once: by the call that paid for it, or, for an entry an earlier run wrote,
    by the first call that replays it. Later hits of the same entry (a verifier asked the same
    question twice) cost nothing and are counted as nothing. ``skip`` holds problems whose
    entries need not be loaded (finished ones). See the module docstring for crash safety.
    """

    def __init__(self, path: Path, *, skip: Container[str] = ()) -> None:
        self.path = path
        # problem -> params -> index -> (candidate, prompt tokens)
        self._entries: dict[str, dict[str, dict[int, JournalEntry]]] = {}
        self._counted: set[tuple[str, str, int]] = set()
        self.written = 0
        self.unwritten = 0
        self._failure: StoreWriteError | None = None
        self._last_sync = time.monotonic()
        self.loaded = 0
        if path.exists():
            repair_tail(path)
            for entry, _ in iter_journal(path, skip=skip):
                self._keep(entry)
                self.loaded += 1
            log.info("journal %s: %d samples to replay", path, self.loaded)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __len__(self) -> int:
        return sum(len(by_index) for runs in self._entries.values() for by_index in runs.values())

    def _keep(self, entry: JournalEntry) -> bool:
        """Hold ``entry`` unless its index holds a whole sample; a sample cut short gives way to
        the one drawn again (whole, or cut short again), and what it cost is added to that one's
        (it was paid for too)."""
        by_index = self._entries.setdefault(entry.problem, {}).setdefault(entry.params, {})
        held = by_index.get(entry.candidate.index)
        if held is not None and not held.candidate.cut_short:
            return False
        if held is not None:
            entry = dataclasses.replace(entry, earlier=held.usage)
        by_index[entry.candidate.index] = entry
        return True

    # -- the store protocol --------------------------------------------------------------------

    def get(self, key: str, indices: Iterable[int]) -> dict[int, StoredSample]:
        problem, params = _split_key(key)
        by_index = self._entries.get(problem, {}).get(params, {})
        found: dict[int, StoredSample] = {}
        for index in indices:
            entry = by_index.get(index)
            if entry is not None:
                found[index] = StoredSample(entry.candidate, entry.usage)
        return found

    def put(
        self,
        key: str,
        samples: Sequence[StoredSample],
        *,
        description: Mapping[str, Any] | None = None,
    ) -> int:
        problem, params = _split_key(key)
        new = 0
        for sample in samples:
            candidate = sample.candidate
            usage = sample.usage
            entry = JournalEntry(problem, params, usage.prompt_tokens, candidate, usage.requests)
            if not self._keep(entry):
                continue
            new += 1
            self._counted.add((problem, params, candidate.index))  # paid for by its own call
            self._write(json.dumps(entry.to_dict()) + "\n")
        self._sync_now_and_then()
        self.check_writable()
        return new

    def check_writable(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _write(self, line: str) -> None:
        if self._failure is not None:
            self.unwritten += 1
            return
        data = line.encode("utf-8")
        before = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:  # a short write is retried, which raises what stopped it
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self.unwritten += 1
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)  # no torn line left behind
            self._failure = StoreWriteError(
                f"cannot write the sample journal {self.path}: {exc.strerror or exc}",
                path=str(self.path),
            )
            log.debug("journal write failed", exc_info=True)
            return
        self.written += 1

    def _sync_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._last_sync >= FSYNC_INTERVAL_S and self._failure is None:
            self._last_sync = now
            with contextlib.suppress(OSError):
                os.fsync(self._fd)

    # -- the journal's own -------------------------------------------------------------------

    def replay_first(self, key: str, index: int) -> bool:
        """Whether this replay of the entry is the first, the one to count its usage."""
        problem, params = _split_key(key)
        counted = (problem, params, index)
        if counted in self._counted:
            return False
        self._counted.add(counted)
        return True

    def forget(self, problem: str) -> None:
        """Drop a finished problem's entries from memory (they stay in the file)."""
        runs = self._entries.pop(problem, None)
        if runs:
            for params, by_index in runs.items():
                self._counted.difference_update((problem, params, i) for i in by_index)

    def lookup(
        self, problem_id: str, params: str, index: int
    ) -> tuple[Candidate, int, bool] | None:
        """The entry, its prompt tokens, and whether this lookup is the one to count its usage."""
        key = journal_key(problem_id, params)
        hit = self.get(key, [index]).get(index)
        if hit is None:
            return None
        return hit.candidate, hit.usage.prompt_tokens, self.replay_first(key, index)

    def record(
        self, problem_id: str, params: str, batch: SampleBatch, *, logprobs: bool = False
    ) -> None:
        """Journal a batch's samples, its prompt tokens spread over them."""
        samples = [
            StoredSample(c if logprobs else _without_logprobs(c), s.usage)
            for c, s in zip(batch.candidates, _stored(batch), strict=True)
        ]
        self.put(journal_key(problem_id, params), samples)

    def close(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1


def _without_logprobs(candidate: Candidate) -> Candidate:
    if candidate.logprobs is None:
        return candidate
    return Candidate.from_dict({**candidate.to_dict(), "logprobs": None})


# -- the journal's view of a sampler, per problem -----------------------------------------------


def params_key(params: SamplingParams | None) -> str:
    """A short hash of a draw's settings (pure); what a journal entry's ``params`` holds."""
    if params is None:
        return "default"
    # Not dataclasses.asdict: it deep-copies, and the read-only extra_body view cannot be copied.
    data = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    data["extra_body"] = dict(params.extra_body)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prompt_key(prompt: Prompt) -> str:
    """A short hash of a prompt (pure)."""
    text = prompt if isinstance(prompt, str) else [dict(message) for message in prompt]
    return hashlib.sha256(json.dumps(text, sort_keys=True, default=str).encode()).hexdigest()[:16]


class JournalledSampler(StoredSampler):
    """A problem's view of a sampler that replays journalled samples and journals new ones.

    ``by_prompt`` keys entries by the prompt too: for a verifier's calls (an LLM judge), which
    ask a different prompt per candidate, all from sample index 0. A replayed sample's usage is
    reported as it was paid the first time, once (so budgets count it as they did). Token
    logprobs are journalled for a verifier's calls (a yes/no judge scores from them) and when
    the caller asked for alternatives (confidence measures read them); not otherwise.
    """

    # A draw asked twice at once (a judge shown the same answer twice) is paid once, as when
    # asked twice in turn: the second ask gets the sample the first drew (its seed is the
    # same). A resumed run then replays exactly what the first run paid for.
    strict = False

    def __init__(
        self, sampler: Sampler, journal: SampleJournal, problem_id: str, *, by_prompt: bool = False
    ) -> None:
        super().__init__(sampler, journal)
        self.journal = journal
        self.problem_id = problem_id
        self.by_prompt = by_prompt
        self._replayed = 0
        self._twins: list[JournalledSampler] = []

    @property
    def replayed(self) -> int:
        """Samples replayed from the journal, by this view and its other-model twins."""
        return self._replayed + sum(twin.replayed for twin in self._twins)

    def rewrap(self, sampler: Sampler) -> Sampler:
        """The same view drawing from ``sampler`` (another model's, for graphs that use several);
        its replays count toward this view's."""
        twin = JournalledSampler(sampler, self.journal, self.problem_id, by_prompt=self.by_prompt)
        self._twins.append(twin)
        return twin

    def key(self, prompt: Prompt, params: SamplingParams | None = None) -> str:
        key = params_key(params)
        if self.by_prompt:
            key = f"{key}/{prompt_key(prompt)}"
        return journal_key(self.problem_id, key)

    def replay_usage(self, key: str, index: int, stored: StoredSample) -> Usage:
        if not self.journal.replay_first(key, index):
            return Usage()
        self._replayed += 1
        return stored.usage

    def stored_form(self, candidate: Candidate, params: SamplingParams | None) -> Candidate:
        keep = self.by_prompt or (params is not None and (params.logprobs or 0) > 0)
        return candidate if keep else _without_logprobs(candidate)
