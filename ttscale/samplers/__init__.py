"""Samplers: where candidates come from.

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
