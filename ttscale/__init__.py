"""ttscale: turn extra inference compute into better LLM answers.

The pieces: samplers draw candidates (:class:`OpenAISampler`), strategies turn them into answers,
verifiers score them, and the budget tracker counts what it all cost. Every extension point is a
small Protocol (:class:`Sampler`, :class:`Strategy`, :class:`Verifier`); built-ins register by
entry point (:mod:`ttscale.registry`).
"""

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
from ttscale.protocols import Sampler, Strategy, Verifier, as_sampler, as_strategy, as_verifier
from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.samplers.pool import EndpointsDown, PoolConfig, PoolEndpoint, PoolSampler
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
from ttscale.wrap import Scaled, scale, wrap

__version__ = "0.1.0"

__all__ = [
    "BudgetExhausted",
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
    "scale",
    "wrap",
]
