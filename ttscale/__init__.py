"""ttscale: turn extra inference compute into better LLM answers.

The pieces: samplers draw candidates (:class:`OpenAISampler`), strategies turn them into answers,
verifiers score them, and the budget tracker counts what it all cost. Every extension point is a
small Protocol (:class:`Sampler`, :class:`Strategy`, :class:`Verifier`); built-ins register by
entry point (:mod:`ttscale.registry`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ttscale.budget import (
        BudgetLimitReached,
        StopCondition,
        max_completion_tokens,
        max_cost,
        max_flops,
        max_requests,
        max_samples,
        max_time,
        max_tokens,
        stop_when,
    )
    from ttscale.cache import CachedSampler, SampleCache
    from ttscale.errors import (
        BudgetExhausted,
        ConfigError,
        DataError,
        RequestError,
        SamplerError,
        SandboxRefused,
        TTScaleError,
        UnknownNameError,
        UpstreamError,
        VerifierError,
    )
    from ttscale.portal import Portal, default_portal
    from ttscale.protocols import (
        Sampler,
        Strategy,
        Verifier,
        as_sampler,
        as_strategy,
        as_verifier,
    )
    from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
    from ttscale.samplers.pool import EndpointsDown, PoolConfig, PoolEndpoint, PoolSampler
    from ttscale.scale_function import Scaled, scale
    from ttscale.seeds import derive_seed
    from ttscale.sync import SyncSampler, SyncStrategy, SyncVerifier
    from ttscale.types import (
        Candidate,
        Pricing,
        Problem,
        Prompt,
        Result,
        SampleBatch,
        SamplingParams,
        Score,
        TokenLogprob,
        TraceEvent,
        Usage,
    )
    from ttscale.wrap import wrap

# Where each public name lives. Nothing is imported until a name is first used (``import ttscale``
# stays cheap: ``openai``, ``numpy``, ``httpx2`` and ``rich`` load with the parts that need them).
# To export a name, add it here, to the TYPE_CHECKING imports above (for type checkers) and to
# ``__all__``.
_LAZY: dict[str, str] = {
    "BudgetLimitReached": "ttscale.budget",
    "StopCondition": "ttscale.budget",
    "max_completion_tokens": "ttscale.budget",
    "max_cost": "ttscale.budget",
    "max_flops": "ttscale.budget",
    "max_requests": "ttscale.budget",
    "max_samples": "ttscale.budget",
    "max_time": "ttscale.budget",
    "max_tokens": "ttscale.budget",
    "stop_when": "ttscale.budget",
    "CachedSampler": "ttscale.cache",
    "SampleCache": "ttscale.cache",
    "BudgetExhausted": "ttscale.errors",
    "ConfigError": "ttscale.errors",
    "DataError": "ttscale.errors",
    "RequestError": "ttscale.errors",
    "SamplerError": "ttscale.errors",
    "SandboxRefused": "ttscale.errors",
    "TTScaleError": "ttscale.errors",
    "UnknownNameError": "ttscale.errors",
    "UpstreamError": "ttscale.errors",
    "VerifierError": "ttscale.errors",
    "Portal": "ttscale.portal",
    "default_portal": "ttscale.portal",
    "Sampler": "ttscale.protocols",
    "Strategy": "ttscale.protocols",
    "Verifier": "ttscale.protocols",
    "as_sampler": "ttscale.protocols",
    "as_strategy": "ttscale.protocols",
    "as_verifier": "ttscale.protocols",
    "OpenAISampler": "ttscale.samplers.openai_sampler",
    "OpenAISamplerConfig": "ttscale.samplers.openai_sampler",
    "EndpointsDown": "ttscale.samplers.pool",
    "PoolConfig": "ttscale.samplers.pool",
    "PoolEndpoint": "ttscale.samplers.pool",
    "PoolSampler": "ttscale.samplers.pool",
    "derive_seed": "ttscale.seeds",
    "SyncSampler": "ttscale.sync",
    "SyncStrategy": "ttscale.sync",
    "SyncVerifier": "ttscale.sync",
    "Candidate": "ttscale.types",
    "Pricing": "ttscale.types",
    "Problem": "ttscale.types",
    "Prompt": "ttscale.types",
    "Result": "ttscale.types",
    "SampleBatch": "ttscale.types",
    "SamplingParams": "ttscale.types",
    "Score": "ttscale.types",
    "TokenLogprob": "ttscale.types",
    "TraceEvent": "ttscale.types",
    "Usage": "ttscale.types",
    "Scaled": "ttscale.scale_function",
    "scale": "ttscale.scale_function",
    "wrap": "ttscale.wrap",
}


class _Package(types.ModuleType):
    """This package's module type: a public name that is also a submodule's (``wrap``) stays the
    public object when the submodule loads (the import system sets the submodule on its package),
    as it did when the name was imported eagerly."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (see ``_LAZY``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ttscale' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "BudgetExhausted",
    "BudgetLimitReached",
    "CachedSampler",
    "Candidate",
    "ConfigError",
    "DataError",
    "EndpointsDown",
    "OpenAISampler",
    "OpenAISamplerConfig",
    "PoolConfig",
    "PoolEndpoint",
    "PoolSampler",
    "Portal",
    "Pricing",
    "Problem",
    "Prompt",
    "RequestError",
    "Result",
    "SampleBatch",
    "SampleCache",
    "Sampler",
    "SamplerError",
    "SamplingParams",
    "SandboxRefused",
    "Scaled",
    "Score",
    "StopCondition",
    "Strategy",
    "SyncSampler",
    "SyncStrategy",
    "SyncVerifier",
    "TTScaleError",
    "TokenLogprob",
    "TraceEvent",
    "UnknownNameError",
    "UpstreamError",
    "Usage",
    "Verifier",
    "VerifierError",
    "__version__",
    "as_sampler",
    "as_strategy",
    "as_verifier",
    "default_portal",
    "derive_seed",
    "max_completion_tokens",
    "max_cost",
    "max_flops",
    "max_requests",
    "max_samples",
    "max_time",
    "max_tokens",
    "scale",
    "stop_when",
    "wrap",
]
