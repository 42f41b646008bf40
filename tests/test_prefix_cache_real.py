"""Prefix reuse on the embedded model: llama-server (llama-cpp-python 0.3.36's llama.cpp) reports
the prompt tokens it reused in ``usage.prompt_tokens_details.cached_tokens``, and the OpenAI
sampler and the budget count them."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ttscale.budget import BudgetedSampler
from ttscale.local_model import LocalModelConfig, LocalModelServer
from ttscale.samplers.openai_sampler import OpenAISampler
from ttscale.types import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_llama_server_reports_the_prompt_tokens_it_reused() -> None:
    # A prompt no earlier request sent, so the first draw finds nothing cached.
    prompt = f"Repeat the code word {uuid.uuid4().hex[:8]} once, then stop."
    params = SamplingParams(temperature=0.0, max_tokens=2)

    async def draws(base_url: str, model: str) -> tuple[list[int], int, int]:
        async with OpenAISampler(base_url=base_url, model=model, api_key="local") as sampler:
            budget = BudgetedSampler(sampler)
            first = await budget.sample(prompt, 1, params)
            second = await budget.sample(prompt, 1, params)
        cached = [first.usage.cached_tokens, second.usage.cached_tokens]
        return cached, second.usage.prompt_tokens, budget.spent.cached_tokens

    with LocalModelServer(LocalModelConfig(parallel=1, context=2048)) as server:
        (first, second), prompt_tokens, spent = asyncio.run(draws(server.base_url, server.model))
    assert first == 0
    # llama.cpp evaluates at least the prompt's last token again: all but one are reused.
    assert 0 < second < prompt_tokens
    assert second >= prompt_tokens - 2
    assert spent == second
