"""``ttscale compare``: is the gap between two curves real? Paired differences with intervals.

Two sides, each a results file and an offline strategy evaluated on its stored samples (two runs,
or two strategies on one run's samples: give the file twice). Only problems both files hold are
compared, paired by id, so each problem's difficulty cancels out of the difference.

At each budget k, per problem p, d_p = a_p(k) - b_p(k) (each side's expected accuracy of that
problem, averaged over its random orders: :func:`ttscale.strategies.offline.evaluate`). Reported:
the mean difference, its standard error sd(d, ddof=1) / sqrt(P) (which also holds the Monte Carlo
error of both sides' orders), a seeded percentile bootstrap interval over problems, and a two-sided
paired sign-flip permutation p-value: under "no difference" the sign of each d_p is a coin flip;
p = (1 + #{|mean of flipped d| >= |mean d|}) / (1 + R), exact over all 2^P flips when P <= 14,
else R = ``permutations`` seeded random flips. This follows the evaluation-variance papers
(Madaan et al. 2024, "Quantifying Variance in Evaluation Benchmarks"; Heineman et al. 2025,
"Signal and Noise"): a difference is read against the noise of the same problems, and the
problems are a sample, so intervals are over problems.

The equal-compute view puts both curves on mean tokens spent per problem (a side's samples drawn
at k times its problems' tokens per sample, the run's own usage) and compares them at the same
tokens by linear interpolation within the range both reach; its interval and p-value come from
the same bootstrap (p: twice the smaller share of resampled differences on either side of zero).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ttscale.errors import ConfigError, DataError
from ttscale.estimators import log_spaced_ks

__all__ = [
    "Comparison",
    "CurveSide",
    "DifferenceAt",
    "compare_curves",
    "compare_runs",
    "equal_compute",
    "journal_traces",
    "paired_differences",
    "sign_flip_p_values",
]

FloatArray = npt.NDArray[np.float64]

_EXACT_FLIPS = 14  # 2^14 sign patterns: enumerate them all up to this many problems


@dataclass(frozen=True)
class CurveSide:
    """One side: per-problem accuracy (P, K) at ``ks`` and per-problem mean tokens (P, K)."""

    label: str
    ks: npt.NDArray[np.int64]
    per_problem: FloatArray
    tokens: FloatArray

    def __post_init__(self) -> None:
        if self.per_problem.shape != self.tokens.shape or self.per_problem.ndim != 2:
            raise ConfigError(
                f"{self.label}: accuracy {self.per_problem.shape} and tokens "
                f"{self.tokens.shape} must both be (problems, ks)"
            )
        if self.per_problem.shape[1] != self.ks.size:
            raise ConfigError(f"{self.label}: {self.ks.size} ks for {self.per_problem.shape[1]}")


@dataclass(frozen=True)
class DifferenceAt:
    """a - b at one point (a budget k, or a number of tokens) with its uncertainty."""

    at: float
    a: float
    b: float
    difference: float
    se: float
    low: float
    high: float
    p_value: float

    @property
    def verdict(self) -> str:
        """Which side is ahead, judged on the interval (not on the point estimate)."""
        if self.low > 0:
            return "a ahead"
        if self.high < 0:
            return "b ahead"
        return "no clear difference"

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "a": self.a,
            "b": self.b,
            "difference": self.difference,
            "se": self.se,
            "low": self.low,
            "high": self.high,
            "p_value": self.p_value,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Comparison:
    """Everything ``ttscale compare`` found (``by_k`` and ``by_tokens``: a - b)."""

    a: str
    b: str
    problems: int
    by_k: tuple[DifferenceAt, ...]
    by_tokens: tuple[DifferenceAt, ...]
    confidence: float
    resamples: int
    seed: int
    p_value_method: str
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "problems": self.problems,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "p_value_method": self.p_value_method,
            "by_k": [row.to_dict() | {"k": int(row.at)} for row in self.by_k],
            "by_tokens": [row.to_dict() | {"tokens": row.at} for row in self.by_tokens],
            "notes": list(self.notes),
        }


# -- the statistics, pure ------------------------------------------------------------------------


def _resample_counts(problems: int, resamples: int, seed: int) -> FloatArray:
    """(R, P): how often each problem is drawn in each bootstrap resample (seeded)."""
    index = np.random.default_rng(seed).integers(0, problems, size=(resamples, problems))
    rows = (np.arange(resamples)[:, None] * problems + index).ravel()
    counts = np.bincount(rows, minlength=resamples * problems)
    return counts.reshape(resamples, problems).astype(np.float64)


def sign_flip_p_values(
    differences: npt.ArrayLike, *, permutations: int = 10_000, seed: int = 0
) -> tuple[FloatArray, str]:
    """Two-sided paired sign-flip p-value per column of (P, K) differences, and the method."""
    d = np.atleast_2d(np.asarray(differences, dtype=np.float64))
    problems = d.shape[0]
    if problems <= _EXACT_FLIPS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=problems)))
        method = f"exact sign-flip permutation over all 2^{problems} patterns"
        add_one = 0
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(permutations, problems))
        method = f"sign-flip permutation, {permutations} seeded random patterns"
        add_one = 1  # the observed pattern counts once: p is never 0 from a sample of flips
    observed = np.abs(d.mean(axis=0))
    flipped = np.abs(signs @ d / problems)
    # A tolerance keeps the observed pattern itself from rounding out of its own count.
    extreme = (flipped >= observed[None, :] - 1e-12).sum(axis=0)
    p = (extreme + add_one) / (signs.shape[0] + add_one)
    return np.asarray(p, dtype=np.float64), method


def paired_differences(
    a: CurveSide,
    b: CurveSide,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    permutations: int = 10_000,
    seed: int = 0,
) -> tuple[list[DifferenceAt], str]:
    """a - b at each shared k: mean, se, bootstrap interval and sign-flip p-value."""
    if not np.array_equal(a.ks, b.ks) or a.per_problem.shape != b.per_problem.shape:
        raise ConfigError("both sides need the same problems and ks")
    d = a.per_problem - b.per_problem
    problems = d.shape[0]
    se = (
        d.std(axis=0, ddof=1) / math.sqrt(problems) if problems > 1 else np.full(d.shape[1], np.nan)
    )
    means = _resample_counts(problems, resamples, seed) @ d / problems
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, tail, axis=0), np.quantile(means, 1 - tail, axis=0)
    p, method = sign_flip_p_values(d, permutations=permutations, seed=seed)
    rows = [
        DifferenceAt(
            float(k),
            float(a.per_problem[:, i].mean()),
            float(b.per_problem[:, i].mean()),
            float(d[:, i].mean()),
            float(se[i]),
            float(low[i]),
            float(high[i]),
            float(p[i]),
        )
        for i, k in enumerate(a.ks)
    ]
    return rows, method


def _at_tokens(tokens: FloatArray, accuracy: FloatArray, levels: FloatArray) -> FloatArray:
    """Accuracy at each token level along (R, K) curves: linear between a curve's points."""
    out = np.empty((tokens.shape[0], levels.size))
    for row in range(tokens.shape[0]):
        order = np.argsort(tokens[row], kind="stable")
        out[row] = np.interp(levels, tokens[row][order], accuracy[row][order])
    return out


