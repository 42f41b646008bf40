"""A sampler over an in-process vLLM engine (``vllm.AsyncLLMEngine``), for GPUs.

Needs the ``[vllm]`` extra; ``vllm`` is imported only when an engine is built. The engine is made
once, in ``__init__``, from :class:`VLLMSamplerConfig` (or handed in ready-made with ``engine=``),
with prefix caching on, so the samples of one prompt compute its prefix once.

What it guarantees:

- **Per-sample seeds.** Sample ``i`` is its own engine request with ``n=1`` and seed
  ``derive_seed(base, i)``, so it is reproducible whatever the batching or ``start_index`` split.
  This costs nothing against ``n``: vLLM's engine fans a request with ``n > 1`` out into ``n``
  single requests itself (with seeds ``seed, seed + 1, ...``), which would tie a sample's seed to
  the request it happened to be in. All the requests of a draw go in at once and the engine
  batches them (and every other prompt in flight) continuously.
- Chat prompts go through the engine's tokenizer's chat template and are sent as token ids; text
  prompts are sent as text. Messages ending with an assistant message continue it (assistant
  prefill: ``continue_final_message=True``, no new turn), as llama.cpp's server does and as vLLM's
  server does when asked with ``continue_final_message``; other messages get a new assistant turn
  (``add_generation_prompt=True``). The two vLLM server flags in ``extra_body`` decide when given
  (:func:`chat_template_flags`), and are taken out of what goes to ``vllm.SamplingParams``.
- Usage comes from the engine's outputs: a draw counts as one request (as vLLM's server counts a
  request with ``n``), with the prompt's token ids once, and each sample's completion tokens are
  the length of its ``token_ids``: exact. ``finish_reason`` is vLLM's (``"stop"`` for EOS or a
  stop string, ``"length"``, ``"abort"``); stop strings are cut from the text by vLLM.
- Logprobs (``params.logprobs``: 0 for the chosen token, k for k alternatives) are vLLM's.
- A call's ``params`` override the sampler's own (``config.params``) field by field, as
  ``OpenAISampler``'s do: what a call leaves ``None`` keeps the sampler's setting.

The pure parts, :func:`vllm_sampling_kwargs` and :func:`candidates_from_outputs`, take plain data
and duck-typed output objects (``RequestOutput``/``CompletionOutput`` attribute names), so they are
tested without vLLM.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttscale.errors import ConfigError, DataError, SamplerError
from ttscale.protocols import check_draw
from ttscale.registry import resolve_config
from ttscale.samplers.openai_sampler import merge_params
from ttscale.seeds import derive_seed, random_base_seed
from ttscale.types import (
    Candidate,
    Prompt,
    SampleBatch,
    SamplingParams,
    TokenLogprob,
    Usage,
    logprob_value,
)

__all__ = [
    "CHAT_TEMPLATE_FLAGS",
    "VLLMSampler",
    "VLLMSamplerConfig",
    "candidates_from_outputs",
    "chat_template_flags",
    "logprobs_from_completion",
    "vllm_sampling_kwargs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VLLMSamplerConfig:
    """Settings of a :class:`VLLMSampler`.

    ``model`` is what vLLM loads (a hub name or a local path). The engine settings here are the
    common ones; ``engine_options`` passes any other ``AsyncEngineArgs`` field through.
    ``max_tokens`` is used when ``params.max_tokens`` is not set (vLLM's own default is 16).
    """

    model: str
    tokenizer: str | None = None
    model_name: str = ""
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    trust_remote_code: bool = False
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    max_tokens: int = 256
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("VLLMSampler needs a model name or path")
        if self.tensor_parallel_size < 1:
            raise ConfigError("tensor_parallel_size must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("gpu_memory_utilization must be in (0, 1]")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments of ``vllm.AsyncEngineArgs`` (pure)."""
        args: dict[str, Any] = {
            "model": self.model,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enable_prefix_caching": self.enable_prefix_caching,
            "seed": self.seed,
            "trust_remote_code": self.trust_remote_code,
        }
        if self.tokenizer is not None:
            args["tokenizer"] = self.tokenizer
        if self.max_model_len is not None:
            args["max_model_len"] = self.max_model_len
        args.update(self.engine_options)
        return args


# -- pure logic ---------------------------------------------------------------------------------

CHAT_TEMPLATE_FLAGS = frozenset({"continue_final_message", "add_generation_prompt"})
"""``extra_body`` keys of vLLM's chat server that say how the chat template is applied."""


def chat_template_flags(
    messages: Sequence[Mapping[str, Any]], extra_body: Mapping[str, Any]
) -> dict[str, bool]:
    """The ``add_generation_prompt`` and ``continue_final_message`` arguments of a tokenizer's
    ``apply_chat_template`` for generating after ``messages`` (pure).

    Messages ending with an assistant message continue it (assistant prefill, what llama.cpp's
    server does by default and vLLM's ``continue_final_message`` asks for): no new turn is opened
    and the answer picks up where the message stops. Other messages open an assistant turn.
    ``extra_body``'s ``continue_final_message`` and ``add_generation_prompt``, when given, decide.
    """
    last_is_assistant = bool(messages) and messages[-1].get("role") == "assistant"
    asked_continue = _flag(extra_body, "continue_final_message")
    asked_turn = _flag(extra_body, "add_generation_prompt")
    if asked_continue is None:
        continue_final = last_is_assistant and asked_turn is not True
    else:
        continue_final = asked_continue
    if continue_final and asked_turn is True:
        raise ConfigError("continue_final_message and add_generation_prompt cannot both be true")
    if continue_final and not last_is_assistant:
        raise ConfigError(
            "continue_final_message needs the messages to end with an assistant message"
        )
    add_turn = not continue_final if asked_turn is None else asked_turn
    return {"add_generation_prompt": add_turn, "continue_final_message": continue_final}


def _flag(extra_body: Mapping[str, Any], name: str) -> bool | None:
    value = extra_body.get(name)
    return None if value is None else bool(value)


def vllm_sampling_kwargs(
    params: SamplingParams, seed: int | None, *, n: int = 1, default_max_tokens: int | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``vllm.SamplingParams`` for one request (pure).

    Unset fields are left out so that vLLM's defaults apply; ``extra_body`` entries (``top_k``,
    ``min_p``, ``repetition_penalty``, ...) pass through and win, except the chat template flags
    (:data:`CHAT_TEMPLATE_FLAGS`), which say how the prompt is rendered, not how it is sampled.
    """
    kwargs: dict[str, Any] = {"n": n}
    if seed is not None:
        kwargs["seed"] = seed
    if params.temperature is not None:
        kwargs["temperature"] = params.temperature
    if params.top_p is not None:
        kwargs["top_p"] = params.top_p
    max_tokens = params.max_tokens if params.max_tokens is not None else default_max_tokens
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if params.stop:
        kwargs["stop"] = list(params.stop)
    if params.logprobs is not None:
        kwargs["logprobs"] = params.logprobs
    kwargs.update(
        (key, value) for key, value in params.extra_body.items() if key not in CHAT_TEMPLATE_FLAGS
    )
    return kwargs


def logprobs_from_completion(completion: Any, top: int) -> tuple[TokenLogprob, ...] | None:
    """A ``CompletionOutput``'s logprobs as :class:`TokenLogprob` entries (pure, duck-typed).

    vLLM gives one mapping per generated token, token id to an object with ``logprob``, ``rank``
    and ``decoded_token``: the top ``top`` tokens plus the chosen one when it is not among them.
    Values are read by :func:`~ttscale.types.logprob_value` (vLLM's -9999 for ``-inf`` becomes the
    floor); a NaN, or a position without the chosen token's logprob, leaves the completion
    without logprobs (said in a warning) rather than reading a number that means nothing.
    """
    positions = getattr(completion, "logprobs", None)
    if positions is None:
        return None
    try:
        return _read_logprobs(completion, positions, top)
    except DataError as exc:
        log.warning("a completion's logprobs are unusable, so it is kept without them: %s", exc)
        return None


def _read_logprobs(completion: Any, positions: Any, top: int) -> tuple[TokenLogprob, ...]:
    token_ids = list(getattr(completion, "token_ids", ()) or ())
    entries: list[TokenLogprob] = []
    for step in range(len(positions)):
        alternatives: Mapping[int, Any] = positions[step] or {}
        chosen_id = token_ids[step] if step < len(token_ids) else None
        chosen = alternatives.get(chosen_id) if chosen_id is not None else None
        ranked = sorted(
            alternatives.items(),
            key=lambda item: (_rank(item[1]), item[0]),
        )
        entries.append(
            TokenLogprob(
                token=_token_text(chosen, chosen_id),
                logprob=_chosen_logprob(chosen, step),
                top=tuple(
                    (_token_text(value, token_id), logprob_value(value.logprob))
                    for token_id, value in ranked[:top]
                )
                if top > 0
                else (),
            )
        )
    return tuple(entries)


def _chosen_logprob(chosen: Any, step: int) -> float:
    if chosen is None or getattr(chosen, "logprob", None) is None:
        raise DataError(f"token {step} has no logprob for the token sampled")
    return logprob_value(chosen.logprob)


def _rank(value: Any) -> float:
    rank = getattr(value, "rank", None)
    return float(rank) if rank is not None else -float(getattr(value, "logprob", 0.0))


def _token_text(value: Any, token_id: int | None) -> str:
    decoded = getattr(value, "decoded_token", None) if value is not None else None
    if decoded is not None:
        return str(decoded)
    return "" if token_id is None else f"<{token_id}>"


def candidates_from_outputs(
    outputs: Sequence[Any],
    indices: Sequence[int],
    seeds: Sequence[int | None],
    *,
    model: str = "",
    temperature: float | None = None,
    logprobs: int | None = None,
    latencies: Sequence[float] | None = None,
) -> tuple[list[Candidate], Usage]:
    """Candidates and usage from the engine's final ``RequestOutput`` objects of one draw (pure).

    ``outputs`` are one per request, in sample order; each request's completions take the next
    indices and seeds. The draw counts as one request whose prompt is counted once (every request
    of a draw has the same prompt); completion tokens are each completion's ``token_ids``.
    """
    candidates: list[Candidate] = []
    slots = iter(zip(indices, seeds, strict=True))
    prompt_tokens = 0
    completion_tokens = 0
    for position, output in enumerate(outputs):
        prompt_ids = getattr(output, "prompt_token_ids", None) or ()
        prompt_tokens = max(prompt_tokens, len(prompt_ids))
        latency = latencies[position] if latencies is not None else 0.0
        request_id = getattr(output, "request_id", None)
        completions = sorted(getattr(output, "outputs", ()) or (), key=_completion_index)
        for completion in completions:
            try:
                index, seed = next(slots)
            except StopIteration:
                raise SamplerError(
                    f"the engine returned more completions than the {len(indices)} asked for"
                ) from None
            tokens = len(getattr(completion, "token_ids", ()) or ())
            completion_tokens += tokens
            candidates.append(
                Candidate(
                    text=str(getattr(completion, "text", "") or ""),
                    index=index,
                    finish_reason=getattr(completion, "finish_reason", None),
                    completion_tokens=tokens,
                    tokens_exact=True,
                    seed=seed,
                    model=model,
                    latency_s=latency,
                    temperature=temperature,
                    logprobs=logprobs_from_completion(completion, logprobs)
                    if logprobs is not None
                    else None,
                    request_id=str(request_id) if request_id is not None else None,
                )
            )
    usage = Usage(
        requests=1 if candidates else 0,
        samples=len(candidates),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    return candidates, usage


def _completion_index(completion: Any) -> int:
    index = getattr(completion, "index", 0)
    return index if isinstance(index, int) else 0


# -- the engine ---------------------------------------------------------------------------------


def _vllm() -> Any:
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise ConfigError("VLLMSampler needs vLLM: pip install 'ttscale[vllm]'") from exc


def _make_sampling_params(kwargs: Mapping[str, Any]) -> Any:
    """A ``vllm.SamplingParams`` that returns only the final output of a request."""
    vllm = _vllm()
    kinds = importlib.import_module("vllm.sampling_params").RequestOutputKind
    return vllm.SamplingParams(**kwargs, output_kind=kinds.FINAL_ONLY)


def _make_engine(config: VLLMSamplerConfig) -> Any:
    vllm = _vllm()
    args = vllm.AsyncEngineArgs(**config.engine_args())
    return vllm.AsyncLLMEngine.from_engine_args(args)


class VLLMSampler:
    """Draws candidates from an in-process vLLM engine. See the module docstring.

    ``engine`` may be a ready ``AsyncLLMEngine`` (or anything with its ``generate`` and
    ``get_tokenizer``); the sampler then does not shut it down.
    """

    def __init__(
        self,
        config: VLLMSamplerConfig | None = None,
        *,
        engine: Any = None,
        **options: Any,
    ) -> None:
        config = resolve_config(VLLMSamplerConfig, config, options, "VLLMSampler")
        self.config = config
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else _make_engine(config)
        self.model_name = config.model_name or config.model
        base = config.params.seed
        self.base_seed = base if base is not None else random_base_seed()
        if base is None:
            log.info("VLLMSampler: no base seed given; drew %d", self.base_seed)
        self._tokenizer: Any = None
        self._draws = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]

    async def tokenizer(self) -> Any:
        """The engine's tokenizer (``get_tokenizer`` is async in some vLLM versions)."""
        if self._tokenizer is None:
            found = self.engine.get_tokenizer()
            self._tokenizer = await found if inspect.isawaitable(found) else found
        return self._tokenizer

    async def engine_prompt(
        self, prompt: Prompt, extra_body: Mapping[str, Any] | None = None
    ) -> Any:
        """What the engine is given: the text, or a chat's templated token ids (a trailing
        assistant message continued; see :func:`chat_template_flags`)."""
        if isinstance(prompt, str):
            return prompt
        messages = [dict(message) for message in prompt]
        flags = chat_template_flags(messages, extra_body or {})
        tokenizer = await self.tokenizer()
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, **flags)
        except Exception as exc:  # no template, or a template error
            raise ConfigError(f"the chat template of {self.model_name} failed: {exc}") from exc
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return {"prompt_token_ids": list(ids)}

    async def _request(
        self, engine_prompt: Any, kwargs: dict[str, Any], request_id: str
    ) -> tuple[Any, float]:
        """Send one request; return its final output and how long it took."""
        started = time.perf_counter()
        final = None
        async for output in self.engine.generate(
            engine_prompt, _make_sampling_params(kwargs), request_id
        ):
            final = output
        if final is None:
            raise SamplerError(f"the engine returned nothing for request {request_id}")
        return final, time.perf_counter() - started

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        """Draw samples ``start_index .. start_index + n - 1`` of ``prompt``."""
        check_draw(n, start_index)
        # An override: the fields it sets win over the sampler's own, the rest are kept.
        params = merge_params(self.config.params, params)
        base = params.seed if params.seed is not None else self.base_seed
        started = time.perf_counter()
        if n == 0:
            return SampleBatch((), Usage())
        engine_prompt = await self.engine_prompt(prompt, params.extra_body)
        indices = list(range(start_index, start_index + n))
        seeds = [derive_seed(base, index) for index in indices]
        draw = f"ttscale-{self._prefix}-{next(self._draws)}"
        results = await asyncio.gather(
            *(
                self._request(
                    engine_prompt,
                    vllm_sampling_kwargs(
                        params, seed, n=1, default_max_tokens=self.config.max_tokens
                    ),
                    f"{draw}-{index}",
                )
                for index, seed in zip(indices, seeds, strict=True)
            ),
            return_exceptions=True,
        )
        done = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        candidates, usage = candidates_from_outputs(
            [result[0] for _, result in done],
            [indices[i] for i, _ in done],
            [seeds[i] for i, _ in done],
            model=self.model_name,
            temperature=params.temperature,
            logprobs=params.logprobs,
            latencies=[result[1] for _, result in done],
        )
        usage = usage.replace(wall_time_s=time.perf_counter() - started)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            partial = SampleBatch(tuple(candidates), usage.replace(failed_requests=len(failures)))
            first = failures[0]
            if not isinstance(first, Exception):
                raise first
            if isinstance(first, SamplerError):
                first.partial = partial
                raise first
            raise SamplerError(
                f"{len(failures)} of {n} vLLM request(s) failed: {first}", partial=partial
            ) from first
        return SampleBatch(tuple(candidates), usage)

    async def aclose(self) -> None:
        """Shut the engine down if this sampler made it."""
        if self._owns_engine and self.engine is not None:
            shutdown = getattr(self.engine, "shutdown", None)
            if shutdown is not None:
                result = shutdown()
                if inspect.isawaitable(result):
                    await result

    async def __aenter__(self) -> VLLMSampler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
