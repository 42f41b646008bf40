"""Unit-test verifier for model-written Python, with verdicts the code cannot forge.

Each candidate runs in a sandboxed process of its own that never sees the tests; the tests run in
a trusted harness process and call the candidate across a channel that carries plain data only
(:mod:`ttscale.verifiers.sandbox`). So no ``__eq__`` of the candidate's runs in the tests, no
frame, file or pipe of the harness is in its reach, and a candidate that exits early, kills
itself or sends garbage gets ``error``, never ``pass``.

Test formats (``problem.tests``; detected, or named by ``test_format`` or
``problem.metadata["test_format"]``):

- ``humaneval``: the tests define ``check(candidate)``; the candidate's code is the prompt plus
  the completion (a completion that defines the entry point itself, a chat model's whole
  function, comes after the prompt, so the prompt's imports still apply). The prompt also runs
  in the harness, for helpers the tests use.
- ``asserts``: assert statements (MBPP style; a list in ``problem.metadata["test_list"]`` works
  too); every function, class and plain value the code defines is in their scope.
- ``pytest``: a pytest file that imports the candidate's module (``solution``, or
  ``problem.metadata["module"]``); the module's functions and classes are forwarded.
- ``stdio``: programs reading stdin and writing stdout (CodeContests, LiveCodeBench): the tests
  are a JSON list of ``{"input": ..., "output": ...}`` (or ``problem.metadata["test_cases"]``,
  or the lists ``metadata["inputs"]`` and ``metadata["outputs"]``); outputs are compared by
  :func:`~ttscale.verifiers.sandbox.child.harness.outputs_match` (tokens per line, decimals
  within ``float_tolerance``).

Values crossing between the tests and the candidate are plain data: None, bool, int, float,
str, bytes, list, tuple, dict, set, frozenset. Anything else stays with the candidate and reaches
the tests as a handle (methods, attributes, static methods, enum members, operators,
``isinstance``, ``len``, indexing, iteration, ``str``). Two of its objects compare as its
``__eq__`` says, as in one process; against plain data a handle counts only as the plain data it
holds (a dict subclass as its items), so no method of the candidate's ever sees an expected
value. Subclasses of plain types (a namedtuple, an IntEnum, a Counter) are handles that compare
as the plain value they hold. Its exceptions reach the tests as their own classes (its exported
ones rebuilt in the harness with their ancestry, the standard library's and Python's as
themselves) with their plain arguments and attributes, for ``pytest.raises`` and ``except``.
Plain arguments are copies: a test that expects the candidate to change a list in place cannot
see that change (objects passed back as handles are its own).

Code in a fenced block is taken from the block. Running model-written code needs
``allow_code_execution=True`` or ``TTSCALE_ALLOW_CODE_EXECUTION=1``.

Verdicts (``score.details["outcome"]``): ``pass``, ``fail`` (a test's check failed),
``timeout`` (wall clock or CPU limit), ``error`` (the code could not run to a verdict);
``verdict`` is true only for ``pass``; ``details["cause"]`` names what decided it and
``reason`` says it in words.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ttscale.errors import ConfigError, DataError
from ttscale.registry import resolve_config
from ttscale.types import Candidate, Problem, Score
from ttscale.verifiers.base import LoopBound
from ttscale.verifiers.sandbox import (
    Backend,
    RunResult,
    Sandbox,
    SandboxConfig,
    check_code_execution_allowed,
)

__all__ = [
    "CheckPlan",
    "TestFormat",
    "UnitTestConfig",
    "UnitTestVerifier",
    "build_program",
    "candidate_code",
    "detect_test_format",
]

log = logging.getLogger(__name__)

TestFormat = Literal["auto", "humaneval", "asserts", "pytest", "stdio"]
_FORMATS = ("auto", "humaneval", "asserts", "pytest", "stdio")


@dataclass(frozen=True)
class UnitTestConfig:
    """Settings of a :class:`UnitTestVerifier`; the limits are those of :class:`SandboxConfig`."""

    allow_code_execution: bool = False
    test_format: TestFormat = "auto"
    concurrency: int = 4
    timeout_s: float = 10.0
    memory_bytes: int = 2048 * 1024 * 1024
    max_processes: int = 32
    max_file_bytes: int = 16 * 1024 * 1024
    max_open_files: int = 256
    max_output_bytes: int = 64 * 1024
    max_message_bytes: int = 16 * 1024 * 1024
    tmpfs_bytes: int = 64 * 1024 * 1024
    guard: bool = True
    namespaces: bool = True
    backend: Backend = "auto"
    python: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    readonly_paths: tuple[str, ...] = ()
    run_group: bool = True
    cpus_per_run: float = 1.0
    float_tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if self.test_format not in _FORMATS:
            raise ConfigError(f"test_format must be one of {', '.join(_FORMATS)}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        self.sandbox()  # validates the limits now rather than at the first run

    def sandbox(self) -> SandboxConfig:
        options: dict[str, Any] = {
            "timeout_s": self.timeout_s,
            "memory_bytes": self.memory_bytes,
            "max_processes": self.max_processes,
            "max_file_bytes": self.max_file_bytes,
            "max_open_files": self.max_open_files,
            "max_output_bytes": self.max_output_bytes,
            "max_message_bytes": self.max_message_bytes,
            "tmpfs_bytes": self.tmpfs_bytes,
            "readonly_paths": tuple(self.readonly_paths),
            "guard": self.guard,
            "namespaces": self.namespaces,
            "run_group": self.run_group,
            "cpus_per_run": self.cpus_per_run,
            "backend": self.backend,
            "extra_env": self.extra_env,
        }
        if self.python is not None:
            options["python"] = self.python
        return SandboxConfig(**options)


@dataclass(frozen=True)
class CheckPlan:
    """One check: what the candidate's process loads, and what the harness runs against it."""

    solution: Mapping[str, Any]
    harness: Mapping[str, Any]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown text, in order: ``(language tag, lower-cased; code)``
    (pure). A fence opens at a line's start and the next fence line closes it, so a block's
    closing fence is never taken for the next one's opening; an unclosed block runs to the end."""
    blocks: list[tuple[str, str]] = []
    tag: str | None = None
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        fence = line.lstrip().startswith("```")
        if tag is None and fence:
            tag, lines = line.lstrip()[3:].strip().lower(), []
        elif tag is not None and fence:
            blocks.append((tag, "".join(lines)))
            tag = None
        elif tag is not None:
            lines.append(line)
    if tag is not None:
        blocks.append((tag, "".join(lines)))
    return blocks