def equal_compute(
    a: CurveSide,
    b: CurveSide,
    *,
    levels: Sequence[float] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> list[DifferenceAt]:
    """a - b at equal mean tokens per problem, at ``levels`` (default: both sides' points within
    the range both curves reach, at most 12, log-spaced)."""
    if a.per_problem.shape[0] != b.per_problem.shape[0]:
        raise ConfigError("both sides need the same problems")
    mean_tokens_a, mean_tokens_b = a.tokens.mean(axis=0), b.tokens.mean(axis=0)
    floor = max(mean_tokens_a.min(), mean_tokens_b.min())
    ceiling = min(mean_tokens_a.max(), mean_tokens_b.max())
    if levels is None:
        points = np.unique(np.concatenate([mean_tokens_a, mean_tokens_b]))
        points = points[(points >= floor) & (points <= ceiling)]
        if points.size > 12:
            points = points[np.unique(np.round(np.geomspace(1, points.size, 12)).astype(int) - 1)]
        chosen = points
    else:
        chosen = np.asarray(levels, dtype=np.float64)
    if chosen.size == 0:
        return []
    problems = a.per_problem.shape[0]
    weights = np.vstack([np.ones((1, problems)), _resample_counts(problems, resamples, seed)])
    curve_a = _at_tokens(weights @ a.tokens / problems, weights @ a.per_problem / problems, chosen)
    curve_b = _at_tokens(weights @ b.tokens / problems, weights @ b.per_problem / problems, chosen)
    diff = curve_a - curve_b  # row 0: all problems once; the rest: the bootstrap
    tail = (1 - confidence) / 2
    boot = diff[1:]
    low, high = np.quantile(boot, tail, axis=0), np.quantile(boot, 1 - tail, axis=0)
    below, above = (boot <= 0).mean(axis=0), (boot >= 0).mean(axis=0)
    p = np.minimum(1.0, 2 * np.minimum(below, above))
    return [
        DifferenceAt(
            float(level),
            float(curve_a[0, i]),
            float(curve_b[0, i]),
            float(diff[0, i]),
            float(boot[:, i].std(ddof=1)),
            float(low[i]),
            float(high[i]),
            float(p[i]),
        )
        for i, level in enumerate(chosen)
    ]


def compare_curves(
    a: CurveSide,
    b: CurveSide,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    permutations: int = 10_000,
    seed: int = 0,
    notes: Sequence[str] = (),
) -> Comparison:
    """Both views of a - b for two sides over the same problems (pure)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ConfigError(f"resamples must be >= 1, got {resamples}")
    by_k, method = paired_differences(
        a, b, confidence=confidence, resamples=resamples, permutations=permutations, seed=seed
    )
    by_tokens = equal_compute(a, b, confidence=confidence, resamples=resamples, seed=seed)
    return Comparison(
        a=a.label,
        b=b.label,
        problems=a.per_problem.shape[0],
        by_k=tuple(by_k),
        by_tokens=tuple(by_tokens),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        p_value_method=method,
        notes=tuple(notes),
    )


# -- reading two results files ---------------------------------------------------------------------


def _load(path: Path) -> list[dict[str, Any]]:
    from ttscale.report import read_results  # checks every line, naming the place of a bad one

    checked = read_results(path)
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    strategies = sorted({record.strategy for record in checked})
    if len(strategies) > 1:
        raise DataError(
            f"the file holds records of several strategies ({', '.join(strategies)}); "
            "compare one run's records at a time",
            path=str(path),
        )
    seen: set[str] = set()
    for record in checked:
        if record.id in seen:
            raise DataError(
                f"problem {record.id!r} appears twice", path=str(path), line=record.line
            )
        seen.add(record.id)
    return raw


def journal_traces(
    results: str | Path, records: Sequence[Mapping[str, Any]] | None = None
) -> tuple[list[list[Any]] | None, str]:
    """Each record's samples as :class:`~ttscale.strategies.deepconf.StoredTrace` (token
    confidences and completion tokens), from the run's sample journal ``<results>.samples.jsonl``
    (a sample is its problem's journal entry of the same index and text), or None and why not:
    DeepConf needs every sample's top token logprobs (``ttscale solve --logprobs 20``).
    ``records`` default to every record of ``results``, in its order."""
    from ttscale.confidence import MissingLogprobs
    from ttscale.store import iter_journal
    from ttscale.strategies.deepconf import StoredTrace

    path = Path(results)
    journal = path.with_name(path.name + ".samples.jsonl")
    advice = "run ttscale solve with --logprobs 20 to keep every sample's top token logprobs"
    if not journal.exists():
        return None, f"deepconf left out: no sample journal {journal.name} ({advice})"
    # Records are streamed, never held: a run of 100,000 problems' sample keys is gigabytes of
    # dicts, and a journal without logprobs is answered at its first sample.
    wanted = {str(r["id"]) for r in records} if records is not None else None
    found: dict[tuple[str, int, str], Any] = {}
    for entry, _ in iter_journal(journal):
        candidate = entry.candidate
        if candidate.logprobs and (wanted is None or entry.problem in wanted):
            found[(entry.problem, candidate.index, candidate.text)] = candidate
    traces = []
    try:
        for record in records if records is not None else _trace_keys(path):
            row = []
            for sample in record["samples"]:
                key = (str(record["id"]), int(sample["index"]), str(sample.get("text", "")))
                if key not in found:
                    return (
                        None,
                        f"deepconf left out: a sample of {record['id']} has no logprobs ({advice})",
                    )
                row.append(StoredTrace.of(found[key], sample.get("answer")))
            traces.append(row)
    except MissingLogprobs as exc:
        return None, f"deepconf left out: {exc} ({advice})"
    return traces, ""


def _trace_keys(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a results file as far as :func:`journal_traces` reads them, streamed."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                keep = ("index", "text", "answer")
                samples = [{name: s.get(name) for name in keep} for s in record["samples"]]
                yield {"id": record["id"], "samples": samples}


def _side(
    label: str,
    records: list[dict[str, Any]],
    strategy: str,
    ks: Sequence[int],
    subsets: int,
    seed: int,
    traces: Sequence[Any] | None = None,
) -> CurveSide:
    from ttscale.report import offline_result
    from ttscale.types import Usage

    result, _ = offline_result(records, subsets=subsets, seed=seed, traces=traces)
    if result is None or strategy not in result.accuracy:
        known = ", ".join(result.accuracy) if result is not None else "none"
        raise ConfigError(f"{label}: no offline {strategy!r} from these samples (have: {known})")
    wanted = [int(np.flatnonzero(result.ks == k)[0]) for k in ks]
    usages = [Usage.from_dict(r["usage"]) for r in records]
    counts = np.array([max(len(r["samples"]), 1) for r in records], dtype=np.float64)
    drawn = result.per_problem_samples[strategy][:, wanted]
    if strategy in result.per_problem_tokens:
        # Replayed over the token streams: prompt tokens per sample drawn, and the completion
        # tokens the replay spent (an online stop pays only what was generated before it).
        prompt = np.array([u.prompt_tokens for u in usages]) / counts
        tokens = drawn * prompt[:, None] + result.per_problem_tokens[strategy][:, wanted]
    else:
        per_sample = np.array([u.total_tokens for u in usages]) / counts
        tokens = drawn * per_sample[:, None]
    return CurveSide(
        label=label,
        ks=np.asarray(ks, dtype=np.int64),
        per_problem=result.per_problem[strategy][:, wanted],
        tokens=tokens,
    )


def compare_runs(
    a_path: str | Path,
    b_path: str | Path,
    *,
    strategies: Sequence[str] = ("majority",),
    ks: Sequence[int] | None = None,
    subsets: int = 100,
    seed: int = 0,
    confidence: float = 0.95,
    resamples: int = 2000,
    permutations: int = 10_000,
) -> Comparison:
    """Compare offline ``strategies`` (one for both sides, or a's then b's) of two results files
    over the problems both hold; ``ks`` default to 12 log-spaced budgets up to the smallest n."""
    if not 1 <= len(strategies) <= 2:
        raise ConfigError(f"give one strategy or two (a's, b's), got {list(strategies)}")
    first, second = Path(a_path), Path(b_path)
    a_records, b_records = _load(first), _load(second)
    b_by_id = {r["id"]: r for r in b_records}
    shared = [r["id"] for r in a_records if r["id"] in b_by_id]
    if not shared:
        raise DataError(f"{first} and {second} share no problem ids")
    notes = []
    if len(shared) < max(len(a_records), len(b_records)):
        notes.append(
            f"{len(shared)} shared problems compared ({len(a_records)} in a, {len(b_records)} in b)"
        )
    a_shared = [r for r in a_records if r["id"] in b_by_id]
    b_shared = [b_by_id[problem] for problem in shared]
    smallest = min(len(r["samples"]) for r in [*a_shared, *b_shared])
    chosen_ks = _budgets(ks, smallest)
    a_name, b_name = strategies[0], strategies[-1]
    a_traces = b_traces = None
    if a_name.startswith("deepconf"):
        a_traces, why = journal_traces(first, a_shared)
        if a_traces is None:
            raise ConfigError(f"{first.name}: {why}")
    if b_name.startswith("deepconf"):
        b_traces, why = journal_traces(second, b_shared)
        if b_traces is None:
            raise ConfigError(f"{second.name}: {why}")
    a_side = _side(f"{first.name}:{a_name}", a_shared, a_name, chosen_ks, subsets, seed, a_traces)
    b_side = _side(f"{second.name}:{b_name}", b_shared, b_name, chosen_ks, subsets, seed, b_traces)
    return compare_curves(
        a_side,
        b_side,
        confidence=confidence,
        resamples=resamples,
        permutations=permutations,
        seed=seed,
        notes=notes,
    )


def _budgets(ks: Sequence[int] | None, smallest: int) -> list[int]:
    if smallest < 1:
        raise DataError("a shared problem has no samples")
    if ks is None:
        return [int(k) for k in log_spaced_ks(smallest, 12)]
    bad = [k for k in ks if not 1 <= int(k) <= smallest]
    if bad:
        raise ConfigError(
            f"--k must lie in 1..{smallest} (the fewest samples a problem has): {bad}"
        )
    return sorted({int(k) for k in ks})


def render(comparison: Comparison) -> list[Mapping[str, str]]:
    """The two views as rows of text cells (for the command's tables)."""
    width = f"{comparison.confidence:.0%}"
    rows: list[Mapping[str, str]] = []
    for view, points in (("k", comparison.by_k), ("tokens", comparison.by_tokens)):
        for row in points:
            rows.append(
                {
                    "view": view,
                    "at": f"{row.at:.0f}" if view == "k" else f"{row.at:,.0f}",
                    "a": f"{row.a:.4f}",
                    "b": f"{row.b:.4f}",
                    "a - b": f"{row.difference:+.4f}",
                    "se": f"{row.se:.4f}",
                    f"{width} CI": f"[{row.low:+.4f}, {row.high:+.4f}]",
                    "p": f"{row.p_value:.3g}",
                    "verdict": row.verdict,
                }
            )
    return rows
