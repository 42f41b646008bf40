"""Searching for a good collaboration graph under a budget (Agent-REINFORCE, Wang et al. 2025).

A :class:`ProbabilisticGraph` is a distribution over graphs in a :class:`SearchSpace`: a depth and a
width (layers of equal width), a model per node and a role per node past the first layer (generate
or fuse), each drawn from its layer's distribution (shared by the layer's nodes, so that what one
node learns its neighbours learn too), Bernoulli edges between consecutive layers, and the final
node's role (vote, fuse or judge) and model. Sampling it gives a
:class:`~ttscale.strategies.graphs.GraphSpec`; graphs over the budget (in model cost units) are
resampled. A node in a later layer that drew no incoming edge takes the edge from the node above it
(a deterministic repair, so the score-function gradient of what was drawn stays exact).

:func:`search_graph` evaluates graphs on a small training set with a verifier (reward = accuracy,
minus ``latency_weight`` x mean seconds per problem when asked) and, per method:

- ``reinforce``: after each batch of graphs, logits move along ``(reward - baseline) x grad log p``
  with a moving-average baseline;
- ``random``: every graph from the initial (uniform) distribution; the baseline of the paper;
- ``llm``: an LLM, over any sampler, reads the evaluated graphs and their scores and answers with
  JSON model weights, a width, a depth and a final role, which the logits move toward; a reply it
  cannot read falls back to the REINFORCE step for that batch.

Every method gets the same number of evaluations. A graph drawn again is scored from memory (the
same graph on the same problems), and still counts as an evaluation. The best graph found is a
spec that ``solve`` and ``serve`` run (:meth:`SearchResult.save`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier
from ttscale.strategies.graphs import GraphSpec, ModelSpec, NodeSpec, Role, execute_graph
from ttscale.types import Problem, SamplingParams

__all__ = [
    "ProbabilisticGraph",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "search_graph",
]

log = logging.getLogger(__name__)

Method = Literal["reinforce", "random", "llm"]
FloatArray = npt.NDArray[np.float64]
_LAYER_ROLES: tuple[Role, ...] = ("generate", "fuse")


@dataclass(frozen=True)
class SearchSpace:
    """What graphs the search may build: models with their cost units, shape limits, budget."""

    models: Mapping[str, float]
    max_width: int = 4
    max_depth: int = 2
    final_roles: tuple[Role, ...] = ("vote", "fuse", "judge")
    budget: float | None = None
    samples_per_node: int = 1

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("a search space needs at least one model")
        if self.max_width < 1 or self.max_depth < 1:
            raise ConfigError("max_width and max_depth must be >= 1")
        allowed = ("vote", "fuse", "judge")
        if not self.final_roles or any(r not in allowed for r in self.final_roles):
            raise ConfigError("final_roles must be among vote, fuse and judge")
        cheapest = min(self.models.values()) * self.samples_per_node
        if self.budget is not None and cheapest > self.budget:
            raise ConfigError(f"the budget {self.budget:g} cannot pay for a single node")

    @property
    def model_names(self) -> list[str]:
        return list(self.models)


@dataclass
class Draw:
    """What one sample of the distribution chose (indices into the space's options)."""

    depth: int
    width: int
    models: list[list[int]]
    roles: list[list[int]]  # roles[l][j] for l >= 1 (0: generate, 1: fuse); layer 0 is []
    edges: list[npt.NDArray[np.bool_]]  # edges[l-1][i, j]: layer l-1 slot i -> layer l slot j
    final_role: int
    final_model: int


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    result: FloatArray = shifted / shifted.sum(axis=-1, keepdims=True)
    return result


def _sigmoid(logits: FloatArray) -> FloatArray:
    result: FloatArray = 1.0 / (1.0 + np.exp(-logits))
    return result


class ProbabilisticGraph:
    """A distribution over graphs in a space (module docstring), as logits; uniform at start."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        width, depth, count = space.max_width, space.max_depth, len(space.models)
        self.logits: dict[str, FloatArray] = {
            "depth": np.zeros(depth),
            "width": np.zeros(width),
            "model": np.zeros((depth, count)),
            "role": np.zeros((depth, 2)),
            "edge": np.zeros((max(depth - 1, 1), width, width)),
            "final_role": np.zeros(len(space.final_roles)),
            "final_model": np.zeros(count),
        }

    def sample(self, rng: np.random.Generator) -> Draw:
        logits = self.logits
        depth = int(rng.choice(len(logits["depth"]), p=_softmax(logits["depth"]))) + 1
        width = int(rng.choice(len(logits["width"]), p=_softmax(logits["width"]))) + 1
        count = len(self.space.models)
        models = [
            [int(rng.choice(count, p=_softmax(logits["model"][layer]))) for _ in range(width)]
            for layer in range(depth)
        ]
        roles: list[list[int]] = [[]]
        edges: list[npt.NDArray[np.bool_]] = []
        for layer in range(1, depth):
            roles.append(
                [int(rng.choice(2, p=_softmax(logits["role"][layer]))) for _ in range(width)]
            )
            p = _sigmoid(logits["edge"][layer - 1, :width, :width])
            edges.append(rng.random((width, width)) < p)
        final_role = int(rng.choice(len(self.space.final_roles), p=_softmax(logits["final_role"])))
        final_model = int(rng.choice(len(self.space.models), p=_softmax(logits["final_model"])))
        return Draw(depth, width, models, roles, edges, final_role, final_model)

    def grad_log_prob(self, draw: Draw) -> dict[str, FloatArray]:
        """The gradient of log p(draw) with respect to every logit."""
        logits = self.logits
        grad = {name: np.zeros_like(value) for name, value in logits.items()}

        def categorical(name: str, index: tuple[int, ...], chosen: int) -> None:
            probs = _softmax(logits[name][index])
            grad[name][index] -= probs
            position = tuple([*index, chosen])
            grad[name][position] += 1.0

        categorical("depth", (), draw.depth - 1)
        categorical("width", (), draw.width - 1)
        for layer in range(draw.depth):
            for slot in range(draw.width):
                categorical("model", (layer,), draw.models[layer][slot])
                if layer >= 1:
                    categorical("role", (layer,), draw.roles[layer][slot])
        for layer in range(1, draw.depth):
            w = draw.width
            p = _sigmoid(logits["edge"][layer - 1, :w, :w])
            grad["edge"][layer - 1, :w, :w] += draw.edges[layer - 1].astype(float) - p
        categorical("final_role", (), draw.final_role)
        if self.space.final_roles[draw.final_role] != "vote":
            categorical("final_model", (), draw.final_model)
        return grad

    def step(self, gradient: Mapping[str, FloatArray], scale: float) -> None:
        for name, value in gradient.items():
            self.logits[name] = self.logits[name] + scale * value

    def to_spec(self, draw: Draw, name: str = "searched") -> GraphSpec:
        names = self.space.model_names
        nodes: list[NodeSpec] = []
        edges: list[tuple[str, str]] = []
        samples = self.space.samples_per_node

        def node_id(layer: int, slot: int) -> str:
            return f"L{layer}N{slot}"

        for layer in range(draw.depth):
            for slot in range(draw.width):
                role: Role = "generate" if layer == 0 else _LAYER_ROLES[draw.roles[layer][slot]]
                model = names[draw.models[layer][slot]]
                nodes.append(NodeSpec(node_id(layer, slot), role, model, samples=samples))
                if layer >= 1:
                    sources = [i for i in range(draw.width) if draw.edges[layer - 1][i, slot]]
                    # Repair: a later node with no input reads the node above it.
                    for source in sources or [slot]:
                        edges.append((node_id(layer - 1, source), node_id(layer, slot)))
        final_role = self.space.final_roles[draw.final_role]
        final_model = None if final_role == "vote" else names[draw.final_model]
        nodes.append(NodeSpec("final", final_role, final_model))
        edges.extend((node_id(draw.depth - 1, j), "final") for j in range(draw.width))
        models = {m: ModelSpec(cost=c) for m, c in self.space.models.items()}
        return GraphSpec(tuple(nodes), tuple(edges), "final", models, name=name)

    def summary(self) -> dict[str, Any]:
        """The distribution's marginals, for logs and the LLM updater."""
        names = self.space.model_names
        logits = self.logits
        model_probs = _softmax(logits["model"]).mean(axis=0)
        roles = zip(self.space.final_roles, _softmax(logits["final_role"]), strict=True)
        return {
            "depth": {d + 1: round(float(p), 3) for d, p in enumerate(_softmax(logits["depth"]))},
            "width": {w + 1: round(float(p), 3) for w, p in enumerate(_softmax(logits["width"]))},
            "models": {names[m]: round(float(p), 3) for m, p in enumerate(model_probs)},
            "final_role": {r: round(float(p), 3) for r, p in roles},
        }


@dataclass(frozen=True)
class SearchConfig:
    """How to search: the method, evaluations, batch size per update, learning rate, seed."""

    method: Method = "reinforce"
    evaluations: int = 40
    batch: int = 4
    learning_rate: float = 1.0
    baseline_decay: float = 0.7
    latency_weight: float = 0.0
    seed: int = 0
    problem_concurrency: int = 8
    max_resamples: int = 200

    def __post_init__(self) -> None:
        if self.method not in ("reinforce", "random", "llm"):
            raise ConfigError(f"method must be reinforce, random or llm, got {self.method!r}")
        if self.evaluations < 1 or self.batch < 1:
            raise ConfigError("evaluations and batch must be >= 1")


@dataclass
class SearchResult:
    """The best graph found and how the search went."""

    best: GraphSpec
    best_reward: float
    best_accuracy: float
    evaluations: int
    history: list[dict[str, Any]] = field(default_factory=list)
    distribution: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the best graph as a spec file that ``solve`` and ``serve`` run."""
        return self.best.save(path)


async def _evaluate(
    spec: GraphSpec,
    problems: Sequence[Problem],
    sampler_for: Callable[[str | None], Sampler],
    verifier: Verifier,
    params: SamplingParams | None,
    concurrency: int,
) -> tuple[float, float]:
    """(accuracy, mean seconds per problem) of ``spec`` on ``problems``."""
    gate = asyncio.Semaphore(concurrency)

    async def one(problem: Problem) -> tuple[bool, float]:
        async with gate:
            started = time.perf_counter()
            run = await execute_graph(spec, problem, sampler_for, params=params)
            elapsed = time.perf_counter() - started
            if not run.final:
                return False, elapsed
            (score,) = await verifier.score(problem, run.final[:1])
            passed = score.verdict if score.verdict is not None else score.number >= 0.5
            return bool(passed), elapsed

    outcomes = await asyncio.gather(*(one(p) for p in problems))
    accuracy = sum(ok for ok, _ in outcomes) / len(outcomes)
    return accuracy, sum(t for _, t in outcomes) / len(outcomes)


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def _llm_prompt(distribution: ProbabilisticGraph, evaluated: Sequence[dict[str, Any]]) -> str:
    lines = [
        "We are searching for a good multi-LLM collaboration graph under a cost budget.",
        f"Models and their cost units per call: {json.dumps(dict(distribution.space.models))}.",
        f"Budget per problem: {distribution.space.budget}.",
        f"Current sampling distribution: {json.dumps(distribution.summary())}.",
        "Graphs evaluated so far (accuracy on the training set):",
    ]
    for item in evaluated[-12:]:
        lines.append(f"- {item['shape']}: accuracy {item['accuracy']:.3f}")
    lines.append(
        'Reply with JSON only: {"model_weights": {"<model>": <weight>, ...}, "width": <int>, '
        '"depth": <int>, "final_role": "<role>"} describing where the search should move.'
    )
    return "\n".join(lines)


def _llm_step(distribution: ProbabilisticGraph, reply: str, rate: float) -> bool:
    """Move the logits toward an LLM's advice; False when the reply cannot be read."""
    match = _JSON_OBJECT.search(reply)
    if match is None:
        return False
    try:
        advice = json.loads(match.group())
        weights = {str(k): float(v) for k, v in dict(advice.get("model_weights", {})).items()}
        width = int(advice["width"])
        depth = int(advice["depth"])
        final_role = advice.get("final_role")
    except (ValueError, TypeError, KeyError, AttributeError):
        return False
    space = distribution.space
    names = space.model_names
    if weights:
        known = [max(weights.get(name, 0.0), 1e-3) for name in names]
        mean_log = sum(math.log(w) for w in known) / len(known)
        for m, w in enumerate(known):
            distribution.logits["model"][..., m] += rate * (math.log(w) - mean_log)
    if 1 <= width <= space.max_width:
        distribution.logits["width"][width - 1] += rate
    if 1 <= depth <= space.max_depth:
        distribution.logits["depth"][depth - 1] += rate
    if final_role in space.final_roles:
        distribution.logits["final_role"][space.final_roles.index(final_role)] += rate
    return True


def _shape(spec: GraphSpec) -> str:
    layers: dict[str, list[str]] = {}
    for node in spec.nodes:
        if node.id == "final":
            continue
        layers.setdefault(node.id.split("N")[0], []).append(f"{node.role}:{node.model}")
    final = spec.node("final")
    body = " | ".join(", ".join(nodes) for nodes in layers.values())
    return f"[{body}] -> {final.role}:{final.model or '-'} (cost {spec.cost_units():g})"


@dataclass(frozen=True)
class _Evaluated:
    """One evaluation of a drawn graph."""

    draw: Draw
    spec: GraphSpec
    accuracy: float
    seconds: float
    reward: float

    def row(self, evaluation: int) -> dict[str, Any]:
        """The evaluation's line of the search's history."""
        return {
            "evaluation": evaluation,
            "shape": _shape(self.spec),
            "accuracy": self.accuracy,
            "seconds": self.seconds,
            "reward": self.reward,
            "cost_units": self.spec.cost_units(),
        }

    def rank(self) -> tuple[float, float]:
        """Higher is better: the reward, then the lower cost."""
        return self.reward, -self.spec.cost_units()


@dataclass
class _Evaluator:
    """Scores graphs on the training problems; a graph drawn again is scored from memory."""

    problems: Sequence[Problem]
    sampler_for: Callable[[str | None], Sampler]
    verifier: Verifier
    params: SamplingParams | None
    concurrency: int
    latency_weight: float
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)

    async def __call__(self, draw: Draw, spec: GraphSpec) -> _Evaluated:
        key = spec.signature()
        if key not in self.memory:
            self.memory[key] = await _evaluate(
                spec, self.problems, self.sampler_for, self.verifier, self.params, self.concurrency
            )
        accuracy, seconds = self.memory[key]
        return _Evaluated(draw, spec, accuracy, seconds, accuracy - self.latency_weight * seconds)


