"""Step scorers (process rewards) for step-level search: served PRM, LLM judge, confidence.

Every scorer here is a :class:`~ttscale.verifiers.process_reward.StepScorer`: ``score_steps(problem,
steps)`` returns one score per step, step ``i`` judged with ``steps[:i]`` before it. A plain
function ``(problem, steps) -> scores`` (sync or async) is accepted wherever a scorer is
(:func:`as_step_scorer`). Search strategies score the newest step of a path and keep the scores
of the steps before it, so a scorer is asked about each prefix once.

A plain function has the same shape as a verifier function ``(problem, candidates) -> scores``
(which scores each prefix of a solution as a candidate), so where either is accepted
(:class:`~ttscale.verifiers.process_reward.ProcessRewardVerifier`) :func:`resolve_step_scorer`
tells them apart by the second parameter (:func:`function_kind`: annotated with ``Candidate`` or
named ``candidates``/``batch``: a verifier; annotated with ``str`` or named ``steps``: a step
scorer) and refuses a function it cannot place, naming both wrappers, rather than guess.

- :class:`ServedStepScorer`: a process reward model behind vLLM's ``/pooling`` endpoint (e.g.
  Qwen2.5-Math-PRM-7B served with ``--task reward``): the steps are joined with the model's step
  tag (``<extra_0>``) and the reply holds one row per step tag, ``[p_wrong, p_right]`` (or
  logits), read at ``positive_label``::

      POST {base_url}/pooling  {"model": "<name>", "input": ["<prompt> s1<extra_0>s2<extra_0>"]}
      200                      {"data": [{"index": 0, "data": [[0.1, 0.9], [0.7, 0.3]]}]}

  A search scores a round's new paths in one request (:meth:`ServedStepScorer.score_batch`).

- :class:`JudgeStepScorer`: any OpenAI-compatible model as a PRM: for each step it asks whether
  the newest step is correct and reads P("yes") from the first yes/no token's logprobs
  (:class:`~ttscale.verifiers.judge.LLMJudge` in ``yes_no`` mode, the embedded model included).
  Its calls go through the sampler it is given, so a budgeted sampler counts them; what they
  cost is summed in :attr:`JudgeStepScorer.usage`.
- :class:`ConfidenceStepScorer`: an intrinsic reward, the model's own confidence in the step
  (self-certainty, or DeepConf's group confidence; :mod:`ttscale.confidence`), read from the
  step's token logprobs (a step drawn by a search carries them on its ``logprobs`` attribute; the
  search asks for them when a scorer says ``needs_logprobs``). Its scores are not probabilities
  (``probabilities = False``): particle filtering then uses them as log-weights as they are.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ttscale.confidence import MEASURES, ConfidenceSettings, measure
from ttscale.errors import ConfigError, VerifierError
from ttscale.protocols import Sampler, Verifier
from ttscale.registry import resolve_config
from ttscale.types import Candidate, Problem, SamplingParams, Usage
from ttscale.verifiers.base import LoopBound
from ttscale.verifiers.judge import LLMJudge
from ttscale.verifiers.process_reward import PrefixStepScorer, StepScorer, checked_step_scores
from ttscale.verifiers.reward_model import reward_from_outputs

__all__ = [
    "JUDGE_STEP_TEMPLATE",
    "ConfidenceStepScorer",
    "JudgeStepScorer",
    "ServedStepScorer",
    "ServedStepScorerConfig",
    "as_step_scorer",
    "batch_step_rows",
    "function_kind",
    "resolve_step_scorer",
    "step_rows",
]

JUDGE_STEP_TEMPLATE = (
    "Here is a problem and a partial solution, one step per paragraph.\n"
    "Problem:\n{prompt}\n\nSolution so far:\n{candidate}\n\n"
    "Is the last step correct? Answer with Yes or No only."
)
"""The judge's question about the newest step (``{prompt}``: the problem; ``{candidate}``: the
steps so far, the newest last). No reference answer: a PRM judges the reasoning, not the key."""


class _FunctionStepScorer:
    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    async def score_steps(self, problem: Problem, steps: Sequence[str]) -> list[float]:
        raw = self.function(problem, steps)
        values = await raw if inspect.isawaitable(raw) else raw
        name = getattr(self.function, "__qualname__", repr(self.function))
        return checked_step_scores(values, len(steps), f"the step scorer {name}")


def as_step_scorer(obj: StepScorer | Callable[..., Any]) -> StepScorer:
    """``obj`` if it is a step scorer, else a function ``(problem, steps) -> scores`` wrapped."""
    if isinstance(obj, StepScorer):
        return obj
    if callable(obj):
        return _FunctionStepScorer(obj)
    raise ConfigError(f"{obj!r} is neither a step scorer nor a function (problem, steps)")


FunctionKind = Literal["steps", "candidates"]
_STEP_NAMES = frozenset({"steps", "step_texts", "step"})
_CANDIDATE_NAMES = frozenset({"candidates", "candidate", "batch", "prefixes"})


def function_kind(function: Callable[..., Any]) -> FunctionKind | None:
    """What a plain function's second parameter takes (pure): ``"candidates"`` (annotated with
    ``Candidate``, or named ``candidates``, ``candidate``, ``batch``, ``prefixes``), ``"steps"``
    (annotated with ``str``, or named ``steps``, ``step``, ``step_texts``), else None."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    if len(parameters) < 2:
        return None
    second = parameters[1]
    annotation = second.annotation
    text = "" if annotation is inspect.Parameter.empty else str(annotation)
    if "Candidate" in text:
        return "candidates"
    if re.search(r"\bstr\b", text):
        return "steps"
    if second.name in _CANDIDATE_NAMES:
        return "candidates"
    if second.name in _STEP_NAMES:
        return "steps"
    return None


