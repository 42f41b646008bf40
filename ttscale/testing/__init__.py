"""Test helpers shipped with ttscale: a real loopback OpenAI-compatible server and fakes."""
