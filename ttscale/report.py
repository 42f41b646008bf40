"""``ttscale fit``'s report data: coverage, its laws, and what it costs, from a results file.

:func:`fit_report` reads the JSON lines ``ttscale solve`` writes (one record per problem,
:mod:`ttscale.report_input`), measures coverage at log-spaced k with the unbiased estimator, fits
the power law and the Beta model, and returns a :class:`FitReport` (rendered as a table by
:mod:`ttscale.report_table`, drawn by :mod:`ttscale.report_plot`), writing the plot and a JSON
file. Also the strategies' offline accuracy from the stored samples. Fitting needs the ``[laws]``
extra (scipy and matplotlib).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ttscale.errors import ConfigError, DataError
from ttscale.estimators import bootstrap_ci, log_spaced_ks, per_problem_pass_at_k
from ttscale.laws import (
    BetaFit,
    CoveragePlan,
    ExtrapolationBand,
    FitError,
    HeldOutComparison,
    LawIntervals,
    PowerLawFit,
    bootstrap_fits,
    compare_held_out,
    extrapolation_band,
    fit_beta,
    fit_error,
    fit_power_law,
    law_intervals,
    llmonk_fit_error,
    plan_for_coverage,
)
from ttscale.report_input import (
    ProblemRecord,
    ResultColumns,
    SampleTable,
    iter_results,
    read_results,
    sample_rows,
)
from ttscale.report_plot import plot_report
from ttscale.report_table import render_table

__all__ = [
    "Band",
    "FitReport",
    "ProblemRecord",
    "fit_report",
    "held_out_fit_k",
    "iter_results",
    "offline_bands",
    "offline_columns",
    "offline_result",
    "read_results",
    "render_table",
    "sample_rows",
]

log = logging.getLogger(__name__)

# The held-out comparison fits on a tenth of the samples (half, for small runs) and needs three k
# to fit on and at least one above them to score.
_HELD_OUT_FRACTION = 0.1
_MIN_FIT_K = 3


def held_out_fit_k(max_k: int) -> int | None:
    """How many samples per problem the held-out fit uses: a tenth of ``max_k``, or half when a
    tenth is under three; None when even half leaves fewer than three k to fit (pure)."""
    for fit_k in (int(max_k * _HELD_OUT_FRACTION), max_k // 2):
        if _MIN_FIT_K <= fit_k < max_k:
            return fit_k
    return None


Band = tuple[float, float, float]
"""A value's standard error and its bootstrap interval over problems: ``(se, low, high)``."""


