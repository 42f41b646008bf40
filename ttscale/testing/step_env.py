"""A step environment for the loopback server: scripted reasoning trees and a scripted PRM whose
noise is known, so that the expected accuracy of best-of-N, beam search, DVTS and particle
filtering is computed exactly (:func:`expected_accuracy`).

Per prompt (:class:`StepTask`) a solution has ``depth`` steps separated by blank lines: reasoning
steps ``Step i: right <nonce>.`` or ``Step i: wrong <nonce>.``, then the answer step ``Check
<nonce>: the answer is <value>.``. A step drawn after a correct prefix is correct with probability
``p_step``; after a wrong one it is wrong; the answer is the task's when every step was correct,
else one of ``wrong_answers`` wrong values. The model continues the partial answer it is sent
(the trailing assistant message): with ``stop: ["\\n\\n"]`` the server cuts after one step,
without it the whole rest is written (a best-of-N sample). Which steps are drawn follows from the
request's seed, choice, prompt and partial answer, so a seeded run is repeated exactly.

The scripted PRM (:meth:`StepEnvironment.prm`, a plain step-scorer function, and ``/v1/pooling``
on the server for :class:`~ttscale.verifiers.process_reward_models.ServedStepScorer`) knows each
prefix's correctness and reports ``high`` or ``low``, flipped with probability
``false_negative`` for a correct prefix and ``false_positive`` for a wrong one, independently per
prefix (a hash of the prefix's text, whose nonces make every drawn step distinct).

The exact expectations assume the strategies' published rules with ``last`` aggregation, ties
broken uniformly at random, and (particle filtering) multinomial resampling of
``softmax(logit(r) / T)``: dynamic programmes over the number of correct paths kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ttscale.errors import ConfigError
from ttscale.seeds import derive_seed
from ttscale.testing.fakes import prompt_text
from ttscale.testing.server import LoopbackServer, ScriptRequest, count_tokens
from ttscale.types import Candidate, Problem, Prompt, SampleBatch, SamplingParams, Usage

__all__ = [
    "StepEnvironment",
    "StepSampler",
    "StepTask",
    "expected_accuracy",
    "expected_beam_search",
    "expected_best_of_n",
    "expected_dvts",
    "expected_particle_filtering",
]

_WRONG = re.compile(r"\bwrong\b")
_ANSWER = re.compile(r"the answer is (-?\d+)\.")
STEP_TAG = "<extra_0>"


@dataclass(frozen=True)
class StepTask:
    """One prompt's scripted tree and PRM noise (see the module docstring)."""

    prompt: str
    answer: int
    depth: int = 3
    p_step: float = 0.75
    false_positive: float = 0.2
    false_negative: float = 0.2
    wrong_answers: int = 3

    def __post_init__(self) -> None:
        if self.depth < 1 or self.wrong_answers < 1:
            raise ConfigError("a step task needs depth >= 1 and wrong_answers >= 1")
        for name in ("p_step", "false_positive", "false_negative"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def _uniform(*parts: object) -> float:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def _steps(partial: str) -> list[str]:
    return [step.strip() for step in partial.split("\n\n") if step.strip()]


@dataclass(frozen=True)
class StepEnvironment:
    """Scripted tasks, their model and their PRM; :meth:`server` serves them over HTTP."""

    tasks: tuple[StepTask, ...]
    high: float = 0.9
    low: float = 0.1
    _by_prompt: Mapping[str, StepTask] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "_by_prompt", {task.prompt: task for task in self.tasks})
        if len(self._by_prompt) != len(self.tasks):
            raise ConfigError("step tasks need distinct prompts")
        if not 0 < self.low < self.high < 1:
            raise ConfigError("need 0 < low < high < 1")

    @classmethod
    def uniform(cls, count: int, **task: Any) -> StepEnvironment:
        """``count`` tasks alike but for their prompt and answer."""
        tasks = tuple(
            StepTask(prompt=f"Task {i}: find the value.", answer=10 + i, **task)
            for i in range(count)
        )
        return cls(tasks)

    @property
    def by_prompt(self) -> Mapping[str, StepTask]:
        return self._by_prompt

    def problems(self) -> list[Problem]:
        return [
            Problem(id=f"step-{i}", prompt=task.prompt, answer=str(task.answer))
            for i, task in enumerate(self.tasks)
        ]

    def task(self, prompt: str) -> StepTask:
        found = self.by_prompt.get(prompt)
        if found is None:
            raise ConfigError(f"no step task has the prompt {prompt[:80]!r}")
        return found

    # -- the model ------------------------------------------------------------------------------

    def continue_answer(self, task: StepTask, partial: str, rng: random.Random) -> str:
        """The rest of a solution after ``partial`` (every remaining step)."""
        done = _steps(partial)
        correct = self.prefix_correct(task, done)
        written = []
        for position in range(len(done) + 1, task.depth + 1):
            correct = correct and rng.random() < task.p_step
            nonce = f"{rng.getrandbits(32):08x}"
            if position < task.depth:
                written.append(f"Step {position}: {'right' if correct else 'wrong'} {nonce}.")
                continue
            value = task.answer if correct else task.answer + rng.randint(1, task.wrong_answers)
            written.append(f"Check {nonce}: the answer is {value}.")
        return "\n\n".join(written)

    def responder(self, request: ScriptRequest) -> str:
        """The loopback server's responder: continue the trailing assistant message."""
        task = self.task(request.prompt)
        messages = request.body.get("messages") or []
        partial = ""
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            partial = str(messages[-1].get("content") or "")
        seed = request.seed if request.seed is not None else request.index
        rng = random.Random(f"{seed}|{request.choice}|{task.prompt}|{partial}")
        return self.continue_answer(task, partial, rng)

    # -- the PRM --------------------------------------------------------------------------------

    def prefix_correct(self, task: StepTask, steps: Sequence[str]) -> bool:
        for step in steps:
            if _WRONG.search(step):
                return False
            found = _ANSWER.search(step)
            if found is not None and int(found.group(1)) != task.answer:
                return False
        return True

    def step_score(self, task: StepTask, steps: Sequence[str]) -> float:
        """The scripted PRM's score of the last of ``steps``."""
        label = self.prefix_correct(task, steps)
        rate = task.false_negative if label else task.false_positive
        flipped = _uniform("prm", task.prompt, "\n\n".join(steps)) < rate
        return self.high if label != flipped else self.low

    def prm(self, problem: Problem, steps: Sequence[str]) -> list[float]:
        """A step scorer function: every step's scripted score."""
        task = self.task(problem.prompt or "")
        clean = [str(step).strip() for step in steps]
        return [self.step_score(task, clean[: end + 1]) for end in range(len(clean))]

    def pooling(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``/v1/pooling`` as vLLM answers for a step-tag PRM: per input, ``[p_wrong, p_right]``
        at each step tag. ``input`` is a string or a list of strings."""
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ConfigError("input must be a string or a list of strings")
        data = []
        for index, text in enumerate(texts):
            task = next((t for t in self.tasks if text.startswith(t.prompt)), None)
            if task is None:
                raise ConfigError(f"input {index} starts with no known task prompt")
            steps = [s.strip() for s in text[len(task.prompt) :].split(STEP_TAG)[:-1]]
            scores = [self.step_score(task, steps[: i + 1]) for i in range(len(steps))]
            data.append({"index": index, "data": [[1 - score, score] for score in scores]})
        tokens = sum(count_tokens(text) for text in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "usage": usage}

    def sampler(self, base_seed: int = 0) -> StepSampler:
        """The environment's model in process (see :class:`StepSampler`)."""
        return StepSampler(self, base_seed)

    def server(self, **overrides: Any) -> LoopbackServer:
        """A loopback server answering with this environment (and its PRM at ``/v1/pooling``);
        ``overrides`` are :class:`ServerConfig` fields (``answers`` replaces the model)."""
        settings: dict[str, Any] = {"answers": self.responder, "routes": {}}
        settings.update(overrides)
        settings["routes"] = {"/v1/pooling": self.pooling, **settings["routes"]}
        return LoopbackServer(**settings)


class StepSampler:
    """The environment's model in process: the draws the loopback server would make for the same
    requests (seed derived as the OpenAI sampler derives it, ``stop`` and ``max_tokens`` applied
    alike), without HTTP, for tests that run thousands of searches. Prefer :meth:`StepEnvironment.
    server` with the real sampler when the test is about the requests themselves."""

    def __init__(self, env: StepEnvironment, base_seed: int = 0) -> None:
        self.env = env
        self.base_seed = base_seed
        self.requests = 0

    async def sample(
        self,
        prompt: Prompt,
        n: int,
        params: SamplingParams | None = None,
        *,
        start_index: int = 0,
    ) -> SampleBatch:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        params = params or SamplingParams()
        seed = derive_seed(self.base_seed if params.seed is None else params.seed, start_index)
        prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + 4 for m in messages)
        candidates = []
        for choice in range(n):
            request = ScriptRequest(
                prompt=prompt_text(messages),
                index=start_index + choice,
                seed=seed,
                choice=choice,
                temperature=params.temperature,
                body={"messages": list(messages)},
            )
            text = self.env.responder(request)
            for stop in params.stop or ():
                if stop in text:
                    text = text[: text.index(stop)]
            candidates.append(
                Candidate(
                    text=text,
                    index=start_index + choice,
                    finish_reason="stop",
                    completion_tokens=count_tokens(text),
                    seed=seed,
                )
            )
        self.requests += 1
        completion = sum(c.completion_tokens for c in candidates)
        usage = Usage(
            requests=1, samples=n, prompt_tokens=prompt_tokens, completion_tokens=completion
        )
        return SampleBatch(tuple(candidates), usage)


