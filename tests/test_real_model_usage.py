"""Token counts on the embedded model (llama.cpp) are exact with ``n > 1`` (issue 18, item 11).

llama-server reports one choice's completion tokens for a request of several; the sampler counts
each choice from token logprobs it asks for only to count (ttscale.samplers.usage). Checked here
against the server's own tokenizer (``/tokenize``): a choice's count is its text's tokens plus the
end-of-generation token of a choice that stopped, as the server counts a single choice.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ttscale.errors import TTScaleError
from ttscale.local_model import (
    LocalModelConfig,
    LocalModelServer,
    assemble_model,
    find_llama_server,
)
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.samplers.usage import forget
from ttscale.sync import SyncSampler
from ttscale.types import SampleBatch, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROMPT = "Name three colours, one per line."


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    try:
        assemble_model()
    except TTScaleError as exc:
        pytest.skip(f"the embedded model is not installed: {exc}")
    if find_llama_server() is None:
        pytest.skip("llama-server is not built (ttscale local-setup)")
    with LocalModelServer(LocalModelConfig(parallel=8, context=4096)) as running:
        yield running


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def tokens_of(server: LocalModelServer, text: str) -> int:
    return len(post(f"http://127.0.0.1:{server.port}/tokenize", {"content": text})["tokens"])


def draw(base_url: str, model: str, count: int, max_tokens: int) -> SampleBatch:
    config = OpenAISamplerConfig(
        model=model,
        base_url=base_url,
        api_key_env=None,
        params=SamplingParams(temperature=0.8, max_tokens=max_tokens, seed=7),
    )
    with SyncSampler(OpenAISampler(config)) as sampler:
        return sampler.sample(PROMPT, count)


def expected_tokens(server: LocalModelServer, text: str, finish_reason: str | None) -> int:
    return tokens_of(server, text) + (1 if finish_reason == "stop" else 0)


def test_eight_choices_count_what_the_server_tokenizes(
    server: LocalModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ttscale.samplers.openai_sampler")
    batch = draw(server.base_url, server.model, 8, 40)
    assert batch.usage.requests == 1  # n kept: one request for the eight
    counts = [c.completion_tokens for c in batch.candidates]
    expected = [expected_tokens(server, c.text, c.finish_reason) for c in batch.candidates]
    assert counts == expected
    assert all(c.tokens_exact for c in batch.candidates)
    assert all(c.logprobs is None for c in batch.candidates)  # asked for only to count
    assert batch.usage.completion_tokens == sum(expected)
    # The correction is said once per server, at INFO; a second draw says it at DEBUG only.
    draw(server.base_url, server.model, 2, 8)
    said = [r for r in caplog.records if "server reported" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO, logging.DEBUG]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # Control: the server's own usage for several choices counts one of them.
    raw = post(
        f"{server.base_url}/chat/completions",
        {
            "model": server.model,
            "messages": [{"role": "user", "content": PROMPT}],
            "n": 3,
            "max_tokens": 16,
            "seed": 7,
        },
    )
    texts = [(c["message"]["content"], c["finish_reason"]) for c in raw["choices"]]
    whole = sum(expected_tokens(server, text, reason) for text, reason in texts)
    assert raw["usage"]["completion_tokens"] < whole
    assert raw["usage"]["completion_tokens"] == expected_tokens(server, *texts[0])


def test_a_server_not_declared_is_learnt_from_its_first_answer(server: LocalModelServer) -> None:
    """The same server under another name (``localhost``) is not known in advance: its first
    answer shows it (and is counted as an estimate); from the next request on counts are exact."""
    url = f"http://localhost:{server.port}/v1"
    config = OpenAISamplerConfig(
        model=server.model,
        base_url=url,
        api_key_env=None,
        params=SamplingParams(temperature=0.8, max_tokens=8, seed=11),
    )
    try:
        with SyncSampler(OpenAISampler(config)) as sampler:
            first = sampler.sample(PROMPT, 2)
            second = sampler.sample(PROMPT, 2)
    finally:
        forget(url)  # learnt under a name the server's stop does not clear
    assert not any(c.tokens_exact for c in first.candidates)
    assert all(c.tokens_exact for c in second.candidates)
    assert [c.completion_tokens for c in second.candidates] == [
        expected_tokens(server, c.text, c.finish_reason) for c in second.candidates
    ]


def test_more_samples_than_slots_keep_n(server: LocalModelServer) -> None:
    """llama-server refuses more choices than its slots (8 here): 16 samples go as two requests
    of 8, none refused (before, the refusal made the sampler drop n for good)."""
    batch = draw(server.base_url, server.model, 16, 4)
    assert (batch.usage.requests, batch.usage.failed_requests, batch.usage.samples) == (2, 0, 16)
    assert [c.completion_tokens for c in batch.candidates] == [
        expected_tokens(server, c.text, c.finish_reason) for c in batch.candidates
    ]
