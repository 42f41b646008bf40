"""TransformersSampler on tiny random models built here (no download), and on the embedded GGUF."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ttscale.errors import ConfigError, SamplerError
from ttscale.protocols import Sampler
from ttscale.seeds import derive_seed
from ttscale.types import SampleBatch, SamplingParams

torch = pytest.importorskip("torch", reason="torch is not installed (ttscale[hf])")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")

from ttscale.samplers.transformers_sampler import (  # noqa: E402  (after the importorskips)
    TransformersSampler,
    _RowSampler,
    _Sampling,
    truncate_at_stop,
)

WORDS = [
    *("alpha", "beta", "gamma", "delta", "epsilon", "zeta"),
    *("eta", "theta", "iota", "kappa", "lambda", "mu"),
]
EOS = "<eos>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}kappa {% endif %}"
)


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A whitespace word tokenizer: every token a word of WORDS, or <eos> (id 0, also padding)."""
    vocab = {EOS: 0, "user": 1}
    vocab.update({word: position + 2 for position, word in enumerate(WORDS)})
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=EOS))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=EOS
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def make_model(kind: str = "llama") -> Any:
    torch.manual_seed(0)
    vocab_size = len(WORDS) + 2
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            bos_token_id=None,
            eos_token_id=0,
            pad_token_id=0,
        )
        return transformers.LlamaForCausalLM(config)
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def llama() -> tuple[Any, Any]:
    return make_model("llama"), make_tokenizer()


def sampler_for(model_and_tokenizer: tuple[Any, Any], **options: Any) -> TransformersSampler:
    model, tokenizer = model_and_tokenizer
    options.setdefault("params", SamplingParams(seed=7, max_tokens=10))
    return TransformersSampler(model=model, tokenizer=tokenizer, device="cpu", **options)


def draw(
    sampler: TransformersSampler,
    prompt: Any,
    n: int,
    params: SamplingParams | None = None,
    start_index: int = 0,
) -> SampleBatch:
    return asyncio.run(sampler.sample(prompt, n, params, start_index=start_index))


def texts(batch: SampleBatch) -> dict[int, str]:
    return {candidate.index: candidate.text for candidate in batch.candidates}


# -- pure pieces ------------------------------------------------------------------------------


def test_truncate_at_stop_cuts_before_the_earliest_stop() -> None:
    assert truncate_at_stop("a b STOP c END", ["END", "STOP"]) == ("a b ", True)
    assert truncate_at_stop("nothing here", ["x"]) == ("nothing here", False)
    assert truncate_at_stop("keep", ["", "z"]) == ("keep", False)


def test_row_sampler_draws_from_the_tempered_top_p_distribution() -> None:
    rows = 4000
    probabilities = torch.tensor([0.5, 0.3, 0.2])
    scores = probabilities.log().repeat(rows, 1)
    ids = torch.zeros((rows, 1), dtype=torch.long)
    plain = _Sampling(False, 1.0, 1.0, 0, 0.0, None)
    out = _RowSampler(range(rows), plain)(ids, scores)  # type: ignore[arg-type]
    assert torch.isinf(out).sum().item() == rows * 2  # one-hot rows: one 0, the rest -inf
    counts = Counter(out.argmax(-1).tolist())
    for token, expected in enumerate([0.5, 0.3, 0.2]):
        assert abs(counts[token] / rows - expected) < 0.03
    nucleus = _Sampling(False, 1.0, 0.6, 0, 0.0, None)  # 0.5 + 0.3 reach 0.6; 0.2 is cut
    picked = _RowSampler(range(rows), nucleus)(ids, scores).argmax(-1)  # type: ignore[arg-type]
    counts = Counter(picked.tolist())
    assert set(counts) == {0, 1} and abs(counts[0] / rows - 0.625) < 0.03
    top_one = _Sampling(False, 1.0, 1.0, 1, 0.0, None)
    picked = _RowSampler(range(50), top_one)(ids[:50], scores[:50]).argmax(-1)  # type: ignore[arg-type]
    assert set(picked.tolist()) == {0}
    # The same seed draws the same token whatever else is in the batch.
    alone = _RowSampler([12345], plain)(ids[:1], scores[:1]).argmax(-1)  # type: ignore[arg-type]
    crowd = _RowSampler([1, 12345, 2], plain)(ids[:3], scores[:3]).argmax(-1)  # type: ignore[arg-type]
    assert alone.item() == crowd[1].item()


# -- drawing ------------------------------------------------------------------------------------


