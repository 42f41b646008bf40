"""``ttscale serve`` as a command: the server's default strategy, named or a graph spec file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from ttscale.strategies.graphs import multi_model_vote
from ttscale.testing import LoopbackServer, ScriptRequest

pytest.importorskip("uvicorn")


def answer(request: ScriptRequest) -> str:
    # Which model drew the sample shows in its text; the small model gets it wrong.
    model = request.body.get("model")
    return f"{model}: the answer is \\boxed{{{41 if model == 'small' else 42}}}"


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=answer) as server:
        yield server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    command = [sys.executable, "-m", "ttscale.cli", "serve", "--port", str(port), *args]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx2.get(base + "/health", timeout=1).status_code == 200:
                return process, base
        except httpx2.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(process.stderr.read() if process.stderr else "serve exited")
        assert time.monotonic() < deadline, "serve did not come up"
        time.sleep(0.1)


def test_default_strategy_may_be_a_graph_spec_file(
    upstream: LoopbackServer, tmp_path: Path
) -> None:
    spec = multi_model_vote(["small", "large", "large"]).save(tmp_path / "vote.json")
    process, base = serve(
        "--base-url", upstream.base_url, "--model", "small", "--default-strategy", str(spec)
    )
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0)
        reply = client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "What is 6 * 7?"}]
        )
    finally:
        process.terminate()
        process.communicate(timeout=30)
    meta = reply.model_extra["ttscale"]
    assert meta["strategy"] == "graph"
    assert meta["samples_used"] == 3  # one per generate node
    # The spec's vote: the two "large" nodes outvote the "small" one.
    assert reply.choices[0].message.content == "large: the answer is \\boxed{42}"
    models = [record.body["model"] for record in upstream.records if record.body]
    assert sorted(models) == ["large", "large", "small"]
    assert reply.usage.completion_tokens == upstream.delivered_usage()["completion_tokens"]


def test_a_missing_or_broken_spec_file_fails_at_start(
    upstream: LoopbackServer, tmp_path: Path
) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "ttscale.cli", "serve", "--base-url", upstream.base_url,
         "--model", "small", "--port", str(free_port()), "--default-strategy",
         str(tmp_path / "nope.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "nope.json" in " ".join(missing.stderr.split())
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"nodes": [{"id": "a", "colour": "red"}]}))
    failed = subprocess.run(
        [sys.executable, "-m", "ttscale.cli", "serve", "--base-url", upstream.base_url,
         "--model", "small", "--port", str(free_port()), "--default-strategy", str(broken)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert failed.returncode == 2
    message = " ".join(failed.stderr.split())
    assert "broken.json" in message and "colour" in message


def test_a_request_naming_another_strategy_does_not_inherit_the_default_specs_options(
    upstream: LoopbackServer, tmp_path: Path
) -> None:
    spec = multi_model_vote(["small", "large", "large"]).save(tmp_path / "vote.json")
    process, base = serve(
        "--base-url", upstream.base_url, "--model", "small", "--default-strategy", str(spec)
    )
    try:
        response = httpx2.post(
            base + "/v1/chat/completions",
            json={
                "model": "large",
                "messages": [{"role": "user", "content": "What is 6 * 7?"}],
                "ttscale": {"strategy": "majority", "samples": 3},
            },
            timeout=60,
        )
        # The default's graph runs as before for a request that names no strategy.
        default = httpx2.post(
            base + "/v1/chat/completions",
            json={"model": "small", "messages": [{"role": "user", "content": "What is 6 * 7?"}]},
            timeout=60,
        )
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert response.status_code == 200, response.text
    meta = response.json()["ttscale"]
    assert meta["strategy"] == "majority" and meta["samples_used"] == 3
    assert meta["votes"] == {"42": 3}  # all drawn from the request's model, not the spec's
    assert default.status_code == 200, default.text
    assert default.json()["ttscale"]["strategy"] == "graph"


def test_allow_request_endpoints_lets_a_request_name_a_server(upstream: LoopbackServer) -> None:
    with LoopbackServer(answers=answer) as elsewhere:
        spec = {
            "nodes": [{"id": "answer", "model": "big"}],
            "models": {"big": {"name": "large", "base_url": elsewhere.base_url}},
        }
        body = {
            "model": "small",
            "messages": [{"role": "user", "content": "What is 6 * 7?"}],
            "ttscale": {"strategy": "graph", "spec": spec},
        }
        replies = {}
        for flags in ((), ("--allow-request-endpoints",)):
            process, base = serve("--base-url", upstream.base_url, "--model", "small", *flags)
            try:
                replies[flags] = httpx2.post(base + "/v1/chat/completions", json=body, timeout=60)
            finally:
                process.terminate()
                process.communicate(timeout=30)
            if not flags:
                assert elsewhere.request_count == 0
    refused, allowed = replies[()], replies[("--allow-request-endpoints",)]
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "ttscale.spec.models.big.base_url"
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["choices"][0]["message"]["content"] == "large: the answer is \\boxed{42}"
    assert elsewhere.delivered_usage()["samples"] == 1
    assert upstream.request_count == 0
