"""What a run spends and costs (snapshot, running totals, FLOPs, prices), and a server's caps.

Plain data and arithmetic; :mod:`ttscale.budget` counts with them and enforces limits over them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ttscale.errors import ConfigError
from ttscale.types import Pricing, SampleBatch, SamplingParams, Usage

__all__ = [
    "Account",
    "DrawCaps",
    "FlopsModel",
    "FlopsTable",
    "PricingTable",
    "Spend",
    "by_model",
    "whole_number",
]


# -- what was spent --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spend:
    """A snapshot of what a run or one problem has spent.

    ``pending_samples`` are samples of draws still in flight: reserved against sample limits, not
    yet delivered (and so not in ``samples``). ``wall_time_s`` runs from the scope's first draw.
    """

    requests: int = 0
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    flops: float = 0.0
    wall_time_s: float = 0.0
    failed_requests: int = 0
    draws: int = 0
    pending_samples: int = 0
    cached_tokens: int = 0  # of prompt_tokens: those the server reused from its prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usage(self) -> Usage:
        return Usage(
            requests=self.requests,
            samples=self.samples,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=self.cost,
            wall_time_s=self.wall_time_s,
            failed_requests=self.failed_requests,
            cached_tokens=self.cached_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "samples": self.samples,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost": self.cost,
            "flops": self.flops,
            "wall_time_s": self.wall_time_s,
            "failed_requests": self.failed_requests,
            "draws": self.draws,
            "pending_samples": self.pending_samples,
            "cached_tokens": self.cached_tokens,
        }


@dataclass(frozen=True)
class FlopsModel:
    """Estimated FLOPs of a dense transformer, from its size as the user gives it.

    A token at position t (t tokens before it) costs ``2 * (parameters + 2 * n_layers * d_model *
    t)``: two FLOPs per weight, plus attention over the t earlier tokens (Kaplan et al. 2020; the
    formula of Large Language Monkeys with the context taken per token instead of at its maximum).
    Summed exactly over positions:

    - a request's prompt of P tokens is processed once (prefill), whatever its number of choices:
      ``2 N P + 2 L d P (P - 1)``;
    - each sample's D completion tokens are decoded after the prompt:
      ``2 N D + 2 L d D (2 P + D - 1)``.

    With ``n_layers = 0`` (unknown) only the ``2 N`` per token term is counted. Prefix caching
    across requests is not modelled.
    """

    parameters: float
    n_layers: int = 0
    d_model: int = 0

    def __post_init__(self) -> None:
        if self.parameters <= 0:
            raise ConfigError(f"parameters must be > 0, got {self.parameters}")
        if self.n_layers < 0 or self.d_model < 0:
            raise ConfigError("n_layers and d_model must be >= 0")

    @property
    def _attention(self) -> float:
        return 2.0 * self.n_layers * self.d_model

    def prefill(self, prompt_tokens: float) -> float:
        p = prompt_tokens
        return 2.0 * self.parameters * p + self._attention * p * (p - 1) if p > 0 else 0.0

    def decode(self, prompt_tokens: float, completion_tokens: float) -> float:
        p, d = prompt_tokens, completion_tokens
        return 2.0 * self.parameters * d + self._attention * d * (2 * p + d - 1) if d > 0 else 0.0

    def batch_flops(self, batch: SampleBatch) -> float:
        """FLOPs of a batch: one prefill per request, one decode per sample.

        A batch reports its prompt tokens summed over requests; all requests of a batch carry the
        same prompt, so each request's prompt is the mean.
        """
        requests = batch.usage.requests
        if requests <= 0:
            return 0.0
        prompt = batch.usage.prompt_tokens / requests
        total = requests * self.prefill(prompt)
        return total + sum(self.decode(prompt, c.completion_tokens) for c in batch.candidates)


PricingTable = Pricing | Mapping[str, Pricing]
FlopsTable = FlopsModel | Mapping[str, FlopsModel]


def by_model(table: Mapping[str, Any], model: str) -> Any:
    """Exact model name, else the longest key the name starts with, else the "*" default.

    Servers often answer with a dated name ("gpt-4o-mini-2024-07-18") for the one asked for.
    """
    if model in table:
        return table[model]
    prefixes = [key for key in table if key != "*" and model.startswith(key)]
    if prefixes:
        return table[max(prefixes, key=len)]
    return table.get("*")


@dataclass
class Account:
    """Mutable running totals of one scope; only the budget's tracker touches it."""

    requests: int = 0
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    flops: float = 0.0
    failed_requests: int = 0
    draws: int = 0
    pending_samples: int = 0
    in_flight: int = 0
    cached_tokens: int = 0
    started_at: float | None = None
    finished_at: float | None = None

    def add(self, usage: Usage, flops: float) -> None:
        self.requests += usage.requests
        self.samples += usage.samples
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost += usage.cost
        self.flops += flops
        self.failed_requests += usage.failed_requests
        self.cached_tokens += usage.cached_tokens

    def snapshot(self, now: float, *, live: bool) -> Spend:
        # Live snapshots (for limits) count time to now; reports stop the clock at the last draw's
        # end unless a draw is still in flight.
        if self.started_at is None:
            elapsed = 0.0
        elif live or self.in_flight or self.finished_at is None:
            elapsed = now - self.started_at
        else:
            elapsed = self.finished_at - self.started_at
        return Spend(
            requests=self.requests,
            samples=self.samples,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=self.cost,
            flops=self.flops,
            wall_time_s=elapsed,
            failed_requests=self.failed_requests,
            draws=self.draws,
            pending_samples=self.pending_samples,
            cached_tokens=self.cached_tokens,
        )


# -- caps -----------------------------------------------------------------------------------------


def whole_number(value: Any, param: str, *, error: type[ConfigError] = ConfigError) -> int:
    """``value`` if it is an integer >= 1 (not a bool), else an ``error`` naming ``param`` (a
    request's is a :class:`~ttscale.errors.RequestError`): ttscale's one whole-number check."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{param} must be a whole number > 0, got {value!r}", param=param)
    return value


@dataclass(frozen=True)
class DrawCaps:
    """A server's caps on what draws through a budget may ask for, whatever asks.

    ``samples`` caps the samples of all draws together; ``max_tokens`` the ``max_tokens`` of each
    sample (a draw naming none, or more, is sent with the cap). None: no cap.
    """

    samples: int | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("samples", "max_tokens"):
            value = getattr(self, name)
            if value is not None:
                whole_number(value, name)

    def params(self, params: SamplingParams | None) -> SamplingParams | None:
        """``params`` with ``max_tokens`` brought within the cap (pure)."""
        cap = self.max_tokens
        if cap is None:
            return params
        if params is None:
            return SamplingParams(max_tokens=cap)
        if params.max_tokens is None or params.max_tokens > cap:
            return params.replace(max_tokens=cap)
        return params

    def to_dict(self) -> dict[str, int | None]:
        return {"samples": self.samples, "max_tokens": self.max_tokens}
