"""Reward models: a local ``transformers`` classifier, or one served over HTTP.

Both score ``(prompt, candidate)`` pairs with a sequence classifier. A model with one output
(a reward head) scores with its raw logit; a model with several labels scores with the
probability of ``positive_label`` (default: the last label).

:class:`LocalRewardModel` loads a path with ``AutoModelForSequenceClassification`` (or takes a
model object and its tokenizer), runs batches of ``batch_size`` in a worker thread under
``torch.inference_mode`` on ``device`` ("cpu", "cuda", ... or "auto"). Needs the ``[hf]`` extra.

:class:`ServedRewardModel` posts to one of vLLM's pooling endpoints, chosen by ``api``:

- ``classify`` (``--task classify`` / ``--runner pooling`` classifiers)::

      POST {base_url}/classify  {"model": "<name>", "input": ["<text>", ...]}
      200                       {"data": [{"index": 0, "probs": [p0, p1, ...]}, ...]}

  One probability (a reward head) is the reward; with several, ``probs[positive_label]``.
- ``pooling`` (reward models such as ``internlm2-1_8b-reward``, process reward models)::

      POST {base_url}/pooling   {"model": "<name>", "input": ["<text>", ...]}
      200                       {"data": [{"index": 0, "data": [...]}, ...]}

  ``data`` is one row of outputs, or one row per token or step (then the last row, the whole
  sequence's, is read). One number is the reward; several are label probabilities, read at
  ``positive_label``, or logits, softmaxed first: ``pooling_logits`` says which (by default a
  row that is a probability distribution is read as one, and any other softmaxed).
- ``score`` (cross-encoders that score a pair)::

      POST {base_url}/score     {"model": "<name>", "text_1": "<prompt>", "text_2": ["<cand>", ...]}
      200                       {"data": [{"index": 0, "score": s}, ...]}

  The score is the reward; ``template`` is not used, the pair is the prompt and the candidate.

For ``classify`` and ``pooling`` each text is the prompt and the candidate put together by
``template``. Replies are matched to inputs by ``index``; a ``usage`` in the reply is counted.

:func:`reward_model` (registered as ``reward_model``) builds the served one when given a
``base_url`` and the local one otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ttscale.errors import ConfigError, VerifierError
from ttscale.registry import resolve_config
from ttscale.types import Candidate, Problem, Score, Usage
from ttscale.verifiers.base import LoopBound

__all__ = [
    "LocalRewardModel",
    "LocalRewardModelConfig",
    "RewardApi",
    "ServedRewardModel",
    "ServedRewardModelConfig",
    "format_pair",
    "reward_from_outputs",
    "reward_model",
    "rewards_from_reply",
]

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{prompt}\n\n{candidate}"

RewardApi = Literal["classify", "pooling", "score"]
_APIS = ("classify", "pooling", "score")


def check_template(template: Any, fields: tuple[str, ...] = ("prompt", "candidate")) -> None:
    """Raise a ConfigError naming ``template`` unless it formats with ``fields`` alone (pure)."""
    try:
        if not isinstance(template, str):
            raise TypeError(f"a string, got {type(template).__name__}")
        template.format(**dict.fromkeys(fields, ""))
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"template must be a string using only {', '.join('{' + f + '}' for f in fields)}: "
            f"{type(exc).__name__} {exc}",
            param="template",
        ) from exc


def format_pair(problem: Problem, candidate: Candidate, template: str) -> str:
    """The text a reward model reads for one candidate (pure)."""
    if problem.prompt is not None:
        prompt = problem.prompt
    else:
        prompt = "\n".join(str(message.get("content", "")) for message in problem.messages or ())
    return template.format(prompt=prompt, candidate=candidate.text)


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(value - top) for value in values]
    total = sum(exps)
    return [value / total for value in exps]


def reward_from_outputs(
    outputs: Sequence[float], positive_label: int, *, are_logits: bool
) -> float:
    """One reward from a classifier's outputs for one input (pure).

    One output is a reward head's score, used as it is. Several are a distribution over labels
    (softmaxed first when ``are_logits``); the reward is the positive label's probability.
    """
    if not outputs:
        raise VerifierError("the reward model returned no outputs for an input")
    if len(outputs) == 1:
        return float(outputs[0])
    if not -len(outputs) <= positive_label < len(outputs):
        raise VerifierError(
            f"positive_label {positive_label} is out of range for {len(outputs)} labels"
        )
    probabilities = _softmax(outputs) if are_logits else list(outputs)
    return float(probabilities[positive_label])


@dataclass(frozen=True)
class LocalRewardModelConfig:
    """Settings of a :class:`LocalRewardModel`. ``model`` is a path or a loaded model object."""

    model: Any
    tokenizer: Any = None
    device: str = "auto"
    batch_size: int = 8
    max_length: int = 2048
    positive_label: int = -1
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if self.model is None or (isinstance(self.model, str) and not self.model):
            raise ConfigError("LocalRewardModel needs a model path or a model object")
        if self.batch_size < 1 or self.max_length < 1:
            raise ConfigError("batch_size and max_length must be >= 1")


class LocalRewardModel:
    """A ``transformers`` sequence classifier used as a reward model. See the module docstring."""

    def __init__(self, config: LocalRewardModelConfig | None = None, **options: Any) -> None:
        config = resolve_config(LocalRewardModelConfig, config, options, "LocalRewardModel")
        self.config = config
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise ConfigError(
                "LocalRewardModel needs transformers and torch: pip install 'ttscale[hf]'"
            ) from exc
        self._torch = torch
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        if isinstance(config.model, str):
            model = transformers.AutoModelForSequenceClassification.from_pretrained(config.model)
            tokenizer = config.tokenizer or transformers.AutoTokenizer.from_pretrained(config.model)
        else:
            model, tokenizer = config.model, config.tokenizer
            if tokenizer is None:
                raise ConfigError(
                    "a LocalRewardModel given a model object also needs its tokenizer"
                )
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        if getattr(self.tokenizer, "pad_token", "x") is None:
            # Decoder-only classifiers (GPT-2 style) ship without a pad token; any token works
            # because the attention mask hides it and the classifier reads the last real one.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        # One forward pass at a time: the model is shared and torch already uses every core.
        self._bound = LoopBound(1)

    def _forward(self, texts: list[str]) -> list[list[float]]:
        outputs: list[list[float]] = []
        for start in range(0, len(texts), self.config.batch_size):
            batch = texts[start : start + self.config.batch_size]
            encoded = self.tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
            ).to(self.device)
            with self._torch.inference_mode():
                logits = self.model(**encoded).logits
            outputs.extend(logits.float().cpu().tolist())
        return outputs

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        if not candidates:
            return []
        texts = [format_pair(problem, candidate, self.config.template) for candidate in candidates]
        async with self._bound.semaphore():
            outputs = await asyncio.to_thread(self._forward, texts)
        return [
            Score(
                reward_from_outputs(row, self.config.positive_label, are_logits=True),
                details={"outputs": row},
            )
            for row in outputs
        ]


@dataclass(frozen=True)
class ServedRewardModelConfig:
    """Settings of a :class:`ServedRewardModel` (see the module docstring for the format)."""

    base_url: str
    model: str = ""
    api: RewardApi = "classify"
    path: str | None = None  # default: "/" + api
    api_key: str | None = field(default=None, repr=False)
    batch_size: int = 32
    concurrency: int = 4
    timeout_s: float = 60.0
    positive_label: int = -1
    template: str = DEFAULT_TEMPLATE
    pooling_logits: bool | None = None

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ConfigError("ServedRewardModel needs a base_url")
        if self.batch_size < 1 or self.concurrency < 1 or self.timeout_s <= 0:
            raise ConfigError("batch_size and concurrency must be >= 1, timeout_s > 0")
        if self.api not in _APIS:
            raise ConfigError(f"api must be one of {', '.join(_APIS)}, got {self.api!r}")


def _is_distribution(values: Sequence[float]) -> bool:
    return all(0.0 <= value <= 1.0 for value in values) and math.isclose(
        sum(values), 1.0, abs_tol=1e-3
    )


def _floats(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise VerifierError(f"{where} is not a non-empty list of numbers: {str(value)[:100]}")
    if any(isinstance(item, bool) or not isinstance(item, int | float) for item in value):
        raise VerifierError(f"{where} is not a list of numbers: {str(value)[:100]}")
    return [float(item) for item in value]


def rewards_from_reply(
    reply: Any,
    api: RewardApi,
    count: int,
    positive_label: int = -1,
    *,
    pooling_logits: bool | None = None,
) -> list[tuple[float, list[float]]]:
    """Each input's reward and the outputs it was read from, from a server's reply (pure).

    ``reply`` is the decoded JSON of a ``classify``, ``pooling`` or ``score`` answer for
    ``count`` inputs (see the module docstring); entries are put in input order by ``index``.
    ``pooling_logits`` says whether several ``pooling`` outputs are logits; None decides per
    row (a probability distribution is read as it is, anything else is softmaxed).
    """
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list):
        raise VerifierError(f"the {api} reply has no 'data' list")
    if len(data) != count:
        raise VerifierError(f"the {api} reply has {len(data)} results for {count} inputs")
    ordered: list[Any] = [None] * count
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or ordered[index] is not None:
            raise VerifierError(f"the {api} reply's result {position} has a bad index {index!r}")
        ordered[index] = item
    results: list[tuple[float, list[float]]] = []
    for index, item in enumerate(ordered):
        where = f"the {api} reply's result {index}"
        if api == "score":
            value = item.get("score")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise VerifierError(f"{where} has no numeric 'score'")
            results.append((float(value), [float(value)]))
            continue
        if api == "classify":
            row = _floats(item.get("probs"), f"{where}'s probs")
            results.append((reward_from_outputs(row, positive_label, are_logits=False), row))
            continue
        outputs = item.get("data")
        if isinstance(outputs, str):
            raise VerifierError(f"{where} is encoded ({outputs[:20]}...); ask for floats")
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], list):
            outputs = outputs[-1]  # per token or step: the last is the whole sequence's
        row = _floats(outputs, f"{where}'s data")
        logits = not _is_distribution(row) if pooling_logits is None else pooling_logits
        reward = reward_from_outputs(row, positive_label, are_logits=logits)
        results.append((reward, row))
    return results


class ServedRewardModel:
    """A reward model behind vLLM's ``/classify``, ``/pooling`` or ``/score``; see the module."""

    def __init__(self, config: ServedRewardModelConfig | None = None, **options: Any) -> None:
        config = resolve_config(ServedRewardModelConfig, config, options, "ServedRewardModel")
        self.config = config
        path = config.path if config.path is not None else "/" + config.api
        self.url = config.base_url.rstrip("/") + "/" + path.lstrip("/")
        self._bound = LoopBound(config.concurrency)

    def _body(self, problem: Problem, candidates: Sequence[Candidate]) -> dict[str, Any]:
        if self.config.api == "score":
            prompt = format_pair(problem, Candidate(text="", index=0), "{prompt}")
            return {
                "model": self.config.model,
                "text_1": prompt,
                "text_2": [candidate.text for candidate in candidates],
            }
        texts = [format_pair(problem, candidate, self.config.template) for candidate in candidates]
        return {"model": self.config.model, "input": texts}

    def _post(
        self, body: dict[str, Any], count: int
    ) -> tuple[list[tuple[float, list[float]]], Usage | None]:
        # Blocking stdlib HTTP, run in a worker thread: no HTTP client dependency for one POST.
        encoded = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(self.url, data=encoded, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise VerifierError(
                f"reward model at {self.url} answered {exc.code}: {detail}"
            ) from exc
        except OSError as exc:
            raise VerifierError(f"reward model at {self.url} failed: {exc!r}") from exc
        try:
            reply = json.loads(payload)
            reported = reply.get("usage") or {}
            usage = (
                Usage(
                    requests=1,
                    prompt_tokens=int(reported.get("prompt_tokens", 0)),
                    completion_tokens=int(reported.get("completion_tokens", 0) or 0),
                )
                if reported
                else None
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise VerifierError(f"reward model at {self.url} sent an unreadable reply") from exc
        try:
            results = rewards_from_reply(
                reply,
                self.config.api,
                count,
                self.config.positive_label,
                pooling_logits=self.config.pooling_logits,
            )
        except VerifierError as exc:
            raise VerifierError(f"reward model at {self.url}: {exc}") from exc
        return results, usage

    async def _ask(
        self, body: dict[str, Any], count: int
    ) -> tuple[list[tuple[float, list[float]]], Usage | None]:
        async with self._bound.semaphore():
            return await asyncio.to_thread(self._post, body, count)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        size = self.config.batch_size
        parts = [candidates[i : i + size] for i in range(0, len(candidates), size)]
        batches = await asyncio.gather(
            *(self._ask(self._body(problem, part), len(part)) for part in parts)
        )
        key = "probs" if self.config.api == "classify" else "outputs"
        scores: list[Score] = []
        for results, usage in batches:
            for position, (reward, row) in enumerate(results):
                scores.append(
                    Score(
                        reward,
                        details={key: row},
                        # The request's usage rides on its first score (see Score.usage).
                        usage=usage if position == 0 else None,
                    )
                )
        return scores


class _RewardModelFactory:
    """``reward_model``: a served reward model when ``base_url`` is given, else a local one."""

    def __call__(self, **options: Any) -> LocalRewardModel | ServedRewardModel:
        if "base_url" in options:
            return ServedRewardModel(**options)
        return LocalRewardModel(**options)

    @staticmethod
    def check_request(options: Mapping[str, Any]) -> None:
        """Refuse what a remote request may not ask for: a model loaded into the server (from its
        files, or downloaded from the Hub); a served one (``base_url``) is loaded elsewhere."""
        if "base_url" not in options:
            raise ConfigError(
                "a request may not load a reward model into the server (from its files or the "
                "Hub); give a served one's base_url, or name the model in a preset",
                param="model",
            )


reward_model = _RewardModelFactory()
