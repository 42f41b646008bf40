"""VLLMSampler: its pure logic on fake vLLM outputs (everywhere), the engine on a GPU (if any)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ttscale.errors import ConfigError, SamplerError
from ttscale.protocols import Sampler
from ttscale.samplers import vllm_sampler
from ttscale.samplers.vllm_sampler import (
    VLLMSampler,
    VLLMSamplerConfig,
    candidates_from_outputs,
    chat_template_flags,
    logprobs_from_completion,
    vllm_sampling_kwargs,
)
from ttscale.seeds import derive_seed
from ttscale.types import SampleBatch, SamplingParams, TokenLogprob

# -- fakes with vLLM's attribute names ----------------------------------------------------------


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    finish_reason: str | None = "stop"
    logprobs: list[dict[int, Logprob]] | None = None
    stop_reason: str | int | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
    prompt: str | None = None


class WordTokenizer:
    """Enough of a tokenizer for the sampler: a chat template and word-level ids."""

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tokenize: bool,
        continue_final_message: bool = False,
    ) -> str:
        assert not tokenize and not (add_generation_prompt and continue_final_message)
        text = "".join(f"<{m['role']}> {m['content']} " for m in messages)
        if continue_final_message:  # as transformers does: cut after the final message
            return text[: text.rindex(messages[-1]["content"]) + len(messages[-1]["content"])]
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert not add_special_tokens
        return {"input_ids": [len(word) for word in text.split()]}


@dataclass
class FakeEngine:
    """An AsyncLLMEngine stand-in: each request's text and tokens follow from its seed."""

    async_tokenizer: bool = False
    fail_seeds: frozenset[int] = frozenset()
    requests: list[tuple[Any, dict[str, Any], str]] = field(default_factory=list)
    shutdowns: int = 0

    def get_tokenizer(self) -> Any:
        if self.async_tokenizer:

            async def later() -> WordTokenizer:
                return WordTokenizer()

            return later()
        return WordTokenizer()

    async def generate(
        self, prompt: Any, sampling_params: dict[str, Any], request_id: str
    ) -> AsyncIterator[RequestOutput]:
        self.requests.append((prompt, sampling_params, request_id))
        seed = sampling_params["seed"]
        if seed in self.fail_seeds:
            raise RuntimeError(f"engine failed on seed {seed}")
        await asyncio.sleep(random.random() / 100)  # finish out of order
        prompt_ids = (
            prompt["prompt_token_ids"] if isinstance(prompt, dict) else [1] * len(prompt.split())
        )
        rng = random.Random(seed)
        length = rng.randint(1, sampling_params.get("max_tokens", 16))
        tokens = [rng.randrange(1000) for _ in range(length)]
        completion = CompletionOutput(
            index=0,
            text=f"answer {seed}",
            token_ids=tokens,
            finish_reason="length" if length == sampling_params.get("max_tokens") else "stop",
        )
        yield RequestOutput(request_id, prompt_ids, [completion])

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture
def fake_params(monkeypatch: pytest.MonkeyPatch) -> None:
    """vllm.SamplingParams is replaced by the plain kwargs the sampler builds."""
    monkeypatch.setattr(vllm_sampler, "_make_sampling_params", dict)


def draw(sampler: VLLMSampler, prompt: Any, n: int, **kwargs: Any) -> SampleBatch:
    return asyncio.run(sampler.sample(prompt, n, **kwargs))


# -- pure pieces ----------------------------------------------------------------------------------


def test_sampling_kwargs_map_ttscale_params() -> None:
    params = SamplingParams(
        temperature=0.7,
        top_p=0.9,
        max_tokens=64,
        stop=("\n\n", "END"),
        logprobs=3,
        seed=1,
        extra_body={"top_k": 20, "repetition_penalty": 1.1},
    )
    assert vllm_sampling_kwargs(params, 1234) == {
        "n": 1,
        "seed": 1234,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["\n\n", "END"],
        "logprobs": 3,
        "top_k": 20,
        "repetition_penalty": 1.1,
    }
    # Unset fields are left to vLLM, except max_tokens, whose vLLM default (16) is too short.
    assert vllm_sampling_kwargs(SamplingParams(), None, n=4) == {"n": 4}
    assert vllm_sampling_kwargs(SamplingParams(logprobs=0), 5, default_max_tokens=256) == {
        "n": 1,
        "seed": 5,
        "max_tokens": 256,
        "logprobs": 0,
    }
    assert vllm_sampling_kwargs(SamplingParams(temperature=0), 5)["temperature"] == 0


