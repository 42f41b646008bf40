"""Continuing a partial answer on the embedded model: llama-server (llama-cpp-python 0.3.36's
llama.cpp) answers a prefilled assistant message with the prefill and its continuation; what
ttscale keeps of each continuation is what the model added, once."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from ttscale.local_model import LocalModelConfig, LocalModelServer
from ttscale.samplers.openai_sampler import OpenAISampler
from ttscale.strategies.deepening import DeepeningSampler
from ttscale.types import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROMPT = "Count from one to thirty in words, separated by commas."


def _raw_content(base_url: str, model: str, prefill: str) -> str:
    body = {
        "model": model,
        "messages": [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": prefill},
        ],
        "max_tokens": 4,
        "temperature": 0.0,
    }
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer local"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        content: str = json.load(response)["choices"][0]["message"]["content"]
    return content


def test_a_deepened_answer_on_llama_server_holds_each_segment_once() -> None:
    async def deepen(base_url: str, model: str) -> tuple[str, dict[str, Any]]:
        async with OpenAISampler(base_url=base_url, model=model, api_key="local") as inner:
            deep = DeepeningSampler(inner, b0=8, gamma=2.0, b_max=16, triggers=(",",))
            batch = await deep.sample(PROMPT, 1, SamplingParams(temperature=0.0))
        (candidate,) = batch.candidates
        return candidate.text, deep.records[candidate.index]

    with LocalModelServer(LocalModelConfig(parallel=1, context=2048)) as server:
        text, record = asyncio.run(deepen(server.base_url, server.model))
        first, second = record["segments"][:2]
        # What this server does (the reason for the guard): the prefill comes back in the content.
        prefill = text[: second["start"]]
        assert _raw_content(server.base_url, server.model, prefill).startswith(prefill)
    first_text = text[first["start"] : first["end"]]
    assert first_text.strip()
    assert text.count(first_text) == 1, text  # read with the prefill, it would stand twice
    assert second["end"] > second["start"]  # the second segment added text of its own
