"""Samplers: where candidates come from."""

from ttscale.samplers.openai_sampler import OpenAISampler, OpenAISamplerConfig
from ttscale.samplers.transformers_sampler import TransformersSampler, TransformersSamplerConfig
from ttscale.samplers.vllm_sampler import VLLMSampler, VLLMSamplerConfig

__all__ = [
    "OpenAISampler",
    "OpenAISamplerConfig",
    "TransformersSampler",
    "TransformersSamplerConfig",
    "VLLMSampler",
    "VLLMSamplerConfig",
]
