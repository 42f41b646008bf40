"""A content-addressed sample cache that outlives a run: SQLite in a directory.

:class:`SampleCache` stores every sample under a key made of what decides it: the prompt (as
canonical JSON), the model, the API kind (chat or completions), the sampling settings that change
the output (temperature, top_p, max_tokens, stop, logprobs, extra_body), the base seed, and the
sample's index. The first part is hashed into a *draw key* (:func:`draw_key`); a sample's key is
``(draw key, index)``. Two runs that ask for the same sample get the same one, whichever
strategy, process or day asked; change any of those settings and nothing matches.

:class:`CachedSampler` puts the cache in front of any Sampler:

- It looks up every index of a call, asks the inner sampler only for the runs of indices it lacks
  (with their own ``start_index``, so seeds are those the inner sampler would have used anyway),
  stores what comes back, and returns every sample in index order.
- The usage it reports is what it drew: cache hits cost nothing. ``hits``, ``misses`` and
  ``saved`` (what the hits cost when they were drawn) count the rest.
- Samples of a draw that failed part way (the error's ``partial``) are stored too: they were paid.
- Concurrent calls on one event loop never draw the same sample twice: a call waits for samples
  another call is drawing, and draws them itself only if that call did not get them.

The database runs in WAL mode and commits once per batch received, so a crashed (even SIGKILLed)
process loses at most the batch in flight; several processes may share a cache directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttscale.errors import ConfigError, DataError, SamplerError
from ttscale.protocols import Sampler, check_draw
from ttscale.samplers.openai_sampler import merge_params
from ttscale.types import Candidate, Prompt, SampleBatch, SamplingParams, TokenLogprob, Usage

__all__ = [
    "CachedSample",
    "CachedSampler",
    "SampleCache",
    "candidate_from_dict",
    "canonical_json",
    "draw_description",
    "draw_key",
    "usage_shares",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATABASE_NAME = "samples.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS draws (
    key TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    draw TEXT NOT NULL,
    idx INTEGER NOT NULL,
    candidate TEXT NOT NULL,
    usage TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (draw, idx)
) WITHOUT ROWID;
"""


# -- keys -----------------------------------------------------------------------------------------


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (mappings become dicts, sequences lists)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{position}]") for position, item in enumerate(value)]
    raise ConfigError(f"cannot make a cache key of {where}: {type(value).__name__} is not JSON")