# -- exact expectations -------------------------------------------------------------------------


def _binomial(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]


def _hypergeometric(population: int, successes: int, draws: int) -> list[float]:
    """P(j successes) for j = 0..draws when ``draws`` are taken without replacement."""
    total = math.comb(population, draws)
    return [
        math.comb(successes, j) * math.comb(population - successes, draws - j) / total
        for j in range(draws + 1)
    ]


def _children(task: StepTask, eligible: int, total: int) -> Iterator[tuple[float, int, int, int]]:
    """Outcomes of drawing ``total`` next steps, ``eligible`` of them after correct prefixes:
    (probability, correct children X, correct-and-high A, high H)."""
    for x, px in enumerate(_binomial(eligible, task.p_step)):
        if px == 0:
            continue
        for a, pa in enumerate(_binomial(x, 1 - task.false_negative)):
            if pa == 0:
                continue
            for c, pc in enumerate(_binomial(total - x, task.false_positive)):
                if pc:
                    yield px * pa * pc, x, a, a + c


def _pick_correct(total: int, x: int, a: int, h: int) -> float:
    """P(the best of ``total`` children, ties at random, is correct)."""
    return a / h if h else (x - a) / (total - h)


def _keep(total: int, x: int, a: int, h: int, keep: int) -> list[float]:
    """P(j correct among the ``keep`` best of ``total`` children), ties at random."""
    out = [0.0] * (keep + 1)
    if h >= keep:
        for j, p in enumerate(_hypergeometric(h, a, keep)):
            out[j] += p
        return out
    for j, p in enumerate(_hypergeometric(total - h, x - a, keep - h)):
        out[a + j] += p
    return out


