"""Multi-LLM collaboration graphs: a spec, an executor, built-in graphs and a strategy.

After Agent-REINFORCE (Wang et al. 2025). A graph is a DAG of nodes, each with a role and a model:

- ``generate``: answers the question; with predecessors, it sees their answers and writes its own.
- ``fuse`` (``review``): merges its predecessors' answers into one, correcting errors.
- ``judge`` (``select``): reads its predecessors' answers and picks one by number; its output is
  the picked answer itself (a reply without a usable number picks the first, and says so).
- ``vote``: no model; majority over its predecessors' extracted answers.

An edge ``a -> b`` appends ``a``'s outputs to ``b``'s context. One node (the only sink, or the one
named ``final``) gives the answer. Models are names: the executor asks ``sampler_for(name)`` for a
:class:`~ttscale.protocols.Sampler` per model, so several models means several samplers (endpoints
or model names). A spec is Python objects (:class:`GraphSpec`) or a JSON/YAML file::

    {"nodes": [{"id": "a", "model": "small", "samples": 3},
               {"id": "b", "model": "large"},
               {"id": "fuse", "role": "fuse", "model": "large"}],
     "edges": [["a", "fuse"], ["b", "fuse"]],
     "models": {"small": {"cost": 1}, "large": {"cost": 9, "base_url": "http://..."}},
     "budget": 20}

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
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ttscale.budget import BudgetedSampler, BudgetTracker, Condition
from ttscale.errors import BudgetExhausted, ConfigError, DataError, SamplerError
from ttscale.protocols import Sampler, Verifier, with_model
from ttscale.registry import build_config
from ttscale.strategies.base import StrategyConfig, resolve_config
from ttscale.strategies.extract import get_extractor
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
    "execute_graph",
    "generate_then_review",
    "load_graph",
    "mixture_of_agents",
    "multi_model_vote",
]

log = logging.getLogger(__name__)

Role = Literal["generate", "fuse", "judge", "vote"]
_ROLE_ALIASES = {"review": "fuse", "select": "judge", "generator": "generate", "fuser": "fuse"}
_ROLES = ("generate", "fuse", "judge", "vote")
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


@dataclass(frozen=True)
class ModelSpec:
    """A model a graph may use: its cost units per call and, optionally, its own server.

    ``name`` is the model's name on its server (default: the key it is listed under).
    """

    cost: float = 1.0
    name: str | None = None
    base_url: str | None = None

    def __post_init__(self) -> None:
        if not self.cost >= 0:
            raise ConfigError(f"a model's cost must be >= 0, got {self.cost}")


def _check_node_fields(node: NodeSpec) -> None:
    """A node's optional fields are of their types (specs come from JSON written by anyone)."""
    for name in ("model", "template"):
        if getattr(node, name) is not None and not isinstance(getattr(node, name), str):
            raise ConfigError(f"node {node.id!r}: {name} must be a string", param=name)
    temperature = node.temperature
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
    ):
        raise ConfigError(f"node {node.id!r}: temperature must be a number", param="temperature")
    tokens = node.max_tokens
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        raise ConfigError(
            f"node {node.id!r}: max_tokens must be an integer >= 1", param="max_tokens"
        )


@dataclass(frozen=True)
class NodeSpec:
    """One node: a role, a model (a key of the graph's models; None: the default sampler), a
    prompt template (``{question}`` and ``{context}``), a temperature, samples and max tokens."""

    id: str
    role: Role = "generate"
    model: str | None = None
    template: str | None = None
    temperature: float | None = None
    samples: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        role = _ROLE_ALIASES.get(self.role, self.role)
        if role not in _ROLES:
            raise ConfigError(f"node {self.id!r}: unknown role {self.role!r}; known: {_ROLES}")
        object.__setattr__(self, "role", role)
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError("a node needs a non-empty string id")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"node {self.id!r}: samples must be an integer >= 1")
        _check_node_fields(self)

    @property
    def calls_model(self) -> bool:
        return self.role != "vote"


