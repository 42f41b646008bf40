"""What a request asks for, resolved: settings from a body, headers, a preset and a default.

A request chooses what to do through a namespaced body field, headers, a preset or the server's
default, in that order of precedence (the first that sets a key wins, key by key)::

    client.chat.completions.create(
        model="qwen", messages=[...], n=2,
        extra_body={"ttscale": {"strategy": "majority", "samples": 16,
                                "budget": {"tokens": 20000}}},
    )

The ``ttscale`` keys are ``strategy``, ``samples`` (how many to draw), ``k`` (how many answers to
return; the client's ``n`` means the same), ``verifier`` (a name, or ``{"name": ..., options}``),
``budget`` (limits: ``samples``, ``requests``, ``tokens``, ``completion_tokens``, ``cost``,
``seconds``) and the strategy's own parameters (``weighted``, ``alpha``, ``margin``, ...), which the
strategy checks by name. As headers: ``X-TTScale-Strategy: majority``, ``X-TTScale-Samples: 16``,
``X-TTScale-Budget: {"tokens": 20000}``, ``X-TTScale-Weighted: true``.

Sampling settings can be pinned: ``"sampling": {"temperature": 0.7, "top_k": 40}`` (in a preset:
``sampling = { temperature = 0.7 }``; on the command line ``sampling.temperature=0.7``) sets them
for every sample the request draws, over what the client sent. So a preset can scale a client
that always sends ``temperature: 0`` (lm-eval does), whose greedy samples would all be alike.

The precedence, in full (this is the one place it is applied; the proxy and the wrapped client
call :func:`resolve_settings` and :func:`pin_sampling`):

1. Settings come from the body's ``ttscale`` object, then ``X-TTScale-*`` headers, then the preset
   named as the model, then the server's default (``--default-strategy``); the first that sets a
   key wins, key by key (``sampling`` and ``budget`` key by key within them too). A strategy's
   own parameters go with it (:meth:`ScaleSettings.over`).
2. The resolved ``sampling`` pins then win over the request's own fields of the same name
   (``temperature``, ``top_p``; others such as ``top_k`` or ``min_p`` over the extra fields sent
   upstream). Fields no pin names are sent as the client gave them.

A scaled request whose samples are then greedy (temperature 0 or top_k 1) while it draws more
than one gets a warning (:func:`greedy_warning`) in its response's ``ttscale.warnings`` and the
log.

:func:`resolve_plan` is the one place a server's caps (:class:`RequestLimits`) meet the resolved
settings. Caps hold on every draw too, whatever a strategy asks for: :meth:`RequestLimits.caps` is
enforced by the budget (:class:`~ttscale.budget.DrawCaps`). Everything here is pure; errors are
:class:`~ttscale.errors.RequestError` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ttscale.budget import parse_limits
from ttscale.errors import RequestError
from ttscale.spend import DrawCaps, whole_number
from ttscale.types import SamplingParams

__all__ = [
    "SAMPLING_KEYS",
    "RequestLimits",
    "ScaleSettings",
    "greedy_warning",
    "header_name",
    "parse_settings",
    "pin_sampling",
    "resolve_plan",
    "resolve_settings",
    "settings_from_headers",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# Sampling settings a preset or request may pin, with the range each must be in.
SAMPLING_KEYS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "temperature": (0.0, 2.0),
        "top_p": (1e-9, 1.0),
        "top_k": (-1, 1 << 20),
        "min_p": (0.0, 1.0),
        "presence_penalty": (-2.0, 2.0),
        "frequency_penalty": (-2.0, 2.0),
        "repetition_penalty": (1e-9, 10.0),
    }
)


@dataclass(frozen=True)
class ScaleSettings:
    """What a request, a preset or a server default asks for; ``None`` means "not said here".

    ``model`` is the upstream model (presets name one); ``options`` are the strategy's own
    parameters; ``sampling`` the sampling settings pinned over the request's own
    (:data:`SAMPLING_KEYS`).
    """

    strategy: str | None = None
    samples: int | None = None
    k: int | None = None
    verifier: str | None = None
    verifier_options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    budget: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    model: str | None = None
    sampling: Mapping[str, float] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        for name in ("verifier_options", "budget", "options", "sampling"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def empty(self) -> bool:
        return self == ScaleSettings()

    def over(self, base: ScaleSettings) -> ScaleSettings:
        """These settings, with what they leave unsaid taken from ``base``.

        Options belong to their strategy, as verifier options to their verifier: settings that
        name another strategy than ``base`` bring only their own options (a request asking for
        ``majority`` over a default graph must not inherit the graph's ``spec``). Options said
        where no strategy is named apply to whichever strategy runs, so they are merged.
        """
        same_verifier = self.verifier is None or self.verifier == base.verifier
        same_strategy = (
            self.strategy is None or base.strategy is None or self.strategy == base.strategy
        )
        return ScaleSettings(
            strategy=self.strategy if self.strategy is not None else base.strategy,
            samples=self.samples if self.samples is not None else base.samples,
            k=self.k if self.k is not None else base.k,
            verifier=self.verifier if self.verifier is not None else base.verifier,
            # A different verifier brings its own options; the same one refines the base's.
            verifier_options=(
                {**base.verifier_options, **self.verifier_options}
                if same_verifier
                else self.verifier_options
            ),
            budget={**base.budget, **self.budget},
            options={**base.options, **self.options} if same_strategy else self.options,
            model=self.model if self.model is not None else base.model,
            sampling={**base.sampling, **self.sampling},
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in ("strategy", "samples", "k", "verifier", "model"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.verifier_options:
            data["verifier"] = {"name": self.verifier, **self.verifier_options}
        if self.budget:
            data["budget"] = dict(self.budget)
        if self.sampling:
            data["sampling"] = dict(self.sampling)
        data.update(self.options)
        return data


def _verifier(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str) and value:
        return {"verifier": value}
    if isinstance(value, Mapping) and isinstance(value.get("name"), str) and value["name"]:
        options = {k: v for k, v in value.items() if k != "name"}
        return {"verifier": value["name"], "verifier_options": options}
    raise RequestError(f"{param} must be a verifier name or an object with a 'name'", param=param)


def _sampling(value: Any, param: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise RequestError(
            f"{param} must be an object of sampling settings ({', '.join(SAMPLING_KEYS)})",
            param=param,
        )
    pins: dict[str, float] = {}
    for key, number in value.items():
        where = f"{param}.{key}"
        if key not in SAMPLING_KEYS:
            raise RequestError(
                f"{where}: not a sampling setting that can be pinned; known: "
                + ", ".join(SAMPLING_KEYS),
                param=where,
            )
        low, high = SAMPLING_KEYS[key]
        is_number = isinstance(number, int | float) and not isinstance(number, bool)
        if not is_number or not low <= number <= high or (key == "top_k" and number != int(number)):
            kind = "an integer" if key == "top_k" else "a number"
            raise RequestError(
                f"{where} must be {kind} in [{low}, {high}], got {number!r}", param=where
            )
        pins[key] = int(number) if key == "top_k" else float(number)
    return pins


def pin_sampling(params: SamplingParams, pins: Mapping[str, float]) -> SamplingParams:
    """``params`` with the pinned sampling settings over the request's own; pure.

    ``temperature`` and ``top_p`` are fields of :class:`SamplingParams`; the others go over the
    extra fields sent upstream.
    """
    if not pins:
        return params
    fields = {key: value for key, value in pins.items() if key in ("temperature", "top_p")}
    extra = {key: value for key, value in pins.items() if key not in fields}
    return params.replace(**fields, extra_body={**params.extra_body, **extra})


def greedy_warning(params: SamplingParams, samples: int, strategy: str) -> str | None:
    """A warning for a request drawing several samples greedily (temperature 0 or top_k 1),
    which come out near identical, so that ``strategy`` has nothing to choose between; else None.
    """
    top_k = params.extra_body.get("top_k")
    greedy = params.temperature == 0 or (isinstance(top_k, int | float) and top_k == 1)
    if samples < 2 or not greedy:
        return None
    why = "temperature 0" if params.temperature == 0 else "top_k 1"
    return (
        f"the {samples} samples of {strategy!r} are drawn greedily ({why}), so they are near "
        "identical and the strategy has little to choose between; pin a temperature in the "
        "preset or the server default (sampling.temperature=0.7) or send one"
    )


def _name(value: Any, param: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError(f"{param} must be a {what} name", param=param)
    return value


def parse_settings(raw: Any, where: str = "ttscale", *, allow_model: bool = False) -> ScaleSettings:
    """Settings from a ``ttscale`` object (a request body's, or a preset's).

    Keys other than the common ones are the strategy's own parameters; the strategy rejects those
    it does not know when it is built (:func:`ttscale.registry.build_strategy`).
    """
    if raw is None:
        return ScaleSettings()
    if not isinstance(raw, Mapping):
        raise RequestError(f"{where} must be an object, got {type(raw).__name__}", param=where)
    values: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in raw.items():
        param = f"{where}.{key}"
        if not isinstance(key, str) or not key:
            raise RequestError(f"{where} has an empty or non-string key", param=where)
        if key == "strategy":
            values["strategy"] = _name(value, param, "strategy")
        elif key in ("samples", "k"):
            values[key] = whole_number(value, param, error=RequestError)
        elif key == "verifier":
            values.update(_verifier(value, param))
        elif key == "budget":
            values["budget"] = parse_limits(value, param)
        elif key == "sampling":
            values["sampling"] = _sampling(value, param)
        elif key == "model":
            if not allow_model:
                raise RequestError(
                    f"{param}: the upstream model is the request's own 'model' field", param=param
                )
            values["model"] = _name(value, param, "model")
        else:
            options[key] = value
    return ScaleSettings(**values, options=options)


_HEADER_PREFIX = "x-ttscale-"


def _header_value(text: str, name: str) -> Any:
    # Header values are strings; JSON reads numbers, booleans and objects, anything else is text.
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise RequestError(f"header {name} is nested too deeply", param=name) from exc
    except ValueError:
        return text


def header_name(key: str) -> str:
    """The header that sets settings key ``key`` (``max_depth``: ``X-TTScale-Max-Depth``)."""
    return "X-TTScale-" + "-".join(part.capitalize() for part in key.split("_"))


def settings_from_headers(headers: Mapping[str, str]) -> ScaleSettings:
    """Settings from ``X-TTScale-*`` headers (``X-TTScale-Max-Depth`` is option ``max_depth``)."""
    raw: dict[str, Any] = {}
    for name, text in headers.items():
        lowered = name.lower()
        if not lowered.startswith(_HEADER_PREFIX) or lowered == _HEADER_PREFIX:
            continue
        key = lowered[len(_HEADER_PREFIX) :].replace("-", "_")
        value = _header_value(text.strip(), header_name(key))
        if key in ("strategy", "verifier") and not isinstance(value, Mapping):
            value = text.strip()  # a name, even one JSON would read as a number
        raw[key] = value
    return parse_settings(raw, "X-TTScale headers") if raw else ScaleSettings()


def resolve_settings(
    body: ScaleSettings,
    headers: ScaleSettings | None = None,
    preset: ScaleSettings | None = None,
    default: ScaleSettings | None = None,
) -> ScaleSettings:
    """The settings a request runs with: body, then headers, then preset, then the default.

    The first that sets a key wins, key by key (see :meth:`ScaleSettings.over`); pure.
    """
    settings = body
    for base in (headers, preset, default):
        if base is not None:
            settings = settings.over(base)
    return settings


@dataclass(frozen=True)
class RequestLimits:
    """Per-request caps a server puts on what one request may ask for.

    ``max_samples`` caps ``samples`` and every draw of the request together, ``max_tokens`` a
    sample's ``max_tokens`` in every draw (and is the default when the request sets none;
    ``None``: no cap, the upstream's default), ``max_k`` the answers returned.
    """

    max_samples: int = 64
    max_tokens: int | None = 4096
    max_k: int = 16

    def __post_init__(self) -> None:
        for name in ("max_samples", "max_tokens", "max_k"):
            if getattr(self, name) is not None:
                whole_number(getattr(self, name), name)

    def caps(self) -> DrawCaps:
        """The caps every draw of a request meets at the budget."""
        return DrawCaps(samples=self.max_samples, max_tokens=self.max_tokens)


def resolve_plan(settings: ScaleSettings, n: int | None, limits: RequestLimits) -> tuple[int, int]:
    """The samples to draw and answers to return (``n``: the client's), checked against
    ``limits``; pure."""
    k = settings.k
    if n is not None and k is not None and n != k:
        raise RequestError(
            f"n ({n}) and ttscale.k ({k}) disagree; they mean the same thing", param="n"
        )
    k = k if k is not None else (n or 1)
    default = max(k, min(8, limits.max_samples))
    samples = settings.samples if settings.samples is not None else default
    if samples > limits.max_samples:
        raise RequestError(
            f"ttscale.samples {samples} is over this server's cap of {limits.max_samples}",
            param="ttscale.samples",
        )
    if k > limits.max_k:
        raise RequestError(f"k {k} is over this server's cap of {limits.max_k}", param="n")
    if k > samples:
        raise RequestError(
            f"k ({k}) answers need at least as many samples, got {samples}", param="ttscale.samples"
        )
    return samples, k