def expected_best_of_n(task: StepTask, n: int) -> float:
    """Best-of-N by the final step's PRM score (ties to the first drawn)."""
    q = task.p_step**task.depth
    high = q * (1 - task.false_negative) + (1 - q) * task.false_positive
    none_high = (1 - high) ** n
    right_if_high = q * (1 - task.false_negative) / high if high else 0.0
    right_if_low = q * task.false_negative / (1 - high) if high < 1 else 0.0
    return (1 - none_high) * right_if_high + none_high * right_if_low


def expected_beam_search(task: StepTask, n: int, m: int) -> float:
    """Beam search with N paths a round, the N/M best kept and expanded M ways."""
    keep = n // m
    state = {1: 1.0}  # correct parents -> probability; the root is correct
    for depth in range(1, task.depth + 1):
        per_parent = n if depth == 1 else m
        accuracy = 0.0
        following: dict[int, float] = {}
        for correct, p_state in state.items():
            for p, x, a, h in _children(task, correct * per_parent, n):
                if depth == task.depth:
                    accuracy += p_state * p * _pick_correct(n, x, a, h)
                    continue
                for j, pj in enumerate(_keep(n, x, a, h, keep)):
                    if pj:
                        following[j] = following.get(j, 0.0) + p_state * p * pj
        state = following
    return accuracy


