"""Options reach configs from JSON, command lines and requests: each is checked against its
field's type where it is built (``ttscale.registry.build_config``), so a 2.5 where a count goes
or a NaN where a number goes fails there, naming the option, not deep in a run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ttscale import OpenAISampler
from ttscale.errors import ConfigError
from ttscale.proxy import BackgroundProxy, ProxyConfig
from ttscale.registry import create
from ttscale.testing.server import LoopbackServer
from ttscale.types import SamplingParams


@pytest.mark.parametrize(
    ("kind", "name", "options", "message"),
    [
        ("strategy", "deepconf", {"window": 2.5}, "window must be an integer, got 2.5"),
        ("strategy", "deepconf", {"window": True}, "window must be an integer, got True"),
        ("strategy", "deepconf", {"eta": "0.5"}, "eta must be a number, got '0.5'"),
        ("strategy", "deepconf", {"min_votes": math.nan}, "min_votes must be an integer"),
        ("strategy", "beam_search", {"max_steps": 2.5}, "max_steps must be an integer"),
        ("strategy", "beam_search", {"temperature": math.nan}, "temperature must be a number"),
        ("verifier", "confidence", {"window": 1.5}, "window must be an integer, got 1.5"),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_naming_it(
    kind: str, name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        create(kind, name, **options)
    assert caught.value.param == next(iter(options))
    # Control: the same option with a value of its type builds.
    good = {"window": 4, "eta": 0.5, "min_votes": 2, "max_steps": 3, "temperature": 0.7}
    create(kind, name, **{key: good[key] for key in options})


def test_a_mapping_for_a_nested_config_is_built_into_one() -> None:
    sampler = OpenAISampler(base_url="http://127.0.0.1:9/v1", model="m", api_key="x")
    judge = create("verifier", "judge", sampler=sampler, params={"max_tokens": 10})
    assert judge.config.params.max_tokens == 10
    with pytest.raises(ConfigError, match="max_tokens must be an integer or None, got 'ten'"):
        create("verifier", "judge", sampler=sampler, params={"max_tokens": "ten"})


def test_the_proxy_and_the_command_line_name_the_option(tmp_path: Path) -> None:
    with LoopbackServer() as upstream:
        proxy = BackgroundProxy(ProxyConfig(base_url=upstream.base_url, model="loopback")).start()
        try:
            body = {
                "model": "loopback",
                "messages": [{"role": "user", "content": "hi"}],
                "ttscale": {"strategy": "deepconf", "window": 2.5},
            }
            response = httpx2.post(proxy.base_url + "/chat/completions", json=body, timeout=30)
        finally:
            proxy.stop()
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "ttscale.window"
        assert upstream.request_count == 0
        dataset = tmp_path / "d.jsonl"
        dataset.write_text(json.dumps({"id": "a", "prompt": "2+2?", "answer": "4"}) + "\n")
        args = ["solve", str(dataset), "--out", str(tmp_path / "o.jsonl"), "--no-plot"]
        args += ["--base-url", upstream.base_url, "--model", "m", "--strategy", "adaptive"]
        done = subprocess.run(
            [sys.executable, "-m", "ttscale.cli", *args, "-o", "batch_size=2.5"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert "batch_size must be an integer, got 2.5" in " ".join(done.stderr.split())


@pytest.mark.parametrize("temperature", [math.inf, math.nan, -0.1])
def test_a_temperature_is_a_finite_number_at_least_0(temperature: float) -> None:
    with pytest.raises(ConfigError, match="temperature must be a finite number >= 0"):
        SamplingParams(temperature=temperature)
    assert SamplingParams(temperature=0.0).temperature == 0.0  # control: greedy is allowed
