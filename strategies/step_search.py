"""What the step-level search strategies share: options, the search tree, pure selection and
resampling functions, and the bookkeeping of one search (:class:`SearchRun`).

The pure functions work on plain lists and a seeded ``numpy`` generator, so they are tested
without an event loop:

- :func:`allocate`: how many children each kept path gets so a round draws ``total`` steps;
- :func:`top_positions`: the ``k`` best by value, ties broken uniformly at random (seeded);
- :func:`resampling_weights`: particle weights from path rewards, ``softmax(logit(r) / T)``
  (rewards that are not probabilities, such as confidence, are used as log-weights as they are);
- :func:`multinomial_resample` and :func:`systematic_resample`;
- :func:`select_leaves`: the final answer by reward, by weighted vote or by majority.

:class:`SearchRun` draws a round's steps concurrently through the sampler it is given (the budget
choke point: a budgeted sampler counts every token, sample and request, and a refusal ends the
search with everything drawn kept), scores the new steps with the process reward, aggregates each
path's step scores (``last``, ``min``, ``prod``/``product``, ``mean``) and keeps the tree for the
result's trace (every node with its parent, step, tokens, scores and whether it was kept, pruned,
finished or left unfinished).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ttscale.errors import (
    BudgetExhausted,
    ConfigError,
    SamplerError,
    TTScaleError,
    VerifierError,
)
from ttscale.protocols import Sampler, Verifier, as_sampler, as_verifier
from ttscale.strategies.base import StrategyConfig
from ttscale.strategies.selection import best_member, select_majority
from ttscale.strategies.steps import (
    Continuation,
    Delimiter,
    DrawnStep,
    StepRequest,
    StepSettings,
    StepText,
    draw_steps,
    join_steps,
)
from ttscale.types import (
    Candidate,
    Message,
    Problem,
    Result,
    SampleBatch,
    SamplingParams,
    Score,
    TraceEvent,
    Usage,
)
from ttscale.verifiers.process_reward import (
    AGGREGATIONS,
    ProcessRewardVerifier,
    StepScorer,
    aggregate_steps,
    checked_step_scores,
)
from ttscale.verifiers.process_reward_models import (
    ConfidenceStepScorer,
    JudgeStepScorer,
    as_step_scorer,
    function_kind,
    resolve_step_scorer,
)

__all__ = [
    "FinalSelection",
    "Node",
    "SearchConfig",
    "SearchRun",
    "allocate",
    "multinomial_resample",
    "problem_generator",
    "resampling_weights",
    "resolve_reward",
    "select_leaves",
    "systematic_resample",
    "top_positions",
]

log = logging.getLogger(__name__)

FinalSelection = Literal["score", "weighted_vote", "majority"]
_SELECTIONS = ("score", "weighted_vote", "majority")


# -- pure functions -----------------------------------------------------------------------------


def allocate(total: int, parents: int) -> list[int]:
    """Children per parent so that ``parents`` paths draw ``total`` steps (earlier get the rest)."""
    if parents < 1 or total < 0:
        raise ConfigError(f"cannot share {total} steps among {parents} paths")
    base, extra = divmod(total, parents)
    return [base + (1 if position < extra else 0) for position in range(parents)]


def top_positions(values: Sequence[float], k: int, rng: np.random.Generator) -> list[int]:
    """Positions of the ``k`` highest values, best first; ties in uniformly random order.

    One uniform key per position is drawn from ``rng`` whatever the ties, so the generator's
    stream does not depend on the values.
    """
    keys = rng.random(len(values))
    order = sorted(range(len(values)), key=lambda p: (-_finite(values[p]), keys[p]))
    return order[: max(0, k)]


def _finite(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def resampling_weights(
    rewards: Sequence[float], temperature: float = 1.0, *, probabilities: bool = True
) -> list[float]:
    """Normalised particle weights: ``softmax(logit(r) / temperature)`` (pure).

    ``probabilities`` False uses the rewards as log-weights as they are (a confidence reward).
    Rewards are clipped to [1e-7, 1 - 1e-7] before the logit, as its_hub does. A reward that is
    NaN (a scorer that could not score the path) weighs least; when no log-weight is finite, the
    highest ones share the weight equally (all paths when every reward is NaN), so the weights are
    always a distribution a resampler can draw from.
    """
    if not rewards:
        return []
    if not temperature > 0:
        raise ConfigError(f"the resampling temperature must be > 0, got {temperature}")
    if probabilities:
        clipped = [min(max(_finite(r), 1e-7), 1 - 1e-7) for r in rewards]
        logs = [math.log(r / (1 - r)) / temperature for r in clipped]
    else:
        logs = [_finite(r) / temperature for r in rewards]
    top = max(logs)
    if math.isinf(top):  # every log-weight is -inf, or some are +inf: those at the top share
        tied = [value == top for value in logs]
        return [flag / sum(tied) for flag in tied]
    exps = [math.exp(value - top) for value in logs]
    total = sum(exps)
    return [value / total for value in exps]


def multinomial_resample(
    weights: Sequence[float], count: int, rng: np.random.Generator
) -> list[int]:
    """``count`` positions drawn independently with probabilities ``weights`` (sorted)."""
    p = np.asarray(weights, dtype=float)
    picks = rng.choice(len(p), size=count, replace=True, p=p / p.sum())
    return sorted(int(i) for i in picks)


def systematic_resample(
    weights: Sequence[float], count: int, rng: np.random.Generator
) -> list[int]:
    """Systematic resampling: one uniform offset, ``count`` evenly spaced pointers (sorted).

    A particle of weight w is kept floor(count * w) or ceil(count * w) times, so it has less
    variance than multinomial resampling.
    """
    cumulative = np.cumsum(np.asarray(weights, dtype=float))
    cumulative /= cumulative[-1]
    positions = (rng.random() + np.arange(count)) / count
    picks = np.searchsorted(cumulative, positions, side="right")
    return [int(min(i, len(weights) - 1)) for i in picks]


def select_leaves(
    values: Sequence[float],
    answers: Sequence[str | None],
    k: int,
    how: FinalSelection,
    rng: np.random.Generator,
    *,
    votes: Sequence[float] | None = None,
) -> list[int]:
    """Positions of the selected leaves, best first (pure but for the seeded tie-breaks).

    ``score``: the highest path reward (ties at random). ``weighted_vote``: the answer with the
    most ``votes`` (default: the rewards), represented by its best-rewarded leaf. ``majority``:
    the commonest answer, likewise.
    """
    if how == "score":
        return top_positions(values, k, rng)
    weights = list(votes if votes is not None else values) if how == "weighted_vote" else None
    indices = list(range(len(values)))
    groups = select_majority(answers, k, weights=weights, indices=indices)
    picked = [best_member(group.members, list(values), indices) for group in groups]
    if not picked and values:  # no leaf has an answer: fall back to the best reward
        return top_positions(values, k, rng)
    return picked


def problem_generator(seed: int, problem_id: str) -> np.random.Generator:
    """The search's generator for one problem: seeded by ``seed`` and the problem's id."""
    digest = hashlib.sha256(problem_id.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


# -- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchConfig(StrategyConfig):
    """Options every step-level search takes.

    ``samples`` (N) is the number of paths drawn per round (beam search, DVTS) or of particles.
    ``beam_width`` (M) is how many ways a kept path is expanded. ``max_steps`` rounds at most;
    the last one draws each path to its end. ``step_tokens`` caps a step's tokens. ``temperature``
    applies when ``params`` sets none. Defaults follow search-and-learn's recipes (N = 16 here,
    M = 4, 40 iterations, temperature 0.8, ``\\n\\n`` steps, 2048 tokens, ``last`` aggregation).

    ``reward`` is the process reward: a step scorer, a function ``(problem, steps) -> scores``
    (one whose second parameter is annotated with ``Candidate`` or named ``candidates`` is taken
    as a verifier function and scores each prefix; see ``function_kind``), ``"judge"`` (the
    run's own model asked yes/no per step, through the run's sampler and so its budget),
    ``"confidence"`` (self-certainty of the step's tokens), or None: the strategy's
    ``verifier`` then, a :class:`ProcessRewardVerifier`'s step scorer or any verifier scoring
    each prefix. ``select`` picks the final answer among finished paths. ``seed`` seeds the
    tie-breaks and resampling (with the problem's id).
    """

    samples: int = 16
    beam_width: int = 4
    max_steps: int = 40
    delimiter: Delimiter = "\n\n"
    continuation: Continuation = "prefill"
    template: Callable[[Sequence[Message]], str] | None = None
    step_tokens: int | None = 2048
    temperature: float | None = 0.8
    reward: Any = None
    aggregation: str = "last"
    select: FinalSelection = "score"
    is_final: Callable[[str], bool] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.beam_width, bool) or self.beam_width < 1:
            raise ConfigError(f"beam_width must be >= 1, got {self.beam_width!r}")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"unknown aggregation {self.aggregation!r}; known: {', '.join(AGGREGATIONS)}"
            )
        if self.select not in _SELECTIONS:
            raise ConfigError(f"select must be one of {', '.join(_SELECTIONS)}")
        if isinstance(self.reward, str) and self.reward not in ("judge", "confidence"):
            raise ConfigError(f"reward must be 'judge', 'confidence' or a scorer: {self.reward!r}")
        self.settings(None)  # validates the step options now, not mid-run

    def settings(self, scorer: object) -> StepSettings:
        needs = bool(getattr(scorer, "needs_logprobs", False))
        return StepSettings(
            delimiter=self.delimiter,
            continuation=self.continuation,
            template=self.template,
            step_tokens=self.step_tokens,
            is_final=self.is_final,
            logprobs=5 if needs else None,
        )


def resolve_reward(reward: Any, verifier: Verifier | None, sampler: Sampler) -> StepScorer:
    """The step scorer a search uses (see :class:`SearchConfig`'s ``reward``)."""
    if reward == "judge":
        return JudgeStepScorer(sampler)
    if reward == "confidence":
        return ConfidenceStepScorer()
    plain = callable(reward) and not isinstance(reward, StepScorer | Verifier)
    if plain and function_kind(reward) == "candidates":  # a verifier function: scores prefixes
        return resolve_step_scorer(reward, "reward")
    if reward is not None:
        return as_step_scorer(reward)
    if isinstance(verifier, ProcessRewardVerifier):
        return verifier.step_scorer
    if isinstance(verifier, StepScorer):
        return verifier
    if verifier is not None:
        return ProcessRewardVerifier(as_verifier(verifier)).step_scorer
    raise ConfigError(
        "a step-level search needs a process reward: give reward= (a step scorer, a function, "
        "'judge' or 'confidence') or a verifier"
    )


# -- the tree -----------------------------------------------------------------------------------


@dataclass
class Node:
    """One step in the search tree (the root has no step). Mutable: its status changes."""

    id: int
    parent: int | None
    depth: int
    text: StepText
    index: int = -1
    tokens: int = 0
    finish_reason: str | None = None
    final: bool = False
    score: float = math.nan
    value: float = math.nan
    status: str = "open"  # open, kept, pruned, finished, unfinished

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "depth": self.depth,
            "index": self.index,
            "step": str(self.text),
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            "final": self.final,
            "score": None if math.isnan(self.score) else self.score,
            "value": None if math.isnan(self.value) else self.value,
            "status": self.status,
        }


@dataclass
class SearchRun:
    """The mutable state of one search on one problem; never shared between runs."""

    problem: Problem
    sampler: Sampler
    verifier: Verifier | None
    config: SearchConfig
    strategy: str
    nodes: list[Node] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    trace: list[TraceEvent] = field(default_factory=list)
    next_index: int = 0
    budget_stop: str | None = None
    prompt_tokens: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sampler = as_sampler(self.sampler)
        self.scorer = resolve_reward(self.config.reward, self.verifier, self.sampler)
        self.settings = self.config.settings(self.scorer)
        self.probabilities = bool(getattr(self.scorer, "probabilities", True))
        self.rng = problem_generator(self.config.seed, self.problem.id)
        self.extract = self.config.extract
        self.nodes.append(Node(0, None, 0, StepText("")))
        self._scorer_usage = _usage_of(self.scorer)

    @property
    def can_draw(self) -> bool:
        return self.budget_stop is None

    def event(self, step: str, **data: Any) -> None:
        self.trace.append(TraceEvent(step, data))
        log.debug("%s %s: %s", self.strategy, self.problem.id, step)

    def steps(self, node_id: int) -> list[StepText]:
        chain = []
        node = self.nodes[node_id]
        while node.parent is not None:
            chain.append(node.text)
            node = self.nodes[node.parent]
        return chain[::-1]

    def path_scores(self, node_id: int) -> list[float]:
        scores = []
        node = self.nodes[node_id]
        while node.parent is not None:
            scores.append(node.score)
            node = self.nodes[node.parent]
        return scores[::-1]

    def _base_params(self, index: int) -> SamplingParams | None:
        params = self.config.policy.params_for(index)
        if self.config.temperature is None:
            return params
        if params is None:
            return SamplingParams(temperature=self.config.temperature)
        if params.temperature is None:
            return params.replace(temperature=self.config.temperature)
        return params

    async def expand(self, plan: Sequence[tuple[int, int]], *, to_end: bool) -> list[Node]:
        """Draw ``count`` next steps of each ``(node id, count)`` and score them; the new nodes
        in sample-index order. A budget refusal keeps what arrived and stops the search."""
        requests = []
        for node_id, count in plan:
            if count <= 0:
                continue
            requests.append(
                StepRequest(node_id, tuple(self.steps(node_id)), count, self.next_index, to_end)
            )
            self.next_index += count
        if not requests:
            return []
        base = self._base_params(requests[0].start_index)
        outcome = await draw_steps(self.sampler, self.problem.input, base, requests, self.settings)
        self.usages.append(outcome.usage)
        self.prompt_tokens.extend(outcome.prompt_tokens)
        children = [self._add(step) for step in sorted(outcome.steps, key=lambda s: s.index)]
        try:
            await self._score(children)
        except BudgetExhausted as exc:
            # The reward's own calls were refused (an LLM judge under the budget): the search
            # stops as a refused draw stops it, and this round's steps, unscored, rank last.
            self.budget_stop = self.budget_stop or str(exc)
            self.event("budget_exhausted", reason=str(exc), kept=len(children), scored=False)
        except TTScaleError as exc:
            self._scoring_failed(exc)
            raise
        except Exception as exc:
            failed = VerifierError(f"the process reward failed: {type(exc).__name__}: {exc}")
            raise self._scoring_failed(failed) from exc
        if outcome.budget_stop is not None:
            self.budget_stop = outcome.budget_stop
            self.event("budget_exhausted", reason=outcome.budget_stop, kept=len(children))
        if outcome.error is not None:
            self.event("error", error=str(outcome.error), kept=len(children))
            outcome.error.partial = self.batch()
            raise outcome.error
        return children

    def _scoring_failed(self, error: TTScaleError) -> TTScaleError:
        """``error``, which a failed process reward ends the search with, carrying what was drawn
        (a verifier error's ``partial``: the finished paths and all that was spent, the reward's
        own calls included)."""
        self.event("error", error=str(error), kept=len(self.nodes) - 1)
        if isinstance(error, VerifierError | SamplerError):
            error.partial = self.batch()
        return error

    def _add(self, step: DrawnStep) -> Node:
        parent = self.nodes[step.key]
        node = Node(
            id=len(self.nodes),
            parent=parent.id,
            depth=parent.depth + 1,
            text=step.text,
            index=step.index,
            tokens=step.tokens,
            finish_reason=step.finish_reason,
            final=step.final,
        )
        self.nodes.append(node)
        return node

    async def _score(self, nodes: Sequence[Node]) -> None:
        if not nodes:
            return
        paths = [self.steps(n.id) for n in nodes]
        batch = getattr(self.scorer, "score_batch", None)
        if callable(batch):  # one request for the round (a served PRM)
            results = list(await batch(self.problem, paths))
        else:
            results = await asyncio.gather(
                *(self.scorer.score_steps(self.problem, path) for path in paths)
            )
        for node, path, scores in zip(nodes, paths, results, strict=True):
            node.score = checked_step_scores(scores, len(path), "the process reward")[-1]
            node.value = aggregate_steps(self.path_scores(node.id), self.config.aggregation)

    # -- results --------------------------------------------------------------------------------

    def text(self, node_id: int) -> str:
        return join_steps(self.steps(node_id), self.config.delimiter)

    def candidate(self, node_id: int) -> Candidate:
        node = self.nodes[node_id]
        tokens = 0
        walk: Node | None = node
        while walk is not None and walk.parent is not None:
            tokens += walk.tokens
            walk = self.nodes[walk.parent]
        return Candidate(
            text=self.text(node_id),
            index=node.index,
            finish_reason=node.finish_reason if node.final else "unfinished",
            completion_tokens=tokens,
        )

    def batch(self) -> SampleBatch:
        leaves = [n.id for n in self.nodes if n.final]
        return SampleBatch(tuple(self.candidate(i) for i in leaves), self.usage())

    def usage(self) -> Usage:
        spent = Usage.total(self.usages)
        now = _usage_of(self.scorer)
        if now is not None and self._scorer_usage is not None:
            before = self._scorer_usage
            spent = spent + Usage(
                requests=now.requests - before.requests,
                samples=now.samples - before.samples,
                prompt_tokens=now.prompt_tokens - before.prompt_tokens,
                completion_tokens=now.completion_tokens - before.completion_tokens,
                cost=now.cost - before.cost,
                failed_requests=now.failed_requests - before.failed_requests,
                cached_tokens=now.cached_tokens - before.cached_tokens,
            )
        return spent

    def result(
        self,
        leaves: Sequence[int],
        *,
        votes: Mapping[int, float] | None = None,
        **summary: Any,
    ) -> Result:
        """The result over ``leaves`` (node ids of the paths that end the search)."""
        leaves = list(dict.fromkeys(leaves))
        for node_id in leaves:
            node = self.nodes[node_id]
            node.status = "finished" if node.final else "unfinished"
        candidates = [self.candidate(i) for i in leaves]
        answers = [self.extract(c.text) for c in candidates]
        values = [self.nodes[i].value for i in leaves]
        finished = [p for p, i in enumerate(leaves) if self.nodes[i].final]
        pool = finished or list(range(len(leaves)))
        vote_values = [votes[leaves[p]] for p in pool] if votes is not None else None
        picked = select_leaves(
            [values[p] for p in pool],
            [answers[p] for p in pool],
            self.config.k,
            self.config.select,
            self.rng,
            votes=vote_values,
        )
        chosen = [pool[p] for p in picked]
        scores = [
            Score(
                values[p], details={"node": leaves[p], "step_scores": self.path_scores(leaves[p])}
            )
            for p in range(len(leaves))
        ]
        self.event("tree", nodes=[node.to_dict() for node in self.nodes[1:]])
        self.event("prefix", **self.prefix_report())
        self.event(
            "select",
            nodes=[leaves[p] for p in chosen],
            answers=[answers[p] for p in chosen],
            how=self.config.select,
            **summary,
        )
        order = sorted(range(len(candidates)), key=lambda p: candidates[p].index)
        return Result(
            problem_id=self.problem.id,
            selected=tuple(candidates[p] for p in chosen),
            candidates=tuple(candidates[p] for p in order),
            usage=self.usage(),
            answers=tuple(answers[p] for p in chosen),
            scores=tuple(scores[p] for p in order),
            trace=tuple(self.trace),
        )

    def prefix_report(self) -> dict[str, Any]:
        """Prompt tokens of the step requests, how many of them re-sent a partial answer (what a
        server's prefix cache can save at most), and how many the server said it reused from its
        cache (``cached_tokens``: 0 from a server that does not report it)."""
        roots = [tokens for depth, tokens in self.prompt_tokens if depth == 0]
        root = min(roots) if roots else None
        total = sum(tokens for _, tokens in self.prompt_tokens)
        resent = (
            sum(max(0, tokens - root) for _, tokens in self.prompt_tokens)
            if root is not None
            else None
        )
        cached = Usage.total(self.usages).cached_tokens
        return {
            "requests": len(self.prompt_tokens),
            "prompt_tokens": total,
            "resent": resent,
            "cached_tokens": cached,
        }


def _usage_of(scorer: object) -> Usage | None:
    usage = getattr(scorer, "usage", None)
    return usage if isinstance(usage, Usage) else None