def resolve_step_scorer(obj: Any, where: str) -> StepScorer:
    """The step scorer ``obj`` means where a step scorer or a verifier is accepted: a step scorer
    as it is; a verifier (an object or a registered name) scoring each prefix of the solution
    (:class:`~ttscale.verifiers.process_reward.PrefixStepScorer`); a plain function by
    :func:`function_kind`. A function it cannot place is a :class:`ConfigError` naming
    ``where`` and both wrappers."""
    if isinstance(obj, StepScorer):
        return obj
    if isinstance(obj, str | Verifier):
        return PrefixStepScorer(obj)
    if not callable(obj):
        raise ConfigError(
            f"{where}: {obj!r} is neither a step scorer, a verifier (or its name) nor a function"
        )
    kind = function_kind(obj)
    if kind == "steps":
        return _FunctionStepScorer(obj)
    if kind == "candidates":
        return PrefixStepScorer(obj)
    name = getattr(obj, "__qualname__", repr(obj))
    raise ConfigError(
        f"{where}: cannot tell whether the function {name} scores steps or candidates; wrap it: "
        f"as_step_scorer({name}) for (problem, steps: list[str]) -> one score per step, or "
        f"as_verifier({name}) for (problem, candidates) -> one score per candidate (each prefix "
        "of the solution)"
    )


# -- served PRM ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedStepScorerConfig:
    """Settings of a :class:`ServedStepScorer` (defaults: Qwen2.5-Math-PRM's step tag)."""

    base_url: str
    model: str = ""
    path: str = "/pooling"
    step_tag: str = "<extra_0>"
    template: str = "{prompt}\n\n{steps}"
    positive_label: int = -1
    logits: bool | None = None  # None: a row summing to 1 is read as probabilities
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    concurrency: int = 4

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ConfigError("ServedStepScorer needs a base_url")
        if "{steps}" not in self.template:
            raise ConfigError("ServedStepScorer's template needs a {steps} field")
        if self.timeout_s <= 0 or self.concurrency < 1:
            raise ConfigError("timeout_s must be > 0 and concurrency >= 1")


def step_rows(reply: Any, steps: int) -> list[list[float]]:
    """The per-step output rows of a ``/pooling`` reply for one input (pure)."""
    return batch_step_rows(reply, [steps])[0]


def batch_step_rows(reply: Any, counts: Sequence[int]) -> list[list[list[float]]]:
    """The per-step output rows of a ``/pooling`` reply for each input, in input order (pure).

    ``counts`` are the inputs' step counts. A result with more rows than steps (a server that
    pools every token) is read at its last rows; fewer is an error naming both counts.
    """
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list) or len(data) != len(counts):
        raise VerifierError(f"the /pooling reply needs a 'data' list with {len(counts)} results")
    ordered: list[Any] = [None] * len(counts)
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(counts) or ordered[index]:
            raise VerifierError(f"the /pooling result {position} has a bad index {index!r}")
        ordered[index] = item
    return [_rows(item, steps) for item, steps in zip(ordered, counts, strict=True)]


def _rows(item: dict[str, Any], steps: int) -> list[list[float]]:
    rows = item.get("data")
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise VerifierError("the /pooling result's 'data' is not a list of rows per step")
    if len(rows) < steps:
        raise VerifierError(f"the /pooling result has {len(rows)} step rows for {steps} steps")
    out = []
    for row in rows[len(rows) - steps :]:
        if not row or any(isinstance(v, bool) or not isinstance(v, int | float) for v in row):
            raise VerifierError(f"a /pooling step row is not a list of numbers: {row!r:.100}")
        out.append([float(v) for v in row])
    return out