def test_chat_template_flags_continue_a_trailing_assistant_message() -> None:
    user = [{"role": "user", "content": "q"}]
    prefilled = [*user, {"role": "assistant", "content": "partial"}]
    turn = {"add_generation_prompt": True, "continue_final_message": False}
    cont = {"add_generation_prompt": False, "continue_final_message": True}
    assert chat_template_flags(user, {}) == turn
    assert chat_template_flags(prefilled, {}) == cont  # assistant prefill, as llama.cpp does
    vllm_flags = {"continue_final_message": True, "add_generation_prompt": False}
    assert chat_template_flags(prefilled, vllm_flags) == cont
    assert chat_template_flags(prefilled, {"add_generation_prompt": True}) == turn
    assert chat_template_flags(prefilled, {"continue_final_message": False}) == turn
    assert chat_template_flags(user, {"add_generation_prompt": False}) == {
        "add_generation_prompt": False,
        "continue_final_message": False,
    }
    with pytest.raises(ConfigError, match="cannot both be true"):
        chat_template_flags(prefilled, {"continue_final_message": True, "add_generation_prompt": 1})
    with pytest.raises(ConfigError, match="end with an assistant message"):
        chat_template_flags(user, {"continue_final_message": True})
    # They shape the prompt, not the sampling: vllm.SamplingParams never sees them.
    kwargs = vllm_sampling_kwargs(SamplingParams(extra_body={**vllm_flags, "top_k": 5}), 1)
    assert kwargs == {"n": 1, "seed": 1, "top_k": 5}


def test_logprobs_from_a_completion() -> None:
    completion = CompletionOutput(
        index=0,
        text="Yes.",
        token_ids=[7, 9],
        logprobs=[
            {
                3: Logprob(-0.5, rank=1, decoded_token="No"),
                8: Logprob(-1.5, rank=2, decoded_token="Maybe"),
                7: Logprob(-2.5, rank=3, decoded_token="Yes"),  # chosen, outside the top 2
            },
            {9: Logprob(-0.1, rank=1, decoded_token="."), 4: Logprob(-3.0, rank=2)},
        ],
    )
    entries = logprobs_from_completion(completion, 2)
    assert entries == (
        TokenLogprob("Yes", -2.5, (("No", -0.5), ("Maybe", -1.5))),
        TokenLogprob(".", -0.1, ((".", -0.1), ("<4>", -3.0))),
    )
    only_chosen = logprobs_from_completion(completion, 0)
    assert only_chosen is not None and [e.top for e in only_chosen] == [(), ()]
    assert [e.token for e in only_chosen] == ["Yes", "."]
    assert logprobs_from_completion(CompletionOutput(0, "x", [1]), 2) is None


def test_candidates_and_usage_from_request_outputs() -> None:
    outputs = [
        RequestOutput("r-5", [1, 2, 3], [CompletionOutput(0, "five", [10, 11], "stop")]),
        RequestOutput("r-6", [1, 2, 3], [CompletionOutput(0, "six", [12, 13, 14], "length")]),
    ]
    candidates, usage = candidates_from_outputs(
        outputs, [5, 6], [50, 60], model="m", temperature=0.8, latencies=[0.1, 0.2]
    )
    assert [(c.index, c.seed, c.text) for c in candidates] == [(5, 50, "five"), (6, 60, "six")]
    assert [c.completion_tokens for c in candidates] == [2, 3]
    assert [c.finish_reason for c in candidates] == ["stop", "length"]
    assert [c.request_id for c in candidates] == ["r-5", "r-6"]
    assert all(c.tokens_exact and c.model == "m" and c.temperature == 0.8 for c in candidates)
    assert [c.latency_s for c in candidates] == [0.1, 0.2]
    assert all(c.logprobs is None for c in candidates)
    # One draw: the shared prompt counted once, every completion token counted.
    assert (usage.requests, usage.samples, usage.prompt_tokens, usage.completion_tokens) == (
        1,
        2,
        3,
        5,
    )
    # One request with n completions: they take the indices in the engine's completion order.
    several = RequestOutput(
        "r",
        [1, 2],
        [CompletionOutput(1, "b", [3], "stop"), CompletionOutput(0, "a", [1, 2], "stop")],
    )
    candidates, usage = candidates_from_outputs([several], [0, 1], [None, None])
    assert [c.text for c in candidates] == ["a", "b"] and usage.completion_tokens == 3
    with pytest.raises(SamplerError, match="more completions"):
        candidates_from_outputs([several], [0], [None])
    assert candidates_from_outputs([], [], [])[1].requests == 0


