"""A sampler over a local ``transformers`` causal language model, on CPU or GPU.

Needs the ``[hf]`` extra (``transformers`` and ``torch``). The model is a path (a checkpoint
directory, a hub-style directory, or a ``.gguf`` file, which ``transformers`` dequantises and
which needs the ``gguf`` package) or a loaded model object with its tokenizer.

What it guarantees:

- Chat prompts go through the tokenizer's chat template. Messages ending with an assistant
  message continue it (assistant prefill, rendered with ``continue_final_message=True`` and no
  new turn), as llama.cpp's server does and vLLM's does when asked; other messages open an
  assistant turn (``add_generation_prompt=True``). vLLM's two flags in ``extra_body`` decide when
  given (:func:`~ttscale.samplers.vllm_sampler.chat_template_flags`). Text prompts are tokenized
  as they are (with the tokenizer's usual special tokens, a BOS for Llama-style tokenizers).
- A call's ``params`` override the sampler's own (``config.params``) field by field, as
  ``OpenAISampler``'s do: what a call leaves ``None`` keeps the sampler's setting.
- Samples are drawn in batches of up to ``batch_size`` rows per ``generate`` call; all rows of a
  call share the one prompt, so no row is padded.
- **Per-sample seeds, independent of batching.** Sample ``i`` is drawn with seed
  ``derive_seed(base, i)`` and gets the same text whatever ``batch_size`` is and however a draw is
  split over ``start_index``. ``generate`` takes no per-row generator, and seeding the global RNG
  per call would tie a sample to its batch, so the sampling step itself is done here, by a logits
  processor: each row has its own ``random.Random`` seeded with its sample's seed, draws one
  uniform number per generated token, and picks the token by inverse CDF over the row's
  temperature/top-p/top-k/min-p distribution (tokens in descending probability, ties in vocabulary
  order). The processor then hands ``generate`` a one-hot score row and ``generate`` runs in
  greedy mode, so it only appends the chosen token. The cost: one sort of the vocabulary per row
  per token (milliseconds at a 150k vocabulary, small next to a forward pass), done by us rather
  than by ``generate``'s warpers. The one caveat: batched matrix products may differ from
  unbatched ones in the last bits, so a uniform draw that lands within ~1e-7 of a token boundary
  can pick a neighbouring token in another batch size; that is rare enough to ignore and the same
  caveat every batched server has.
- Temperature 0 is greedy (argmax; ties go to the lowest token id). ``temperature`` ``None`` is 1.
- Only :class:`~ttscale.types.SamplingParams` decide the sampling. The model's own
  ``generation_config`` gives the EOS, pad and BOS ids; its sampling defaults (temperature, top-k,
  repetition penalty) are not applied. ``extra_body`` may set ``top_k``, ``min_p`` and
  ``repetition_penalty``; other keys are ignored with a warning.
- Exact token counts: a candidate's ``completion_tokens`` counts the tokens it generated up to and
  including its EOS, never padding. A ``stop`` string ends the row as soon as its text contains
  it; the text is cut before the stop string, and the count still holds every token generated
  (what was spent). ``finish_reason`` is ``"stop"`` (EOS or a stop string) or ``"length"``.
- Usage counts one request per ``generate`` call, with the prompt's tokens once per call (as a
  server counts a request with ``n`` choices; each row does recompute the prompt, since rows keep
  separate caches).
- Logprobs, when asked (``params.logprobs``: 0 for the chosen token only, k for k alternatives),
  are of the model's own distribution before temperature and top-p (what vLLM returns by default).
  They are gathered by the same processor rather than with ``output_scores``, which would keep a
  vocabulary-wide tensor per row per token.
- The blocking ``generate`` runs in a worker thread, one call at a time per sampler (an asyncio
  lock queues calls in the loop; a thread lock guards the model across loops).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ttscale.errors import ConfigError, SamplerError
from ttscale.protocols import check_admission, check_draw
from ttscale.registry import resolve_config
from ttscale.samplers.openai_sampler import merge_params
from ttscale.samplers.vllm_sampler import CHAT_TEMPLATE_FLAGS, chat_template_flags
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

if TYPE_CHECKING:
    import torch

__all__ = [
    "GeneratedRow",
    "TransformersSampler",
    "TransformersSamplerConfig",
    "truncate_at_stop",
]

log = logging.getLogger(__name__)

# extra_body keys the sampler understands; anything else is warned about and ignored.
_EXTRA_KEYS = frozenset({"top_k", "min_p", "repetition_penalty"}) | CHAT_TEMPLATE_FLAGS


@dataclass(frozen=True)
class TransformersSamplerConfig:
    """Settings of a :class:`TransformersSampler`.

    ``model`` is a path (directory or ``.gguf`` file) or a loaded causal LM; a model object needs
    its ``tokenizer``. ``device`` is "auto" (CUDA when available, else CPU), "cpu", "cuda", ...
    ``dtype`` ("auto", "float32", "bfloat16", ...) applies when loading from a path.
    ``max_new_tokens`` is used when ``params.max_tokens`` is not set. ``model_name`` names the
    model on candidates (default: the path or the model's ``name_or_path``).
    """

    model: Any
    tokenizer: Any = None  # a tokenizer object, or a path to load one from
    device: str = "auto"
    dtype: str | None = None
    batch_size: int = 8
    max_new_tokens: int = 256
    params: SamplingParams = field(default_factory=SamplingParams)
    model_name: str = ""
    gguf_file: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.model is None or (isinstance(self.model, str) and not self.model):
            raise ConfigError("TransformersSampler needs a model path or a model object")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class GeneratedRow:
    """One generated sample as plain data: what :meth:`TransformersSampler._generate` returns."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    logprobs: tuple[TokenLogprob, ...] | None = None


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found (pure)."""
    cuts = [position for position in (text.find(s) for s in stop if s) if position >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def _import_hf() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ConfigError(
            "TransformersSampler needs transformers and torch: pip install 'ttscale[hf]'"
        ) from exc
    return torch, transformers


@dataclass(frozen=True)
class _Sampling:
    """The sampling settings of one draw, resolved to numbers."""

    greedy: bool
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    logprobs: int | None


class _RowSampler:
    """A logits processor that picks each row's next token with the row's own RNG.

    It returns a score row that is 0 at the chosen token and -inf elsewhere; ``generate`` runs
    greedily and so takes exactly that token. With ``logprobs`` set it records, per step, the
    chosen token's log probability and the top alternatives under the model's raw distribution.
    """

    def __init__(self, seeds: Sequence[int], sampling: _Sampling) -> None:
        self.sampling = sampling
        self.rngs = [random.Random(seed) for seed in seeds]
        self.chosen_logprobs: list[torch.Tensor] = []
        self.top_ids: list[torch.Tensor] = []
        self.top_values: list[torch.Tensor] = []

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        s = self.sampling
        if s.greedy:
            return logits.argmax(dim=-1)
        scaled = logits.double() / s.temperature
        # Descending probability; a stable sort puts equal scores in vocabulary order, so the
        # order (and so the token a uniform draw lands on) does not depend on the batch.
        ordered, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
        probs = torch.softmax(ordered, dim=-1)
        keep = torch.ones_like(probs, dtype=torch.bool)
        if s.top_k > 0:
            keep[:, s.top_k :] = False
        if s.top_p < 1.0:
            before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ahead of each one
            keep &= before < s.top_p
        if s.min_p > 0.0:
            keep &= probs >= s.min_p * probs[:, :1]
        keep[:, 0] = True  # the most likely token always survives
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        cdf = torch.cumsum(probs, dim=-1)
        uniforms = torch.tensor(
            [rng.random() for rng in self.rngs], dtype=cdf.dtype, device=cdf.device
        )
        targets = (uniforms * cdf[:, -1]).unsqueeze(-1)
        # The first position whose cumulative mass exceeds the target has non-zero mass.
        position = torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.shape[-1] - 1)
        return order.gather(-1, position).squeeze(-1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        import torch

        logits = scores.float()
        chosen = self._pick(logits)
        if self.sampling.logprobs is not None:
            logprobs = torch.log_softmax(logits, dim=-1)
            self.chosen_logprobs.append(logprobs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1))
            if self.sampling.logprobs > 0:
                values, ids = torch.topk(logprobs, self.sampling.logprobs, dim=-1)
                self.top_values.append(values)
                self.top_ids.append(ids)
        onehot = torch.full_like(scores, -math.inf)
        onehot.scatter_(-1, chosen.unsqueeze(-1), 0.0)
        return onehot


@dataclass(frozen=True)
class _Recorded:
    """What a :class:`_RowSampler` recorded, as nested lists indexed [row][step]."""

    chosen: list[list[float]]
    top_ids: list[list[list[int]]] | None
    top_values: list[list[list[float]]] | None

    @classmethod
    def collect(cls, sampler: _RowSampler) -> _Recorded | None:
        import torch

        if sampler.sampling.logprobs is None:
            return None
        rows = len(sampler.rngs)
        if not sampler.chosen_logprobs:
            return cls([[] for _ in range(rows)], None, None)
        chosen = torch.stack(sampler.chosen_logprobs, dim=1).cpu().tolist()
        if not sampler.top_ids:
            return cls(chosen, None, None)
        top_ids = torch.stack(sampler.top_ids, dim=1).cpu().tolist()
        top_values = torch.stack(sampler.top_values, dim=1).cpu().tolist()
        return cls(chosen, top_ids, top_values)


class _RowStops:
    """A stopping criterion that ends each row at EOS or at a stop string, and remembers where."""

    def __init__(
        self,
        prompt_length: int,
        rows: int,
        eos_ids: frozenset[int],
        stop: Sequence[str],
        decode: Callable[[list[int]], str],
    ) -> None:
        self.prompt_length = prompt_length
        self.eos_ids = eos_ids
        self.stop = [s for s in stop if s]
        self.decode = decode
        self.ended: list[int | None] = [None] * rows  # generated length at the end, per row

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        import torch

        generated = input_ids.shape[-1] - self.prompt_length
        last = input_ids[:, -1].tolist()  # one device-to-host copy per step, not one per row
        open_rows = [row for row, ended in enumerate(self.ended) if ended is None]
        for row in open_rows:
            if last[row] in self.eos_ids:
                self.ended[row] = generated
        if self.stop:
            # The whole generated text is decoded each step (a token can complete a stop string
            # that began tokens earlier); cheap next to a forward pass at these lengths.
            for row in open_rows:
                if self.ended[row] is None:
                    text = self.decode(input_ids[row, self.prompt_length :].tolist())
                    if any(s in text for s in self.stop):
                        self.ended[row] = generated
        done = [ended is not None for ended in self.ended]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _LoopLock:
    """An asyncio lock per event loop (a plain one binds to the first loop that waits on it)."""

    def __init__(self) -> None:
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
        self._per_loop = weakref.WeakKeyDictionary()

    def get(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        found = self._per_loop.get(loop)
        if found is None:
            found = self._per_loop[loop] = asyncio.Lock()
        return found


class TransformersSampler:
    """Draws candidates from a local ``transformers`` causal LM. See the module docstring."""

    def __init__(self, config: TransformersSamplerConfig | None = None, **options: Any) -> None:
        config = resolve_config(TransformersSamplerConfig, config, options, "TransformersSampler")
        self.config = config
        torch, transformers = _import_hf()
        self._torch = torch
        self._transformers = transformers
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        model, tokenizer, name = self._load(config, transformers)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.model_name = name
        generation = getattr(self.model, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None)
        if eos is None:
            eos = getattr(tokenizer, "eos_token_id", None)
        eos_ids = [eos] if isinstance(eos, int) else list(eos or ())
        self.eos_ids = frozenset(int(token) for token in eos_ids)
        pad = getattr(generation, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None and eos_ids:
            pad = eos_ids[0]  # rows of one call are never padded; pad only fills finished rows
        self.pad_id: int | None = pad
        if not self.eos_ids:
            log.warning("model %s has no EOS token; every sample runs to max_tokens", name)
        base = config.params.seed
        self.base_seed = base if base is not None else random_base_seed()
        if base is None:
            log.info("TransformersSampler: no base seed given; drew %d", self.base_seed)
        self._thread_lock = threading.Lock()
        self._loop_lock = _LoopLock()
        self._warned_keys: set[str] = set()

    @staticmethod
    def _load(config: TransformersSamplerConfig, transformers: Any) -> tuple[Any, Any, str]:
        if not isinstance(config.model, (str, os.PathLike)):
            if config.tokenizer is None:
                raise ConfigError(
                    "a TransformersSampler given a model object also needs its tokenizer"
                )
            name = config.model_name or str(
                getattr(getattr(config.model, "config", None), "name_or_path", "") or ""
            )
            return config.model, config.tokenizer, name or type(config.model).__name__
        path = os.fspath(config.model)
        gguf_file = config.gguf_file
        if gguf_file is None and path.endswith(".gguf") and os.path.isfile(path):
            path, gguf_file = os.path.dirname(path) or ".", os.path.basename(path)
        kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        model_kwargs = dict(kwargs)
        if config.dtype is not None:
            model_kwargs["dtype"] = config.dtype
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
            tokenizer = config.tokenizer
            if tokenizer is None:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
            elif isinstance(tokenizer, (str, os.PathLike)):
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    os.fspath(tokenizer), trust_remote_code=config.trust_remote_code
                )
        except (OSError, ValueError, ImportError) as exc:
            raise ConfigError(f"could not load a causal LM from {config.model!r}: {exc}") from exc
        name = config.model_name or os.fspath(config.model)
        return model, tokenizer, name

    # -- prompts and settings -------------------------------------------------------------------

    def encode(self, prompt: Prompt, extra_body: Mapping[str, Any] | None = None) -> list[int]:
        """The prompt's token ids: chat messages through the chat template (a trailing assistant
        message continued, unless ``extra_body``'s flags say otherwise), text as it is.

        Blocking, and it takes the model's lock: a fast tokenizer used from two threads at once
        can fail ("Already borrowed"), and a draw's worker thread decodes with it.
        """
        with self._thread_lock:
            return self._encode_unlocked(prompt, extra_body or {})

    def _encode_unlocked(self, prompt: Prompt, extra_body: Mapping[str, Any]) -> list[int]:
        tokenizer = self.tokenizer
        if isinstance(prompt, str):
            return list(tokenizer(prompt)["input_ids"])
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"the tokenizer of {self.model_name} has no chat template; pass a text prompt"
            )
        messages = [dict(message) for message in prompt]
        flags = chat_template_flags(messages, extra_body)
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, **flags)
        except Exception as exc:  # a template may raise anything (jinja errors included)
            raise ConfigError(f"the chat template failed on these messages: {exc}") from exc
        # The template already holds the special tokens it wants (a BOS among them).
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sampling(self, params: SamplingParams) -> _Sampling:
        extra = dict(params.extra_body)
        for key in sorted(set(extra) - _EXTRA_KEYS - self._warned_keys):
            self._warned_keys.add(key)
            log.warning("TransformersSampler ignores extra_body key %r", key)
        temperature = 1.0 if params.temperature is None else float(params.temperature)
        return _Sampling(
            greedy=temperature == 0.0,
            temperature=temperature,
            top_p=1.0 if params.top_p is None else float(params.top_p),
            top_k=int(extra.get("top_k") or 0),
            min_p=float(extra.get("min_p") or 0.0),
            logprobs=params.logprobs,
        )

    def _max_new_tokens(self, params: SamplingParams, prompt_length: int) -> int:
        wanted = params.max_tokens or self.config.max_new_tokens
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            room = limit - prompt_length
            if room < 1:
                raise ConfigError(
                    f"the prompt has {prompt_length} tokens; {self.model_name} takes {limit}"
                )
            wanted = min(wanted, room)
        return wanted

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    # -- generation (worker thread) -------------------------------------------------------------

    def _generate(
        self,
        prompt_ids: list[int],
        seeds: Sequence[int],
        params: SamplingParams,
        sampling: _Sampling,
        max_new_tokens: int,
    ) -> list[GeneratedRow]:
        """Generate one row per seed; blocking, so it runs in a worker thread."""
        with self._thread_lock:
            return self._generate_unlocked(prompt_ids, seeds, params, sampling, max_new_tokens)

    def _generate_unlocked(
        self,
        prompt_ids: list[int],
        seeds: Sequence[int],
        params: SamplingParams,
        sampling: _Sampling,
        max_new_tokens: int,
    ) -> list[GeneratedRow]:
        torch, transformers = self._torch, self._transformers
        rows = len(seeds)
        stop = tuple(params.stop or ())
        prompt_length = len(prompt_ids)
        sampler = _RowSampler(seeds, sampling)
        stops = _RowStops(prompt_length, rows, self.eos_ids, stop, self._decode)
        input_ids = torch.tensor([prompt_ids] * rows, dtype=torch.long, device=self.device)
        repetition_penalty = float(params.extra_body.get("repetition_penalty") or 1.0)
        generation_config = transformers.GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            num_return_sequences=1,
            eos_token_id=sorted(self.eos_ids) or None,
            pad_token_id=self.pad_id,
            # Values set here win over the model's generation_config; the rest of its sampling
            # defaults only act when do_sample is on, which it never is.
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=0,
            min_length=0,
            return_dict_in_generate=False,
            output_scores=False,
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=generation_config,
                logits_processor=transformers.LogitsProcessorList([sampler]),
                stopping_criteria=transformers.StoppingCriteriaList([stops]),
            )
        sequences = getattr(output, "sequences", output)
        generated = sequences[:, prompt_length:].tolist()
        recorded = _Recorded.collect(sampler)
        results: list[GeneratedRow] = []
        for row, ids in enumerate(generated):
            ended = stops.ended[row]
            length = len(ids) if ended is None else ended
            kept = tuple(int(token) for token in ids[:length])
            text, _ = truncate_at_stop(self._decode(list(kept)), stop)
            results.append(
                GeneratedRow(
                    text=text,
                    token_ids=kept,
                    finish_reason="length" if ended is None else "stop",
                    logprobs=None if recorded is None else self._named(recorded, row, kept),
                )
            )
        return results

    def _named(
        self, recorded: _Recorded, row: int, token_ids: Sequence[int]
    ) -> tuple[TokenLogprob, ...]:
        texts: dict[int, str] = {}

        def text(token: int) -> str:
            if token not in texts:
                texts[token] = str(self.tokenizer.decode([token]))
            return texts[token]

        entries = []
        for step, token in enumerate(token_ids):
            top_ids = recorded.top_ids[row][step] if recorded.top_ids else ()
            top_values = recorded.top_values[row][step] if recorded.top_values else ()
            entries.append(
                TokenLogprob(
                    token=text(token),
                    logprob=logprob_value(float(recorded.chosen[row][step])),
                    top=tuple(
                        (text(int(alt)), logprob_value(float(value)))
                        for alt, value in zip(top_ids, top_values, strict=True)
                    ),
                )
            )
        return tuple(entries)

    # -- drawing ----------------------------------------------------------------------------------

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
        sampling = self._sampling(params)
        if n == 0:
            return SampleBatch((), Usage())
        async with self._loop_lock.get():
            prompt_ids = await asyncio.to_thread(self.encode, prompt, params.extra_body)
        max_new_tokens = self._max_new_tokens(params, len(prompt_ids))
        candidates: list[Candidate] = []
        usage = Usage()
        started = time.perf_counter()
        try:
            end = start_index + n
            for first in range(start_index, end, self.config.batch_size):
                indices = range(first, min(first + self.config.batch_size, end))
                seeds = [derive_seed(base, index) for index in indices]
                async with self._loop_lock.get():
                    check_admission()  # after the wait: a store may have failed meanwhile
                    call_started = time.perf_counter()
                    rows = await asyncio.to_thread(
                        self._generate, prompt_ids, seeds, params, sampling, max_new_tokens
                    )
                    latency = time.perf_counter() - call_started
                for index, seed, row in zip(indices, seeds, rows, strict=True):
                    candidates.append(
                        Candidate(
                            text=row.text,
                            index=index,
                            finish_reason=row.finish_reason,
                            completion_tokens=len(row.token_ids),
                            tokens_exact=True,
                            seed=seed,
                            model=self.model_name,
                            latency_s=latency,
                            temperature=params.temperature,
                            logprobs=row.logprobs,
                        )
                    )
                usage = usage + Usage(
                    requests=1,
                    samples=len(rows),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=sum(len(row.token_ids) for row in rows),
                )
        except BaseException as exc:
            partial = SampleBatch(
                tuple(candidates), usage.replace(wall_time_s=time.perf_counter() - started)
            )
            if isinstance(exc, SamplerError):
                exc.partial = partial
                raise
            if isinstance(exc, Exception):
                raise SamplerError(f"generation failed: {exc}", partial=partial) from exc
            raise
        return SampleBatch(
            tuple(candidates), usage.replace(wall_time_s=time.perf_counter() - started)
        )

    async def aclose(self) -> None:
        """Nothing to release (the model is freed with the sampler); here for symmetry."""

    async def __aenter__(self) -> TransformersSampler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
