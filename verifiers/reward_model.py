"""Reward models: a local ``transformers`` classifier, or one served over HTTP.

Both score ``(prompt, candidate)`` pairs with a sequence classifier. A model with one output
(a reward head) scores with its raw logit; a model with several labels scores with the
probability of ``positive_label`` (default: the last label).

:class:`LocalRewardModel` loads a path with ``AutoModelForSequenceClassification`` (or takes a
model object and its tokenizer), runs batches of ``batch_size`` in a worker thread under
``torch.inference_mode`` on ``device`` ("cpu", "cuda", ... or "auto"). Needs the ``[hf]`` extra.

:class:`ServedRewardModel` posts to a vLLM-style classify endpoint::

    POST {base_url}/classify   {"model": "<name>", "input": ["<text>", ...]}
    200                        {"data": [{"index": 0, "probs": [p0, p1, ...]}, ...]}

(vLLM's ``/classify`` for ``--task classify`` models.) A reply with one number per input (a reward
head) is read from ``probs[0]``; with several, ``probs[positive_label]``. Each text is the prompt
and the candidate put together by ``template``.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ttscale.errors import ConfigError, VerifierError
from ttscale.registry import build_config
from ttscale.types import Candidate, Problem, Score, Usage
from ttscale.verifiers.base import LoopBound

__all__ = [
    "LocalRewardModel",
    "LocalRewardModelConfig",
    "ServedRewardModel",
    "ServedRewardModelConfig",
    "format_pair",
    "reward_from_outputs",
    "reward_model",
]

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{prompt}\n\n{candidate}"


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
        if config is None:
            config = build_config(LocalRewardModelConfig, options, "LocalRewardModel")
        elif options:
            raise ConfigError("pass either a config or keyword options to LocalRewardModel")
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
    path: str = "/classify"
    api_key: str | None = field(default=None, repr=False)
    batch_size: int = 32
    concurrency: int = 4
    timeout_s: float = 60.0
    positive_label: int = -1
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ConfigError("ServedRewardModel needs a base_url")
        if self.batch_size < 1 or self.concurrency < 1 or self.timeout_s <= 0:
            raise ConfigError("batch_size and concurrency must be >= 1, timeout_s > 0")


class ServedRewardModel:
    """A classifier behind a vLLM-style ``/classify`` endpoint. See the module docstring."""

    def __init__(self, config: ServedRewardModelConfig | None = None, **options: Any) -> None:
        if config is None:
            config = build_config(ServedRewardModelConfig, options, "ServedRewardModel")
        elif options:
            raise ConfigError("pass either a config or keyword options to ServedRewardModel")
        self.config = config
        self.url = config.base_url.rstrip("/") + "/" + config.path.lstrip("/")
        self._bound = LoopBound(config.concurrency)

    def _post(self, texts: list[str]) -> tuple[list[list[float]], Usage | None]:
        # Blocking stdlib HTTP, run in a worker thread: no HTTP client dependency for one POST.
        body = json.dumps({"model": self.config.model, "input": texts}).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
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
            rows = [[float(value) for value in item["probs"]] for item in reply["data"]]
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
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VerifierError(f"reward model at {self.url} sent an unreadable reply") from exc
        if len(rows) != len(texts):
            raise VerifierError(f"reward model returned {len(rows)} results for {len(texts)}")
        return rows, usage

    async def _classify(self, texts: list[str]) -> tuple[list[list[float]], Usage | None]:
        async with self._bound.semaphore():
            return await asyncio.to_thread(self._post, texts)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        texts = [format_pair(problem, candidate, self.config.template) for candidate in candidates]
        size = self.config.batch_size
        batches = await asyncio.gather(
            *(self._classify(texts[i : i + size]) for i in range(0, len(texts), size))
        )
        scores: list[Score] = []
        for rows, usage in batches:
            for position, row in enumerate(rows):
                scores.append(
                    Score(
                        reward_from_outputs(row, self.config.positive_label, are_logits=False),
                        details={"probs": row},
                        # The request's usage rides on its first score (see Score.usage).
                        usage=usage if position == 0 else None,
                    )
                )
        return scores


def reward_model(**options: Any) -> LocalRewardModel | ServedRewardModel:
    """A served reward model when ``base_url`` is given, else a local one."""
    if "base_url" in options:
        return ServedRewardModel(**options)
    return LocalRewardModel(**options)
