"""Budget mappings (``{"samples": 64, "cost": 1.5}``): checked (from JSON or ``LIMIT=VALUE``
text), less what was spent, and dealt into slices; :func:`ttscale.budget.budget_condition` makes
one a stop condition. Pure functions over plain data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ttscale.errors import ConfigError
from ttscale.spend import whole_number
from ttscale.types import Usage

__all__ = [
    "LIMIT_NAMES",
    "WHOLE_LIMITS",
    "limits_left",
    "most_parts",
    "parse_budget",
    "parse_limits",
    "split_limits",
]

# The limits a budget mapping may name (each a stop condition of ttscale.budget).
LIMIT_NAMES = ("samples", "requests", "tokens", "completion_tokens", "cost", "seconds")
# Limits that count things, and so take whole numbers.
WHOLE_LIMITS = frozenset({"samples", "requests", "tokens", "completion_tokens"})


def parse_limits(raw: Any, where: str = "budget") -> dict[str, float]:
    """A budget mapping checked: known limit names, whole numbers >= 1 for counts, finite numbers
    > 0 for the rest (pure). Errors are :class:`ConfigError` naming ``where.key``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f'{where} must be an object such as {{"tokens": 20000}}, got {raw!r}', param=where
        )
    limits: dict[str, float] = {}
    for key, limit in raw.items():
        param = f"{where}.{key}"
        if key not in LIMIT_NAMES:
            raise ConfigError(
                f"{param}: unknown limit {key!r} (unknown budget limits are refused); known: "
                f"{', '.join(LIMIT_NAMES)}",
                param=param,
            )
        if key in WHOLE_LIMITS:
            limits[key] = whole_number(limit, param)
        elif (
            isinstance(limit, bool)
            or not isinstance(limit, int | float)
            or not math.isfinite(limit)
            or limit <= 0
        ):
            raise ConfigError(f"{param} must be a number > 0, got {limit!r}", param=param)
        else:
            limits[key] = float(limit)
    return limits


def parse_budget(text: str, flag: str = "--budget") -> dict[str, float]:
    """``samples=64,tokens=20000`` as ``{"samples": 64, "tokens": 20000}``, checked by
    :func:`parse_limits` (pure); errors name ``flag``."""
    budget: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, raw = part.strip().partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"{flag} takes LIMIT=VALUE,... (e.g. samples=64,cost=1.5), got {text!r}",
                param=flag,
            )
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{flag}: {key} must be a number, got {raw.strip()!r}", param=f"{flag}.{key}"
            ) from exc
        budget[key] = int(value) if key in WHOLE_LIMITS and value.is_integer() else value
    return parse_limits(budget, flag)


def limits_left(limits: Mapping[str, float], spent: Usage) -> dict[str, float]:
    """What is left of a checked budget mapping once ``spent`` is gone (pure): each limit less
    its part of the spend, at most 0 when spent; ``seconds`` is of this run's time and is kept."""
    used = {
        "samples": spent.samples,
        "requests": spent.requests,
        "tokens": spent.total_tokens,
        "completion_tokens": spent.completion_tokens,
        "cost": spent.cost,
        "seconds": 0.0,
    }
    return {key: max(limit - used[key], 0) for key, limit in limits.items()}


def split_limits(limits: Mapping[str, float], parts: int) -> list[dict[str, float]]:
    """A budget mapping dealt into ``parts`` slices that together never exceed it (pure).

    Count limits are divided into whole numbers, the remainder one apiece to the first slices;
    ``cost`` is divided evenly; ``seconds`` goes whole to every slice (slices spend at once).
    ``parts`` must not exceed the smallest count limit, so that no slice is empty
    (:func:`most_parts`)."""
    if parts < 1 or parts > most_parts(limits):
        raise ConfigError(f"cannot split {dict(limits)} into {parts} non-empty parts")
    slices: list[dict[str, float]] = [{} for _ in range(parts)]
    for key, limit in limits.items():
        for number, part in enumerate(slices):
            if key in WHOLE_LIMITS:
                whole, extra = divmod(int(limit), parts)
                part[key] = whole + (number < extra)
            else:
                part[key] = limit if key == "seconds" else limit / parts
    return slices


def most_parts(limits: Mapping[str, float]) -> int:
    """How many non-empty slices :func:`split_limits` can make of ``limits`` (pure): the
    smallest count limit (a large number when there is none); 0 when a limit is spent."""
    if any(limit <= 0 for limit in limits.values()):
        return 0
    counts = [int(limit) for key, limit in limits.items() if key in WHOLE_LIMITS]
    return min(counts, default=1 << 30)