@dataclass(frozen=True)
class GraphSpec:
    """A collaboration graph (see the module docstring); validated on construction."""

    nodes: tuple[NodeSpec, ...]
    edges: tuple[tuple[str, str], ...] = ()
    final: str | None = None
    models: Mapping[str, ModelSpec] = field(default_factory=lambda: _EMPTY)
    budget: float | None = None
    name: str = "graph"

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "edges", tuple((str(a), str(b)) for a, b in self.edges))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        ids = [node.id for node in self.nodes]
        if not ids:
            raise ConfigError("a graph needs at least one node")
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"duplicate node id(s): {', '.join(duplicates)}")
        known = set(ids)
        for source, target in self.edges:
            for end in (source, target):
                if end not in known:
                    raise ConfigError(f"edge {source} -> {target}: no node {end!r}")
        order = self.order  # raises on a cycle
        sinks = [i for i in order if not self.successors(i)]
        final = self.final
        if final is None:
            if len(sinks) != 1:
                raise ConfigError(f"the graph has {len(sinks)} sinks ({sinks}); name a final node")
            final = sinks[0]
            object.__setattr__(self, "final", final)
        if final not in known:
            raise ConfigError(f"final node {final!r} is not in the graph")
        for node in self.nodes:
            if node.role in ("fuse", "judge", "vote") and not self.predecessors(node.id):
                raise ConfigError(f"node {node.id!r} ({node.role}) needs predecessors")
            if node.model is not None and self.models and node.model not in self.models:
                raise ConfigError(
                    f"node {node.id!r} uses model {node.model!r}, not among the graph's models "
                    f"({', '.join(self.models)})"
                )
        if self.budget is not None and self.cost_units() > self.budget:
            raise ConfigError(
                f"graph {self.name!r} costs {self.cost_units():g} units, over its budget of "
                f"{self.budget:g}"
            )

    def node(self, node_id: str) -> NodeSpec:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def predecessors(self, node_id: str) -> list[str]:
        return [a for a, b in self.edges if b == node_id]

    def successors(self, node_id: str) -> list[str]:
        return [b for a, b in self.edges if a == node_id]

    @property
    def order(self) -> list[str]:
        """Node ids in a topological order (spec order among equals)."""
        remaining = [node.id for node in self.nodes]
        done: list[str] = []
        while remaining:
            ready = [i for i in remaining if all(p in done for p in self.predecessors(i))]
            if not ready:
                raise ConfigError(f"the graph has a cycle among {', '.join(remaining)}")
            done.extend(ready)
            remaining = [i for i in remaining if i not in ready]
        return done

    def model_cost(self, model: str | None) -> float:
        if model is None or model not in self.models:
            return 1.0
        return self.models[model].cost

    def node_units(self, node: NodeSpec) -> float:
        return self.model_cost(node.model) * node.samples if node.calls_model else 0.0

    def cost_units(self) -> float:
        """What one run costs in model cost units, known before it runs."""
        return sum(self.node_units(node) for node in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        nodes = []
        for node in self.nodes:
            data = {k: v for k, v in dataclasses.asdict(node).items() if v is not None}
            nodes.append(data)
        out: dict[str, Any] = {
            "name": self.name,
            "nodes": nodes,
            "edges": [list(e) for e in self.edges],
        }
        out["final"] = self.final
        if self.models:
            out["models"] = {
                key: {k: v for k, v in dataclasses.asdict(m).items() if v is not None}
                for key, m in self.models.items()
            }
        if self.budget is not None:
            out["budget"] = self.budget
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "graph") -> GraphSpec:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a graph spec is an object with 'nodes'")
        unknown = sorted(set(data) - {"name", "nodes", "edges", "final", "models", "budget"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        raw_nodes = data.get("nodes")
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise ConfigError(f"{where}: 'nodes' must be a non-empty list")
        nodes = []
        for position, raw in enumerate(raw_nodes):
            try:
                nodes.append(build_config(NodeSpec, dict(raw), f"{where}: nodes[{position}]"))
            except (TypeError, ValueError) as exc:
                inner = getattr(exc, "param", None)
                param = f"nodes[{position}]" + (f".{inner}" if inner else "")
                raise ConfigError(f"{where}: nodes[{position}]: {exc}", param=param) from exc
        edges = data.get("edges") or []
        if not all(isinstance(e, list | tuple) and len(e) == 2 for e in edges):
            raise ConfigError(f"{where}: each edge is a pair [from, to]")
        models = {}
        for key, raw in (data.get("models") or {}).items():
            spec = raw if isinstance(raw, Mapping) else {"cost": raw}
            models[key] = build_config(ModelSpec, dict(spec), f"{where}: models.{key}")
        return cls(
            nodes=tuple(nodes),
            edges=tuple((a, b) for a, b in edges),
            final=data.get("final"),
            models=models,
            budget=data.get("budget"),
            name=str(data.get("name", "graph")),
        )

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    def signature(self) -> str:
        """A canonical text of the graph's structure, equal for equal graphs."""
        return json.dumps(self.to_dict() | {"name": ""}, sort_keys=True)


def load_graph(path: str | Path) -> GraphSpec:
    """A graph spec from a JSON or YAML file; errors name the file."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the graph spec: {exc}", path=str(source)) from exc
    if source.suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped, unused-ignore]
        except ImportError as exc:
            raise DataError("reading a YAML spec needs PyYAML", path=str(source)) from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DataError(f"not valid YAML: {exc}", path=str(source)) from exc
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DataError(f"not valid JSON: {exc}", path=str(source)) from exc
    try:
        return GraphSpec.from_dict(data, where=str(source))
    except ConfigError as exc:
        raise DataError(str(exc), path=str(source)) from exc


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
    base = params or SamplingParams()
    extract = get_extractor(extractor)
    tracker = BudgetTracker()
    wrapped: dict[str | None, Sampler] = {}

    def sampler(model: str | None) -> Sampler:
        if model not in wrapped:
            inner = sampler_for(model)
            # One tracker behind every model's sampler: the limit sees the whole graph's spend.
            wrapped[model] = (
                BudgetedSampler(inner, limit=limit, tracker=tracker) if limit is not None else inner
            )
        return wrapped[model]

    order = spec.order
    stride = max(node.samples for node in spec.nodes)
    offsets = {node_id: position * stride for position, node_id in enumerate(order)}
    # A node's output, or None when it failed or was not run: its successors then do not run.
    done: dict[str, asyncio.Future[NodeOutput | None]] = {
        node_id: asyncio.get_running_loop().create_future() for node_id in order
    }
    outputs: dict[str, NodeOutput] = {}
    failures: dict[str, Exception] = {}  # in the order they happened
    skipped: dict[str, str] = {}
    question = _question(problem)

    async def run_node(node_id: str) -> NodeOutput | None:
        node = spec.node(node_id)
        inputs: list[Candidate] = []
        for predecessor in spec.predecessors(node_id):
            output = await done[predecessor]
            if output is None:
                skipped[node_id] = f"its input {predecessor!r} did not finish"
                return None
            inputs.extend(output.candidates)
        if failures:
            # Another node failed: the graph cannot finish, so nothing more is paid for.
            skipped[node_id] = f"node {next(iter(failures))!r} failed first"
            return None
        offset = offsets[node_id]
        if node.role == "vote":
            answers = [extract(c.text) for c in inputs]
            top = select_majority(answers, 1, indices=[c.index for c in inputs])
            best = top[0].members[0] if top else 0
            votes = {g.answer: g.count for g in group_answers(answers)}
            return NodeOutput(
                node_id, (inputs[best],) if inputs else (), Usage(), 0.0, {"votes": votes}
            )
        changes: dict[str, Any] = {}
        if node.temperature is not None:
            changes["temperature"] = node.temperature
        if node.max_tokens is not None:
            changes["max_tokens"] = node.max_tokens
        node_params = base.replace(**changes) if changes else base
        prompt: Prompt
        if node.role == "generate" and not inputs and node.template is None:
            prompt = problem.input
        else:
            key: str = node.role
            if node.role == "generate":
                key = "generate_with_context" if inputs else "generate"
            template = node.template or TEMPLATES[key]
            prompt = template.replace("{question}", question).replace("{context}", _context(inputs))
        cost = spec.model_cost(node.model)
        try:
            batch = await sampler(node.model).sample(
                prompt, node.samples, node_params, start_index=offset
            )
        except Exception as exc:
            failures[node_id] = exc
            delivered = exc.partial if isinstance(exc, SamplerError) else None
            if isinstance(delivered, SampleBatch):
                outputs[node_id] = NodeOutput(
                    node_id,
                    delivered.candidates,
                    delivered.usage,
                    cost * len(delivered.candidates),
                    {"error": str(exc)},
                )
            elif not isinstance(exc, BudgetExhausted):  # a refusal sent nothing
                # Nothing says what the failed draw spent: count the request that failed.
                outputs[node_id] = NodeOutput(
                    node_id, (), Usage(failed_requests=1), 0.0, {"error": str(exc)}
                )
            return None
        # What was drawn, not what the spec asked for: a budget may have trimmed the draw.
        units = cost * len(batch.candidates)
        if node.role == "judge":
            reply = batch.candidates[0].text if batch.candidates else ""
            pick = parse_choice(reply, len(inputs))
            chosen = inputs[pick if pick is not None else 0]
            detail = {"reply": reply, "pick": pick, "fallback": pick is None}
            if pick is None:
                log.info("judge node %s gave no usable number; taking the first answer", node_id)
            return NodeOutput(node_id, (chosen,), batch.usage, units, detail)
        return NodeOutput(node_id, batch.candidates, batch.usage, units)

    async def settle(node_id: str) -> None:
        output: NodeOutput | None = None
        try:
            output = await run_node(node_id)
            if output is not None:
                outputs[node_id] = output
        finally:
            # Successors wake whatever happened (cancellation included), never wait forever.
            done[node_id].set_result(output)

    # Every node catches its own failure, so gather returns once every draw in flight is back.
    await asyncio.gather(*(settle(node_id) for node_id in order))
    ordered = {node_id: outputs[node_id] for node_id in order if node_id in outputs}
    if failures:
        failed = {node_id: str(exc) for node_id, exc in failures.items()}
        partial = GraphRun(spec, ordered, (), MappingProxyType({**failed, **skipped}))
        # An error outranks a refusal: it says something is wrong, not merely spent.
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
    assert spec.final is not None  # set by GraphSpec
    return GraphRun(spec, ordered, ordered[spec.final].candidates)


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
