"""Verifiers built from verifiers: a weighted sum, a gate and a cascade.

- :class:`WeightedSum`: ``sum(w_i * score_i)`` over verifiers that all score every candidate.
- :class:`Cascade`: stages from cheap to costly. Each stage scores only the candidates that
  survived the stages before it; a candidate survives a stage when its verdict is true (binary
  stages) or its value is at least the stage's threshold. Survivors of every stage but the last
  carry the last stage's score; a candidate dropped on the way gets ``rejected_value`` (default
  minus infinity, so it ranks below every survivor) with the stage and the reason it was dropped.
- :class:`Gate`: a two-stage cascade, e.g. unit tests first, then a reward model ranks the
  candidates that pass.

Members may be verifier objects, plain functions, registered names, or mappings ``{"name": ...,
**options}`` (how a request or a config file gives them). Named members are built as the registry
builds any verifier: a member that asks a model (the judge) gets the composed verifier's
``sampler``, and one that runs code gets the composed verifier's ``allow_code_execution`` (the
caller's setting, which a member's own options may not set). A composed verifier needs a reference
answer when a member does, and has samples drawn with the logprobs its members read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ttscale.errors import ConfigError
from ttscale.protocols import Sampler, Verifier, checked_scores
from ttscale.types import Candidate, Problem, Score, Usage
from ttscale.verifiers.base import resolve_verifier

__all__ = ["Cascade", "Gate", "WeightedSum"]


async def _checked(
    verifier: Verifier, problem: Problem, candidates: Sequence[Candidate]
) -> list[Score]:
    return checked_scores(await verifier.score(problem, candidates), candidates, verifier)


MAX_MEMBERS = 64
"""The most members a composed verifier takes: more than any useful composition, and a bound on
what one request can make a server build."""


def _check_count(members: Sequence[Any], what: str) -> None:
    if len(members) > MAX_MEMBERS:
        raise ConfigError(f"{what} takes at most {MAX_MEMBERS} members, got {len(members)}")


def build_member(
    spec: Any, where: str, *, sampler: Sampler | None, allow_code_execution: bool
) -> Verifier:
    """A member from its spec: a name or ``{"name": ..., **options}`` is built by the registry
    with the composed verifier's ``sampler`` and ``allow_code_execution``; anything else (an
    object, a function) is taken as it is."""
    named = _named(spec, where)
    if named is None:
        return resolve_verifier(spec, where)
    from ttscale.registry import build_verifier  # at call time: the registry loads us by name

    name, options = named
    return build_verifier(
        name,
        options,
        sampler=sampler,
        where=where,
        server_options={"allow_code_execution": allow_code_execution},
    )


def _named(spec: Any, where: str) -> tuple[str, dict[str, Any]] | None:
    """A registered member's name and options, or None for an object or function (pure)."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping):
        return None
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} needs a verifier 'name', got {spec!r}", param=where)
    return name, {key: value for key, value in spec.items() if key != "name"}


def check_member_requests(members: Mapping[str, Any]) -> None:
    """Each named member's ``check_request`` (what a remote request may not ask of it, such as
    a model loaded into the server), with the member's place as the field; too many members are
    refused before any is looked at."""
    from ttscale.registry import check_request

    _check_count(list(members), "a composed verifier")
    for where, spec in members.items():
        named = _named(spec, where)
        if named is not None:
            check_request(named[0], named[1], where=where, kind="verifier")


def member_specs(options: Mapping[str, Any], *fields: str) -> dict[str, Any]:
    """The member specs in a composed verifier's ``options``, by field name: ``gate`` and
    ``stages[1]`` (pure); a field that is no list of members is left to the builder."""
    found: dict[str, Any] = {}
    for field in fields:
        value = options.get(field)
        if isinstance(value, list | tuple):
            found.update({f"{field}[{i}]": spec for i, spec in enumerate(value)})
        elif value is not None:
            found[field] = value
    return found


class _Composed:
    """What every composed verifier shares: its members, how they are checked and what they need."""

    @property
    def members(self) -> list[Verifier]:
        raise NotImplementedError

    @property
    def needs_reference(self) -> bool:
        return any(getattr(member, "needs_reference", False) for member in self.members)

    @property
    def wants_logprobs(self) -> int | None:
        wanted = [getattr(member, "wants_logprobs", None) for member in self.members]
        counts = [w for w in wanted if isinstance(w, int) and not isinstance(w, bool)]
        return max(counts) if counts else None

    def preflight(self) -> None:
        preflight_members(self.members)


def preflight_members(members: Sequence[Verifier]) -> None:
    """Each member's ``preflight``: a member that will refuse to score (unit tests where code
    may not run) says so before anything is drawn, as it would alone."""
    for member in members:
        check = getattr(member, "preflight", None)
        if callable(check):
            check()


def sum_usage(scores: Sequence[Score]) -> Usage | None:
    """The usage the scores carry, summed; None when none carries any."""
    usages = [score.usage for score in scores if score.usage is not None]
    return Usage.total(usages) if usages else None