def test_config_builds_engine_args() -> None:
    config = VLLMSamplerConfig(
        model="some/model", max_model_len=4096, engine_options={"enforce_eager": True}
    )
    args = config.engine_args()
    assert args["model"] == "some/model" and args["enable_prefix_caching"] is True
    assert args["max_model_len"] == 4096 and args["enforce_eager"] is True
    assert "tokenizer" not in args
    with pytest.raises(ConfigError):
        VLLMSamplerConfig(model="")
    with pytest.raises(ConfigError):
        VLLMSamplerConfig(model="m", gpu_memory_utilization=1.5)


# -- the sampler around a fake engine --------------------------------------------------------------


@pytest.mark.usefixtures("fake_params")
def test_each_sample_is_its_own_seeded_request() -> None:
    engine = FakeEngine()
    sampler = VLLMSampler(model="fake", engine=engine, params=SamplingParams(seed=9))
    assert isinstance(sampler, Sampler)
    batch = draw(sampler, "what is two plus two", 4, start_index=2)
    assert [c.index for c in batch.candidates] == [2, 3, 4, 5]
    seeds = [derive_seed(9, i) for i in range(2, 6)]
    assert [c.seed for c in batch.candidates] == seeds
    assert [c.text for c in batch.candidates] == [f"answer {s}" for s in seeds]
    assert [kwargs["n"] for _, kwargs, _ in engine.requests] == [1, 1, 1, 1]
    assert [kwargs["max_tokens"] for _, kwargs, _ in engine.requests] == [256] * 4
    assert len({request_id for _, _, request_id in engine.requests}) == 4
    assert batch.usage.requests == 1 and batch.usage.samples == 4
    assert batch.usage.prompt_tokens == 5  # the prompt once for the draw
    assert batch.usage.completion_tokens == sum(c.completion_tokens for c in batch.candidates)
    # The same index gets the same sample whatever the split; request ids never repeat.
    again = draw(sampler, "what is two plus two", 2, start_index=4)
    assert [c.text for c in again.candidates] == [c.text for c in batch.candidates[2:]]
    assert len({request_id for _, _, request_id in engine.requests}) == 6
    assert draw(sampler, "x", 0).candidates == ()


@pytest.mark.usefixtures("fake_params")
@pytest.mark.parametrize("async_tokenizer", [False, True])
def test_chat_prompts_go_through_the_template_as_token_ids(async_tokenizer: bool) -> None:
    engine = FakeEngine(async_tokenizer=async_tokenizer)
    sampler = VLLMSampler(model="fake", engine=engine)
    messages = [{"role": "user", "content": "two plus two"}]
    batch = draw(sampler, messages, 2, params=SamplingParams(seed=1, max_tokens=8, stop=("\n",)))
    prompt, kwargs, _ = engine.requests[0]
    assert prompt == {"prompt_token_ids": [6, 3, 4, 3, 11]}  # "<user> two plus two <assistant>"
    assert kwargs["stop"] == ["\n"] and kwargs["max_tokens"] == 8
    assert batch.usage.prompt_tokens == 5
    assert all(c.completion_tokens <= 8 for c in batch.candidates)


