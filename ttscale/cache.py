"""A content-addressed sample cache that outlives a run: SQLite in a directory.

:class:`SampleCache` stores every sample under a key made of what decides it: the prompt (as
canonical JSON), the model, the API kind (chat or completions), the sampling settings that change
the output (temperature, top_p, max_tokens, stop, logprobs, extra_body), the base seed, and the
sample's index. The first part is hashed into a *draw key* (:func:`draw_key`); a sample's key is
``(draw key, index)``. Two runs that ask for the same sample get the same one, whichever
strategy, process or day asked; change any of those settings and nothing matches.

:class:`CachedSampler` is the :class:`~ttscale.store.StoredSampler` over this store (the run's
journal is the other, :class:`~ttscale.store.SampleJournal`):

- It looks up every index of a call, asks the inner sampler only for the runs of indices it lacks
  (with their own ``start_index``, so seeds are those the inner sampler would have used anyway),
  stores what comes back, and returns every sample in index order.
- The usage it reports is what it drew: cache hits cost nothing. ``hits``, ``misses`` and
  ``saved`` (what the hits cost when they were drawn) count the rest.
- Samples of a draw that failed part way (the error's ``partial``) are stored too: they were paid.
  A sample the failure itself cut short is not: it is no sample to reuse (the run's journal keeps
  what it cost).
- Concurrent calls on one event loop never draw the same sample twice: a call waits for samples
  another call is drawing, and draws them itself only if that call did not get them.

The database runs in WAL mode and commits once per response received (each response's samples
as they arrive), so a crashed (even SIGKILLed) process loses at most the responses in flight;
several processes may share a cache directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ttscale.errors import ConfigError, DataError
from ttscale.protocols import Sampler
from ttscale.samplers.openai_sampler import merge_params
from ttscale.store import StoredSample, StoredSampler, usage_shares
from ttscale.types import Candidate, Prompt, SampleBatch, SamplingParams, Usage

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

# A stored sample never changes, except one cut short that an earlier version kept: a whole sample
# drawn again at its index takes its place.
_INSERT_SAMPLE = (
    "INSERT INTO samples (draw, idx, candidate, usage, created) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (draw, idx) DO UPDATE SET candidate = excluded.candidate, "
    "usage = excluded.usage, created = excluded.created "
    "WHERE json_extract(samples.candidate, '$.finish_reason') IN ('error', 'cancelled')"
)


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
    return Candidate.from_dict(data)


CachedSample = StoredSample
"""A sample from the cache and its share of what drawing it cost (a :class:`StoredSample`)."""


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

    def get(self, key: str, indices: Iterable[int]) -> dict[int, StoredSample]:
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
                found[index] = StoredSample(
                    Candidate.from_dict(json.loads(candidate)), Usage.from_dict(json.loads(usage))
                )
            except (ValueError, TypeError, KeyError) as exc:
                log.warning(
                    "sample cache: unreadable entry %s/%d, treated as a miss: %s", key, index, exc
                )
        return found

    def put(
        self,
        key: str,
        samples: SampleBatch | Sequence[StoredSample],
        *,
        description: Mapping[str, Any] | None = None,
    ) -> int:
        """Store samples (or a batch's candidates with their :func:`usage_shares`) under draw
        ``key``, in one transaction; returns how many were new."""
        if isinstance(samples, SampleBatch):
            samples = [
                StoredSample(candidate, share)
                for candidate, share in zip(samples.candidates, usage_shares(samples), strict=True)
            ]
        # A sample a failure cut short is no sample to reuse: the run's journal keeps its cost.
        samples = [sample for sample in samples if not sample.candidate.cut_short]
        if not samples:
            return 0
        now = time.time()
        rows = [
            (
                key,
                sample.candidate.index,
                json.dumps(sample.candidate.to_dict(), ensure_ascii=False),
                json.dumps(dataclasses.asdict(sample.usage)),
                now,
            )
            for sample in samples
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
                    _INSERT_SAMPLE,
                    rows,
                )
                stored = cursor.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return max(stored, 0)

    def check_writable(self) -> None:
        """Never raises: a sample the cache cannot store is still returned (and logged)."""

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


class _Cache:
    """The cache as the stored sampler's store: a write that fails is logged, not raised."""

    def __init__(self, cache: SampleCache) -> None:
        self.cache = cache

    def get(self, key: str, indices: Iterable[int]) -> dict[int, StoredSample]:
        return self.cache.get(key, indices)

    def put(
        self,
        key: str,
        samples: Sequence[StoredSample],
        *,
        description: Mapping[str, Any] | None = None,
    ) -> int:
        try:
            return self.cache.put(key, samples, description=description)
        except sqlite3.Error as exc:
            # The samples are still returned; only a later run pays for them again.
            log.warning("sample cache: could not store %d sample(s): %s", len(samples), exc)
            return 0

    def check_writable(self) -> None:
        return None

    def close(self) -> None:
        self.cache.close()


class CachedSampler(StoredSampler):
    """A Sampler that answers from a :class:`SampleCache` and draws only what it lacks.

    ``model`` (default: the inner sampler's ``config.model``) and ``api`` (default: its
    ``config.endpoint`` or ``config.api``) go into the key. The sampling settings are the inner
    sampler's defaults (its ``params`` or ``config.params``) with the call's ``params`` over them
    field by field, and the base seed is the call's ``params.seed`` or else the inner sampler's
    ``base_seed``: the same settings the inner sampler would draw with. A sampler with neither a
    seed nor a ``base_seed`` is keyed with no seed: its cached samples are then reused by any
    later run. The usage it reports is what it drew: cache hits cost nothing; ``hits``,
    ``misses`` and ``saved`` (what the hits cost when they were drawn) count the rest.

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
        self._owns_cache = not isinstance(cache, SampleCache)
        self.cache = cache if isinstance(cache, SampleCache) else SampleCache(cache)
        super().__init__(sampler, _Cache(self.cache))
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

    @property
    def watches(self) -> bool:
        """False: a streamed sample may be stopped early, which a cached one must not be."""
        return False

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

    def keyed(
        self, prompt: Prompt, params: SamplingParams | None, *, watched: bool
    ) -> tuple[str, Mapping[str, Any] | None]:
        description = self.describe(prompt, params)
        return _hash(description), description

    async def aclose(self) -> None:
        """Close the cache if this sampler opened it; the inner sampler is the caller's."""
        if self._owns_cache:
            self.cache.close()

    async def __aenter__(self) -> CachedSampler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
