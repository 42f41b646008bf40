"""Test helpers shipped with ttscale.

- :class:`LoopbackServer`: a real OpenAI-compatible HTTP server on 127.0.0.1 with scripted answers,
  latency, ``n`` on or off, streaming, fault injection and a request log. ``python -m
  ttscale.testing`` runs it in its own process.
- :class:`ScriptedSampler`: an in-process fake sampler for tests about what happens after sampling.
"""

from ttscale.testing.fakes import ScriptedSampler, prompt_text
from ttscale.testing.server import (
    Fault,
    LoopbackServer,
    RequestRecord,
    ScriptRequest,
    ServerConfig,
    count_tokens,
)

__all__ = [
    "Fault",
    "LoopbackServer",
    "RequestRecord",
    "ScriptRequest",
    "ScriptedSampler",
    "ServerConfig",
    "count_tokens",
    "prompt_text",
]