async def search_graph(
    space: SearchSpace,
    problems: Sequence[Problem],
    sampler_for: Callable[[str | None], Sampler],
    verifier: Verifier,
    config: SearchConfig | None = None,
    *,
    params: SamplingParams | None = None,
    updater: Sampler | None = None,
) -> SearchResult:
    """Search ``space`` for the graph with the best reward on ``problems`` (module docstring)."""
    config = config or SearchConfig()
    if not problems:
        raise ConfigError("graph search needs training problems")
    if config.method == "llm" and updater is None:
        raise ConfigError("the llm method needs an updater sampler")
    rng = np.random.default_rng(config.seed)
    distribution = ProbabilisticGraph(space)
    evaluate = _Evaluator(
        problems,
        sampler_for,
        verifier,
        params,
        config.problem_concurrency,
        config.latency_weight,
    )
    history: list[dict[str, Any]] = []
    baseline: float | None = None
    best: _Evaluated | None = None
    while len(history) < config.evaluations:
        batch: list[_Evaluated] = []
        for _ in range(min(config.batch, config.evaluations - len(history))):
            evaluated = await evaluate(
                *_draw_within_budget(distribution, space, rng, config.max_resamples)
            )
            batch.append(evaluated)
            history.append(evaluated.row(len(history) + 1))
            if best is None or evaluated.rank() > best.rank():
                best = evaluated
        baseline = await _update(distribution, batch, baseline, history, config, updater)
    assert best is not None  # at least one evaluation ran
    spec = best.spec
    return SearchResult(
        best=GraphSpec(spec.nodes, spec.edges, spec.final, spec.models, space.budget, "searched"),
        best_reward=best.reward,
        best_accuracy=best.accuracy,
        evaluations=len(history),
        history=history,
        distribution=distribution.summary(),
    )


