"""A collaboration graph's spec: its nodes, edges, models and budget, checked when it is made and
read from a JSON or YAML file (:func:`load_graph`).

A spec is Python objects (:class:`GraphSpec`) or a file::

    {"nodes": [{"id": "a", "model": "small", "samples": 3},
               {"id": "b", "model": "large"},
               {"id": "fuse", "role": "fuse", "model": "large"}],
     "edges": [["a", "fuse"], ["b", "fuse"]],
     "models": {"small": {"cost": 1}, "large": {"cost": 9, "base_url": "http://..."}},
     "budget": 20}

Roles, edges and the final node are described in :mod:`ttscale.strategies.graphs`, which runs
specs. ``budget`` (in model cost units) is checked here, against what a run costs when every draw
is delivered in full (:meth:`GraphSpec.cost_units`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ttscale.errors import ConfigError, DataError
from ttscale.registry import build_config

__all__ = ["GraphSpec", "ModelSpec", "NodeSpec", "Role", "load_graph"]


Role = Literal["generate", "fuse", "judge", "vote"]
_ROLE_ALIASES = {"review": "fuse", "select": "judge", "generator": "generate", "fuser": "fuse"}
_ROLES = ("generate", "fuse", "judge", "vote")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


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
