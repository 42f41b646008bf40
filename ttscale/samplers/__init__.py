"""Samplers: where candidates come from.

- ``openai_sampler``: any OpenAI-compatible server (``n`` batching, a seed per sample, exact
  usage), over ``upstream``'s connections (``transport`` its lean HTTP client with the ``openai``
  client's retry policy), waiting on ``limits`` (rate limits and the concurrency bound), reading
  usage with ``usage``;
- ``pool``: one model over several endpoints, with ``routing`` its pure routing rules;
- ``vllm_sampler`` and ``transformers_sampler``: in-process engines.

Each name is imported from its module on first use, so that importing one sampler does not load
the others (nor what they need).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
    from ttscale.samplers.transformers_sampler import TransformersSampler, TransformersSamplerConfig
    from ttscale.samplers.vllm_sampler import VLLMSampler, VLLMSamplerConfig

_LAZY: dict[str, str] = {
    "OpenAISampler": "ttscale.samplers.openai_sampler",
    "OpenAISamplerConfig": "ttscale.samplers.openai_sampler",
    "TransformersSampler": "ttscale.samplers.transformers_sampler",
    "TransformersSamplerConfig": "ttscale.samplers.transformers_sampler",
    "VLLMSampler": "ttscale.samplers.vllm_sampler",
    "VLLMSamplerConfig": "ttscale.samplers.vllm_sampler",
}

__all__ = [
    "OpenAISampler",
    "OpenAISamplerConfig",
    "TransformersSampler",
    "TransformersSamplerConfig",
    "VLLMSampler",
    "VLLMSamplerConfig",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ttscale.samplers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