def curve_bands(
    per_problem: np.ndarray, *, confidence: float, n_resamples: int, seed: int
) -> list[Band]:
    """Per column of (P, K) per-problem values: the standard error of the mean over problems
    (sd with ddof 1 over sqrt P; NaN for one problem) and the seeded percentile bootstrap interval
    (:func:`ttscale.estimators.bootstrap_ci`)."""
    values = np.asarray(per_problem, dtype=np.float64)
    count = values.shape[0]
    se = (
        values.std(axis=0, ddof=1) / math.sqrt(count)
        if count > 1
        else np.full(values.shape[1], np.nan)
    )
    low, high = bootstrap_ci(values, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return [(float(a), float(b), float(c)) for a, b, c in zip(se, low, high, strict=True)]


@dataclass(frozen=True)
class FitReport:
    """Everything ``ttscale fit`` found; ``rows`` is the table, one dict per k.

    Row keys: ``k``, ``coverage`` (None past the data) with ``coverage_se``, ``coverage_low`` and
    ``coverage_high`` (its standard error and bootstrap interval over problems), ``fit`` (power
    law), ``fit_low`` and ``fit_high`` (its bootstrap band), ``beta_fit``, ``tokens`` and ``cost``
    (for k samples of every problem, at the run's average spend per sample), then any extra
    columns, each with ``<name> se``, ``<name> low`` and ``<name> high`` when it has a band.
    """

    source: str
    strategy: str | None
    problems: int
    max_k: int
    rows: list[dict[str, Any]]
    power: PowerLawFit | None
    beta: BetaFit | None
    power_error: FitError | None
    beta_error: FitError | None
    band: ExtrapolationBand | None
    held_out: HeldOutComparison | None
    target: CoveragePlan | None
    columns: tuple[str, ...]
    power_intervals: LawIntervals | None = None
    beta_intervals: LawIntervals | None = None
    llmonk_errors: tuple[FitError | None, FitError | None] = (None, None)
    confidence: float = 0.9
    json_path: Path | None = None
    plot_path: Path | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _json_safe(
            {
                "source": self.source,
                "strategy": self.strategy,
                "problems": self.problems,
                "max_k": self.max_k,
                "columns": list(self.columns),
                "rows": self.rows,
                "power_law": (
                    {
                        "a": self.power.a,
                        "b": self.power.b,
                        "intervals": (
                            self.power_intervals.to_dict() if self.power_intervals else None
                        ),
                        "error": self.power_error.to_dict() if self.power_error else None,
                    }
                    if self.power
                    else None
                ),
                "beta": (
                    {
                        "alpha": self.beta.alpha,
                        "beta": self.beta.beta,
                        "log_likelihood": self.beta.log_likelihood,
                        "intervals": (
                            self.beta_intervals.to_dict() if self.beta_intervals else None
                        ),
                        "error": self.beta_error.to_dict() if self.beta_error else None,
                    }
                    if self.beta
                    else None
                ),
                "band": self.band.to_dict() if self.band else None,
                "bands": {
                    "confidence": self.confidence,
                    "method": (
                        "per k: standard error of the mean over problems (sd ddof=1 / sqrt(P); "
                        "a strategy's per-problem values average its random orders, so the "
                        "Monte Carlo error is inside) and a seeded percentile bootstrap over "
                        "problems"
                    ),
                },
                "held_out": self.held_out.to_dict() if self.held_out else None,
                "fit_error": self.fit_errors(),
                "target": self.target.to_dict() if self.target else None,
                "notes": list(self.notes),
            }
        )
        return data

    def fit_errors(self) -> dict[str, Any]:
        """Both laws' errors: in-sample (fitted and scored at the same k) and held-out."""
        held = self.held_out
        power_llmonk, beta_llmonk = self.llmonk_errors
        return {
            "in_sample": {
                "power": self.power_error.to_dict() if self.power_error else None,
                "beta": self.beta_error.to_dict() if self.beta_error else None,
                "ks": [1, self.max_k],
            },
            "llmonk": {
                "power": power_llmonk.to_dict() if power_llmonk else None,
                "beta": beta_llmonk.to_dict() if beta_llmonk else None,
                "ks": [1, self.max_k],
                "protocol": "mean and sd of |coverage - fit| over 100 log-spaced k (or every k)",
            },
            "held_out": (
                {
                    "power": held.power_error.to_dict(),
                    "beta": held.beta_error.to_dict(),
                    "fit_k": held.fit_k,
                    "ks": [int(held.held_out_ks[0]), int(held.held_out_ks[-1])],
                }
                if held is not None
                else None
            ),
        }


def _json_safe(value: Any) -> Any:
    # JSON has no NaN or infinity; a standard error the fit could not give becomes null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _select(records: ResultColumns, strategy: str | None, path: str) -> ResultColumns:
    """The records of ``strategy`` (of the only one when None), each problem once."""
    found = sorted(records.strategies)
    if strategy is None and len(found) > 1:
        second = int(np.flatnonzero(records.strategy != records.strategy[0])[0])
        raise DataError(
            f"the file holds records of several strategies ({', '.join(found)}); pick one "
            "with --strategy",
            path=path,
            line=int(records.line[second]),
            field="strategy",
        )
    wanted = -1 if strategy not in records.strategies else records.strategies.index(strategy)
    rows = np.flatnonzero(records.strategy == wanted) if strategy is not None else None
    chosen = records.take(rows) if rows is not None else records
    if not len(chosen):
        raise DataError(
            f"no records for strategy {strategy!r} (found: {', '.join(found) or 'none'})"
            if strategy is not None
            else "no records",
            path=path,
        )
    seen: dict[str, int] = {}
    for number, problem_id in enumerate(chosen.ids):
        if problem_id in seen:
            raise DataError(
                f"problem {problem_id!r} appears again (first on line {seen[problem_id]}); "
                "pick one strategy's records",
                path=path,
                line=int(chosen.line[number]),
                field="id",
            )
        seen[problem_id] = int(chosen.line[number])
    return chosen


def fit_report(
    results_path: str | Path,
    out_dir: str | Path | None,
    *,
    strategy: str | None = None,
    num_ks: int = 40,
    extrapolate_factor: float = 10.0,
    target_coverage: float | None = None,
    n_resamples: int = 200,
    confidence: float = 0.9,
    seed: int = 0,
    extra_columns: Mapping[str, Mapping[int, float]] | None = None,
    extra_bands: Mapping[str, Mapping[int, Band]] | None = None,
    plot: bool = True,
) -> FitReport:
    """Fit coverage laws to a results file; write ``fit.json`` and ``coverage.png`` to ``out_dir``.

    Coverage is measured at ``num_ks`` log-spaced k up to the smallest ``n`` of the problems, and
    the power law's prediction is extended to ``extrapolate_factor`` times that with a bootstrap
    band over problems (``n_resamples``, ``confidence``, ``seed``). ``target_coverage`` adds the k
    reaching it and its predicted cost. ``extra_columns`` maps a column name to values by k (e.g.
    a strategy's accuracy at k from an offline evaluator); they join the table, JSON and plot, with
    their ``extra_bands`` (se, low, high) by k when given (:func:`offline_bands`). Coverage gets
    its standard error and a ``confidence`` bootstrap interval over problems at every k, and the
    laws' parameters bootstrap intervals (the same ``n_resamples`` refits as the band).
    ``out_dir`` None writes nothing.
    """
    source = str(results_path)
    if extrapolate_factor < 1:
        raise ConfigError(f"extrapolate_factor must be >= 1, got {extrapolate_factor}")
    records = _select(ResultColumns.read(results_path), strategy, source)
    n, c = records.n, records.num_correct
    max_k, notes = _sample_count(records, source)
    coverage = _coverage(
        n,
        c,
        max_k,
        num_ks=num_ks,
        extrapolate_factor=extrapolate_factor,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
    laws = _fit_laws(n, c, coverage, confidence=confidence, n_resamples=n_resamples, seed=seed)
    notes += laws.notes
    held_out, held_notes = _held_out(n, c, max_k, fitted=laws.power is not None, seed=seed)
    notes += held_notes
    # Spend per sample of each problem, at the run's batching (prompt tokens included).
    spend = _Spend(tokens=records.tokens / n, cost=records.cost / n)
    extras = dict(extra_columns or {})
    report = FitReport(
        source=source,
        strategy=strategy,
        problems=len(records),
        max_k=max_k,
        rows=_rows(coverage, laws, spend, extras, dict(extra_bands or {})),
        power=laws.power,
        beta=laws.beta,
        power_error=laws.power_error,
        beta_error=laws.beta_error,
        band=laws.band,
        held_out=held_out,
        target=_target(laws.power, target_coverage, spend),
        columns=_columns(extras),
        notes=tuple(notes),
        power_intervals=laws.power_intervals,
        beta_intervals=laws.beta_intervals,
        llmonk_errors=laws.llmonk_errors,
        confidence=confidence,
    )
    return report if out_dir is None else _write(report, extras, Path(out_dir), plot=plot)


# -- fit_report's steps, each over plain data ----------------------------------------------------


def _sample_count(records: ResultColumns, source: str) -> tuple[int, list[str]]:
    """The k coverage is measured up to (the fewest samples of a problem) and a note when the
    problems drew different numbers; a problem with none is a DataError naming its line."""
    n = records.n
    max_k = int(n.min())
    if max_k < 1:
        first_empty = int(records.line[np.flatnonzero(n == 0)[0]])
        raise DataError(
            "a problem has no samples, so coverage is undefined",
            path=source,
            line=first_empty,
            field="n",
        )
    notes: list[str] = []
    if int(n.max()) != max_k:
        notes.append(f"problems drew {max_k}..{int(n.max())} samples; coverage stops at {max_k}")
    return max_k, notes


@dataclass(frozen=True)
class _Coverage:
    """Coverage measured at ``ks`` (mean over problems and its bands), and every k of the table
    (``all_ks``: ``ks`` then the extrapolated ones)."""

    ks: np.ndarray
    observed: np.ndarray
    bands: list[Band]
    all_ks: np.ndarray


def _coverage(
    n: np.ndarray,
    c: np.ndarray,
    max_k: int,
    *,
    num_ks: int,
    extrapolate_factor: float,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> _Coverage:
    """Coverage at ``num_ks`` log-spaced k up to ``max_k`` with its bands, and the k past the
    data up to ``extrapolate_factor`` times it."""
    ks = log_spaced_ks(max_k, num_ks)
    per_problem = np.stack([per_problem_pass_at_k(n, c, int(k)) for k in ks], axis=1)
    bands = curve_bands(
        per_problem, confidence=confidence, n_resamples=max(n_resamples, 1000), seed=seed
    )
    far_end = round(max_k * extrapolate_factor)
    far_ks = (
        log_spaced_ks(far_end, max(num_ks // 4, 2), min_k=max_k + 1)
        if far_end > max_k
        else np.array([], dtype=np.int64)
    )
    return _Coverage(ks, per_problem.mean(axis=0), bands, np.concatenate([ks, far_ks]))


@dataclass(frozen=True)
class _Laws:
    """The two laws fitted to the coverage (all None when none could be), with notes why not."""

    power: PowerLawFit | None = None
    beta: BetaFit | None = None
    power_error: FitError | None = None
    beta_error: FitError | None = None
    band: ExtrapolationBand | None = None
    power_intervals: LawIntervals | None = None
    beta_intervals: LawIntervals | None = None
    llmonk_errors: tuple[FitError | None, FitError | None] = (None, None)
    notes: tuple[str, ...] = ()


def _fit_laws(
    n: np.ndarray,
    c: np.ndarray,
    coverage: _Coverage,
    *,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> _Laws:
    """The power law and the Beta model fitted to the coverage, their in-sample errors, the
    power law's band over every k and both laws' parameter intervals (bootstrap refits)."""
    ks, observed = coverage.ks, coverage.observed
    if len(ks) < 3:
        return _Laws(notes=("fewer than three k: no law fitted",))
    if np.all(c == 0) or np.all(c == n):
        return _Laws(notes=("every problem all right or all wrong: no law fitted",))
    power = fit_power_law(ks, observed)
    beta = fit_beta(n, c)
    refits = bootstrap_fits(n, c, model="power", fit_ks=ks, n_resamples=n_resamples, seed=seed)
    beta_refits = bootstrap_fits(n, c, model="beta", n_resamples=n_resamples, seed=seed)
    return _Laws(
        power=power,
        beta=beta,
        power_error=fit_error(observed, power.predict(ks)),
        beta_error=fit_error(observed, beta.predict(ks)),
        band=extrapolation_band(
            n, c, coverage.all_ks, model="power", fit_ks=ks, confidence=confidence, fits=refits
        ),
        power_intervals=law_intervals(refits, confidence),
        beta_intervals=law_intervals(beta_refits, confidence),
        llmonk_errors=(llmonk_fit_error(power, n, c), llmonk_fit_error(beta, n, c)),
    )


def _held_out(
    n: np.ndarray, c: np.ndarray, max_k: int, *, fitted: bool, seed: int
) -> tuple[HeldOutComparison | None, list[str]]:
    """Both laws fitted on a random fit_k-subset of each problem's samples and scored at
    k > fit_k (the fit error of :func:`_fit_laws` is in-sample), when the laws were ``fitted``
    and the samples allow; notes on why not."""
    fit_k = held_out_fit_k(max_k)
    if not fitted:
        return None, []
    if fit_k is None:
        return None, [
            f"{max_k} samples per problem are too few to fit on some k and score on others "
            "(a held-out error needs 6); the fit error is in-sample"
        ]
    try:
        # compare_held_out fits on int(fraction * max_k) samples: aim at fit_k's middle.
        fraction = (fit_k + 0.5) / max_k
        return compare_held_out(n, c, fit_fraction=fraction, seed=seed), []
    except ConfigError as exc:  # a subset with nothing solved has no law
        return None, [f"held-out comparison skipped: {exc}"]


@dataclass(frozen=True)
class _Spend:
    """Each problem's spend per sample: tokens (prompt tokens included) and cost."""

    tokens: np.ndarray
    cost: np.ndarray


def _target(
    power: PowerLawFit | None, target_coverage: float | None, spend: _Spend
) -> CoveragePlan | None:
    """The k the power law says reaches ``target_coverage`` and what it costs, at the run's
    mean spend per sample; None without a target or a law."""
    if target_coverage is None or power is None:
        return None
    return plan_for_coverage(
        power,
        target_coverage,
        cost_per_sample=float(spend.cost.mean()),
        tokens_per_sample=float(spend.tokens.mean()),
        num_problems=len(spend.cost),
    )


_LAW_COLUMNS = ("k", "coverage", "fit", "fit_low", "fit_high", "beta_fit", "tokens", "cost")


def _columns(extras: Mapping[str, Any]) -> tuple[str, ...]:
    """The table's columns: the laws' then the extra ones."""
    return _LAW_COLUMNS + tuple(name for name in extras if name not in _LAW_COLUMNS)


def _rows(
    coverage: _Coverage,
    laws: _Laws,
    spend: _Spend,
    extras: Mapping[str, Mapping[int, float]],
    bands: Mapping[str, Mapping[int, Band]],
) -> list[dict[str, Any]]:
    """The table, one row per k: measured coverage (None past the data), the laws, the spend of
    k samples of every problem, then the extra columns with their bands."""
    tokens, cost = float(spend.tokens.sum()), float(spend.cost.sum())
    measured_ks = len(coverage.ks)
    rows = []
    for position, k in enumerate(coverage.all_ks):
        spread = coverage.bands[position] if position < measured_ks else (None,) * 3
        row: dict[str, Any] = {
            "k": int(k),
            "coverage": float(coverage.observed[position]) if position < measured_ks else None,
            "coverage_se": spread[0],
            "coverage_low": spread[1],
            "coverage_high": spread[2],
            "fit": float(laws.power.predict([k])[0]) if laws.power else None,
            "fit_low": float(laws.band.low[position]) if laws.band else None,
            "fit_high": float(laws.band.high[position]) if laws.band else None,
            "beta_fit": float(laws.beta.predict([k])[0]) if laws.beta else None,
            "tokens": float(k * tokens),
            "cost": float(k * cost),
        }
        row.update(_extra_cells(int(k), extras, bands))
        rows.append(row)
    return rows


def _extra_cells(
    k: int, extras: Mapping[str, Mapping[int, float]], bands: Mapping[str, Mapping[int, Band]]
) -> dict[str, float | None]:
    """A row's extra columns at ``k``, each followed by its se, low and high when it has a band."""
    cells: dict[str, float | None] = {}
    for name, values in extras.items():
        value = values.get(k)
        cells[name] = float(value) if value is not None else None
        if name in bands:
            spread = bands[name].get(k)
            for part, number in zip(("se", "low", "high"), spread or (None,) * 3, strict=True):
                cells[f"{name} {part}"] = float(number) if number is not None else None
    return cells


def _write(
    report: FitReport, extras: Mapping[str, Mapping[int, float]], directory: Path, *, plot: bool
) -> FitReport:
    """``report`` written to ``directory``: ``fit.json`` and (``plot``) ``coverage.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    plot_path = None
    if plot:
        plot_path = directory / "coverage.png"
        plot_report(report, extras, plot_path)
    json_path = directory / "fit.json"
    report = replace(report, json_path=json_path, plot_path=plot_path)
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s%s", json_path, f" and {plot_path}" if plot_path else "")
    return report


# -- strategies' accuracy from the stored samples --------------------------------------------------

# Strategies offline evaluation runs from answers and correctness alone (the score-based ones join
# when every sample has a verifier score).
_WITHOUT_SCORES = ("majority", "adaptive", "ahead_by_k")


def offline_columns(
    records: Sequence[Mapping[str, Any]] | SampleTable,
    *,
    strategy: str | None = None,
    subsets: int = 100,
    seed: int = 0,
) -> tuple[dict[str, dict[int, float]], list[str]]:
    """Each strategy's expected accuracy at every k from the records' stored samples.

    Columns are named ``"<strategy> acc"`` and map k to accuracy (top-1, averaged over random
    k-subsets: :func:`ttscale.strategies.offline.evaluate`). Majority, adaptive and ahead-by-k
    need only answers and correctness; best-of-N, weighted majority and best-of-majority join when
    every sample has a verifier score. ``strategy`` keeps the records of that strategy. Returns
    the columns and notes on what was left out.
    """
    result, notes = offline_result(records, strategy=strategy, subsets=subsets, seed=seed)
    if result is None:
        return {}, notes
    columns = {
        f"{name} acc": {int(k): float(v) for k, v in zip(result.ks, values, strict=True)}
        for name, values in result.accuracy.items()
    }
    return columns, notes


def offline_bands(
    records: Sequence[Mapping[str, Any]] | SampleTable,
    *,
    strategy: str | None = None,
    subsets: int = 100,
    seed: int = 0,
    confidence: float = 0.9,
    n_resamples: int = 1000,
    traces: Sequence[Any] | None = None,
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, Band]], list[str]]:
    """:func:`offline_columns` with each column's (se, low, high) by k (:func:`curve_bands`);
    ``traces`` as :func:`offline_result` takes them."""
    result, notes = offline_result(
        records, strategy=strategy, subsets=subsets, seed=seed, traces=traces
    )
    if result is None:
        return {}, {}, notes
    columns: dict[str, dict[int, float]] = {}
    bands: dict[str, dict[int, Band]] = {}
    for name, values in result.accuracy.items():
        ks = [int(k) for k in result.ks]
        columns[f"{name} acc"] = dict(zip(ks, map(float, values), strict=True))
        spread = curve_bands(
            result.per_problem[name], confidence=confidence, n_resamples=n_resamples, seed=seed
        )
        bands[f"{name} acc"] = dict(zip(ks, spread, strict=True))
    return columns, bands, notes


def offline_result(
    records: Sequence[Mapping[str, Any]] | SampleTable,
    *,
    strategy: str | None = None,
    subsets: int = 100,
    seed: int = 0,
    traces: Sequence[Any] | None = None,
) -> tuple[Any, list[str]]:
    """The :class:`~ttscale.strategies.offline.OfflineResult` of the records' samples (None when
    there are none) and notes on the strategies left out; rows follow the records' order.

    ``traces`` (one row per record, its samples' stored token confidences:
    :func:`ttscale.compare.journal_traces`) adds DeepConf, offline and online."""
    from ttscale.strategies.offline import evaluate  # installed with the package

    if traces is not None and len(traces) != len(records):
        raise DataError(f"{len(traces)} rows of traces for {len(records)} records")
    table = records if isinstance(records, SampleTable) else SampleTable.from_records(records)
    kept = [n for n, name in enumerate(table.strategies) if strategy is None or name == strategy]
    if not kept:
        return None, []
    smallest = int(table.counts()[kept].min())
    if smallest < 1:
        return None, ["a problem has no samples: no offline accuracy"]
    answers, correct, raw_scores = table.block(kept, smallest)
    names = list(_WITHOUT_SCORES)
    notes: list[str] = []
    scores = None
    if not np.isnan(raw_scores).any():
        scores = raw_scores
        names += ["best_of_n", "best_of_majority"]
        if (scores >= 0).all():
            names.insert(names.index("best_of_majority"), "weighted_majority")
        else:
            notes.append("weighted majority left out: it needs verifier scores >= 0")
    else:
        notes.append(
            "best-of-N, weighted majority and best-of-majority need every sample's verifier "
            "score; these records have none"
        )
    streams = None
    if traces is not None:
        streams = [list(traces[n])[:smallest] for n in kept]
        names += ["deepconf", "deepconf_online"]
    result = evaluate(
        answers, correct, scores, strategies=names, subsets=subsets, seed=seed, traces=streams
    )
    if streams is not None:
        notes += _token_notes(result, streams)
    return result, notes


def _token_notes(result: Any, streams: Sequence[Sequence[Any]]) -> list[str]:
    """What each strategy replayed over the token streams spent, beside whole samples' cost."""
    whole = float(np.mean([np.mean([t.tokens for t in row]) for row in streams]))
    shown = [i for i, k in enumerate(result.ks) if k & (k - 1) == 0 or i == len(result.ks) - 1]
    notes = [
        "completion tokens per problem at k = "
        + ", ".join(str(int(result.ks[i])) for i in shown)
        + f": k whole samples {', '.join(f'{whole * result.ks[i]:,.0f}' for i in shown)}"
    ]
    for name, values in result.per_problem_tokens.items():
        mean = values.mean(axis=0)
        notes.append(f"  {name}: {', '.join(f'{mean[i]:,.0f}' for i in shown)}")
    return notes