class WeightedSum(_Composed):
    """``sum(weight * score)``; the members run concurrently. Verdicts are not combined."""

    def __init__(
        self,
        verifiers: Sequence[Any],
        weights: Sequence[float] | None = None,
        *,
        sampler: Sampler | None = None,
        allow_code_execution: bool = False,
    ) -> None:
        if not verifiers:
            raise ConfigError("WeightedSum needs at least one verifier")
        _check_count(verifiers, "WeightedSum")
        self.verifiers = [
            build_member(
                v,
                f"verifiers[{i}]",
                sampler=sampler,
                allow_code_execution=allow_code_execution,
            )
            for i, v in enumerate(verifiers)
        ]
        self.weights = (
            [float(w) for w in weights] if weights is not None else [1.0] * len(verifiers)
        )
        if len(self.weights) != len(self.verifiers):
            raise ConfigError(
                f"WeightedSum got {len(self.weights)} weights for {len(self.verifiers)} verifiers"
            )

    @property
    def members(self) -> list[Verifier]:
        return self.verifiers

    @staticmethod
    def check_request(options: Mapping[str, Any]) -> None:
        check_member_requests(member_specs(options, "verifiers"))

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        per_verifier = await asyncio.gather(
            *(_checked(verifier, problem, candidates) for verifier in self.verifiers)
        )
        combined = []
        for position in range(len(candidates)):
            parts = [scores[position] for scores in per_verifier]
            pairs = list(zip(self.weights, parts, strict=True))
            # A part with no score (None) leaves the sum without one too.
            known = all(part.value is not None for part in parts)
            value = sum(weight * part.number for weight, part in pairs) if known else None
            reason = " + ".join(f"{weight:g}*{part.number:.4g}" for weight, part in pairs)
            details = {"components": [part.value for part in parts], "weights": self.weights}
            combined.append(Score(value, reason=reason, details=details, usage=sum_usage(parts)))
        return combined


class Cascade(_Composed):
    """Stages from cheap to costly; see the module docstring.

    ``thresholds[i]`` applies to stage i's scores that carry no verdict (``None`` keeps every
    such candidate). There is one threshold per stage but the last.
    """

    def __init__(
        self,
        stages: Sequence[Any],
        thresholds: Sequence[float | None] | None = None,
        rejected_value: float = -math.inf,
        *,
        sampler: Sampler | None = None,
        allow_code_execution: bool = False,
    ) -> None:
        if len(stages) < 2:
            raise ConfigError("a cascade needs at least two stages")
        _check_count(stages, "a cascade")
        self.stages = [
            build_member(
                stage, f"stages[{i}]", sampler=sampler, allow_code_execution=allow_code_execution
            )
            for i, stage in enumerate(stages)
        ]
        self.thresholds = (
            list(thresholds) if thresholds is not None else [None] * (len(self.stages) - 1)
        )
        if len(self.thresholds) != len(self.stages) - 1:
            raise ConfigError("a cascade takes one threshold per stage but the last")
        self.rejected_value = rejected_value

    @staticmethod
    def _survives(score: Score, threshold: float | None) -> bool:
        if score.verdict is not None:
            return score.verdict
        return threshold is None or score.number >= threshold  # no score (NaN) does not pass

    @property
    def members(self) -> list[Verifier]:
        return self.stages

    @staticmethod
    def check_request(options: Mapping[str, Any]) -> None:
        check_member_requests(member_specs(options, "stages"))

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        results: list[Score | None] = [None] * len(candidates)
        history: list[list[dict[str, Any]]] = [[] for _ in candidates]
        spent: list[list[Score]] = [[] for _ in candidates]  # every stage's score, for usage
        alive = list(range(len(candidates)))
        for stage_index, stage in enumerate(self.stages):
            if not alive:
                break
            scores = await _checked(stage, problem, [candidates[i] for i in alive])
            last = stage_index == len(self.stages) - 1
            survivors = []
            for position, score in zip(alive, scores, strict=True):
                history[position].append(
                    {"stage": stage_index, "value": score.value, "verdict": score.verdict}
                )
                spent[position].append(score)
                usage = sum_usage(spent[position])
                if last:
                    details = {**score.details, "stages": history[position]}
                    results[position] = Score(
                        score.value, score.verdict, score.reason, details, usage=usage
                    )
                elif self._survives(score, self.thresholds[stage_index]):
                    survivors.append(position)
                else:
                    reason = f"dropped at stage {stage_index}: {score.reason}".rstrip(": ")
                    results[position] = Score(
                        self.rejected_value,
                        verdict=False,
                        reason=reason,
                        details={"stages": history[position], "dropped_at": stage_index},
                        usage=usage,
                    )
            alive = survivors
        return [score for score in results if score is not None]


class Gate(Cascade):
    """Only candidates that pass ``gate`` (verdict true, or value >= threshold) are ``scorer``-ed.

    The survivors' verdict is the gate's (true), their value the scorer's.
    """

    def __init__(
        self,
        gate: Any,
        scorer: Any,
        threshold: float | None = None,
        rejected_value: float = -math.inf,
        *,
        sampler: Sampler | None = None,
        allow_code_execution: bool = False,
    ) -> None:
        members = [
            build_member(spec, where, sampler=sampler, allow_code_execution=allow_code_execution)
            for spec, where in ((gate, "gate"), (scorer, "scorer"))
        ]
        super().__init__(members, [threshold], rejected_value)

    @staticmethod
    def check_request(options: Mapping[str, Any]) -> None:
        check_member_requests(member_specs(options, "gate", "scorer"))

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        scores = await super().score(problem, candidates)
        return [
            dataclasses.replace(s, verdict=True) if "dropped_at" not in s.details else s
            for s in scores
        ]
