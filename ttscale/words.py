"""English plurals for messages: ``plural("strategy")`` is "strategies", not "strategys"."""

from __future__ import annotations

__all__ = ["plural"]

_SIBILANT_ENDINGS = ("s", "x", "z", "ch", "sh")
_VOWELS = "aeiou"


def plural(noun: str, count: int | None = None) -> str:
    """``noun``'s plural; given ``count``, the count and the noun in the number it needs.

    ``plural("strategy")`` -> "strategies", ``plural("verifier")`` -> "verifiers",
    ``plural("problem", 1)`` -> "1 problem", ``plural("sample", 3)`` -> "3 samples".
    """
    if count is not None:
        return f"{count} {noun if count == 1 else plural(noun)}"
    if noun.endswith("y") and len(noun) > 1 and noun[-2].lower() not in _VOWELS:
        return noun[:-1] + "ies"
    if noun.endswith(_SIBILANT_ENDINGS):
        return noun + "es"
    return noun + "s"
