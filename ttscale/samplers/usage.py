"""Exact completion tokens from servers whose usage counts one choice of several (llama.cpp).

llama.cpp's ``llama-server`` accepts ``n > 1`` but reports the usage of its first choice only
(measured on the embedded model: 8 choices holding 1,071 tokens by the server's own
``/tokenize``, reported as 152). Its responses carry a ``timings`` object, which no other server
the project documents sends, so one response tells. The cheapest exact count there keeps ``n``
(8 choices in one request took 13.1 s, 8 single requests 15.5 s) and asks for token logprobs:
one entry per generated token, the end-of-generation token included, so their lengths are what
the server reports for a single choice. The chat route lists them with ``logprobs: true`` and no
alternatives; the completions route only with at least one alternative (``logprobs: 1``; with
0 it sends an empty object), and in the chat route's shape (a ``content`` list), which
:func:`entry_counts` reads as well as the completions API's ``tokens``.

Plain functions over plain data, plus the process's small memory of which servers count so
(:func:`declare_one_choice_usage` for a server started here, :func:`learn` from an answer), of
how many choices a request may ask of them (llama-server refuses more than its ``--parallel``
slots: "Value must be between 1 <= value <= 8", which a sampler would take for no ``n`` at all
and fall back to single requests), and of whether a server's correction has been logged (once
per server, at INFO).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

__all__ = [
    "counting_logprobs",
    "counts_one_choice",
    "declare_one_choice_usage",
    "entry_counts",
    "first_correction",
    "forget",
    "knows_one_choice",
    "learn",
    "max_choices",
]

_lock = threading.Lock()
_ONE_CHOICE: set[str] = set()  # base URLs known to report one choice's usage
_MAX_CHOICES: dict[str, int] = {}  # base URL -> the most choices one request may ask for
_SAID: set[str] = set()  # base URLs whose correction has been logged at INFO


def _key(base_url: str) -> str:
    return base_url.rstrip("/")


def counts_one_choice(response: object) -> bool:
    """Whether ``response`` comes from a server that reports one choice's completion tokens
    when asked for several: llama.cpp's, known by its ``timings`` object."""
    return isinstance(response, Mapping) and isinstance(response.get("timings"), Mapping)


def declare_one_choice_usage(base_url: str, max_choices: int | None = None) -> None:
    """Record that the server at ``base_url`` (one this process started, say) counts so, and
    the most choices it takes in one request, when known."""
    with _lock:
        _ONE_CHOICE.add(_key(base_url))
        if max_choices is not None:
            _MAX_CHOICES[_key(base_url)] = max_choices


def forget(base_url: str) -> None:
    """Drop what is known of ``base_url`` (its server stopped: another may take the port)."""
    key = _key(base_url)
    with _lock:
        _ONE_CHOICE.discard(key)
        _MAX_CHOICES.pop(key, None)
        _SAID.discard(key)


def max_choices(base_url: str) -> int | None:
    """The most choices one request to ``base_url`` may ask for, when declared."""
    with _lock:
        return _MAX_CHOICES.get(_key(base_url))


def learn(base_url: str, response: object) -> bool:
    """Remember what ``response`` shows of its server; whether that server counts one choice."""
    if not counts_one_choice(response):
        return knows_one_choice(base_url)
    declare_one_choice_usage(base_url)
    return True


def knows_one_choice(base_url: str) -> bool:
    with _lock:
        return _key(base_url) in _ONE_CHOICE


def counting_logprobs(one_choice: bool, count: int, logprobs: int | None, chat: bool) -> int | None:
    """The ``logprobs`` a request for ``count`` choices asks only to count its tokens (``None``:
    none needed, the usage is right or the caller asks for logprobs anyway)."""
    if not one_choice or count <= 1 or logprobs is not None:
        return None
    return 0 if chat else 1


def entry_counts(choices: Sequence[object]) -> list[int] | None:
    """Each choice's number of logprob entries (a chat ``content`` list or a completions
    ``tokens`` list); ``None`` unless every choice has them."""
    counts = []
    for choice in choices:
        logprobs = choice.get("logprobs") if isinstance(choice, Mapping) else None
        entries = None
        if isinstance(logprobs, Mapping):
            entries = logprobs.get("content")
            if not isinstance(entries, list):
                entries = logprobs.get("tokens")
        if not isinstance(entries, list):
            return None
        counts.append(len(entries))
    return counts


def first_correction(base_url: str) -> bool:
    """True the first time a correction is made for ``base_url``'s answers (say it at INFO);
    after that the server's way is known and saying it again is noise."""
    key = _key(base_url)
    with _lock:
        if key in _SAID:
            return False
        _SAID.add(key)
        return True
