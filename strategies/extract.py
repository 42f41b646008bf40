"""Answer extraction and normalisation: pure functions from a completion's text to a vote key.

An *extractor* maps a completion to its final answer, normalised so that answers that mean the same
thing compare equal as strings (``"1,000"``, ``"1000.0"`` and ``"\\boxed{1000}"`` all give
``"1000"``), or to ``None`` when the text holds no answer of that kind. Strategies group candidates
by these keys. Named extractors are looked up with :func:`get_extractor`; any callable
``str -> str | None`` may be used instead.

When string equality is too strict (``"\\frac{1}{2}"`` against ``"0.5"`` with units, say), an
object with an ``equivalent(a, b) -> bool`` method (:class:`AnswerEquivalence`) can be given to the
voting strategies, which then merge groups it finds equal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol, runtime_checkable

from ttscale.errors import ConfigError

__all__ = [
    "EXTRACTORS",
    "AnswerEquivalence",
    "Extractor",
    "extract_answer_is",
    "extract_auto",
    "extract_boxed",
    "extract_choice",
    "extract_code",
    "extract_gsm8k",
    "extract_last_number",
    "extract_text",
    "get_extractor",
    "last_boxed",
    "normalize_answer",
    "normalize_code",
    "normalize_number",
    "stated_answer",
]

Extractor = Callable[[str], "str | None"]
"""A function from a completion's text to its normalised answer, or None when there is none."""


@runtime_checkable
class AnswerEquivalence(Protocol):
    """Decides whether two normalised answers mean the same (e.g. a math verifier)."""

    def equivalent(self, a: str, b: str) -> bool: ...


# -- normalisation -----------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(rf"^(?:{_NUMBER})$")
_FRACTION_RE = re.compile(rf"^({_NUMBER})\s*/\s*({_NUMBER})$")
_LATEX_FRACTION_RE = re.compile(r"^(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")


def _parse_number(text: str) -> Fraction | None:
    if not _NUMBER_RE.match(text):
        return None
    return Fraction(text.replace(",", ""))


def _format_fraction(value: Fraction) -> str:
    """Integers as integers, terminating decimals as decimals, other fractions as ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    # A terminating decimal: scale by a power of ten large enough to make it whole.
    digits = 0
    scaled = value
    while scaled.denominator != 1:
        scaled *= 10
        digits += 1
    sign = "-" if scaled < 0 else ""
    whole = str(abs(scaled.numerator)).rjust(digits + 1, "0")
    return f"{sign}{whole[:-digits]}.{whole[-digits:]}"


def normalize_number(text: str) -> str | None:
    """The canonical form of a number, or None when ``text`` is not one.

    Accepts thousands separators (``1,234``), decimals with trailing zeros (``2.50``), simple
    fractions (``3/4``, ``\\frac{3}{4}``) and a leading currency sign or trailing percent sign,
    which are dropped (GSM8K-style answers write ``$18`` and ``18`` for the same thing).
    """
    value = text.strip().replace(" ", "")
    value = value.removeprefix("\\$").removeprefix("$")
    value = value.removesuffix("\\%").removesuffix("%")
    latex = _LATEX_FRACTION_RE.match(value)
    if latex:
        sign, top, bottom = latex.groups()
        value = f"{sign}{top}/{bottom}"
    number = _parse_number(value)
    if number is not None:
        return _format_fraction(number)
    fraction = _FRACTION_RE.match(value)
    if fraction:
        top_value = _parse_number(fraction.group(1))
        bottom_value = _parse_number(fraction.group(2))
        if top_value is not None and bottom_value:
            return _format_fraction(top_value / bottom_value)
    return None


def normalize_answer(text: str) -> str:
    """A comparison key for a short answer: numbers canonical, else case and spacing folded.

    Strips surrounding ``$...$``, ``\\text{...}`` wrappers, a trailing full stop and outer
    whitespace; numbers go through :func:`normalize_number`; anything else is lower-cased with runs
    of whitespace collapsed to one space.
    """
    value = text.strip()
    while len(value) >= 2 and value[0] == value[-1] == "$":
        value = value[1:-1].strip()
    value = _TEXT_WRAPPER_RE.sub(r"\1", value)
    value = value.rstrip(".").strip()
    number = normalize_number(value)
    if number is not None:
        return number
    return " ".join(value.lower().split())


def normalize_code(text: str) -> str:
    """Code compares on its lines with trailing whitespace and blank edges removed; case kept."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    return "\n".join(lines).strip("\n")


# -- extractors --------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The raw content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces allowed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    position = text.find("{", start)
    if position < 0:
        return None
    # Only whitespace may sit between the command and its brace (``\boxed {x}`` is valid LaTeX).
    if text[start:position].strip() not in ("\\boxed", "\\fbox"):
        return None
    depth = 0
    for end in range(position, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                return text[position + 1 : end]
    return None  # unbalanced: the answer was cut off


def extract_boxed(text: str) -> str | None:
    """The last ``\\boxed{}`` answer, normalised."""
    content = last_boxed(text)
    return normalize_answer(content) if content is not None and content.strip() else None


# GSM8K's marker is "#### 72": what follows starts as a number does (a sign, a currency, a
# digit). "#### Step 1: set up" is a Markdown heading, which models write often; read as an
# answer it would end a step search and vote for "step 1: set up".
_GSM8K_RE = re.compile(r"####[ \t]*([-+\u2212]?[ \t]*[$\u20ac\u00a3]?[ \t]*[-+\u2212]?\.?\d[^\n]*)")


def extract_gsm8k(text: str) -> str | None:
    """The answer after the last ``#### `` marker (GSM8K's format) that starts as a number
    does, normalised; a Markdown heading (``#### Step 1``) is no marker."""
    found = _GSM8K_RE.findall(text)
    if not found:
        return None
    answer = found[-1].strip()
    return normalize_answer(answer) if answer else None


_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is\b|:)\s*:?\s*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE
)


