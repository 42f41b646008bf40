"""ttscale: turn extra inference compute into better LLM answers."""
