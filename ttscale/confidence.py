"""Confidence of a candidate from its own token logprobs: plain functions over plain data.

What each measure needs from the server (ask with ``SamplingParams(logprobs=k)``, which the OpenAI
sampler sends as ``logprobs: true, top_logprobs: k`` on chat and ``logprobs: k`` on completions):

- :func:`mean_logprob` needs the chosen token's logprob only (``logprobs``; ``k = 0`` is enough).
- :func:`token_confidences` and everything built on it (group, bottom-10%, lowest group, tail) and
  :func:`self_certainty` need the top-k alternatives per token (``top_logprobs``, k >= 1; DeepConf
  uses 20, the most OpenAI-style servers allow).

A candidate without what a measure needs raises :class:`MissingLogprobs` naming what to ask for,
never a silent 0, since a 0 would rank a candidate as if it had been measured.

Definitions (higher is more confident everywhere):

- Token confidence (DeepConf, Fu et al. 2025): ``C_i = -(1/k) * sum_j log p_j`` over the top-k
  alternatives at position i. A peaked distribution has unlikely alternatives, so a large C_i.
- Group confidence: the mean of C_i over a sliding window of ``window`` tokens; a trace shorter
  than the window has one group, its mean. DeepConf's 1024-2048 suits long reasoning traces; the
  short answers of small models need tens of tokens (see :class:`ConfidenceSettings`).
- Trace scores: the mean token confidence, the bottom fraction (the mean of the lowest 10% of
  groups, at least one), the lowest group, and the tail (the mean over the last ``tail`` tokens).
- Self-certainty (Kang et al. 2025): per token, KL(U || p) = -log V - (1/V) sum_j log p_j over the
  whole vocabulary of size V, averaged over the tokens. Servers give only the top k, and over the
  full vocabulary the sum is dominated by the unseen tail, which the top k do not describe (an
  estimate that spreads the leftover mass over the unseen tokens comes out as about -log of that
  mass, and is unbounded as the top k approach all of it). So it is estimated over the top k:
  the divergence of the top-k distribution, renormalised, from the uniform one over those k,
  ``-log k - (1/k) sum_j log(p_j / S)`` with ``S = sum p_j``. That equals the token confidence
  plus ``log S - log k``: DeepConf's token confidence is this estimate up to the mass the top k
  hold, which is why the two rank traces nearly alike.

:class:`GroupConfidenceWatch` applies DeepConf's online rule token by token (stop once the group
confidence of the last ``window`` tokens falls below a threshold); :func:`stop_position` is the
same rule over a stored trace, so that offline evaluation sees exactly where a live trace stops.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ttscale.errors import ConfigError
from ttscale.types import Candidate, TokenLogprob, logprob_value

__all__ = [
    "MEASURES",
    "ConfidenceSettings",
    "GroupConfidenceWatch",
    "MissingLogprobs",
    "bottom_confidence",
    "group_confidences",
    "lowest_group_confidence",
    "mean_confidence",
    "mean_logprob",
    "measure",
    "percentile",
    "self_certainty",
    "stop_position",
    "tail_confidence",
    "token_confidence",
    "token_confidences",
]


class MissingLogprobs(ConfigError):
    """A confidence measure was asked of a candidate that carries no (top) logprobs.

    A configuration problem, not bad data: the server must be asked for them (``logprobs`` and
    ``top_logprobs``), and some servers cannot give them at all.
    """


@dataclass(frozen=True)
class ConfidenceSettings:
    """How the measures read a trace.

    ``window``: tokens per group (sliding). The default of 32 suits the short answers small models
    write (tens to a few hundred tokens): long enough that one odd token does not decide a group,
    short enough that a trace has several groups. ``top_k``: alternatives per token to average
    (``None``: all the server gave); fix it when servers may return different counts.
    ``bottom_fraction``: the share of lowest groups the bottom score averages (DeepConf: 10%).
    ``tail``: tokens the tail score averages (``None``: ``window``).
    """

    window: int = 32
    top_k: int | None = None
    bottom_fraction: float = 0.1
    tail: int | None = None

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 < self.bottom_fraction <= 1:
            raise ConfigError(f"bottom_fraction must be in (0, 1], got {self.bottom_fraction}")
        if self.tail is not None and self.tail < 1:
            raise ConfigError(f"tail must be >= 1, got {self.tail}")


_DEFAULT = ConfidenceSettings()


# -- per token ---------------------------------------------------------------------------------


def _tokens(trace: Candidate | Sequence[TokenLogprob] | None) -> Sequence[TokenLogprob]:
    tokens = trace.logprobs if isinstance(trace, Candidate) else trace
    if tokens is None:
        raise MissingLogprobs(
            "this confidence measure needs token logprobs, and the candidate has none: ask the "
            "server for them (SamplingParams(logprobs=k); on the wire logprobs and top_logprobs)"
            "; a candidate whose logprobs the server sent unusable is kept without them, with a "
            "warning naming the value"
        )
    if not tokens:
        raise MissingLogprobs("the candidate has no tokens to measure (an empty completion)")
    return tokens


def _alternatives(token: TokenLogprob, top_k: int | None) -> list[float]:
    if not token.top:
        raise MissingLogprobs(
            "this confidence measure needs the top-k alternatives of every token "
            "(top_logprobs >= 1), and the server sent none; ask with SamplingParams(logprobs=k), "
            "k >= 1"
        )
    values = sorted((logprob_value(logprob) for _, logprob in token.top), reverse=True)
    return values[:top_k] if top_k is not None else values


def _finite(values: Sequence[float], what: str) -> None:
    """Refuse NaN and infinities, which would turn every later window mean into NaN (a running
    sum never recovers from inf - inf) and rank by list position; a sum is finite exactly when
    every term is (barring overflow, which is as meaningless)."""
    if not math.isfinite(sum(values)):
        bad = next((v for v in values if not math.isfinite(v)), "a sum that overflows")
        raise ConfigError(f"{what} must be finite numbers, got {bad}")


def token_confidence(token: TokenLogprob, top_k: int | None = None) -> float:
    """DeepConf's C_i: the negative mean logprob of the top-k alternatives at one position."""
    values = _alternatives(token, top_k)
    return -sum(values) / len(values)


