"""Test helpers shipped with ttscale.

- :class:`LoopbackServer`: a real OpenAI-compatible HTTP server on 127.0.0.1 with scripted answers,
  latency, ``n`` on or off, streaming (paced, with scripted token confidence), fault injection and
  a request log. ``python -m ttscale.testing`` runs it in its own process.
  :func:`loopback_process` starts it so and yields its base URL.
- :class:`ScriptedSampler`: an in-process fake sampler for tests about what happens after sampling.
"""

from ttscale.testing.fakes import ScriptedSampler, prompt_text
from ttscale.testing.process import loopback_process
from ttscale.testing.server import (
    CONFIDENT,
    UNCONFIDENT,
    Fault,
    LoopbackServer,
    RequestRecord,
    ScriptedAnswer,
    ScriptRequest,
    ServerConfig,
    TokenProfile,
    count_tokens,
)

__all__ = [
    "CONFIDENT",
    "UNCONFIDENT",
    "Fault",
    "LoopbackServer",
    "RequestRecord",
    "ScriptRequest",
    "ScriptedAnswer",
    "ScriptedSampler",
    "ServerConfig",
    "TokenProfile",
    "count_tokens",
    "loopback_process",
    "prompt_text",
]