def test_is_a_sampler_and_returns_indices_seeds_and_usage(llama: tuple[Any, Any]) -> None:
    sampler = sampler_for(llama, batch_size=2)
    assert isinstance(sampler, Sampler)
    batch = draw(sampler, "alpha beta", 5, start_index=3)
    assert [c.index for c in batch.candidates] == [3, 4, 5, 6, 7]
    assert [c.seed for c in batch.candidates] == [derive_seed(7, i) for i in range(3, 8)]
    usage = batch.usage
    assert usage.requests == 3 and usage.samples == 5  # calls of 2, 2 and 1 rows
    assert usage.prompt_tokens == 3 * 2  # the prompt's two tokens once per call
    assert usage.completion_tokens == sum(c.completion_tokens for c in batch.candidates)
    assert usage.wall_time_s > 0 and usage.failed_requests == 0
    assert all(c.tokens_exact and c.model for c in batch.candidates)
    assert all(c.finish_reason in ("stop", "length") for c in batch.candidates)
    assert draw(sampler, "alpha", 0).candidates == ()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_sample_depends_on_its_seed_and_index_only(kind: str) -> None:
    pair = (make_model(kind), make_tokenizer())
    whole = texts(draw(sampler_for(pair, batch_size=8), "alpha beta", 8))
    one_by_one = texts(draw(sampler_for(pair, batch_size=1), "alpha beta", 8))
    sampler = sampler_for(pair, batch_size=3)
    split = texts(draw(sampler, "alpha beta", 3)) | texts(draw(sampler, "alpha beta", 5, None, 3))
    assert whole == one_by_one == split
    assert len(set(whole.values())) >= 6  # different indices draw different samples
    other_base = texts(draw(sampler, "alpha beta", 8, SamplingParams(seed=8, max_tokens=10)))
    assert other_base != whole


def test_token_counts_are_the_generated_tokens(llama: tuple[Any, Any]) -> None:
    _, tokenizer = llama
    sampler = sampler_for(llama, batch_size=4)
    batch = draw(sampler, "gamma delta", 12, SamplingParams(seed=3, max_tokens=8, logprobs=2))
    finishes = Counter(c.finish_reason for c in batch.candidates)
    assert finishes["stop"] > 0 and finishes["length"] > 0  # both kinds of ending show up
    for candidate in batch.candidates:
        words = tokenizer(candidate.text, add_special_tokens=False)["input_ids"]
        ended_by_eos = candidate.finish_reason == "stop"
        assert candidate.completion_tokens == len(words) + ended_by_eos
        if candidate.finish_reason == "length":
            assert candidate.completion_tokens == 8
        logprobs = candidate.logprobs
        assert logprobs is not None and len(logprobs) == candidate.completion_tokens
        assert all(entry.logprob <= 0 and len(entry.top) == 2 for entry in logprobs)
        shown = [entry.token for entry in logprobs if entry.token != EOS]
        assert " ".join(shown) == candidate.text
        if ended_by_eos:
            assert logprobs[-1].token == EOS


def test_max_tokens_ends_with_length(llama: tuple[Any, Any]) -> None:
    batch = draw(sampler_for(llama), "alpha", 6, SamplingParams(seed=1, max_tokens=2))
    for candidate in batch.candidates:
        assert candidate.completion_tokens <= 2
        if candidate.finish_reason == "length":
            assert candidate.completion_tokens == 2
    assert any(c.finish_reason == "length" for c in batch.candidates)


def test_greedy_is_deterministic_and_matches_generate(llama: tuple[Any, Any]) -> None:
    model, tokenizer = llama
    greedy = SamplingParams(temperature=0, max_tokens=10, logprobs=1)
    first = draw(sampler_for(llama, batch_size=2), "beta gamma", 4, greedy)
    again = draw(sampler_for(llama, batch_size=4), "beta gamma", 4, greedy.replace(seed=99))
    assert len({c.text for c in first.candidates + again.candidates}) == 1
    ids = torch.tensor([tokenizer("beta gamma")["input_ids"]])
    with torch.inference_mode():
        reference = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=0,
        )
    expected = tokenizer.decode(reference[0, 2:].tolist(), skip_special_tokens=True)
    assert first.candidates[0].text == expected
    for entry in first.candidates[0].logprobs or ():
        assert math.isclose(entry.logprob, entry.top[0][1], abs_tol=1e-6)
    # top_k=1 and a tiny top_p are greedy too, whatever the seed.
    for extra in ({"top_k": 1}, {}):
        params = SamplingParams(seed=5, max_tokens=10, top_p=1e-6 if not extra else None)
        narrow = draw(sampler_for(llama), "beta gamma", 2, params.replace(extra_body=extra))
        assert [c.text for c in narrow.candidates] == [expected, expected]