def token_confidences(
    trace: Candidate | Sequence[TokenLogprob] | None, top_k: int | None = None
) -> list[float]:
    """C_i for every token of a candidate (or of its token list)."""
    return [token_confidence(token, top_k) for token in _tokens(trace)]


def _token_self_certainty(token: TokenLogprob, top_k: int | None) -> float:
    values = _alternatives(token, top_k)
    if len(values) == 1:
        return 0.0  # one token seen: nothing to compare it with, and no divergence to report
    top = values[0]  # the largest: subtracting it keeps every exp in (0, 1]
    log_mass = top + math.log(sum(math.exp(value - top) for value in values))
    return -math.log(len(values)) - sum(value - log_mass for value in values) / len(values)


# -- per trace ---------------------------------------------------------------------------------


def group_confidences(confidences: Sequence[float], window: int) -> list[float]:
    """Means of every window of ``window`` consecutive token confidences, in order.

    A trace shorter than the window has one group: the mean of all its tokens.
    """
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if not confidences:
        raise MissingLogprobs("no token confidences to group (an empty completion)")
    _finite(confidences, "token confidences")
    if len(confidences) <= window:
        return [sum(confidences) / len(confidences)]
    running = sum(confidences[:window])
    groups = [running / window]
    for end in range(window, len(confidences)):
        running += confidences[end] - confidences[end - window]
        groups.append(running / window)
    return groups


def mean_logprob(trace: Candidate | Sequence[TokenLogprob] | None) -> float:
    """The mean logprob of the chosen tokens (needs ``logprobs`` only, no alternatives)."""
    tokens = _tokens(trace)
    return sum(logprob_value(token.logprob) for token in tokens) / len(tokens)


def mean_confidence(
    trace: Candidate | Sequence[TokenLogprob] | None, top_k: int | None = None
) -> float:
    """DeepConf's average trace confidence: the mean C_i over every token."""
    values = token_confidences(trace, top_k)
    return sum(values) / len(values)


def bottom_confidence(
    trace: Candidate | Sequence[TokenLogprob] | None,
    settings: ConfidenceSettings = _DEFAULT,
) -> float:
    """The mean of the lowest ``bottom_fraction`` of group confidences (at least one group)."""
    groups = sorted(group_confidences(token_confidences(trace, settings.top_k), settings.window))
    count = max(1, math.floor(len(groups) * settings.bottom_fraction))
    return sum(groups[:count]) / count


def lowest_group_confidence(
    trace: Candidate | Sequence[TokenLogprob] | None,
    settings: ConfidenceSettings = _DEFAULT,
) -> float:
    """The lowest group confidence: what DeepConf's online threshold is set from."""
    return min(group_confidences(token_confidences(trace, settings.top_k), settings.window))