async def _update(
    distribution: ProbabilisticGraph,
    batch: Sequence[_Evaluated],
    baseline: float | None,
    history: Sequence[dict[str, Any]],
    config: SearchConfig,
    updater: Sampler | None,
) -> float | None:
    """Move the distribution after a batch, by the config's method; the new baseline."""
    if config.method == "random":
        return baseline
    rewards = [evaluated.reward for evaluated in batch]
    mean = sum(rewards) / len(rewards)
    baseline = mean if baseline is None else baseline
    stepped = False
    if config.method == "llm":
        assert updater is not None
        stepped = await _llm_update(distribution, history, updater, config.learning_rate)
    if not stepped:
        gradient = _reinforce_gradient(distribution, batch, baseline)
        distribution.step(gradient, config.learning_rate / len(batch))
    return config.baseline_decay * baseline + (1 - config.baseline_decay) * mean


async def _llm_update(
    distribution: ProbabilisticGraph,
    history: Sequence[dict[str, Any]],
    updater: Sampler,
    rate: float,
) -> bool:
    """Ask the LLM updater where to move and move there; False when its reply had no usable JSON."""
    reply = await updater.sample(_llm_prompt(distribution, history), 1)
    text = reply.candidates[0].text if reply.candidates else ""
    if _llm_step(distribution, text, rate):
        return True
    log.info("the LLM updater's reply had no usable JSON; taking a REINFORCE step")
    return False