def test_stop_strings_cut_the_text_and_count_what_was_generated(llama: tuple[Any, Any]) -> None:
    sampler = sampler_for(llama, batch_size=4)
    params = SamplingParams(seed=11, max_tokens=12)
    full = draw(sampler, "alpha", 8, params)
    cut = draw(sampler, "alpha", 8, params.replace(stop=("gamma", "zeta")))
    stopped = 0
    for whole, part in zip(full.candidates, cut.candidates, strict=True):
        assert "gamma" not in part.text and "zeta" not in part.text
        positions = [p for p in (whole.text.find("gamma"), whole.text.find("zeta")) if p >= 0]
        if positions:
            stopped += 1
            assert part.text == whole.text[: min(positions)]
            assert part.finish_reason == "stop"
            assert part.completion_tokens == len(part.text.split()) + 1  # + the stop word
        else:
            assert part == dataclasses.replace(whole, latency_s=part.latency_s)
    assert stopped >= 2


def test_chat_prompts_go_through_the_chat_template(llama: tuple[Any, Any]) -> None:
    _, tokenizer = llama
    sampler = sampler_for(llama)
    messages = [{"role": "user", "content": "alpha beta"}]
    expected = tokenizer("user alpha beta kappa", add_special_tokens=False)["input_ids"]
    assert sampler.encode(messages) == expected
    batch = draw(sampler, messages, 2)
    assert batch.usage.prompt_tokens == len(expected)
    plain = sampler_for((llama[0], make_tokenizer(chat_template=None)))
    with pytest.raises(ConfigError, match="chat template"):
        draw(plain, messages, 1)


