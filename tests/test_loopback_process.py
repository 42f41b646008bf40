"""ttscale.testing.loopback_process: the loopback server in a process of its own."""

from __future__ import annotations

import httpx2
import pytest

from ttscale.testing import loopback_process


def test_the_server_answers_and_stops_when_the_block_ends() -> None:
    with loopback_process(["--default-answer", "The answer is 42."]) as url:
        body = {"model": "loopback", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx2.post(f"{url}/chat/completions", json=body, timeout=30).json()
        assert answer["choices"][0]["message"]["content"] == "The answer is 42."
    with pytest.raises(httpx2.TransportError):  # stopped on leaving the block
        httpx2.post(f"{url}/chat/completions", json=body, timeout=5)


def test_a_server_that_cannot_start_is_an_error_naming_the_command() -> None:
    with (
        pytest.raises(RuntimeError, match=r"did not start .*--n-support bogus"),
        loopback_process(["--n-support", "bogus"]),
    ):
        pass  # pragma: no cover - never reached