_PYTHON_TAGS = ("python", "py", "python3")
_DEFINES = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s", re.MULTILINE)


def candidate_code(text: str) -> str:
    """The code of a completion (pure): of its fenced blocks tagged Python (any case; else the
    untagged ones), the last that defines a function or class, else the last; with no such
    block, the whole text. A later block of example output or usage is not the code."""
    blocks = fenced_blocks(text)
    chosen = [code for tag, code in blocks if tag in _PYTHON_TAGS] or [
        code for tag, code in blocks if not tag
    ]
    if not chosen:
        return text if not blocks else blocks[-1][1]
    defining = [code for code in chosen if _DEFINES.search(code)]
    return (defining or chosen)[-1]


def _is_assert_list(tests: str) -> bool:
    statements = [
        line
        for line in tests.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not line[0].isspace()
    ]
    setup = ("import ", "from ")
    return bool(statements) and all(
        line.startswith("assert") or line.startswith(setup) for line in statements
    )


def _stdio_cases(value: Any) -> list[dict[str, str]] | None:
    """``value`` as a list of stdin/stdout cases, or None if it is not one (pure)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list) or not value:
        return None
    if not all(
        isinstance(case, dict)
        and isinstance(case.get("input"), str)
        and isinstance(case.get("output"), str)
        for case in value
    ):
        return None
    return [{"input": case["input"], "output": case["output"]} for case in value]


def _as_stub(prompt: str) -> str:
    """The prompt as code a whole function can follow (pure): as it is when it compiles (a
    signature with its docstring), else with a body (``pass``) given to a bare signature, else
    nothing: a whole function needs no prompt that is no program."""
    for stub in (prompt, prompt.rstrip() + "\n    pass\n"):
        try:
            compile(stub, "<prompt>", "exec")  # compiled, never run
        except (SyntaxError, ValueError):
            continue
        return stub
    return ""


def detect_test_format(tests: str, entry_point: str | None) -> TestFormat:
    """Which format ``tests`` is in (pure). ``def check(`` with an entry point means HumanEval."""
    if re.search(r"^def check\(", tests, re.MULTILINE) and entry_point:
        return "humaneval"
    if re.search(r"^(?:async )?def test_|^class Test", tests, re.MULTILINE):
        return "pytest"
    if _is_assert_list(tests):
        return "asserts"
    if _stdio_cases(tests) is not None:
        return "stdio"
    raise DataError(
        "cannot tell the tests' format (expected a HumanEval check(), assert statements, "
        "pytest test functions or a JSON list of input/output cases); set test_format",
        field="tests",
    )


def _tests_of(problem: Problem) -> str:
    if problem.tests:
        return problem.tests
    metadata = problem.metadata
    test_list = metadata.get("test_list")
    if isinstance(test_list, Sequence) and not isinstance(test_list, str) and test_list:
        return "\n".join(str(test) for test in test_list)
    cases = metadata.get("test_cases")
    if cases is None and isinstance(metadata.get("inputs"), list):
        outputs = metadata.get("outputs")
        if not isinstance(outputs, list) or len(outputs) != len(metadata["inputs"]):
            raise DataError(
                f"problem {problem.id!r}: 'inputs' and 'outputs' must be lists of one length",
                field="metadata.outputs",
            )
        cases = [
            {"input": i, "output": o} for i, o in zip(metadata["inputs"], outputs, strict=True)
        ]
    if cases is not None:
        if _stdio_cases(cases) is None:
            raise DataError(
                f"problem {problem.id!r}: test cases must be a non-empty list of "
                "{'input': str, 'output': str}",
                field="metadata.test_cases",
            )
        return json.dumps(cases)
    raise DataError(f"problem {problem.id!r} has no tests", field="tests")


def build_program(
    problem: Problem,
    completion: str,
    test_format: TestFormat = "auto",
    *,
    float_tolerance: float = 1e-6,
) -> CheckPlan:
    """What the candidate's process loads and what the harness runs, for one check (pure)."""
    tests = _tests_of(problem)
    chosen = problem.metadata.get("test_format", test_format)
    if chosen == "auto":
        chosen = detect_test_format(tests, problem.entry_point)
    if chosen not in _FORMATS:
        raise DataError(f"unknown test_format {chosen!r}", field="metadata.test_format")
    code = candidate_code(completion)
    if chosen == "humaneval":
        if not problem.entry_point:
            raise DataError(f"problem {problem.id!r}: HumanEval tests need an entry_point")
        prompt = problem.prompt or ""
        defines_entry = re.search(rf"^def {re.escape(problem.entry_point)}\(", code, re.MULTILINE)
        # A continuation completes the prompt's function; a whole function replaces its stub.
        body = f"{_as_stub(prompt)}\n{code}" if defines_entry else prompt + code
        return CheckPlan(
            {"code": body, "format": "functions"},
            {
                "format": "humaneval",
                "prompt": prompt,
                "tests": tests,
                "entry_point": problem.entry_point,
            },
        )
    if chosen == "asserts":
        harness = {"format": "asserts", "tests": tests, "entry_point": problem.entry_point}
        return CheckPlan({"code": code, "format": "functions"}, harness)
    if chosen == "stdio":
        cases = _stdio_cases(tests)
        if cases is None:
            raise DataError(f"problem {problem.id!r}: no input/output cases", field="tests")
        return CheckPlan(
            {"code": code, "format": "stdio"},
            {"format": "stdio", "cases": cases, "tolerance": float_tolerance},
        )
    module = str(problem.metadata.get("module", "solution"))
    if not module.isidentifier():
        raise DataError(f"module name {module!r} is not an identifier", field="metadata.module")
    solution = {"code": code, "format": "functions", "module": module}
    harness = {"format": "pytest", "tests": tests, "module": module}
    return CheckPlan(solution, harness | {"entry_point": problem.entry_point})


class UnitTestVerifier:
    """Runs each candidate against the problem's tests in a sandbox. See the module docstring."""

    # It runs the problem's tests, which a chat request has none of.
    needs_reference = True

    def __init__(self, config: UnitTestConfig | None = None, **options: Any) -> None:
        config = resolve_config(UnitTestConfig, config, options, "UnitTestVerifier")
        self.config = config
        self._sandbox_config = config.sandbox()
        self._sandbox: Sandbox | None = None
        self._bound = LoopBound(config.concurrency)

    @property
    def sandbox(self) -> Sandbox:
        """The warm sandbox the checks run in, shared by every verifier of the same settings."""
        if self._sandbox is None:
            self._sandbox = Sandbox.shared(self._sandbox_config)
        return self._sandbox

    def close(self) -> None:
        """Stop the sandbox's fork servers now (they also end with this process; a later check
        starts them again)."""
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def preflight(self) -> None:
        """Raise :class:`SandboxRefused` now if scoring would (code execution not allowed)."""
        check_code_execution_allowed(self.config.allow_code_execution, "UnitTestVerifier")

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        self.preflight()
        plans: list[CheckPlan | DataError] = []
        for candidate in candidates:
            try:
                plans.append(
                    build_program(
                        problem,
                        candidate.text,
                        self.config.test_format,
                        float_tolerance=self.config.float_tolerance,
                    )
                )
            except DataError as exc:
                plans.append(exc)
        return list(await asyncio.gather(*(self._run(plan) for plan in plans)))

    async def _run(self, plan: CheckPlan | DataError) -> Score:
        if isinstance(plan, DataError):
            return Score(
                0.0,
                verdict=False,
                reason=str(plan),
                details={"outcome": "error", "cause": "tests"},
            )
        async with self._bound.semaphore():
            result = await self.sandbox.run(dict(plan.solution), dict(plan.harness))
        log.debug("unit tests: %s in %.3f s: %s", result.outcome, result.duration_s, result.reason)
        return _score(result)


def _score(result: RunResult) -> Score:
    passed = result.outcome == "pass"
    return Score(
        1.0 if passed else 0.0,
        verdict=passed,
        reason=f"{result.outcome}: {result.reason}",
        details=result.to_details(),
    )