def test_a_trailing_assistant_message_is_continued_not_answered(
    llama: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    _, tokenizer = llama
    sampler = sampler_for(llama)
    partial = "gamma delta"
    messages = [
        {"role": "user", "content": "alpha beta"},
        {"role": "assistant", "content": partial},
    ]
    partial_ids = tokenizer(partial, add_special_tokens=False)["input_ids"]
    kappa = tokenizer("kappa", add_special_tokens=False)["input_ids"]
    continued = sampler.encode(messages)
    # The template's "assistant" role word is not in the vocabulary (id 0); no "kappa" turn
    # opener follows the partial answer.
    user_ids = tokenizer("user alpha beta", add_special_tokens=False)["input_ids"]
    assert continued == [*user_ids, 0, *partial_ids]
    # vLLM's flags, as continuation="vllm" sends them, ask for the same; they are not warned about.
    flags = {"continue_final_message": True, "add_generation_prompt": False}
    with caplog.at_level("WARNING"):
        assert sampler.encode(messages, flags) == continued
        draw(sampler, messages, 1, SamplingParams(extra_body=flags))
    assert "ignores extra_body" not in caplog.text
    # Asked for a new turn, the template opens one after the assistant message.
    new_turn = sampler.encode(messages, {"add_generation_prompt": True})
    assert new_turn == [*continued, *kappa]
    with pytest.raises(ConfigError, match="cannot both be true"):
        sampler.encode(messages, {**flags, "add_generation_prompt": True})
    with pytest.raises(ConfigError, match="end with an assistant message"):
        sampler.encode(messages[:1], flags)


@pytest.mark.parametrize("continuation", ["prefill", "vllm"])
def test_deepening_continues_the_partial_answer_in_process(
    llama: tuple[Any, Any], continuation: str
) -> None:
    from ttscale.strategies.deepening import DeepeningSampler

    _, tokenizer = llama
    sampler = sampler_for(llama, params=SamplingParams(seed=7, temperature=0.9))
    deep = DeepeningSampler(sampler, b0=3, gamma=2.0, b_max=6, triggers=(" mu ",))
    deep.config = dataclasses.replace(deep.config, continuation=continuation)  # type: ignore[arg-type]
    messages = [{"role": "user", "content": "alpha beta"}]
    (candidate,) = draw(deep, messages, 1).candidates  # type: ignore[arg-type]
    first, second = deep.records[0]["segments"]
    assert second["trigger"] == " mu "
    partial = candidate.text[: second["start"]]
    assert partial.endswith(" mu ")
    # The second segment was asked of the partial answer, as an assistant message continued.
    prompt = sampler.encode([*messages, {"role": "assistant", "content": partial}])
    partial_ids = tokenizer(partial, add_special_tokens=False)["input_ids"]
    assert prompt[-len(partial_ids) :] == partial_ids
    assert second["usage"]["prompt_tokens"] == len(prompt)
    # And it is the sample that prompt draws at the segment's own index and budget.
    again = draw(
        sampler,
        [*messages, {"role": "assistant", "content": partial}],
        1,
        SamplingParams(max_tokens=second["max_tokens"]),
        start_index=1,  # sample 0's second segment
    )
    assert again.candidates[0].text == candidate.text[second["start"] : second["end"]]
    assert candidate.completion_tokens == first["generated"] + second["generated"]
    assert candidate.tokens_exact


def test_a_calls_params_override_the_samplers_own_field_by_field(
    llama: tuple[Any, Any],
) -> None:
    configured = sampler_for(llama, params=SamplingParams(seed=7, max_tokens=3, temperature=0))
    # Only max_tokens is overridden (as DeepeningSampler does): the configured greedy
    # temperature still holds, so every sample is the greedy one.
    batch = draw(configured, "alpha", 3, SamplingParams(max_tokens=5))
    greedy = draw(configured, "alpha", 1, SamplingParams(max_tokens=5, temperature=0))
    assert all(c.temperature == 0 for c in batch.candidates)
    assert {c.text for c in batch.candidates} == {greedy.candidates[0].text}
    assert all(c.completion_tokens <= 5 for c in batch.candidates)


def test_concurrent_draws_share_the_model_safely(llama: tuple[Any, Any]) -> None:
    sampler = sampler_for(llama, batch_size=2)

    async def both() -> tuple[SampleBatch, SampleBatch]:
        return await asyncio.gather(
            sampler.sample("alpha", 4), sampler.sample("alpha", 4, start_index=4)
        )

    first, second = asyncio.run(both())
    assert texts(first) | texts(second) == texts(draw(sampler, "alpha", 8))


def test_loads_from_a_path(tmp_path: Path) -> None:
    model, tokenizer = make_model("gpt2"), make_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    path_sampler = TransformersSampler(
        model=str(tmp_path / "tiny"), device="cpu", params=SamplingParams(seed=2, max_tokens=6)
    )
    assert path_sampler.model_name == str(tmp_path / "tiny")
    object_sampler = sampler_for((model, tokenizer), params=SamplingParams(seed=2, max_tokens=6))
    assert texts(draw(path_sampler, "alpha", 3)) == texts(draw(object_sampler, "alpha", 3))
    with pytest.raises(ConfigError, match="could not load"):
        TransformersSampler(model=str(tmp_path / "missing"), device="cpu")


def test_bad_settings_and_failures(llama: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = llama
    with pytest.raises(ConfigError, match="tokenizer"):
        TransformersSampler(model=model, device="cpu")
    with pytest.raises(ConfigError, match="batch_size"):
        sampler_for(llama, batch_size=0)
    with pytest.raises(ConfigError, match="unknown option"):
        sampler_for(llama, temperature=0.5)
    sampler = sampler_for(llama, batch_size=2)
    with pytest.raises(ConfigError):
        draw(sampler, "alpha", -1)
    with pytest.raises(ConfigError, match="prompt has"):
        draw(sampler, " ".join(["alpha"] * 64), 1)

    calls = 0
    generate = sampler.model.generate

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("out of memory")
        return generate(*args, **kwargs)

    monkeypatch.setattr(sampler.model, "generate", failing)
    with pytest.raises(SamplerError, match="out of memory") as caught:
        draw(sampler, "alpha", 4)
    partial = caught.value.partial
    assert isinstance(partial, SampleBatch)
    assert [c.index for c in partial.candidates] == [0, 1] and partial.usage.requests == 1


# -- the embedded model -------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_gguf_draws_two_samples() -> None:
    pytest.importorskip("gguf", reason="loading a GGUF in transformers needs the gguf package")
    pytest.importorskip("accelerate", reason="loading a GGUF in transformers needs accelerate")
    from ttscale.local_model import assemble_model

    try:
        path = assemble_model()
    except Exception as exc:  # the [local] extra (weight packages) is not installed
        pytest.skip(f"the embedded model is not available: {exc}")
    try:
        sampler = TransformersSampler(
            model=str(path), device="cpu", batch_size=2, params=SamplingParams(seed=1)
        )
    except ConfigError as exc:
        pytest.skip(f"transformers cannot load the embedded GGUF here: {exc}")
    messages = [{"role": "user", "content": "What is 2 + 3? Answer with the number only."}]
    batch = draw(sampler, messages, 2, SamplingParams(seed=1, max_tokens=6, temperature=0.7))
    assert [c.index for c in batch.candidates] == [0, 1]
    assert batch.usage.prompt_tokens > 10 and batch.usage.requests == 1
    for candidate in batch.candidates:
        assert 1 <= candidate.completion_tokens <= 6
        assert candidate.finish_reason in ("stop", "length")
    assert "5" in batch.candidates[0].text