@pytest.mark.usefixtures("fake_params")
@pytest.mark.parametrize("continuation", ["prefill", "vllm"])
def test_deepening_continues_the_answer_on_the_engine(continuation: str) -> None:
    from ttscale.strategies.deepening import DeepeningSampler

    engine = FakeEngine()
    sampler = VLLMSampler(model="fake", engine=engine, params=SamplingParams(seed=4))
    deep = DeepeningSampler(
        sampler,
        b0=4,
        gamma=2.0,
        b_max=8,
        triggers=(" hmm ",),
        continuation=continuation,  # type: ignore[arg-type]
    )
    messages = [{"role": "user", "content": "two plus two"}]
    (candidate,) = draw(deep, messages, 1).candidates  # type: ignore[arg-type]
    (first_prompt, _, _), (second_prompt, kwargs, _) = engine.requests
    assert first_prompt == {"prompt_token_ids": [6, 3, 4, 3, 11]}  # a new assistant turn
    partial = candidate.text[: deep.records[0]["segments"][1]["start"]]
    assert partial == f"answer {derive_seed(4, 0)} hmm "
    # "<user> two plus two <assistant> answer N hmm": the partial answer, no turn opened after it.
    assert second_prompt == {"prompt_token_ids": [6, 3, 4, 3, 11, 6, len(partial.split()[1]), 3]}
    assert "continue_final_message" not in kwargs and "add_generation_prompt" not in kwargs
    assert kwargs["max_tokens"] == 8 - deep.records[0]["segments"][0]["generated"]


@pytest.mark.usefixtures("fake_params")
def test_failed_requests_keep_what_arrived() -> None:
    failing = derive_seed(3, 1)
    engine = FakeEngine(fail_seeds=frozenset({failing}))
    sampler = VLLMSampler(model="fake", engine=engine)
    with pytest.raises(SamplerError, match="1 of 3") as caught:
        draw(sampler, "q", 3, params=SamplingParams(seed=3))
    partial = caught.value.partial
    assert isinstance(partial, SampleBatch)
    assert [c.index for c in partial.candidates] == [0, 2]
    assert partial.usage.failed_requests == 1 and partial.usage.samples == 2
    asyncio.run(sampler.aclose())
    assert engine.shutdowns == 0  # an engine handed in belongs to the caller


def test_building_an_engine_needs_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def no_vllm(name: str, *args: Any) -> Any:
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real(name, *args)

    monkeypatch.setattr(vllm_sampler.importlib, "import_module", no_vllm)
    with pytest.raises(ConfigError, match=r"ttscale\[vllm\]"):
        VLLMSampler(model="some/model")
    with pytest.raises(ConfigError, match="unknown option"):
        VLLMSampler(model="m", engine=FakeEngine(), batch_size=4)


# -- the real engine ----------------------------------------------------------------------------


def _engine_model() -> Mapping[str, Any]:
    configured = os.environ.get("TTSCALE_VLLM_MODEL")
    if configured:
        return {"model": configured}
    from ttscale.local_model import assemble_model

    try:
        return {"model": str(assemble_model())}
    except Exception as exc:
        pytest.skip(f"no model for the vLLM engine test: {exc}")


@pytest.mark.slow
def test_engine_draws_reproducible_samples() -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (ttscale[vllm])")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("the vLLM engine test needs a CUDA GPU, and there is none here")
    sampler = VLLMSampler(
        **_engine_model(),
        gpu_memory_utilization=0.5,
        max_model_len=2048,
        params=SamplingParams(seed=4, max_tokens=24, temperature=0.8),
    )

    async def run() -> tuple[SampleBatch, SampleBatch, SampleBatch]:
        try:
            messages = [{"role": "user", "content": "Name a prime number."}]
            first = await sampler.sample(messages, 4)
            split = await sampler.sample(messages, 2, start_index=2)
            text = await sampler.sample("The capital of France is", 2)
            return first, split, text
        finally:
            await sampler.aclose()

    first, split, text = asyncio.run(run())
    assert [c.index for c in first.candidates] == [0, 1, 2, 3]
    assert [c.text for c in split.candidates] == [c.text for c in first.candidates[2:]]
    assert first.usage.prompt_tokens > 5 and first.usage.samples == 4
    for candidate in first.candidates + text.candidates:
        assert 1 <= candidate.completion_tokens <= 24
        assert candidate.finish_reason in ("stop", "length")
    assert text.usage.completion_tokens == sum(c.completion_tokens for c in text.candidates)