def tail_confidence(
    trace: Candidate | Sequence[TokenLogprob] | None,
    settings: ConfidenceSettings = _DEFAULT,
) -> float:
    """The mean token confidence over the last ``tail`` tokens (all of a shorter trace)."""
    values = token_confidences(trace, settings.top_k)
    tail = values[-(settings.tail or settings.window) :]
    return sum(tail) / len(tail)


def self_certainty(
    trace: Candidate | Sequence[TokenLogprob] | None,
    settings: ConfidenceSettings = _DEFAULT,
) -> float:
    """Self-certainty averaged over the tokens, estimated from the top k (module docstring)."""
    tokens = _tokens(trace)
    values = [_token_self_certainty(t, settings.top_k) for t in tokens]
    return sum(values) / len(values)


Measure = Callable[[Candidate | Sequence[TokenLogprob] | None, ConfidenceSettings], float]

MEASURES: Mapping[str, Measure] = MappingProxyType(
    {
        "mean_logprob": lambda trace, settings: mean_logprob(trace),
        "mean": lambda trace, settings: mean_confidence(trace, settings.top_k),
        "bottom": bottom_confidence,
        "lowest_group": lowest_group_confidence,
        "tail": tail_confidence,
        "self_certainty": self_certainty,
    }
)
"""Every trace score by name: ``mean_logprob``, ``mean`` (token confidence), ``bottom``
(bottom-10% groups), ``lowest_group``, ``tail`` and ``self_certainty``."""


def measure(
    name: str,
    trace: Candidate | Sequence[TokenLogprob] | None,
    settings: ConfidenceSettings = _DEFAULT,
) -> float:
    """The trace score ``name`` (see :data:`MEASURES`) of one candidate."""
    try:
        function = MEASURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown confidence measure {name!r}; known: {', '.join(MEASURES)}"
        ) from None
    return function(trace, settings)


# -- thresholds and stopping -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ConfigError("a percentile needs at least one value")
    if not 0 <= q <= 100:
        raise ConfigError(f"percentile must be in [0, 100], got {q}")
    _finite(values, "percentile values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stop_means(confidences: Sequence[float], window: int) -> list[float]:
    """The window means :func:`stop_position` compares, in order (computed as it computes them,
    so that ``stop_position(c, w, t)`` is ``w`` plus the first index whose mean is below ``t``):
    one per token from the ``window``-th on; none for a trace shorter than the window."""
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if len(confidences) < window:
        return []
    _finite(confidences, "token confidences")
    running = sum(confidences[:window])
    means = [running / window]
    for end in range(window, len(confidences)):
        running += confidences[end]
        running -= confidences[end - window]
        means.append(running / window)
    return means


def stop_position(confidences: Sequence[float], window: int, threshold: float) -> int | None:
    """How many tokens a live trace reads before DeepConf's online rule stops it, or None.

    The rule looks once ``window`` tokens have arrived, at every token from then on: it stops when
    the mean of the last ``window`` token confidences is below ``threshold``. The returned count
    includes the token that crossed (the client has it when it closes the stream).
    """
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if len(confidences) < window:
        return None
    _finite(confidences, "token confidences")
    if math.isnan(threshold):
        raise ConfigError("the threshold must be a number (-inf stops nothing), got nan")
    running = sum(confidences[:window])
    if running / window < threshold:
        return window
    for end in range(window, len(confidences)):
        # Added then subtracted, in the order GroupConfidenceWatch does, so that both round alike.
        running += confidences[end]
        running -= confidences[end - window]
        if running / window < threshold:
            return end + 1
    return None


class GroupConfidenceWatch:
    """DeepConf's online rule for one live trace, fed a token at a time.

    :meth:`feed` returns True at the token where :func:`stop_position` would stop the stored
    trace. Made fresh for every trace; not shared.
    """

    def __init__(self, window: int, threshold: float, top_k: int | None = None) -> None:
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        if math.isnan(threshold):
            raise ConfigError("the threshold must be a number (-inf stops nothing), got nan")
        self.window = window
        self.threshold = threshold
        self.top_k = top_k
        self.tokens = 0
        self.lowest: float | None = None
        self._recent: deque[float] = deque()
        self._sum = 0.0

    def feed(self, token: TokenLogprob) -> bool:
        """Take the next token; True once the trace should be stopped."""
        value = token_confidence(token, self.top_k)
        self.tokens += 1
        self._recent.append(value)
        self._sum += value
        if len(self._recent) > self.window:
            self._sum -= self._recent.popleft()
        if len(self._recent) < self.window:
            return False
        group = self._sum / self.window
        self.lowest = group if self.lowest is None else min(self.lowest, group)
        return group < self.threshold