def expected_dvts(task: StepTask, n: int, m: int) -> float:
    """DVTS: N/M independent subtrees each keeping its best of M children per round."""
    subtrees = n // m
    p_right = 1.0  # P(the subtree's head is correct)
    for _depth in range(1, task.depth):
        step = sum(p * _pick_correct(m, x, a, h) for p, x, a, h in _children(task, m, m))
        p_right *= step
    right_high = right_low = high = 0.0
    for p, x, a, h in _children(task, m, m):
        if h:
            high += p_right * p
            right_high += p_right * p * a / h
        else:
            right_low += p_right * p * (x - a) / m
    for p, _x, _a, h in _children(task, 0, m):  # a wrong head: every child wrong
        if h:
            high += (1 - p_right) * p
    none_high = (1 - high) ** subtrees
    return (1 - none_high) * (right_high / high if high else 0.0) + none_high * (
        right_low / (1 - high) if high < 1 else 0.0
    )


def expected_particle_filtering(
    task: StepTask, n: int, temperature: float = 1.0, high: float = 0.9, low: float = 0.1
) -> float:
    """Particle filtering, multinomial resampling of softmax(logit(r) / T); argmax at the end."""
    return _pf(task, n, _weights(high, low, temperature))


def _weights(high: float, low: float, temperature: float) -> tuple[float, float]:
    return (
        math.exp(math.log(high / (1 - high)) / temperature),
        math.exp(math.log(low / (1 - low)) / temperature),
    )


def _pf(task: StepTask, n: int, weights: tuple[float, float]) -> float:
    w_high, w_low = weights
    state = {n: 1.0}  # correct particles -> probability
    accuracy = 0.0
    for depth in range(1, task.depth + 1):
        following: dict[int, float] = {}
        for correct, p_state in state.items():
            for p, x, a, h in _children(task, correct, n):
                if depth == task.depth:
                    accuracy += p_state * p * _pick_correct(n, x, a, h)
                    continue
                pi = (a * w_high + (x - a) * w_low) / (h * w_high + (n - h) * w_low)
                for j, pj in enumerate(_binomial(n, pi)):
                    if pj:
                        following[j] = following.get(j, 0.0) + p_state * p * pj
        state = following
    return accuracy


@lru_cache(maxsize=1024)
def _exact(
    strategy: str, task: StepTask, n: int, m: int, temperature: float, high: float, low: float
) -> float:
    if strategy == "best_of_n":
        return expected_best_of_n(task, n)
    if strategy == "beam_search":
        return expected_beam_search(task, n, m)
    if strategy == "dvts":
        return expected_dvts(task, n, m)
    if strategy == "particle_filtering":
        return expected_particle_filtering(task, n, temperature, high, low)
    raise ConfigError(
        f"no exact expectation for {strategy!r}; known: best_of_n, beam_search, dvts, "
        "particle_filtering"
    )


def expected_accuracy(
    env: StepEnvironment, strategy: str, n: int, m: int = 4, temperature: float = 1.0
) -> float:
    """The expected accuracy over ``env``'s tasks of ``strategy`` with N = ``n`` (M = ``m``).

    Tasks alike but for their prompt and answer share one computation.
    """
    total = 0.0
    for task in env.tasks:
        shape = dataclasses.replace(task, prompt="", answer=0)
        total += _exact(strategy, shape, n, m, temperature, env.high, env.low)
    return total / len(env.tasks)