def canonical_json(value: Any) -> str:
    """One spelling of a JSON value: sorted keys, no spaces, no NaN; tuples are lists."""
    try:
        return json.dumps(
            _plain(value, "value"),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except ValueError as exc:  # NaN or infinity
        raise ConfigError(f"cannot make a cache key: {exc}") from exc


def _number(value: float | None) -> float | None:
    # 1 and 1.0 are one temperature, and must be one key.
    return float(value) if value is not None else None


def draw_description(
    prompt: Prompt,
    *,
    model: str,
    params: SamplingParams,
    base_seed: int | None,
    api: str | None = None,
) -> dict[str, Any]:
    """What decides the samples of a draw, as plain data; :func:`draw_key` hashes it.

    Settings that mean the same are spelled the same: no stop strings and an empty list, an
    integer and a float temperature, stop strings in any order.
    """
    return {
        "v": SCHEMA_VERSION,
        "prompt": _plain(prompt if isinstance(prompt, str) else list(prompt), "prompt"),
        "model": model,
        "api": api,
        "temperature": _number(params.temperature),
        "top_p": _number(params.top_p),
        "max_tokens": params.max_tokens,
        "stop": sorted(set(params.stop)) if params.stop else None,
        "logprobs": params.logprobs,
        "seed": base_seed,
        "extra_body": _plain(params.extra_body, "extra_body") if params.extra_body else None,
    }


def draw_key(
    prompt: Prompt,
    *,
    model: str,
    params: SamplingParams,
    base_seed: int | None,
    api: str | None = None,
) -> str:
    """The content address of a draw: a SHA-256 of its canonical description."""
    description = draw_description(prompt, model=model, params=params, base_seed=base_seed, api=api)
    return _hash(description)


def _hash(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(description).encode("utf-8")).hexdigest()


# -- stored values ------------------------------------------------------------------------------


def candidate_from_dict(data: Mapping[str, Any]) -> Candidate:
    """The inverse of :meth:`Candidate.to_dict`; unknown keys are ignored."""
    names = {f.name for f in dataclasses.fields(Candidate)}
    values = {key: value for key, value in data.items() if key in names}
    logprobs = values.get("logprobs")
    if logprobs is not None:
        values["logprobs"] = tuple(
            TokenLogprob(
                token=str(item["token"]),
                logprob=float(item["logprob"]),
                top=tuple((str(token), float(value)) for token, value in item.get("top") or ()),
            )
            for item in logprobs
        )
    return Candidate(**values)


def usage_shares(batch: SampleBatch) -> list[Usage]:
    """Each candidate's share of a batch's usage; the shares add up to the batch's usage.

    Whole-number fields are split as evenly as they go (the first candidates take the remainder);
    completion tokens are the candidates' own counts where those add up to the batch's total;
    cost follows the tokens. Wall time is not shared: a sample from the cache takes none.
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


@dataclass(frozen=True)
class CachedSample:
    """A sample from the cache and its share of what drawing it cost."""

    candidate: Candidate
    usage: Usage


# -- the cache ----------------------------------------------------------------------------------


class SampleCache:
    """Samples in a SQLite database (``samples.sqlite3``) inside ``directory``.

    Every method is synchronous and quick (one indexed query or one transaction); the connection
    is guarded by a lock, so the cache may be used from several threads. Writes keep the first
    sample stored under a key: a sample, once cached, never changes.
    """

    def __init__(self, directory: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot make the cache directory {self.directory}: {exc}") from exc
        self.path = self.directory / DATABASE_NAME
        self._lock = threading.Lock()
        try:
            # Autocommit mode: every write below is its own explicit transaction.
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode, NORMAL keeps every committed transaction through a process crash.
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                self._db.close()
                raise DataError(
                    f"the sample cache was written by a newer ttscale (schema {version})",
                    path=str(self.path),
                )
            self._db.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise DataError(f"cannot open the sample cache: {exc}", path=str(self.path)) from exc

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM samples").fetchone()[0])

    def get(self, key: str, indices: Iterable[int]) -> dict[int, CachedSample]:
        """The cached samples of draw ``key`` among ``indices``; a missing index is a miss."""
        wanted = set(indices)
        if not wanted:
            return {}
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, candidate, usage FROM samples WHERE draw = ? AND idx BETWEEN ? AND ?",
                (key, min(wanted), max(wanted)),
            ).fetchall()
        found: dict[int, CachedSample] = {}
        for index, candidate, usage in rows:
            if index not in wanted:
                continue
            try:
                found[index] = CachedSample(
                    candidate_from_dict(json.loads(candidate)), Usage.from_dict(json.loads(usage))
                )
            except (ValueError, TypeError, KeyError) as exc:
                log.warning(
                    "sample cache: unreadable entry %s/%d, treated as a miss: %s", key, index, exc
                )
        return found

    def put(
        self, key: str, batch: SampleBatch, *, description: Mapping[str, Any] | None = None
    ) -> int:
        """Store a batch's candidates under draw ``key``, in one transaction; returns how many."""
        if not batch.candidates:
            return 0
        now = time.time()
        rows = [
            (
                key,
                candidate.index,
                json.dumps(candidate.to_dict(), ensure_ascii=False),
                json.dumps(dataclasses.asdict(share)),
                now,
            )
            for candidate, share in zip(batch.candidates, usage_shares(batch), strict=True)
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if description is not None:
                    self._db.execute(
                        "INSERT OR IGNORE INTO draws (key, description, created) VALUES (?, ?, ?)",
                        (key, canonical_json(description), now),
                    )
                cursor = self._db.executemany(
                    "INSERT OR IGNORE INTO samples (draw, idx, candidate, usage, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                stored = cursor.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return max(stored, 0)

    def describe(self, key: str) -> dict[str, Any] | None:
        """The description a draw key was made from, where it was stored with its samples."""
        with self._lock:
            row = self._db.execute("SELECT description FROM draws WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row is not None else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SampleCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- the sampler ---------------------------------------------------------------------------------


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted indices as runs of consecutive indices ``(start, count)``."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indices):
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


class CachedSampler:
    """A Sampler that answers from a :class:`SampleCache` and draws only what it lacks.

    ``model`` (default: the inner sampler's ``config.model``) and ``api`` (default: its
    ``config.endpoint`` or ``config.api``) go into the key. The sampling settings are the inner
    sampler's defaults (its ``params`` or ``config.params``) with the call's ``params`` over them
    field by field, and the base seed is the call's ``params.seed`` or else the inner sampler's
    ``base_seed``: the same settings the inner sampler would draw with. A sampler with neither a
    seed nor a ``base_seed`` is keyed with no seed: its cached samples are then reused by any
    later run.

    Use it on one event loop at a time (the cache itself may be shared more widely).
    """

    def __init__(
        self,
        sampler: Sampler,
        cache: SampleCache | str | os.PathLike[str],
        *,
        model: str | None = None,
        api: str | None = None,
    ) -> None:
        self.sampler = sampler
        self._owns_cache = not isinstance(cache, SampleCache)
        self.cache = cache if isinstance(cache, SampleCache) else SampleCache(cache)
        config = getattr(sampler, "config", None)
        model = model if model is not None else getattr(config, "model", None)
        if not isinstance(model, str) or not model:
            raise ConfigError(
                f"CachedSampler needs the model name for its keys: pass model=... "
                f"({type(sampler).__name__} has no config.model)"
            )
        self.model = model
        if api is None:
            for name in ("endpoint", "api"):
                value = getattr(config, name, None)
                if isinstance(value, str):
                    api = value
                    break
        self.api = api
        self.hits = 0
        self.misses = 0
        self.saved = Usage()
        self.drawn = Usage()
        # Samples being drawn by a call now, so that a concurrent call waits instead of paying.
        self._pending: dict[tuple[str, int], asyncio.Future[None]] = {}

    def with_model(self, model: str) -> CachedSampler:
        """The inner sampler asking ``model``, cached in the same store under that model."""
        from ttscale.protocols import with_model

        return CachedSampler(with_model(self.sampler, model), self.cache, model=model, api=self.api)

    def _defaults(self) -> SamplingParams:
        for owner in (self.sampler, getattr(self.sampler, "config", None)):
            params = getattr(owner, "params", None)
            if isinstance(params, SamplingParams):
                return params
        return SamplingParams()

    def describe(self, prompt: Prompt, params: SamplingParams | None = None) -> dict[str, Any]:
        """What the samples of ``prompt`` drawn with ``params`` are keyed by."""
        # A call's params override the sampler's own field by field (what they leave None, the
        # sampler keeps): the key is of what the inner sampler will draw with.
        resolved = merge_params(self._defaults(), params)
        base_seed = resolved.seed
        if base_seed is None:
            inner = getattr(self.sampler, "base_seed", None)
            base_seed = inner if isinstance(inner, int) else None
        return draw_description(
            prompt, model=self.model, params=resolved, base_seed=base_seed, api=self.api
        )

    def key(self, prompt: Prompt, params: SamplingParams | None = None) -> str:
        return _hash(self.describe(prompt, params))

    async def aclose(self) -> None:
        """Close the cache if this sampler opened it; the inner sampler is the caller's."""
        if self._owns_cache:
            self.cache.close()

    async def __aenter__(self) -> CachedSampler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        """Samples ``start_index .. start_index + n - 1``: cached ones, then drawn ones."""
        check_draw(n, start_index)
        description = self.describe(prompt, params)
        key = _hash(description)
        started = time.perf_counter()
        found: dict[int, Candidate] = {}
        usage = Usage()
        drew = False
        remaining = list(range(start_index, start_index + n))
        while remaining:
            for index, hit in self.cache.get(key, remaining).items():
                found[index] = hit.candidate
                self.hits += 1
                self.saved = self.saved + hit.usage
            rest = [index for index in remaining if index not in found]
            if not rest:
                break
            waiting = [self._pending[(key, i)] for i in rest if (key, i) in self._pending]
            to_draw = [index for index in rest if (key, index) not in self._pending]
            if to_draw:
                drew = True
            error, drawn = await self._draw_and_wait(
                prompt, params, key, description, to_draw, waiting, found
            )
            usage = usage + drawn
            short = [index for index in to_draw if index not in found]
            if error is None and short:
                error = SamplerError(
                    f"{type(self.sampler).__name__} returned no sample for {len(short)} of the "
                    f"{len(to_draw)} indices asked for (first {short[0]})"
                )
            if error is not None:
                partial = SampleBatch(
                    tuple(found[index] for index in sorted(found)),
                    usage.replace(wall_time_s=time.perf_counter() - started),
                )
                if isinstance(error, SamplerError):
                    error.partial = partial
                    raise error
                raise SamplerError(f"sampling failed: {error}", partial=partial) from error
            # What another call was drawing is in the cache now, unless that call failed to get
            # it: then this call draws it in the next round.
            remaining = [index for index in rest if index not in found]
        if drew:
            usage = usage.replace(wall_time_s=time.perf_counter() - started)
        return SampleBatch(tuple(found[index] for index in sorted(found)), usage)

    async def _draw_and_wait(
        self,
        prompt: Prompt,
        params: SamplingParams | None,
        key: str,
        description: Mapping[str, Any],
        to_draw: Sequence[int],
        waiting: Sequence[asyncio.Future[None]],
        found: dict[int, Candidate],
    ) -> tuple[BaseException | None, Usage]:
        loop = asyncio.get_running_loop()
        owned = {index: loop.create_future() for index in to_draw}
        for index, future in owned.items():
            self._pending[(key, index)] = future
        self.misses += len(to_draw)
        try:
            runs = _runs(to_draw)
            draws = [
                self.sampler.sample(prompt, count, params, start_index=start)
                for start, count in runs
            ]
            # asyncio.wait, unlike awaiting them, never cancels the futures of other calls.
            waited = asyncio.wait(waiting) if waiting else asyncio.sleep(0)
            outcomes = await asyncio.gather(*draws, waited, return_exceptions=True)
            error: BaseException | None = None
            usage = Usage()
            for (start, count), outcome in zip(runs, outcomes[: len(runs)], strict=True):
                batch: SampleBatch | None
                if isinstance(outcome, SampleBatch):
                    batch = outcome
                else:
                    assert isinstance(outcome, BaseException)
                    error = error or outcome
                    partial = getattr(outcome, "partial", None)
                    batch = partial if isinstance(partial, SampleBatch) else None
                if batch is None:
                    continue
                kept: dict[int, Candidate] = {}
                for candidate in batch.candidates:
                    if start <= candidate.index < start + count and candidate.index not in found:
                        kept.setdefault(candidate.index, candidate)
                usage = usage + batch.usage.replace(wall_time_s=0.0)
                self.drawn = self.drawn + batch.usage.replace(wall_time_s=0.0)
                self._store(key, description, SampleBatch(tuple(kept.values()), batch.usage))
                found.update(kept)
            waited_outcome = outcomes[len(runs)]
            if isinstance(waited_outcome, BaseException) and error is None:
                error = waited_outcome
            return error, usage
        finally:
            for index, future in owned.items():
                if self._pending.get((key, index)) is future:
                    del self._pending[(key, index)]
                if not future.done():
                    future.set_result(None)

    def _store(self, key: str, description: Mapping[str, Any], batch: SampleBatch) -> None:
        try:
            self.cache.put(key, batch, description=description)
        except sqlite3.Error as exc:
            # The samples are still returned; only a later run pays for them again.
            log.warning(
                "sample cache: could not store %d sample(s): %s", len(batch.candidates), exc
            )