def _reinforce_gradient(
    distribution: ProbabilisticGraph, batch: Sequence[_Evaluated], baseline: float
) -> dict[str, FloatArray]:
    """The batch's score-function gradient: each draw's grad log p times its advantage."""
    gradient = {name: np.zeros_like(v) for name, v in distribution.logits.items()}
    # Advantages in units of the batch's spread: steps keep their size whatever the
    # reward's scale (accuracy on a small set moves in coarse steps).
    rewards = [evaluated.reward for evaluated in batch]
    spread = float(np.std(rewards)) if len(rewards) > 1 else 0.0
    for evaluated in batch:
        advantage = (evaluated.reward - baseline) / (spread + 0.05)
        for name, value in distribution.grad_log_prob(evaluated.draw).items():
            gradient[name] += advantage * value
    return gradient


def _draw_within_budget(
    distribution: ProbabilisticGraph,
    space: SearchSpace,
    rng: np.random.Generator,
    tries: int,
) -> tuple[Draw, GraphSpec]:
    for _ in range(tries):
        draw = distribution.sample(rng)
        spec = distribution.to_spec(draw)
        if space.budget is None or spec.cost_units() <= space.budget:
            return draw, spec
    raise ConfigError(
        f"no graph within the budget of {space.budget:g} units in {tries} draws; "
        "raise the budget or shrink the space"
    )
