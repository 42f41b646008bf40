"""A sampler over any OpenAI-compatible server (vLLM, llama.cpp, hosted APIs).

Its plain requests go through :class:`~ttscale.samplers.transport.LeanClient`, which keeps the
``openai`` client's retries, backoff, timeouts, headers and error types at a fraction of its CPU per
request (the choice and its measurements are in that module's docstring); streams, servers behind
an HTTP proxy, ``transport="openai"`` and clients passed in go through ``openai.AsyncOpenAI``.

What it guarantees:

- Uses the server's ``n`` where the server has one, in requests of at most ``max_n`` choices. A
  server that rejects ``n > 1`` (a 400/422 whose ``param`` is ``n``, or whose message plainly
  names n) or returns fewer choices than asked is remembered per endpoint (base URL and API), and
  the missing samples are drawn with single requests. The memory is shared by the sampler's
  ``with_model`` twins and by every sampler on the same ``openai`` client. Choices a short
  response did return are kept: they were paid for.
- The params given to ``sample`` override the sampler's own (``config.params``) field by field:
  the fields they set win, the ones left ``None`` keep the sampler's value (``extra_body`` is
  merged key by key), so a strategy that only sets a temperature keeps the sampler's
  ``max_tokens``, ``stop`` and the like. ``None`` draws with the sampler's params as they are.
- Every request gets a distinct seed derived from the base seed and the index of its first sample,
  so no two samples are identical seeded requests counted as independent.
- One concurrency bound (requests in flight) is shared by every prompt drawn through the sampler;
  optional requests-per-minute and tokens-per-minute limits sit in front of it.
- Retries and backoff are the ``openai`` client's (``max_retries``, ``timeout``) on either path.
  The sampler only re-draws samples that a response it could not read failed to deliver, a
  bounded number of times.
- Usage is what the server reported: prompt tokens per request, completion tokens per sample (exact
  where the request had one choice or logprobs came back; apportioned otherwise, with the request's
  total kept exact).
- When a draw fails part way, the error carries the samples already received (``partial``); so
  does the ``CancelledError`` of a draw cancelled part way.
- :meth:`OpenAISampler.sample_watched` streams each sample (one request each) and closes its
  stream as soon as the sample's watcher says so (DeepConf's online stop); the server stops
  generating when the connection closes. Such a sample is kept with ``finish_reason``
  ``"early_stop"`` and the tokens that arrived, counted exactly from their logprobs. A stream closed
  before the server reported usage has the prompt tokens last reported for the same prompt by this
  sampler (0 if none was), since servers report usage only at a stream's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ttscale.errors import ConfigError, SamplerError, TTScaleError, UpstreamError
from ttscale.protocols import EARLY_STOP, TokenWatcher, check_admission, check_draw, deliver
from ttscale.registry import resolve_config
from ttscale.samplers.limits import RequestGate
from ttscale.samplers.upstream import Transport, UpstreamClients
from ttscale.samplers.usage import (
    counting_logprobs,
    entry_counts,
    first_correction,
    knows_one_choice,
    learn,
    max_choices,
)
from ttscale.seeds import derive_seed, random_base_seed
from ttscale.types import (
    Candidate,
    Pricing,
    Prompt,
    SampleBatch,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from ttscale.wire import (
    Endpoint,
    StreamRead,
    cached_tokens,
    choice_logprobs,
    choice_text,
    choices_by_index,
    completion_counts,
    names_n,
    request_body,
    usage_count,
)

if TYPE_CHECKING:
    import openai

__all__ = ["EARLY_STOP", "OpenAISampler", "OpenAISamplerConfig", "merge_params"]

log = logging.getLogger(__name__)

NMode = Literal["auto", "always", "never"]

# Prompts whose token count a stream closed before its usage can borrow (see sample_watched).
_PROMPT_MEMORY = 1024


@dataclass(frozen=True)
class OpenAISamplerConfig:
    """Settings of an :class:`OpenAISampler`.

    ``client_shards`` is how many ``openai`` clients share the requests (default: one per 8 of
    ``concurrency``); see the note in ``OpenAISampler.__init__``. ``api_key`` wins over
    ``api_key_env``; with neither set a placeholder key is sent, which local
    servers (vLLM, llama.cpp) accept. ``n_mode`` is "auto" (use ``n`` until the server shows it
    does not honour it), "always" or "never". ``max_redraws`` bounds how many times per draw the
    sampler re-requests samples that a response it could not read failed to deliver.
    ``transport`` is "auto" (plain requests through the lean client where it reaches the server)
    or "openai" (every request through the ``openai`` client).
    """

    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = "OPENAI_API_KEY"
    endpoint: Endpoint = "chat"
    max_n: int = 16
    n_mode: NMode = "auto"
    concurrency: int = 64
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 2
    timeout: float = 600.0
    pricing: Pricing | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    max_redraws: int = 3
    client_shards: int | None = None
    transport: Transport = "auto"

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("OpenAISampler needs a model name")
        if self.transport not in ("auto", "openai"):
            raise ConfigError(f"transport must be 'auto' or 'openai', got {self.transport!r}")
        if self.endpoint not in ("chat", "completions"):
            raise ConfigError(f"endpoint must be 'chat' or 'completions', got {self.endpoint!r}")
        if self.n_mode not in ("auto", "always", "never"):
            raise ConfigError(f"n_mode must be auto, always or never, got {self.n_mode!r}")
        for name in ("max_n", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.max_redraws < 0:
            raise ConfigError("max_retries and max_redraws must be >= 0")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0, got {self.timeout}")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")


class _EndpointMemory:
    """What samplers have learnt of their endpoints' ``n``, by (base URL, API).

    Held by reference: a sampler's ``with_model`` twins (shallow copies) and the samplers built on
    one ``openai`` client share one memory, so what one of them learnt (with a rejected request,
    paid for in time) none of the others asks again. Samplers with their own clients each start
    afresh; a memory is never process-wide, so a server started later on a reused port is not
    mistaken for an old one.
    """

    def __init__(self) -> None:
        self.n_supported: dict[tuple[str, str], bool] = {}


# Keyed weakly by the client: the memory lives as long as the client it belongs to.
_MEMORY_BY_CLIENT: weakref.WeakKeyDictionary[object, _EndpointMemory] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Slot:
    """A run of consecutive sample indices that one request is asked to fill."""

    start: int
    count: int


@dataclass
class _Draw:
    """Mutable bookkeeping of one ``sample`` call; never shared between calls."""

    candidates: dict[int, Candidate] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    redraws: int = 0


class _UnreadableResponse(Exception):
    """The server answered 200 but the body could not be read as a completion."""


class OpenAISampler:
    """Draws candidates from an OpenAI-compatible server. See the module docstring."""

    def __init__(
        self,
        config: OpenAISamplerConfig | None = None,
        *,
        client: openai.AsyncOpenAI | Sequence[openai.AsyncOpenAI] | UpstreamClients | None = None,
        **options: Any,
    ) -> None:
        """``client``: the ``openai`` client(s) to draw through instead of the sampler's own (the
        caller closes them); several of one server share the requests as the sampler's own
        shards do, and the first keys what is learnt of the endpoint's ``n``. Given as
        :class:`UpstreamClients`, the requests in flight are counted with the caller's own."""
        config = resolve_config(OpenAISamplerConfig, config, options, "OpenAISampler")
        self.config = config
        self._owns_client = client is None
        self._upstream = self._upstream_clients(config, client)
        base = config.params.seed
        self.base_seed = base if base is not None else random_base_seed()
        if base is None:
            log.info("OpenAISampler: no base seed given; drew %d", self.base_seed)
        # Whether the endpoint honours n: fixed by n_mode, or (auto) learnt from its answers into
        # the memory this sampler shares with its twins and the other samplers on its client.
        self._n_fixed: bool | None = {"auto": None, "always": True, "never": False}[config.n_mode]
        if client is not None:
            self._memory = _MEMORY_BY_CLIENT.setdefault(self._upstream.key, _EndpointMemory())
        else:
            self._memory = _EndpointMemory()
        self._endpoint_key = (self._upstream.base_url, config.endpoint)
        # The concurrency bound and rate limits, shared by reference with the twins.
        self._gate = RequestGate(
            config.concurrency,
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
        )
        # Prompt tokens by prompt, learnt from answers that reported usage; shared with twins.
        self._prompt_tokens: OrderedDict[str, int] = OrderedDict()
        self._last_prompt: tuple[object, str] = (None, "")

    @staticmethod
    def _upstream_clients(
        config: OpenAISamplerConfig,
        client: openai.AsyncOpenAI | Sequence[openai.AsyncOpenAI] | UpstreamClients | None,
    ) -> UpstreamClients:
        if isinstance(client, UpstreamClients):
            return client
        if client is not None:
            if isinstance(client, Sequence):
                if not client:
                    raise ConfigError("OpenAISampler(client=...) got an empty list of clients")
                return UpstreamClients(client, owned=False)
            return UpstreamClients([client], owned=False)
        api_key = config.api_key
        if api_key is None and config.api_key_env:
            api_key = os.environ.get(config.api_key_env)
        return UpstreamClients.create(
            base_url=config.base_url,
            api_key=api_key,
            max_retries=config.max_retries,
            timeout=config.timeout,
            shards=config.client_shards or max(1, math.ceil(config.concurrency / 8)),
            transport=config.transport,
        )

    def with_model(self, model: str) -> OpenAISampler:
        """This sampler asking ``model``: same server, clients, concurrency bound and limits."""
        twin = copy.copy(self)  # shares the gate: one concurrency bound, one set of limits
        twin.config = dataclasses.replace(self.config, model=model)
        twin._owns_client = False  # the clients stay ours to close
        return twin

    @property
    def n_supported(self) -> bool | None:
        """What is known of the endpoint's ``n``: True, False, or None (not yet)."""
        if self._n_fixed is not None:
            return self._n_fixed
        return self._memory.n_supported.get(self._endpoint_key)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._upstream.aclose()

    async def __aenter__(self) -> OpenAISampler:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- drawing -----------------------------------------------------------------------------

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        """Draw samples ``start_index .. start_index + n - 1`` of ``prompt``.

        ``params`` overrides the sampler's own params field by field (see the module docstring).
        """
        check_draw(n, start_index)
        params = merge_params(self.config.params, params)
        request_input = self._request_input(prompt)
        draw = _Draw()
        started = time.perf_counter()
        try:
            await self._fill(draw, request_input, params, _Slot(start_index, n))
        except BaseException as exc:
            self._raise_with_partial(exc, self._batch(draw, time.perf_counter() - started))
        return self._batch(draw, time.perf_counter() - started)

    @staticmethod
    def _raise_with_partial(exc: BaseException, partial: SampleBatch) -> None:
        if isinstance(exc, SamplerError):
            exc.partial = partial
            raise exc
        if isinstance(exc, Exception):
            raise SamplerError(f"sampling failed: {exc}", partial=partial) from exc
        if isinstance(exc, asyncio.CancelledError):
            # Cancelled part way (its caller gave up, the loop is stopping): what arrived is
            # paid for, so the cancellation carries it as a failure's SamplerError does, for
            # whoever counts (BudgetedSampler). Requests cut off in flight delivered nothing.
            setattr(exc, "partial", partial)  # noqa: B010  # CancelledError declares none
        raise exc

    @property
    def watches(self) -> bool:
        """This sampler can stream samples and stop them early (:meth:`sample_watched`)."""
        return True

    async def sample_watched(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
        watcher: Callable[[int], TokenWatcher],
    ) -> SampleBatch:
        """Draw samples ``start_index .. start_index + n - 1``, each streamed in its own request.

        ``watcher(index)`` gives each sample a fresh :class:`~ttscale.protocols.TokenWatcher`;
        its stream is closed at the first token the watcher stops at. The watcher sees tokens
        only when the server streams logprobs, so ``params`` should ask for them.
        """
        check_draw(n, start_index)
        params = merge_params(self.config.params, params)
        request_input = self._request_input(prompt)
        draw = _Draw()
        started = time.perf_counter()
        try:
            outcomes = await asyncio.gather(
                *(
                    self._stream(draw, request_input, params, index, watcher(index))
                    for index in range(start_index, start_index + n)
                ),
                return_exceptions=True,
            )
            failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failure is not None:
                raise failure
        except BaseException as exc:
            self._raise_with_partial(exc, self._batch(draw, time.perf_counter() - started))
        return self._batch(draw, time.perf_counter() - started)

    def _batch(self, draw: _Draw, wall_time: float) -> SampleBatch:
        candidates = tuple(draw.candidates[index] for index in sorted(draw.candidates))
        return SampleBatch(candidates, draw.usage.replace(wall_time_s=wall_time))

    def _request_input(self, prompt: Prompt) -> str | list[dict[str, Any]]:
        if self.config.endpoint == "chat":
            if isinstance(prompt, str):
                return [{"role": "user", "content": prompt}]
            return [dict(message) for message in prompt]
        if not isinstance(prompt, str):
            raise ConfigError(
                "the completions endpoint takes a text prompt; chat messages need endpoint='chat' "
                "(or apply the model's chat template first)"
            )
        return prompt

    def _plan(self, slot: _Slot) -> list[_Slot]:
        """Split a run of indices into requests: chunks of max_n, or singles without n."""
        if self.n_supported is False or slot.count <= 1:
            return [_Slot(slot.start + i, 1) for i in range(slot.count)]
        size = min(self.config.max_n, max_choices(self._endpoint_key[0]) or self.config.max_n)
        return [
            _Slot(start, min(size, slot.start + slot.count - start))
            for start in range(slot.start, slot.start + slot.count, size)
        ]

    async def _fill(
        self,
        draw: _Draw,
        request_input: str | list[dict[str, Any]],
        params: SamplingParams,
        slot: _Slot,
    ) -> None:
        if slot.count == 0:
            return
        requests = self._plan(slot)
        outcomes = await asyncio.gather(
            *(self._request(draw, request_input, params, part) for part in requests),
            return_exceptions=True,
        )
        missing: list[int] = []
        failure: BaseException | None = None
        for part, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, _UnreadableResponse):
                missing.extend(range(part.start, part.start + part.count))
            elif isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                missing.extend(outcome)
        if failure is not None:
            # Every request of this round has finished (gather waited), so what arrived is in
            # draw and is carried by the error.
            raise failure
        if not missing:
            return
        if draw.redraws >= self.config.max_redraws:
            raise SamplerError(
                f"{len(missing)} sample(s) still missing after {draw.redraws} re-draws "
                f"(indices {missing[:8]}{'...' if len(missing) > 8 else ''})"
            )
        draw.redraws += 1
        log.info("re-drawing %d sample(s) a response did not deliver", len(missing))
        await asyncio.gather(
            *(self._fill(draw, request_input, params, _Slot(index, 1)) for index in missing)
        )

    # -- one request ----------------------------------------------------------------------------

    async def _request(
        self,
        draw: _Draw,
        request_input: str | list[dict[str, Any]],
        params: SamplingParams,
        slot: _Slot,
    ) -> list[int]:
        """Send one request for ``slot``; record what came back; return the indices not filled."""
        semaphore = await self._gate.admit(request_input, params.max_tokens, slot.count)
        # A draw's own base seed (a request's ``seed``) wins over the sampler's.
        base = params.seed if params.seed is not None else self.base_seed
        seed = derive_seed(base, slot.start)
        async with semaphore:
            check_admission()  # after the wait: what was true when the draw was asked may not be
            started = time.perf_counter()
            try:
                response = await self._create(request_input, params, slot.count, seed)
            except Exception as exc:
                draw.usage = draw.usage + Usage(failed_requests=1)
                return self._failed(exc, slot)
            latency = time.perf_counter() - started
        self._learn_prompt(request_input, response)
        return self._record(draw, response, params, slot, seed, latency)

    def _failed(self, exc: Exception, slot: _Slot) -> list[int]:
        """What a failed request means: the indices to draw again when it rejected ``n``;
        otherwise the error to raise, in ttscale's terms."""
        if isinstance(exc, (ValueError, TypeError)):  # a 200 whose body is not a completion
            log.warning("unreadable response from the model server: %s", exc)
            raise _UnreadableResponse(str(exc)) from exc
        import openai  # loaded already: the error came from it or from its classes

        rejected = isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError))
        if rejected and slot.count > 1 and self.config.n_mode == "auto":
            assert isinstance(exc, openai.APIStatusError)
            if names_n(exc.body, exc.message):
                self._learn_n(False, "rejected n > 1")
                return list(range(slot.start, slot.start + slot.count))
        if isinstance(exc, openai.APIStatusError):
            raise _upstream(exc) from exc
        if isinstance(exc, openai.APIConnectionError):
            raise UpstreamError(f"could not reach the model server: {exc}") from exc
        raise exc

    # -- one streamed sample ------------------------------------------------------------------

    async def _stream(
        self,
        draw: _Draw,
        request_input: str | list[dict[str, Any]],
        params: SamplingParams,
        index: int,
        watcher: TokenWatcher,
    ) -> None:
        """Stream sample ``index``, closing the stream at the token ``watcher`` stops at."""
        semaphore = await self._gate.admit(request_input, params.max_tokens, 1)
        base = params.seed if params.seed is not None else self.base_seed
        seed = derive_seed(base, index)
        body = self._body(request_input, params, 1, seed)
        body.update(stream=True, stream_options={"include_usage": True})
        reading = StreamRead()
        async with semaphore:
            check_admission()
            started = time.perf_counter()
            shard = self._upstream.acquire()  # a stream holds its connection until it is closed
            try:
                stream = await self._open_stream(draw, shard, body)
                try:
                    await self._read_stream(draw, stream, reading, watcher)
                finally:
                    # Closing the response closes its connection (it was not read to the end),
                    # which is how a server learns to stop generating. Whatever arrived is paid
                    # for, so it is recorded however the stream ended.
                    with contextlib.suppress(Exception):
                        await stream.close()
                    self._record_stream(draw, reading, request_input, params, index, seed, started)
            finally:
                self._upstream.release(shard)

    async def _open_stream(
        self, draw: _Draw, shard: int, body: dict[str, Any]
    ) -> openai.AsyncStream[object]:
        import openai

        try:
            return await self._upstream.clients[shard].post(
                self._path,
                cast_to=object,
                body=body,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
        except openai.APIStatusError as exc:
            draw.usage = draw.usage + Usage(failed_requests=1)
            raise _upstream(exc) from exc
        except openai.APIConnectionError as exc:
            draw.usage = draw.usage + Usage(failed_requests=1)
            raise UpstreamError(f"could not reach the model server: {exc}") from exc

    async def _read_stream(
        self,
        draw: _Draw,
        stream: openai.AsyncStream[object],
        reading: StreamRead,
        watcher: TokenWatcher,
    ) -> None:
        chunks = aiter(stream)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                reading.finish_reason = reading.finish_reason or "cancelled"
                raise
            except Exception as exc:
                if reading.finish_reason is not None:
                    # The model had finished: what broke was the stream's tail ([DONE], usage).
                    # The answer is whole, and kept as the model ended it.
                    log.warning("the model server's stream broke off after its end: %s", exc)
                    return
                draw.usage = draw.usage + Usage(failed_requests=1)
                reading.finish_reason = "error"
                raise UpstreamError(f"the model server's stream broke off: {exc}") from exc
            try:
                if reading.take(chunk, self.config.endpoint, watcher):
                    return
            except TTScaleError:
                # What the chunk said (unusable logprobs) or what the watcher made of it
                # (MissingLogprobs) is its own error, not a broken stream; what arrived is kept.
                reading.finish_reason = "error"
                raise

    def _record_stream(
        self,
        draw: _Draw,
        reading: StreamRead,
        request_input: str | list[dict[str, Any]],
        params: SamplingParams,
        index: int,
        seed: int,
        started: float,
    ) -> None:
        tokens = len(reading.tokens)
        usage = reading.usage
        if usage is not None:
            prompt_tokens = usage_count(usage, "prompt_tokens")
            self._remember_prompt(request_input, prompt_tokens)
        else:
            prompt_tokens = self._prompt_tokens.get(_prompt_key(request_input), 0)
        exact = True
        if reading.tokens:
            completion = tokens  # the logprobs count every token that arrived
        elif usage is not None:
            completion = usage_count(usage, "completion_tokens")
        else:
            # A closed stream has no usage, and this one no logprobs either: servers send a token
            # a chunk, so the chunks that carried text are the best count there is.
            completion, exact = sum(1 for piece in reading.pieces if piece), False
            if reading.pieces:
                log.warning(
                    "the model server's stream carried neither usage nor logprobs; counting its "
                    "%d text chunks as %d completion tokens",
                    completion,
                    completion,
                )
        arrived_nothing = not (reading.pieces or reading.tokens or usage)
        if reading.finish_reason in ("error", "cancelled") and arrived_nothing:
            return  # nothing to keep, and nothing was paid for
        pricing = self.config.pricing
        draw.candidates[index] = Candidate(
            text="".join(reading.pieces),
            index=index,
            finish_reason=reading.finish_reason,
            completion_tokens=completion,
            tokens_exact=exact,
            seed=seed,
            model=reading.model or self.config.model,
            latency_s=time.perf_counter() - started,
            temperature=params.temperature,
            logprobs=tuple(reading.tokens) if reading.tokens else None,
            request_id=reading.request_id,
        )
        arrived = Usage(
            requests=1,
            samples=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            cost=pricing.cost(prompt_tokens, completion) if pricing else 0.0,
            cached_tokens=cached_tokens(None, usage),
        )
        draw.usage = draw.usage + arrived
        deliver(SampleBatch((draw.candidates[index],), arrived))

    def _learn_prompt(self, request_input: str | list[dict[str, Any]], response: object) -> None:
        usage = response.get("usage") if isinstance(response, dict) else None
        if usage_count(usage, "prompt_tokens"):
            self._remember_prompt(request_input, usage_count(usage, "prompt_tokens"))

    def _remember_prompt(self, request_input: str | list[dict[str, Any]], tokens: int) -> None:
        # A draw's requests share one request input: its key (JSON of the messages) is made once.
        last_input, key = self._last_prompt
        if last_input is not request_input:
            key = _prompt_key(request_input)
            self._last_prompt = (request_input, key)
        self._prompt_tokens[key] = tokens
        self._prompt_tokens.move_to_end(key)
        while len(self._prompt_tokens) > _PROMPT_MEMORY:
            self._prompt_tokens.popitem(last=False)

    async def _create(
        self,
        request_input: str | list[dict[str, Any]],
        params: SamplingParams,
        count: int,
        seed: int,
    ) -> object:
        # The body is plain JSON in the OpenAI wire format; the answer comes back as parsed JSON
        # (through the lean client, or the openai client's generic post: no response models).
        return await self._upstream.post(self._path, self._body(request_input, params, count, seed))

    @property
    def _path(self) -> str:
        return "/chat/completions" if self.config.endpoint == "chat" else "/completions"

    def _body(
        self,
        request_input: str | list[dict[str, Any]],
        params: SamplingParams,
        count: int,
        seed: int,
    ) -> dict[str, Any]:
        one_choice = knows_one_choice(self._endpoint_key[0])
        chat = self.config.endpoint == "chat"
        counting = counting_logprobs(one_choice, count, params.logprobs, chat)
        if counting is not None:
            params = params.replace(logprobs=counting)  # only to count (ttscale.samplers.usage)
        return request_body(
            self.config.model,
            request_input,
            params,
            count,
            seed,
            chat=self.config.endpoint == "chat",
        )

    def _learn_n(self, supported: bool, why: str) -> None:
        if self.n_supported is not supported:
            log.info(
                "endpoint %s (%s) %s; %s",
                self._endpoint_key[0],
                self.config.endpoint,
                why,
                "using n" if supported else "falling back to one sample per request",
            )
        self._memory.n_supported[self._endpoint_key] = supported

    def _counted(self, reported: int, counts: list[int]) -> int:
        """Logprobs count every choice's tokens exactly; some servers (llama.cpp's among them)
        report only one choice's tokens for n > 1. What was generated is what was spent. Said
        once per server at INFO: after that it is known, and only debug noise."""
        level = logging.INFO if first_correction(self._endpoint_key[0]) else logging.DEBUG
        log.log(
            level,
            "server reported %d completion tokens for %d choices whose logprobs hold %d; "
            "counting %d",
            reported,
            len(counts),
            sum(counts),
            sum(counts),
        )
        return sum(counts)

    def _logprobs_of(
        self, choice: dict[str, Any], position: int
    ) -> tuple[TokenLogprob, ...] | None:
        """The choice's token logprobs; None, said in a warning, when the server's are unusable:
        the sample and its tokens are paid for and kept, and a measure that needs its logprobs
        then fails naming what is missing rather than reading a meaningless number."""
        try:
            return choice_logprobs(choice, self.config.endpoint)
        except UpstreamError as exc:
            log.warning(
                "choice %d's logprobs are unusable, so it is kept without them: %s", position, exc
            )
            return None

    def _record(
        self,
        draw: _Draw,
        response: object,
        params: SamplingParams,
        slot: _Slot,
        seed: int,
        latency: float,
    ) -> list[int]:
        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list):
            # A body that parsed but is no completion (the client returns text for non-JSON).
            draw.usage = draw.usage + Usage(failed_requests=1)
            raise _UnreadableResponse(f"response has no choices: {str(response)[:200]!r}")
        assert isinstance(response, dict)
        by_index = choices_by_index(choices, slot.count)
        positions = sorted(by_index)  # the choices' own indices, in order
        kept = [by_index[position] for position in positions]
        texts = [choice_text(choice, self.config.endpoint) for choice in kept]
        token_lists = [
            self._logprobs_of(choice, position)
            for choice, position in zip(kept, positions, strict=True)
        ]
        usage = response.get("usage")
        reported = isinstance(usage, dict)
        prompt_tokens = usage_count(usage, "prompt_tokens")
        completion_total = usage_count(usage, "completion_tokens")
        if not reported:
            log.warning("the model server reported no usage; token counts are unknown")
        counts, exact = completion_counts(texts, token_lists, completion_total, reported)
        if learn(self._endpoint_key[0], response):  # one choice's usage: count the entries
            entries = entry_counts(kept)
            counts, exact = (entries, True) if entries is not None else (counts, exact)
            if params.logprobs is None:
                token_lists = [None] * len(kept)  # asked for only to count the tokens
        if exact and len(kept) > 1 and sum(counts) != completion_total:
            completion_total = self._counted(completion_total, counts)
        model = str(response.get("model") or self.config.model)
        request_id = response.get("id")
        named = str(request_id) if request_id is not None else None
        arrived_candidates = []
        for position, choice, text, count, tokens in zip(
            positions, kept, texts, counts, token_lists, strict=True
        ):
            candidate = Candidate(
                text=text,
                index=slot.start + position,
                finish_reason=choice.get("finish_reason"),
                completion_tokens=count,
                tokens_exact=exact,
                seed=seed,
                model=model,
                latency_s=latency,
                temperature=params.temperature,
                logprobs=tokens,
                request_id=named,
            )
            draw.candidates[candidate.index] = candidate
            arrived_candidates.append(candidate)
        pricing = self.config.pricing
        arrived = Usage(
            requests=1,
            samples=len(kept),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_total,
            cost=pricing.cost(prompt_tokens, completion_total) if pricing else 0.0,
            cached_tokens=cached_tokens(response),
        )
        draw.usage = draw.usage + arrived
        # Each response's samples, to a store that keeps them as they arrive (ttscale.store).
        deliver(SampleBatch(tuple(arrived_candidates), arrived))
        missing = [slot.start + i for i in range(slot.count) if i not in by_index]
        if slot.count > 1 and self.config.n_mode == "auto":
            self._learn_n(not missing, f"returned {len(kept)} of {slot.count} choices")
        return missing


def _prompt_key(request_input: str | list[dict[str, Any]]) -> str:
    if isinstance(request_input, str):
        return request_input
    return json.dumps(request_input, sort_keys=True, default=str)


def merge_params(defaults: SamplingParams, override: SamplingParams | None) -> SamplingParams:
    """``override``'s set fields over ``defaults``; ``extra_body`` merged key by key.

    A field left ``None`` in ``override`` means "no opinion", so it keeps the default: a strategy
    asking for temperature 0 must not also wipe the sampler's ``max_tokens``.
    """
    if override is None:
        return defaults
    changes: dict[str, Any] = {
        spec.name: getattr(override, spec.name)
        for spec in dataclasses.fields(override)
        if spec.name != "extra_body" and getattr(override, spec.name) is not None
    }
    if override.extra_body:
        changes["extra_body"] = {**defaults.extra_body, **override.extra_body}
    return defaults.replace(**changes) if changes else defaults


def _upstream(exc: openai.APIStatusError) -> UpstreamError:
    return UpstreamError(
        f"model server answered {exc.status_code}: {exc.message}",
        status_code=exc.status_code,
        body=exc.body,
    )
