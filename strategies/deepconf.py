"""DeepConf (Fu et al. 2025, "Deep Think with Confidence"): vote only with confident traces.

Two modes, both over the model's own token logprobs (:mod:`ttscale.confidence`), no reward model:

- ``offline``: draw ``samples`` traces, keep the ``eta`` most confident share of them by a trace
  score (``score``, default the bottom-10% group confidence), and take a vote weighted by it.
- ``online``: draw ``warmup`` traces; the stopping threshold is the ``100 * (1 - eta)``-th
  percentile of their lowest group confidences. Then draw the rest in batches of ``batch_size``,
  each streamed: a trace is stopped (its stream closed, the server stops generating) at the first
  token where the mean confidence of its last ``window`` tokens falls below the threshold. Stopped
  traces and finished traces whose lowest group is below the threshold do not vote; the vote is
  weighted by the lowest group confidence (as DeepConf's online code weights it). Drawing stops
  once the top answer holds ``consensus`` of the vote weight (checked after the warm-up and after
  every batch), or at ``samples``.

``eta = 0.1`` is the paper's DeepConf-low (most saving), ``eta = 0.9`` DeepConf-high (the default:
safer for accuracy). A sampler that cannot stream (:func:`~ttscale.protocols.can_watch`) gets the
same online rule applied after the fact, so the vote is the same but nothing is saved; the trace
says ``streamed: false``.

The rules are plain functions over plain data (:func:`keep_most_confident`,
:func:`online_threshold`, :func:`vote_share`, :func:`simulate_online`, :func:`simulate_offline`),
so the stored samples of any run evaluate both modes, by samples and by tokens, without drawing:
the token stream a stored trace holds says exactly where online stopping would have cut it.
:func:`evaluate_deepconf` averages those replays over random draw orders, per problem, with
standard errors across problems.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ttscale.confidence import (
    MEASURES,
    ConfidenceSettings,
    GroupConfidenceWatch,
    group_confidences,
    measure,
    percentile,
    stop_means,
    stop_position,
    token_confidences,
)
from ttscale.errors import ConfigError
from ttscale.protocols import EARLY_STOP, Sampler, Verifier, can_watch
from ttscale.strategies.base import ProblemRun, StrategyConfig, resolve_config, votes_summary
from ttscale.strategies.sampling import SamplingPolicy
from ttscale.strategies.selection import best_member, group_answers, select_majority, vote_counts
from ttscale.types import Candidate, Problem, Result, SamplingParams, Score

__all__ = [
    "DeepConf",
    "DeepConfConfig",
    "OfflineEvaluation",
    "OnlineOutcome",
    "StoredTrace",
    "evaluate_deepconf",
    "evaluate_majority",
    "keep_most_confident",
    "lowest_group",
    "online_threshold",
    "simulate_offline",
    "simulate_online",
    "vote_share",
]

log = logging.getLogger(__name__)

Mode = Literal["offline", "online"]
_TRACE_SCORES = tuple(name for name in MEASURES if name != "mean_logprob")


@dataclass(frozen=True)
class DeepConfConfig(StrategyConfig):
    """Options of :class:`DeepConf` (see the module docstring).

    ``top_logprobs``: alternatives per token to ask the server for (DeepConf: 20). ``score``: the
    trace score that filters and weights the offline vote (one of ``mean``, ``bottom``,
    ``lowest_group``, ``tail``, ``self_certainty``). ``window``: tokens per group. ``min_votes``:
    the fewest voting traces the consensus stop needs, so that one confident trace alone does not
    end the drawing.
    """

    samples: int = 16
    mode: Mode = "online"
    eta: float = 0.9
    score: str = "bottom"
    window: int = 32
    top_logprobs: int = 20
    warmup: int = 4
    batch_size: int = 4
    consensus: float = 0.95
    min_votes: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("offline", "online"):
            raise ConfigError(f"mode must be 'offline' or 'online', got {self.mode!r}")
        if not 0 < self.eta <= 1:
            raise ConfigError(f"eta must be a fraction in (0, 1], got {self.eta!r}")
        if self.score not in _TRACE_SCORES:
            raise ConfigError(
                f"score must be one of {', '.join(_TRACE_SCORES)}, got {self.score!r}"
            )
        if self.window < 1 or self.top_logprobs < 1:
            raise ConfigError("window and top_logprobs must be >= 1")
        if self.warmup < 1 or (self.mode == "online" and self.warmup > self.samples):
            raise ConfigError(f"warmup must be in 1..samples ({self.samples}), got {self.warmup}")
        if self.batch_size < 1 or self.min_votes < 1:
            raise ConfigError("batch_size and min_votes must be >= 1")
        if not 0 < self.consensus <= 1:
            raise ConfigError(f"consensus must be in (0, 1], got {self.consensus!r}")

    @property
    def settings(self) -> ConfidenceSettings:
        return ConfidenceSettings(window=self.window)


# -- the rules -------------------------------------------------------------------------------


def keep_most_confident(
    scores: Sequence[float], eta: float, indices: Sequence[int] | None = None
) -> list[int]:
    """Positions of the ``ceil(eta * n)`` highest scores (at least one), best first.

    Ties go to the lowest sample index, so the choice does not depend on listing order; a NaN
    score (a measure with nothing to say) ranks below every number.
    """
    if not 0 < eta <= 1:
        raise ConfigError(f"eta must be in (0, 1], got {eta}")
    if not scores:
        return []
    order = indices if indices is not None else range(len(scores))
    keep = max(1, math.ceil(eta * len(scores) - 1e-9))

    def rank(position: int) -> tuple[bool, float, int]:
        score = scores[position]
        unmeasured = math.isnan(score)
        return unmeasured, 0.0 if unmeasured else -score, order[position]

    ranked = sorted(range(len(scores)), key=rank)
    return ranked[:keep]


def online_threshold(lowest_groups: Sequence[float | None], eta: float) -> float:
    """DeepConf's stopping threshold: the ``100 * (1 - eta)``-th percentile of the warm-up's
    lowest group confidences (linear interpolation, as numpy's percentile).

    ``None`` (an empty completion, nothing to measure) is left out; with nothing left the
    threshold stops nothing.
    """
    measured = [value for value in lowest_groups if value is not None]
    return percentile(measured, 100 * (1 - eta)) if measured else -math.inf


def lowest_group(confidences: Sequence[float], window: int) -> float | None:
    """A trace's lowest group confidence; ``None`` for an empty completion."""
    return min(group_confidences(confidences, window)) if confidences else None


def _votes_with(answer: str | None, low: float | None, threshold: float) -> bool:
    return answer is not None and low is not None and low >= threshold


def vote_share(answers: Sequence[str | None], weights: Sequence[float]) -> tuple[float, int]:
    """The top answer's share of the vote weight, and how many traces voted.

    ``None`` answers (no answer, or a trace that does not vote) carry no weight.
    """
    if not math.isfinite(sum(weights)):
        raise ConfigError(f"vote weights must be finite numbers, got {list(weights)}")
    totals: dict[str, float] = {}
    voters = 0
    for answer, weight in zip(answers, weights, strict=True):
        if answer is None:
            continue
        voters += 1
        totals[answer] = totals.get(answer, 0.0) + weight
    whole = sum(totals.values())
    if not totals or whole <= 0:
        return 0.0, voters
    return max(totals.values()) / whole, voters


def _weighted_winner(
    answers: Sequence[str | None], weights: Sequence[float], indices: Sequence[int]
) -> str | None:
    groups = select_majority(answers, 1, weights=weights, indices=indices)
    return groups[0].answer if groups else None


@dataclass(frozen=True)
class StoredTrace:
    """One stored sample as the simulations read it: its answer, token confidences and length.

    ``tokens`` is the completion token count (what drawing it in full cost). What the rules derive
    from the confidences (lowest group, window means, trace scores) is computed once per trace and
    setting and kept, since replays read each trace in many orders.
    """

    answer: str | None
    confidences: tuple[float, ...]
    tokens: int
    _derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def lowest(self, window: int) -> float | None:
        """:func:`lowest_group` of the trace."""
        key = ("lowest", window)
        if key not in self._derived:
            self._derived[key] = lowest_group(self.confidences, window)
        found: float | None = self._derived[key]
        return found

    def cut(self, window: int, threshold: float) -> int | None:
        """:func:`~ttscale.confidence.stop_position` of the trace, from its window means."""
        key = ("means", window)
        if key not in self._derived:
            self._derived[key] = np.asarray(stop_means(self.confidences, window))
        below = np.flatnonzero(self._derived[key] < threshold)
        return int(below[0]) + window if below.size else None

    def score(self, name: str, settings: ConfidenceSettings) -> float:
        """The trace score ``name`` from the stored confidences."""
        key = ("score", name, settings)
        if key not in self._derived:
            self._derived[key] = _trace_score(name, self.confidences, settings)
        found: float = self._derived[key]
        return found

    @classmethod
    def of(cls, candidate: Candidate, answer: str | None, top_k: int | None = None) -> StoredTrace:
        """The trace of a candidate drawn with top logprobs (an empty completion has none)."""
        empty = candidate.logprobs == ()
        return cls(
            answer,
            () if empty else tuple(token_confidences(candidate, top_k)),
            candidate.completion_tokens or len(candidate.logprobs or ()),
        )


@dataclass(frozen=True)
class OnlineOutcome:
    """What a DeepConf run chose and spent: the answer, samples drawn and completion tokens."""

    answer: str | None
    samples: int
    tokens: int
    stopped: int = 0
    voters: int = 0
    threshold: float | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def simulate_offline(traces: Sequence[StoredTrace], config: DeepConfConfig) -> OnlineOutcome:
    """DeepConf offline over the first ``config.samples`` stored traces."""
    drawn = traces[: config.samples]
    settings = config.settings
    scores = [t.score(config.score, settings) for t in drawn]
    kept = set(keep_most_confident(scores, config.eta))
    answers = [t.answer if p in kept else None for p, t in enumerate(drawn)]
    answer = _weighted_winner(answers, scores, range(len(drawn)))
    return OnlineOutcome(
        answer=answer,
        samples=len(drawn),
        tokens=sum(t.tokens for t in drawn),
        voters=sum(a is not None for a in answers),
        reason="budget",
    )


def simulate_online(traces: Sequence[StoredTrace], config: DeepConfConfig) -> OnlineOutcome:
    """DeepConf online replayed over stored traces, in their order (the first are the warm-up).

    Tokens count what a live run would have paid: whole warm-up traces, and each later trace up
    to the token where it would have been stopped. Matches :class:`DeepConf` on a sampler that
    streams, trace for trace.
    """
    if len(traces) < config.warmup:
        raise ConfigError(f"need at least warmup={config.warmup} stored traces, got {len(traces)}")
    window = config.window
    warm = traces[: config.warmup]
    lowest = [t.lowest(window) for t in warm]
    threshold = online_threshold(lowest, config.eta)
    answers = [
        t.answer if _votes_with(t.answer, low, threshold) else None
        for t, low in zip(warm, lowest, strict=True)
    ]
    weights = [low or 0.0 for low in lowest]
    tokens = sum(t.tokens for t in warm)
    drawn, stopped = config.warmup, 0
    reason = "max_samples"
    while True:
        if _consensus(answers, weights, config):
            reason = "consensus"
            break
        if drawn >= min(config.samples, len(traces)):
            break
        batch = traces[drawn : min(drawn + config.batch_size, config.samples, len(traces))]
        for trace in batch:
            cut = trace.cut(window, threshold)
            if cut is not None:
                stopped += 1
                tokens += cut
                answers.append(None)
                weights.append(0.0)
                continue
            tokens += trace.tokens
            low = trace.lowest(window)
            answers.append(trace.answer if _votes_with(trace.answer, low, threshold) else None)
            weights.append(low or 0.0)
        drawn += len(batch)
    answer = _weighted_winner(answers, weights, range(len(answers)))
    return OnlineOutcome(
        answer=answer,
        samples=drawn,
        tokens=tokens,
        stopped=stopped,
        voters=sum(a is not None for a in answers),
        threshold=threshold,
        reason=reason,
    )


@dataclass(frozen=True)
class OfflineEvaluation:
    """DeepConf's expected accuracy, samples and completion tokens per problem, over draw orders.

    Each row holds one problem's mean over the orders; ``accuracy``, ``samples`` and ``tokens``
    are means over problems with their standard errors across problems (``*_se``).
    """

    per_problem_accuracy: tuple[float, ...]
    per_problem_samples: tuple[float, ...]
    per_problem_tokens: tuple[float, ...]

    @staticmethod
    def _mean_se(values: Sequence[float]) -> tuple[float, float]:
        count = len(values)
        mean = sum(values) / count
        if count < 2:
            return mean, 0.0
        variance = sum((v - mean) ** 2 for v in values) / (count - 1)
        return mean, math.sqrt(variance / count)

    @property
    def accuracy(self) -> tuple[float, float]:
        return self._mean_se(self.per_problem_accuracy)

    @property
    def samples(self) -> tuple[float, float]:
        return self._mean_se(self.per_problem_samples)

    @property
    def tokens(self) -> tuple[float, float]:
        return self._mean_se(self.per_problem_tokens)


def evaluate_deepconf(
    problems: Sequence[Sequence[StoredTrace]],
    correct: Sequence[Callable[[str | None], bool]],
    config: DeepConfConfig,
    *,
    orders: int = 20,
    seed: int = 0,
) -> OfflineEvaluation:
    """DeepConf in ``config.mode`` replayed over stored traces, by samples and by tokens.

    A problem's stored traces are drawn in ``orders`` random orders (the same seeded orders for
    every config, so two configs compare paired); each order replays the first ``config.samples``
    of them, the online mode stopping and cutting traces exactly as a live run would. A problem
    needs at least ``config.samples`` stored traces; ``correct[i]`` grades problem i's answers.
    """
    if len(problems) != len(correct):
        raise ConfigError(f"{len(correct)} graders for {len(problems)} problems")
    if orders < 1:
        raise ConfigError(f"orders must be >= 1, got {orders}")
    replay = simulate_online if config.mode == "online" else simulate_offline
    rng = random.Random(seed)
    accuracy, samples, tokens = [], [], []
    for traces, grade in zip(problems, correct, strict=True):
        if len(traces) < config.samples:
            raise ConfigError(f"a problem has {len(traces)} traces, fewer than {config.samples}")
        outcomes = []
        for _ in range(orders):
            order = rng.sample(range(len(traces)), config.samples)
            outcomes.append(replay([traces[i] for i in order], config))
        accuracy.append(sum(grade(o.answer) for o in outcomes) / orders)
        samples.append(sum(o.samples for o in outcomes) / orders)
        tokens.append(sum(o.tokens for o in outcomes) / orders)
    return OfflineEvaluation(tuple(accuracy), tuple(samples), tuple(tokens))


def evaluate_majority(
    problems: Sequence[Sequence[StoredTrace]],
    correct: Sequence[Callable[[str | None], bool]],
    samples: int,
    *,
    orders: int = 20,
    seed: int = 0,
) -> OfflineEvaluation:
    """Plain majority@``samples`` over the same seeded draw orders ``evaluate_deepconf`` uses.

    DeepConf's baseline, paired with it: offline DeepConf keeping every trace with every token at
    one confidence weighs each vote equally, so its weighted vote is a head count.
    """
    flat = [[StoredTrace(t.answer, (1.0,), t.tokens) for t in traces] for traces in problems]
    config = DeepConfConfig(samples=samples, mode="offline", eta=1.0)
    return evaluate_deepconf(flat, correct, config, orders=orders, seed=seed)


def _trace_score(name: str, confidences: Sequence[float], settings: ConfidenceSettings) -> float:
    """A trace score from stored token confidences (the group-based ones need no logprobs).

    An empty completion scores 0, the least confidence a trace can have (C_i >= 0).
    """
    if not confidences:
        return 0.0
    if name == "mean":
        return sum(confidences) / len(confidences)
    groups = group_confidences(confidences, settings.window)
    if name == "lowest_group":
        return min(groups)
    if name == "bottom":
        ordered = sorted(groups)
        count = max(1, math.floor(len(ordered) * settings.bottom_fraction))
        return sum(ordered[:count]) / count
    if name == "tail":
        tail = confidences[-(settings.tail or settings.window) :]
        return sum(tail) / len(tail)
    raise ConfigError(f"trace score {name!r} needs the token logprobs, not stored confidences")


def _consensus(
    answers: Sequence[str | None], weights: Sequence[float], config: DeepConfConfig
) -> bool:
    share, voters = vote_share(answers, weights)
    return voters >= config.min_votes and share >= config.consensus


# -- the strategy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _WithLogprobs:
    """The configured sampling policy, asking for the top alternatives DeepConf reads."""

    inner: SamplingPolicy
    top_logprobs: int

    def params_for(self, index: int) -> SamplingParams:
        params = self.inner.params_for(index) or SamplingParams()
        return params.replace(logprobs=max(params.logprobs or 0, self.top_logprobs))


class DeepConf:
    """DeepConf voting, offline or online with early termination (see the module docstring)."""

    name = "deepconf"

    def __init__(self, config: DeepConfConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(DeepConfConfig, config, options, "deepconf")

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        """Run on ``problem``. The verifier is not used: the model's own confidence decides."""
        config = self.config
        run = ProblemRun(problem, sampler, config, self.name)
        run.policy = _WithLogprobs(run.policy, config.top_logprobs)
        if config.mode == "offline":
            return await self._offline(run)
        return await self._online(run)

    async def _offline(self, run: ProblemRun) -> Result:
        config = self.config
        await run.draw(config.samples)
        values = [
            0.0 if c.logprobs == () else measure(config.score, c, config.settings)
            for c in run.candidates
        ]
        kept = set(keep_most_confident(values, config.eta, run.indices))
        answers = [a if p in kept else None for p, a in enumerate(run.answers)]
        run.event("filter", kept=len(kept), eta=config.eta, score=config.score)
        run.event("stop", reason="budget", samples=len(run.candidates))
        return self._select(run, answers, values)

    async def _online(self, run: ProblemRun) -> Result:
        config = self.config
        await run.draw(config.warmup)
        lowest = [self._lowest(c) for c in run.candidates]
        threshold = online_threshold(lowest, config.eta)
        streamed = can_watch(run.sampler)
        if not streamed:
            log.warning(
                "deepconf: %s cannot stream, so traces are drawn whole and the online rule is "
                "applied after the fact (the vote is the same; no tokens are saved)",
                type(run.sampler).__name__,
            )
        run.event("threshold", threshold=threshold, lowest=lowest, streamed=streamed)
        reason = "max_samples"
        while True:
            if _consensus(*self._votes(run, threshold), config):
                reason = "consensus"
                break
            if not run.can_draw:
                reason = "budget"
                break
            if run.next_index >= config.samples:
                break
            count = min(config.batch_size, config.samples - run.next_index)
            watcher = self._watcher(threshold) if streamed else None
            await run.draw(count, watcher)
        answers, weights = self._votes(run, threshold)
        stopped = sum(self._stopped(c, threshold) for c in run.candidates)
        run.event("stop", reason=reason, samples=len(run.candidates), early_stopped=stopped)
        return self._select(run, answers, weights)

    def _watcher(self, threshold: float) -> Callable[[int], GroupConfidenceWatch]:
        window = self.config.window
        return lambda index: GroupConfidenceWatch(window, threshold)

    def _lowest(self, candidate: Candidate) -> float | None:
        if candidate.logprobs == ():
            return None  # an empty completion: nothing to measure, and nothing to vote with
        return lowest_group(token_confidences(candidate), self.config.window)

    def _stopped(self, candidate: Candidate, threshold: float) -> bool:
        """Stopped live (its stream closed early), or, drawn whole, where the rule would have."""
        if candidate.finish_reason == EARLY_STOP:
            return True
        if candidate.index < self.config.warmup or candidate.logprobs == ():
            return False
        confidences = token_confidences(candidate)
        return stop_position(confidences, self.config.window, threshold) is not None

    def _votes(self, run: ProblemRun, threshold: float) -> tuple[list[str | None], list[float]]:
        """Who votes with what weight: finished traces whose lowest group reaches the threshold."""
        answers: list[str | None] = []
        weights: list[float] = []
        for candidate, answer in zip(run.candidates, run.answers, strict=True):
            low = self._lowest(candidate)
            votes = not self._stopped(candidate, threshold) and _votes_with(answer, low, threshold)
            answers.append(answer if votes else None)
            weights.append(low if votes and low is not None else 0.0)
        return answers, weights

    def _select(self, run: ProblemRun, answers: list[str | None], weights: list[float]) -> Result:
        indices = run.indices
        groups = select_majority(answers, self.config.k, weights=weights, indices=indices)
        fallback = not groups
        if fallback:
            # Nobody voted (every trace filtered or stopped): plain majority over what was drawn,
            # rather than no answer for samples already paid for.
            groups = select_majority(run.answers, self.config.k, indices=indices)
        voting = group_answers(answers, indices=indices)
        run.event("vote", votes=votes_summary(vote_counts(voting)), fallback_to_majority=fallback)
        scores = [
            Score(w, details={"votes": a is not None})
            for a, w in zip(answers, weights, strict=True)
        ]
        picked = [best_member(g.members, weights, indices) for g in groups]
        return run.result(picked, scores)