# Words that open a statement about the answer rather than the answer: "the answer is not
# obvious", "the answer is what remains", "the answer is to add them". Hedges open one only when
# no answer follows: "the answer is still unclear", but "the answer is still 12" answers 12.
_NOT_ANSWERS = frozenset(
    [
        "not",
        "unclear",
        "unknown",
        "uncertain",
        "undetermined",
        "what",
        "which",
        "how",
        "why",
        "where",
        "when",
        "whether",
        "that",
        "to",
        "being",
        "hidden",
        "tricky",
        "obvious",
        "hard",
        "difficult",
        "complicated",
    ]
)
_HEDGES = frozenset({"still", "yet", "probably", "likely"})
_LEADING_MARKS = " \t.,;:!?-\u2013\u2014\u2026*"


def stated_answer(text: str) -> str | None:
    """The raw text after the last "the answer is" / "final answer:", up to the end of its
    sentence, unless it is a statement about the answer ("not obvious", "to add them") (pure)."""
    found = _ANSWER_IS_RE.findall(text)
    if not found:
        return None
    answer: str = found[-1].strip().strip("*").strip()  # markdown bold around it is common
    words = answer.lstrip(_LEADING_MARKS).split()  # "is... not obvious", "is, not obvious"
    if not words:
        return None
    first, *rest = (word.lower().strip(",;:*_") for word in words)
    if first in _NOT_ANSWERS:
        return None
    if first in _HEDGES:
        # "still 12", "likely B": the answer is what follows the hedge.
        return answer.lstrip(_LEADING_MARKS).split(None, 1)[1] if _answers(rest, answer) else None
    return answer


def _answers(rest: list[str], answer: str) -> bool:
    """Whether what follows a hedge word answers: a number or formula, or one word that is no
    hedge itself ("likely B", not "still unclear") (pure)."""
    if any(c.isdigit() or c in "\\$=" for c in answer):
        return True
    return len(rest) == 1 and rest[0] not in _NOT_ANSWERS | _HEDGES


def extract_answer_is(text: str) -> str | None:
    """What follows the last "the answer is" / "final answer:", up to the end of the sentence;
    None when that is a statement about the answer (``"the answer is not obvious"``)."""
    answer = stated_answer(text)
    if answer is None:
        return None
    boxed = last_boxed(answer)
    if boxed is None and "\\boxed" in answer:
        return None  # a box cut off by the token limit holds no answer yet
    return normalize_answer(boxed if boxed is not None else answer)


_ANY_NUMBER_RE = re.compile(rf"(?:{_NUMBER})(?:\s*/\s*(?:{_NUMBER}))?")


def extract_last_number(text: str) -> str | None:
    """The last number in the text (a simple fraction counts as one number), normalised."""
    found = _ANY_NUMBER_RE.findall(text)
    for candidate in reversed(found):
        number = normalize_number(candidate)
        if number is not None:
            return number
    return None


_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str | None:
    """The last fenced code block, with the language tag dropped and whitespace normalised."""
    found = _FENCE_RE.findall(text)
    if not found:
        return None
    code = normalize_code(found[-1][1])
    return code or None


_CHOICE_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*:?\s*\(?\**([A-J])\b\)?", re.IGNORECASE),
    re.compile(r"\\boxed\{\s*\(?([A-J])\)?\s*\}"),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"^\s*([A-J])[.)]?\s*$", re.MULTILINE),
)


def extract_choice(text: str) -> str | None:
    """A multiple-choice letter A-J, upper-cased: "answer is (B)", ``\\boxed{B}``, "(B)", "B"."""
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return str(found[-1]).upper()
    return None


def extract_text(text: str) -> str | None:
    """The whole completion as the answer, normalised (for short-answer prompts)."""
    answer = normalize_answer(text)
    return answer or None


def extract_auto(text: str) -> str | None:
    """The first of ``\\boxed{}``, ``####``, "the answer is", the last number that finds one."""
    for extractor in (extract_boxed, extract_gsm8k, extract_answer_is, extract_last_number):
        answer = extractor(text)
        if answer is not None:
            return answer
    return None


EXTRACTORS: dict[str, Extractor] = {
    "auto": extract_auto,
    "boxed": extract_boxed,
    "gsm8k": extract_gsm8k,
    "answer_is": extract_answer_is,
    "last_number": extract_last_number,
    "code": extract_code,
    "choice": extract_choice,
    "text": extract_text,
}


def get_extractor(spec: str | Extractor) -> Extractor:
    """An extractor by name (see :data:`EXTRACTORS`), or ``spec`` itself when it is callable."""
    if callable(spec):
        return spec
    try:
        return EXTRACTORS[spec]
    except KeyError:
        raise ConfigError(
            f"extractor: unknown name {spec!r}; known: {', '.join(sorted(EXTRACTORS))}"
        ) from None
