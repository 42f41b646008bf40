"""Answer extraction and normalisation (pure functions)."""

from __future__ import annotations

import pytest

from ttscale.errors import ConfigError
from ttscale.strategies.extract import (
    extract_answer_is,
    extract_auto,
    extract_boxed,
    extract_choice,
    extract_code,
    extract_gsm8k,
    extract_last_number,
    extract_text,
    get_extractor,
    last_boxed,
    normalize_answer,
    normalize_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", "1234"),
        ("1,234,567.50", "1234567.5"),
        ("2.50", "2.5"),
        ("3.0", "3"),
        ("-0.250", "-0.25"),
        ("1/2", "0.5"),
        ("\\frac{3}{4}", "0.75"),
        ("\\dfrac{1}{3}", "1/3"),
        ("-\\frac{2}{4}", "-0.5"),
        ("$18", "18"),
        ("50%", "50"),
        (".5", "0.5"),
        ("+7", "7"),
        ("1/0", None),
        ("12,34", None),
        ("x", None),
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


def test_normalize_answer_folds_case_space_and_wrappers() -> None:
    assert normalize_answer("  The   Blue  Whale. ") == "the blue whale"
    assert normalize_answer("$\\text{72}$") == "72"
    assert normalize_answer("$1,000.00$") == "1000"


def test_last_boxed_handles_nested_braces_and_takes_the_last() -> None:
    text = "first \\boxed{1} then \\boxed{\\frac{1}{2}} and done"
    assert last_boxed(text) == "\\frac{1}{2}"
    assert extract_boxed(text) == "0.5"
    assert last_boxed("\\boxed {x+{y}}") == "x+{y}"
    assert last_boxed("cut off \\boxed{\\frac{1}{2") is None
    assert extract_boxed("no box here") is None
    assert extract_boxed("\\boxed{ }") is None


def test_gsm8k_answer_is_and_last_number() -> None:
    assert extract_gsm8k("so 3 + 4 = 7\n#### 1,007") == "1007"
    assert extract_gsm8k("no marker 5") is None
    assert extract_answer_is("Thus the answer is 42. Done.") == "42"
    assert extract_answer_is("Final answer: **Paris**") == "paris"
    assert extract_answer_is("The answer is \\boxed{12}.") == "12"
    assert extract_last_number("3 apples and 1/4 of a pie, total 2.50 dollars") == "2.5"
    assert extract_last_number("costs $1,200 in all") == "1200"
    assert extract_last_number("none") is None


def test_auto_prefers_boxed_then_marker_then_phrase_then_number() -> None:
    assert extract_auto("answer 5 but \\boxed{6} then 7") == "6"
    assert extract_auto("steps 5\n#### 8\nmore 9") == "8"
    assert extract_auto("the answer is 3. Then 10 more.") == "3"
    assert extract_auto("we get 11 then 12") == "12"
    assert extract_auto("no numbers") is None


def test_code_block_and_choice() -> None:
    text = "Try:\n```python\ndef f():  \n    return 1\n```\nOr:\n```\nprint(2)\n```\n"
    assert extract_code(text) == "print(2)"
    assert extract_code("```py\ndef f():  \n    return 1\n\n```") == "def f():\n    return 1"
    assert extract_code("no code") is None
    assert extract_choice("I think the answer is (c).") == "C"
    assert extract_choice("\\boxed{B}") == "B"
    assert extract_choice("Options considered; (D) fits") == "D"
    assert extract_choice("A") == "A"
    assert extract_choice("nothing") is None
    assert extract_text("  Yes ") == "yes"


def test_get_extractor_by_name_or_callable() -> None:
    assert get_extractor("gsm8k") is extract_gsm8k
    assert get_extractor(str.upper)("x") == "X"
    with pytest.raises(ConfigError, match="extractor"):
        get_extractor("nope")
