"""Unit-test verifier for model-written Python.

Test formats (``problem.tests``; detected, or named by ``test_format`` or
``problem.metadata["test_format"]``):

- ``humaneval``: ``prompt + completion``, then the tests (which define ``check``), then
  ``check(entry_point)``. A completion that defines the entry point itself (a chat model's whole
  function) is appended after the prompt, so the prompt's imports still apply.
- ``asserts``: assert statements (MBPP style; a list in ``problem.metadata["test_list"]`` works
  too) run after the solution, in order.
- ``pytest``: a pytest file; the solution is saved as ``solution.py`` (or
  ``problem.metadata["module"]``) next to it, for the tests to import.

Code in a fenced block is taken from the block. Each candidate runs in its own sandboxed
subprocess (:mod:`ttscale.verifiers.sandbox`), concurrently up to ``concurrency``. Running
model-written code needs ``allow_code_execution=True`` or ``TTSCALE_ALLOW_CODE_EXECUTION=1``.

Verdicts (``score.details["outcome"]``): ``pass``, ``fail`` (a test's check failed), ``timeout``,
``error`` (the code could not run to a verdict: syntax error, crash, a limit or a guard hit);
``verdict`` is true only for ``pass``; ``reason`` says why.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ttscale.errors import ConfigError, DataError
from ttscale.registry import build_config
from ttscale.types import Candidate, Problem, Score
from ttscale.verifiers.base import LoopBound
from ttscale.verifiers.sandbox import (
    Backend,
    RunMode,
    SandboxConfig,
    check_code_execution_allowed,
    run_untrusted,
)

__all__ = [
    "ProgramPlan",
    "TestFormat",
    "UnitTestConfig",
    "UnitTestVerifier",
    "build_program",
    "candidate_code",
    "detect_test_format",
]

log = logging.getLogger(__name__)

TestFormat = Literal["auto", "humaneval", "asserts", "pytest"]
_FORMATS = ("auto", "humaneval", "asserts", "pytest")
_FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
_PROGRAM = "program.py"


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
    guard: bool = True
    namespaces: bool = True
    backend: Backend = "subprocess"
    python: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)

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
            "guard": self.guard,
            "namespaces": self.namespaces,
            "backend": self.backend,
            "extra_env": self.extra_env,
        }
        if self.python is not None:
            options["python"] = self.python
        return SandboxConfig(**options)


@dataclass(frozen=True)
class ProgramPlan:
    """The files of one run, which of them to run, and how."""

    files: Mapping[str, str]
    entry: str
    mode: RunMode


def candidate_code(text: str) -> str:
    """The code of a completion: its last fenced Python block, or the whole text."""
    blocks = _FENCE_RE.findall(text)
    return str(blocks[-1]) if blocks else text


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


def detect_test_format(tests: str, entry_point: str | None) -> TestFormat:
    """Which format ``tests`` is in (pure). ``def check(`` with an entry point means HumanEval."""
    if re.search(r"^def check\(", tests, re.MULTILINE) and entry_point:
        return "humaneval"
    if re.search(r"^(?:async )?def test_|^class Test", tests, re.MULTILINE):
        return "pytest"
    if _is_assert_list(tests):
        return "asserts"
    raise DataError(
        "cannot tell the tests' format (expected a HumanEval check(), assert statements or "
        "pytest test functions); set test_format",
        field="tests",
    )


def _tests_of(problem: Problem) -> str:
    if problem.tests:
        return problem.tests
    test_list = problem.metadata.get("test_list")
    if isinstance(test_list, Sequence) and not isinstance(test_list, str) and test_list:
        return "\n".join(str(test) for test in test_list)
    raise DataError(f"problem {problem.id!r} has no tests", field="tests")


def build_program(
    problem: Problem, completion: str, test_format: TestFormat = "auto"
) -> ProgramPlan:
    """The files that test ``completion`` against ``problem``'s tests (pure)."""
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
        body = f"{prompt}\n{code}" if defines_entry else prompt + code
        program = f"{body}\n\n{tests}\n\ncheck({problem.entry_point})\n"
        return ProgramPlan({_PROGRAM: program}, _PROGRAM, "script")
    if chosen == "asserts":
        return ProgramPlan({_PROGRAM: f"{code}\n\n{tests}\n"}, _PROGRAM, "script")
    module = str(problem.metadata.get("module", "solution"))
    if not module.isidentifier():
        raise DataError(f"module name {module!r} is not an identifier", field="metadata.module")
    files = {f"{module}.py": code, f"test_{module}.py": tests}
    return ProgramPlan(files, f"test_{module}.py", "pytest")


class UnitTestVerifier:
    """Runs each candidate against the problem's tests in a sandbox. See the module docstring."""

    def __init__(self, config: UnitTestConfig | None = None, **options: Any) -> None:
        if config is None:
            config = build_config(UnitTestConfig, options, "UnitTestVerifier")
        elif options:
            raise ConfigError("pass either a config or keyword options to UnitTestVerifier")
        self.config = config
        self._sandbox = config.sandbox()
        self._bound = LoopBound(config.concurrency)

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        check_code_execution_allowed(self.config.allow_code_execution, "UnitTestVerifier")
        plans: list[ProgramPlan | DataError] = []
        for candidate in candidates:
            try:
                plans.append(build_program(problem, candidate.text, self.config.test_format))
            except DataError as exc:
                plans.append(exc)
        return list(await asyncio.gather(*(self._run(plan) for plan in plans)))

    async def _run(self, plan: ProgramPlan | DataError) -> Score:
        if isinstance(plan, DataError):
            return Score(0.0, verdict=False, reason=str(plan), details={"outcome": "error"})
        async with self._bound.semaphore():
            result = await run_untrusted(plan.files, plan.entry, self._sandbox, mode=plan.mode)
        log.debug("unit tests: %s in %.3f s: %s", result.outcome, result.duration_s, result.reason)
        passed = result.outcome == "pass"
        return Score(
            1.0 if passed else 0.0,
            verdict=passed,
            reason=f"{result.outcome}: {result.reason}",
            details=result.to_details(),
        )