class ServedStepScorer:
    """A process reward model behind vLLM's ``/pooling`` endpoint; see the module docstring."""

    def __init__(self, config: ServedStepScorerConfig | None = None, **options: Any) -> None:
        config = resolve_config(ServedStepScorerConfig, config, options, "ServedStepScorer")
        self.config = config
        self.url = config.base_url.rstrip("/") + "/" + config.path.lstrip("/")
        self.usage = Usage()
        self._bound = LoopBound(config.concurrency)

    def text(self, problem: Problem, steps: Sequence[str]) -> str:
        """What the PRM reads: the prompt, then every step followed by the step tag."""
        prompt = problem.prompt if problem.prompt is not None else _last_user(problem)
        joined = "".join(step + self.config.step_tag for step in steps)
        return self.config.template.replace("{prompt}", prompt).replace("{steps}", joined)

    def _post(self, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise VerifierError(f"PRM at {self.url} answered {exc.code}: {detail}") from exc
        except (OSError, ValueError) as exc:
            raise VerifierError(f"PRM at {self.url} failed: {exc!r}") from exc

    async def score_steps(self, problem: Problem, steps: Sequence[str]) -> list[float]:
        return (await self.score_batch(problem, [steps]))[0]

    async def score_batch(
        self, problem: Problem, paths: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """Every step's score of several paths, in one request (a search scores a round so)."""
        if not paths:
            return []
        texts = [self.text(problem, steps) for steps in paths]
        body = {"model": self.config.model, "input": texts}
        async with self._bound.semaphore():
            reply = await asyncio.to_thread(self._post, body)
        reported = reply.get("usage") if isinstance(reply, dict) else None
        if isinstance(reported, dict):
            prompt_tokens = int(reported.get("prompt_tokens") or 0)
            self.usage = self.usage + Usage(requests=1, prompt_tokens=prompt_tokens)
        rows = batch_step_rows(reply, [len(steps) for steps in paths])
        return [[self._reward(row) for row in path] for path in rows]

    def _reward(self, row: list[float]) -> float:
        logits = self.config.logits
        if logits is None:
            logits = not (all(0 <= v <= 1 for v in row) and math.isclose(sum(row), 1, abs_tol=1e-3))
        return reward_from_outputs(row, self.config.positive_label, are_logits=logits)


def _last_user(problem: Problem) -> str:
    users = [m for m in problem.messages or () if m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else ""


# -- LLM judge as PRM ---------------------------------------------------------------------------


class JudgeStepScorer:
    """An LLM judge asked "is the last step correct?" per step; see the module docstring.

    Answers are remembered per (problem, steps so far), so a search that asks about a path again
    after adding a step pays for the new step only.
    """

    def __init__(
        self,
        sampler: Sampler | Callable[..., Any],
        *,
        template: str = JUDGE_STEP_TEMPLATE,
        params: SamplingParams | None = None,
        joiner: str = "\n\n",
        concurrency: int = 8,
    ) -> None:
        options: dict[str, Any] = {"mode": "yes_no", "template": template}
        options["concurrency"] = concurrency
        options["params"] = params or SamplingParams(temperature=0.0, max_tokens=4, logprobs=5)
        self.judge = LLMJudge(sampler, **options)
        self.joiner = joiner
        self.usage = Usage()
        self.unjudged = 0
        self._known: dict[tuple[str, tuple[str, ...]], float] = {}

    async def _one(self, problem: Problem, steps: tuple[str, ...]) -> float:
        key = (problem.id, steps)
        if key not in self._known:
            candidate = Candidate(text=self.joiner.join(steps), index=len(steps) - 1)
            (score,) = await self.judge.score(problem, [candidate])
            if score.usage is not None:
                self.usage = self.usage + score.usage
            if score.details.get("unjudged"):
                self.unjudged += 1
                return score.number  # not remembered: a later call may have budget for it
            self._known[key] = score.number
        return self._known[key]

    async def score_steps(self, problem: Problem, steps: Sequence[str]) -> list[float]:
        prefixes = [tuple(steps[: end + 1]) for end in range(len(steps))]
        return list(await asyncio.gather(*(self._one(problem, p) for p in prefixes)))


# -- intrinsic confidence -----------------------------------------------------------------------


class ConfidenceStepScorer:
    """The model's confidence in each step, from the step's own token logprobs.

    ``measure`` is a :data:`ttscale.confidence.MEASURES` name: ``self_certainty`` (the default,
    as its_hub's self-certainty weights), ``lowest_group`` (DeepConf's group confidence over
    ``window`` tokens), ``mean``, ``tail``, ``bottom`` or ``mean_logprob``. A step without
    logprobs raises :class:`~ttscale.confidence.MissingLogprobs` naming what to ask for.
    """

    needs_logprobs = True
    probabilities = False

    def __init__(
        self, measure: str = "self_certainty", settings: ConfidenceSettings | None = None
    ) -> None:
        if measure not in MEASURES:
            raise ConfigError(
                f"unknown confidence measure {measure!r}; known: {', '.join(MEASURES)}"
            )
        self.measure = measure
        self.settings = settings or ConfidenceSettings()

    async def score_steps(self, problem: Problem, steps: Sequence[str]) -> list[float]:
        scores = []
        for position, step in enumerate(steps):
            logprobs = getattr(step, "logprobs", None)
            if not logprobs:
                raise VerifierError(
                    f"step {position + 1} has no token logprobs: the confidence reward needs "
                    "steps drawn with logprobs (SamplingParams(logprobs=5))"
                )
            scores.append(float(measure(self.measure, logprobs, self.settings)))
        return scores
