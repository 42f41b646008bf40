"""Multi-LLM collaboration graphs: the executor, built-in graphs and the strategy.

After Agent-REINFORCE (Wang et al. 2025). A graph is a DAG of nodes, each with a role and a model:

- ``generate``: answers the question; with predecessors, it sees their answers and writes its own.
- ``fuse`` (``review``): merges its predecessors' answers into one, correcting errors.
- ``judge`` (``select``): reads its predecessors' answers and picks one by number; its output is
  the picked answer itself (a reply without a usable number picks the first, and says so).
- ``vote``: no model; majority over its predecessors' extracted answers.

An edge ``a -> b`` appends ``a``'s outputs to ``b``'s context. One node (the only sink, or the one
named ``final``) gives the answer. Models are names: the executor asks ``sampler_for(name)`` for a
:class:`~ttscale.protocols.Sampler` per model, so several models means several samplers (endpoints
or model names). A spec is Python objects (:class:`GraphSpec`) or a JSON/YAML file; the spec, its
checks and its file format are :mod:`ttscale.strategies.graph_spec` (re-exported here).

Cost is counted per node in tokens and in model cost units: a node's units are its model's ``cost``
per call times the samples it drew (the units of the paper's code: 1B=1, 3B=3, 8B=9, 70B=81).
``budget`` (in units) is checked against the spec before anything runs (``cost_units()``, what a
run costs when every draw is delivered in full); a token or money limit (a stop condition) is
enforced during the run by one budget over every node's sampler.

Nothing paid for is lost when a node fails: no further node starts, the draws in flight finish,
and the error (:class:`GraphNodeFailed`, or :class:`GraphBudgetExhausted` when a budget refused a
draw) carries as ``partial`` the :class:`GraphRun` of the nodes that finished, the failed node's
own partial samples and usage included.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from ttscale.budget import BudgetedSampler, BudgetTracker, Condition
from ttscale.errors import BudgetExhausted, ConfigError, SamplerError
from ttscale.protocols import Sampler, Verifier, with_model
from ttscale.strategies.base import StrategyConfig, resolve_config
from ttscale.strategies.extract import get_extractor
from ttscale.strategies.graph_spec import GraphSpec, ModelSpec, NodeSpec, Role, load_graph
from ttscale.strategies.selection import group_answers, select_majority
from ttscale.types import (
    Candidate,
    Problem,
    Prompt,
    Result,
    SampleBatch,
    SamplingParams,
    TraceEvent,
    Usage,
)

__all__ = [
    "GraphBudgetExhausted",
    "GraphConfig",
    "GraphNodeFailed",
    "GraphRun",
    "GraphSpec",
    "GraphStrategy",
    "ModelSpec",
    "NodeSpec",
    "Role",
    "execute_graph",
    "generate_then_review",
    "load_graph",
    "mixture_of_agents",
    "multi_model_vote",
]

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = MappingProxyType({})

TEMPLATES: Mapping[str, str] = MappingProxyType(
    {
        "generate": "{question}",
        "generate_with_context": (
            "{question}\n\nOther assistants answered as follows.\n\n{context}\n\n"
            "Taking their answers into account, write your own best answer."
        ),
        "fuse": (
            "Several assistants answered the question below. Review their answers, correct any "
            "errors, and write one final answer.\n\nQuestion:\n{question}\n\n{context}"
        ),
        "judge": (
            "Which response answers the question best?\n\nQuestion:\n{question}\n\n{context}\n\n"
            "Reply with the number of the best response only."
        ),
    }
)


# -- built-in graphs -----------------------------------------------------------------------------


def mixture_of_agents(
    proposers: Sequence[str | None], fuser: str | None, *, samples: int = 1, layers: int = 1
) -> GraphSpec:
    """Proposers answer in parallel (``layers`` rounds, each seeing the last), then one fuses."""
    if not proposers or layers < 1:
        raise ConfigError("mixture_of_agents needs proposers and at least one layer")
    nodes: list[NodeSpec] = []
    edges: list[tuple[str, str]] = []
    previous: list[str] = []
    for layer in range(layers):
        current = []
        for position, model in enumerate(proposers):
            node_id = f"L{layer}P{position}"
            nodes.append(NodeSpec(node_id, "generate", model, samples=samples))
            edges.extend((p, node_id) for p in previous)
            current.append(node_id)
        previous = current
    nodes.append(NodeSpec("fuse", "fuse", fuser))
    edges.extend((p, "fuse") for p in previous)
    return GraphSpec(tuple(nodes), tuple(edges), "fuse", name="mixture_of_agents")


def generate_then_review(generator: str | None, reviewer: str | None) -> GraphSpec:
    """One model answers, another reviews and corrects."""
    return GraphSpec(
        (NodeSpec("generate", "generate", generator), NodeSpec("review", "fuse", reviewer)),
        (("generate", "review"),),
        name="generate_then_review",
    )


def multi_model_vote(models: Sequence[str | None], samples: int = 1) -> GraphSpec:
    """Every model answers (``samples`` each); the majority answer wins."""
    if not models:
        raise ConfigError("multi_model_vote needs at least one model")
    nodes = [
        NodeSpec(f"m{i}", "generate", model, samples=samples) for i, model in enumerate(models)
    ]
    nodes.append(NodeSpec("vote", "vote"))
    edges = tuple((f"m{i}", "vote") for i in range(len(models)))
    return GraphSpec(tuple(nodes), edges, "vote", name="multi_model_vote")


BUILTIN_GRAPHS: Mapping[str, Callable[..., GraphSpec]] = MappingProxyType(
    {
        "mixture_of_agents": mixture_of_agents,
        "generate_then_review": generate_then_review,
        "multi_model_vote": multi_model_vote,
    }
)


# -- the executor --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeOutput:
    """What a node produced and spent."""

    node: str
    candidates: tuple[Candidate, ...]
    usage: Usage
    cost_units: float
    detail: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class GraphRun:
    """A graph's run on one problem: each node's outputs and costs, and the final answer.

    A run cut short by a failure (an error's ``partial``) has no ``final``; ``failed`` maps each
    node that failed, or was not run because of a failure, to the reason.
    """

    spec: GraphSpec
    outputs: Mapping[str, NodeOutput]
    final: tuple[Candidate, ...]
    failed: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def usage(self) -> Usage:
        return Usage.total([o.usage for o in self.outputs.values()])

    @property
    def cost_units(self) -> float:
        return sum(o.cost_units for o in self.outputs.values())


class GraphNodeFailed(SamplerError):
    """A node's draw failed; ``node`` names it, ``partial`` is the :class:`GraphRun` so far."""

    def __init__(self, message: str, *, node: str, partial: GraphRun) -> None:
        self.node = node
        super().__init__(message, partial=partial)


class GraphBudgetExhausted(BudgetExhausted):
    """A budget refused a node's draw; ``node`` names it, ``partial`` is the :class:`GraphRun`
    of the nodes that finished."""

    def __init__(self, message: str, *, node: str, partial: GraphRun) -> None:
        self.node = node
        self.partial = partial
        super().__init__(message)


def _where(spec: GraphSpec, node_id: str) -> str:
    node = spec.node(node_id)
    return f"graph {spec.name!r}: node {node_id!r} ({node.role} on {node.model or 'the default'})"


def _question(problem: Problem) -> str:
    if problem.prompt is not None:
        return problem.prompt
    for message in reversed(problem.messages or ()):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _context(candidates: Sequence[Candidate]) -> str:
    return "\n\n".join(f"[{i}] {c.text.strip()}" for i, c in enumerate(candidates, 1))


_NUMBER = re.compile(r"\d+")


def parse_choice(text: str, count: int) -> int | None:
    """The 0-based pick of a judge's reply: its first number in 1..count."""
    for match in _NUMBER.finditer(text):
        value = int(match.group())
        if 1 <= value <= count:
            return value - 1
    return None


async def execute_graph(
    spec: GraphSpec,
    problem: Problem,
    sampler_for: Callable[[str | None], Sampler],
    *,
    params: SamplingParams | None = None,
    extractor: str | Callable[[str], str | None] = "auto",
    limit: Condition | None = None,
) -> GraphRun:
    """Run ``spec`` on ``problem``: independent nodes concurrently, outputs along edges.

    ``limit`` (a stop condition over tokens, cost, ...) is enforced over every node's draws
    together. A node's samples are drawn as indices ``offset .. offset + samples - 1`` with an
    offset per node, so nodes on the same model and prompt never share seeds.
    """
    execution = _Execution(
        spec,
        problem,
        _budgeted(sampler_for, limit),
        params or SamplingParams(),
        get_extractor(extractor),
    )
    return await execution.run()


def _budgeted(
    sampler_for: Callable[[str | None], Sampler], limit: Condition | None
) -> Callable[[str | None], Sampler]:
    """``sampler_for`` asked once per model, each model's sampler under ``limit`` if there is one,
    with one tracker behind them all: the limit sees the whole graph's spend."""
    tracker = BudgetTracker()
    made: dict[str | None, Sampler] = {}

    def sampler(model: str | None) -> Sampler:
        if model not in made:
            inner = sampler_for(model)
            made[model] = (
                BudgetedSampler(inner, limit=limit, tracker=tracker) if limit is not None else inner
            )
        return made[model]

    return sampler


def node_offsets(spec: GraphSpec) -> dict[str, int]:
    """Each node's first sample index, far enough apart that no two nodes share an index."""
    stride = max(node.samples for node in spec.nodes)
    return {node_id: position * stride for position, node_id in enumerate(spec.order)}


def node_params(node: NodeSpec, base: SamplingParams) -> SamplingParams:
    """The run's sampling settings with the node's temperature and max tokens over them."""
    changes: dict[str, Any] = {}
    if node.temperature is not None:
        changes["temperature"] = node.temperature
    if node.max_tokens is not None:
        changes["max_tokens"] = node.max_tokens
    return base.replace(**changes) if changes else base


def node_prompt(node: NodeSpec, problem: Problem, inputs: Sequence[Candidate]) -> Prompt:
    """What a node asks: the problem as it is for a generate node with no inputs and no template,
    else its template (or its role's) with the question and its inputs filled in."""
    if node.role == "generate" and not inputs and node.template is None:
        return problem.input
    key: str = node.role
    if node.role == "generate":
        key = "generate_with_context" if inputs else "generate"
    template = node.template or TEMPLATES[key]
    return template.replace("{question}", _question(problem)).replace("{context}", _context(inputs))


def vote_output(
    node_id: str, inputs: Sequence[Candidate], extract: Callable[[str], str | None]
) -> NodeOutput:
    """A vote node's output: the first input with the majority answer, and the votes."""
    answers = [extract(c.text) for c in inputs]
    top = select_majority(answers, 1, indices=[c.index for c in inputs])
    best = top[0].members[0] if top else 0
    votes = {g.answer: g.count for g in group_answers(answers)}
    return NodeOutput(node_id, (inputs[best],) if inputs else (), Usage(), 0.0, {"votes": votes})


def drawn_output(
    node: NodeSpec, batch: SampleBatch, inputs: Sequence[Candidate], cost: float
) -> NodeOutput:
    """A model node's output from its draw: a judge's pick among its inputs, else the samples.

    Units count what was drawn, not what the spec asked for: a budget may have trimmed the draw.
    """
    units = cost * len(batch.candidates)
    if node.role != "judge":
        return NodeOutput(node.id, batch.candidates, batch.usage, units)
    reply = batch.candidates[0].text if batch.candidates else ""
    pick = parse_choice(reply, len(inputs))
    chosen = inputs[pick if pick is not None else 0]
    detail = {"reply": reply, "pick": pick, "fallback": pick is None}
    if pick is None:
        log.info("judge node %s gave no usable number; taking the first answer", node.id)
    return NodeOutput(node.id, (chosen,), batch.usage, units, detail)


def failed_output(node_id: str, exc: Exception, cost: float) -> NodeOutput | None:
    """What a node's failed draw delivered and spent; None for a budget's refusal (it sent
    nothing). A failure that says nothing of its spend counts as one failed request."""
    delivered = exc.partial if isinstance(exc, SamplerError) else None
    if isinstance(delivered, SampleBatch):
        units = cost * len(delivered.candidates)
        return NodeOutput(
            node_id, delivered.candidates, delivered.usage, units, {"error": str(exc)}
        )
    if isinstance(exc, BudgetExhausted):
        return None
    return NodeOutput(node_id, (), Usage(failed_requests=1), 0.0, {"error": str(exc)})


def raise_failure(
    spec: GraphSpec,
    outputs: Mapping[str, NodeOutput],
    failures: Mapping[str, Exception],
    skipped: Mapping[str, str],
) -> NoReturn:
    """End a run that had failures (``failures`` in the order they happened), ``partial`` the run
    so far: the first error outranks a refusal (it says something is wrong, not merely spent)."""
    failed = {node_id: str(exc) for node_id, exc in failures.items()}
    partial = GraphRun(spec, outputs, (), MappingProxyType({**failed, **skipped}))
    errors = [(n, e) for n, e in failures.items() if not isinstance(e, BudgetExhausted)]
    if not errors:
        node_id, exc = next(iter(failures.items()))
        raise GraphBudgetExhausted(
            f"{_where(spec, node_id)}: a budget refused its draw: {exc}",
            node=node_id,
            partial=partial,
        ) from exc
    node_id, exc = errors[0]
    raise GraphNodeFailed(
        f"{_where(spec, node_id)} failed: {exc}", node=node_id, partial=partial
    ) from exc


@dataclass
class _Execution:
    """One run of a graph on one problem: every node waits for its inputs, draws and settles.

    ``done`` holds each node's output, or None when it failed or was not run: its successors
    then do not run. ``failures`` are in the order they happened; ``skipped`` says why a node
    did not run.
    """

    spec: GraphSpec
    problem: Problem
    sampler: Callable[[str | None], Sampler]
    params: SamplingParams
    extract: Callable[[str], str | None]
    offsets: dict[str, int] = field(init=False)
    done: dict[str, asyncio.Future[NodeOutput | None]] = field(init=False)
    outputs: dict[str, NodeOutput] = field(default_factory=dict)
    failures: dict[str, Exception] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = node_offsets(self.spec)
        loop = asyncio.get_running_loop()
        self.done = {node_id: loop.create_future() for node_id in self.spec.order}

    async def run(self) -> GraphRun:
        order = self.spec.order
        # Every node catches its own failure, so gather returns once every draw in flight is back.
        await asyncio.gather(*(self.settle(node_id) for node_id in order))
        ordered = {node_id: self.outputs[node_id] for node_id in order if node_id in self.outputs}
        if self.failures:
            raise_failure(self.spec, ordered, self.failures, self.skipped)
        assert self.spec.final is not None  # set by GraphSpec
        return GraphRun(self.spec, ordered, ordered[self.spec.final].candidates)

    async def settle(self, node_id: str) -> None:
        output: NodeOutput | None = None
        try:
            output = await self.run_node(node_id)
            if output is not None:
                self.outputs[node_id] = output
        finally:
            # Successors wake whatever happened (cancellation included), never wait forever.
            self.done[node_id].set_result(output)

    async def inputs(self, node_id: str) -> list[Candidate] | None:
        """The outputs of the node's predecessors; None (and why, in ``skipped``) when the node
        is not to run."""
        inputs: list[Candidate] = []
        for predecessor in self.spec.predecessors(node_id):
            output = await self.done[predecessor]
            if output is None:
                self.skipped[node_id] = f"its input {predecessor!r} did not finish"
                return None
            inputs.extend(output.candidates)
        if self.failures:
            # Another node failed: the graph cannot finish, so nothing more is paid for.
            self.skipped[node_id] = f"node {next(iter(self.failures))!r} failed first"
            return None
        return inputs

    async def run_node(self, node_id: str) -> NodeOutput | None:
        node = self.spec.node(node_id)
        inputs = await self.inputs(node_id)
        if inputs is None:
            return None
        if node.role == "vote":
            return vote_output(node_id, inputs, self.extract)
        params = node_params(node, self.params)
        prompt = node_prompt(node, self.problem, inputs)
        cost = self.spec.model_cost(node.model)
        try:
            batch = await self.sampler(node.model).sample(
                prompt, node.samples, params, start_index=self.offsets[node_id]
            )
        except Exception as exc:
            self.failures[node_id] = exc
            failed = failed_output(node_id, exc, cost)
            if failed is not None:
                self.outputs[node_id] = failed
            return None
        return drawn_output(node, batch, inputs, cost)


# -- the strategy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphConfig(StrategyConfig):
    """Options of :class:`GraphStrategy`.

    ``spec`` is a :class:`GraphSpec`, its dict, a path to a JSON/YAML spec, or a built-in graph's
    name (``multi_model_vote``, ...) built with ``graph_options``. ``samplers`` maps model names to
    samplers; models not there use their spec's ``base_url`` (a new OpenAI sampler) or the sampler
    the strategy is run with, asked for the model by name where it is an OpenAI sampler.
    ``limit`` is a stop condition over the whole graph. ``samples`` is unused (the spec says).
    """

    spec: Any = None
    graph_options: Mapping[str, Any] = field(default_factory=dict)
    samplers: Mapping[str, Sampler] = field(default_factory=dict)
    limit: Condition | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spec is None:
            raise ConfigError("the graph strategy needs a spec")
        if not isinstance(self.samplers, Mapping) or not all(
            callable(getattr(sampler, "sample", None)) for sampler in self.samplers.values()
        ):
            raise ConfigError("samplers must map model names to samplers", param="samplers")
        if self.limit is not None and not callable(self.limit):
            raise ConfigError("limit must be a stop condition", param="limit")
        if not isinstance(self.graph_options, Mapping):
            raise ConfigError("graph_options must be an object", param="graph_options")
        try:
            spec = as_graph(self.spec, self.graph_options)
        except ConfigError as exc:
            param = "spec" + (f".{exc.param}" if exc.param else "")
            raise ConfigError(str(exc), param=param) from exc
        object.__setattr__(self, "spec", spec)


def as_graph(spec: Any, options: Mapping[str, Any] | None = None) -> GraphSpec:
    """A :class:`GraphSpec` from a spec, a dict, a file path or a built-in graph's name."""
    if isinstance(spec, GraphSpec):
        return spec
    if isinstance(spec, Mapping):
        return GraphSpec.from_dict(spec)
    if isinstance(spec, str | Path):
        if str(spec) in BUILTIN_GRAPHS:
            return BUILTIN_GRAPHS[str(spec)](**dict(options or {}))
        return load_graph(spec)
    raise ConfigError(f"not a graph spec: {spec!r}")


class GraphStrategy:
    """Runs a collaboration graph per problem (module docstring); registered as ``graph``."""

    name = "graph"

    def __init__(self, config: GraphConfig | None = None, **options: Any) -> None:
        self.config = resolve_config(GraphConfig, config, options, "graph")
        self.spec: GraphSpec = self.config.spec

    @staticmethod
    def check_request(options: Mapping[str, Any]) -> None:
        """Refuse what a remote request may not ask for: a spec read from the server's files."""
        spec = options.get("spec")
        if isinstance(spec, str | Path) and str(spec) not in BUILTIN_GRAPHS:
            raise ConfigError(
                "a graph spec in a request must be an inline object; name spec files in presets",
                param="spec",
            )

    def sampler_factory(self, default: Sampler) -> Callable[[str | None], Sampler]:
        made: dict[str | None, Sampler] = {}
        spec = self.spec

        def sampler_for(model: str | None) -> Sampler:
            if model in made:
                return made[model]
            if model is not None and model in self.config.samplers:
                chosen = self.config.samplers[model]
            elif model is not None and model in spec.models and spec.models[model].base_url:
                from ttscale.samplers.openai_sampler import OpenAISampler

                entry = spec.models[model]
                chosen = OpenAISampler(
                    model=entry.name or model, base_url=entry.base_url, api_key_env=None
                )
            elif model is not None:
                entry_name = spec.models[model].name if model in spec.models else None
                chosen = with_model(default, entry_name or model)
            else:
                chosen = default
            made[model] = chosen
            return chosen

        return sampler_for

    async def run(
        self, problem: Problem, sampler: Sampler, verifier: Verifier | None = None
    ) -> Result:
        """Run the graph. The verifier is not used: judge and vote nodes select."""
        policy = self.config.policy
        graph = await execute_graph(
            self.spec,
            problem,
            self.sampler_factory(sampler),
            params=policy.params_for(0),
            extractor=self.config.extractor,
            limit=self.config.limit,
        )
        candidates: list[Candidate] = []
        for output in graph.outputs.values():
            if self.spec.node(output.node).role in ("generate", "fuse"):
                candidates.extend(output.candidates)
        final = graph.final[: self.config.k]
        extract = self.config.extract
        trace = [
            TraceEvent(
                "node",
                {
                    "node": o.node,
                    "role": self.spec.node(o.node).role,
                    "model": self.spec.node(o.node).model,
                    "outputs": len(o.candidates),
                    "tokens": o.usage.total_tokens,
                    "cost_units": o.cost_units,
                    **dict(o.detail),
                },
            )
            for o in graph.outputs.values()
        ]
        trace.append(
            TraceEvent(
                "stop",
                {"reason": "graph", "cost_units": graph.cost_units, "samples": len(candidates)},
            )
        )
        return Result(
            problem_id=problem.id,
            selected=tuple(final),
            candidates=tuple(candidates),
            usage=graph.usage,
            answers=tuple(extract(c.text) for c in final),
            trace=tuple(trace),
        )
