"""One whole-number check (ttscale.spend.whole_number) for every count a user gives: a request's
samples, k, n and max_tokens, a server's caps, a budget's counts, a dataset's limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ttscale.budget import parse_limits
from ttscale.datasets import load_dataset
from ttscale.errors import ConfigError, RequestError
from ttscale.settings import RequestLimits, parse_settings
from ttscale.wire import parse_request

MESSAGES = [{"role": "user", "content": "2 + 2?"}]

# Each place a count is given: (how to give it, the param its error names, a request's error).
PLACES: dict[str, tuple[Callable[[Any], object], str, bool]] = {
    "settings samples": (lambda v: parse_settings({"samples": v}), "ttscale.samples", True),
    "settings k": (lambda v: parse_settings({"k": v}), "ttscale.k", True),
    "request n": (
        lambda v: parse_request({"model": "m", "messages": MESSAGES, "n": v}, chat=True),
        "n",
        True,
    ),
    "request max_tokens": (
        lambda v: parse_request({"model": "m", "messages": MESSAGES, "max_tokens": v}, chat=True),
        "max_tokens",
        True,
    ),
    "server cap": (lambda v: RequestLimits(max_k=v), "max_k", False),
    "budget count": (lambda v: parse_limits({"samples": v}), "budget.samples", False),
    "dataset limit": (lambda v: load_dataset("arithmetic", limit=v), "limit", False),
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "3"])
def test_every_count_is_checked_alike(place: str, value: Any) -> None:
    give, param, from_a_request = PLACES[place]
    with pytest.raises(ConfigError) as caught:
        give(value)
    error = caught.value
    assert str(error) == f"{param} must be a whole number > 0, got {value!r}"
    assert error.param == param
    assert isinstance(error, RequestError) is from_a_request  # a request's is the client's 400


@pytest.mark.parametrize("place", PLACES)
def test_a_whole_number_passes(place: str) -> None:
    give, _, _ = PLACES[place]
    give(2)  # control: the same places take a whole number
