"""Mutation testing: change the code one operator or constant at a time and see the tests fail.

For each target module every mutation point is enumerated from its AST: arithmetic operators
(+ -, * /, // %, << >>, & | ^), comparisons (< <=, > >=, == !=, is / is not, in / not in), and/or,
a dropped ``not`` or unary minus, the small integer constants 0, 1 and 2 (0 -> 1, k -> k + 1) and
min <-> max. Strings, f-strings, logging calls, annotations, ``axis=`` and subscripts are left
alone: they change messages or fail on a shape at once, not numbers. Each mutant is
written into a private copy of the package (laid out as installed, first on PYTHONPATH, so the
working tree is never touched) and the module's tests run against it with ``-x``; a failure or a
timeout kills it. Prints one line per mutant and a summary; ``--json`` writes every result.

Before any mutant, each module's tests run once unmutated in the same kind of copy: they must
pass (else every mutant would look killed), and their time sets the per-mutant timeout
(``--timeout-factor`` x that run + 30 s; a mutant that makes the tests hang is killed by it).
Mutants known to be equivalent (the program computes the same thing) are listed with the reason
in ``benchmarks/mutation_equivalent.json``, keyed by module, the mutated source line and the
change; the summary leaves them out of the score: killed / (run - equivalent). The last full
run's tally, its equivalent mutants and the tests added for its survivors are in
``benchmarks/mutation_results.md``.

    .venv/bin/python benchmarks/mutation.py [--module ttscale/laws.py ...] [--jobs 2]
        [--json out.json]
        [--sample 100 --seed 0]   # a seeded sample per module when a module has more
        [--only 12,40]   # mutant numbers of one module, e.g. to recheck survivors
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"

TESTS = {
    "ttscale/budget.py": ["tests/test_budget_limits.py", "tests/test_budget.py"],
    "ttscale/estimators.py": ["tests/test_estimators.py", "tests/test_laws.py"],
    "ttscale/laws.py": ["tests/test_laws.py"],
    "strategies/selection.py": [
        "tests/test_rules_thresholds.py",
        "tests/test_strategies_rules.py",
        "tests/test_strategies_offline.py",
    ],
    "strategies/stopping.py": [
        "tests/test_rules_thresholds.py",
        "tests/test_strategies_rules.py",
        "tests/test_strategies_offline.py",
    ],
    "strategies/offline.py": [
        "tests/test_strategies_offline.py",
        # DeepConf's replays inside evaluate; the command-line tests of that file are left out.
        "tests/test_deepconf_offline.py::test_replaying_one_order_at_every_k_is_the_simulation_of_its_prefix",
        "tests/test_deepconf_offline.py::test_expected_deepconf_curves_with_their_tokens_and_errors",
        "tests/test_deepconf_offline.py::test_deepconf_without_logprobs_is_refused_with_the_flag_to_use",
    ],
    "strategies/offline_scan.py": ["tests/test_strategies_offline.py"],
}

SWAPS: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mod,
    ast.Mod: ast.FloorDiv,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.And: ast.Or,
    ast.Or: ast.And,
}


@dataclass(frozen=True)
class Mutant:
    module: str
    number: int
    line: int
    change: str
    source_line: str = ""


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    killed: bool
    how: str
    seconds: float


def _skipped(tree: ast.AST) -> set[int]:
    """ids of nodes inside strings, f-strings, docstrings, logging calls and type annotations."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        inside = None
        if isinstance(node, ast.JoinedStr):
            inside = node
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            if isinstance(target, ast.Name) and target.id in ("log", "logging"):
                inside = node
        elif isinstance(node, ast.keyword) and node.arg == "axis":
            inside = node.value  # a wrong axis fails on shape at once: noise, not signal
        elif isinstance(node, ast.Subscript):
            inside = node.slice  # likewise an index into a shape or a tuple
        elif isinstance(node, ast.AnnAssign | ast.arg) and getattr(node, "annotation", None):
            inside = node.annotation
        elif isinstance(node, ast.FunctionDef) and node.returns is not None:
            inside = node.returns
        if inside is not None:
            skip.update(id(child) for child in ast.walk(inside))
    return skip


def _points(tree: ast.AST) -> list[tuple[ast.AST, str, object]]:
    """Every (node, description, replacement) mutation point, in source order."""
    skip = _skipped(tree)
    points: list[tuple[ast.AST, str, object]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        swappable = isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in SWAPS
        if swappable or isinstance(node, ast.BoolOp):
            new = SWAPS[type(node.op)]  # type: ignore[attr-defined]
            points.append((node, f"{type(node.op).__name__} -> {new.__name__}", new))
        elif isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                if type(op) in SWAPS:
                    new = SWAPS[type(op)]
                    points.append((node, f"{type(op).__name__} -> {new.__name__}", (position, new)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            points.append((node, f"drop {type(node.op).__name__}", "drop"))
        elif (
            isinstance(node, ast.Constant)
            and type(node.value) is int
            and not isinstance(node.value, bool)
            and node.value in (0, 1, 2)
        ):
            value = node.value
            points.append((node, f"{value} -> {value + 1 if value else 1}", "bump"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if name in ("min", "max", "minimum", "maximum"):
                other = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum"}
                points.append((node, f"{name} -> {other[name]}", other[name]))
    points.sort(key=lambda p: (getattr(p[0], "lineno", 0), getattr(p[0], "col_offset", 0), p[1]))
    return points


class _Apply(ast.NodeTransformer):
    def __init__(self, target: ast.AST, how: object) -> None:
        self.target, self.how = target, how

    def visit(self, node: ast.AST) -> ast.AST:
        node = super().visit(node)
        if node is not self.target:
            return node
        how = self.how
        if isinstance(node, ast.BinOp | ast.AugAssign | ast.BoolOp) and isinstance(how, type):
            node.op = how()
        elif isinstance(node, ast.Compare) and isinstance(how, tuple):
            node.ops[how[0]] = how[1]()
        elif isinstance(node, ast.UnaryOp) and how == "drop":
            return node.operand
        elif isinstance(node, ast.Constant) and how == "bump":
            node.value = node.value + 1 if node.value else 1
        elif isinstance(node, ast.Call) and isinstance(how, str):
            if isinstance(node.func, ast.Name):
                node.func.id = how
            elif isinstance(node.func, ast.Attribute):
                node.func.attr = how
        return node


def mutants(module: str, sample: int | None = None, seed: int = 0) -> list[tuple[Mutant, str]]:
    """The module's mutants (a seeded sample of ``sample`` when it has more), with their source."""
    source = (ROOT / module).read_text()
    tree = ast.parse(source)
    points = _points(tree)
    numbers = list(range(len(points)))
    if sample is not None and len(points) > sample:
        numbers = sorted(random.Random(f"{seed}|{module}").sample(numbers, sample))
    found = []
    for number in numbers:
        node, change, how = points[number]
        copied = copy.deepcopy(tree)
        # deepcopy keeps the walk order, so the n-th point of the copy is the same node.
        target = _points(copied)[number][0]
        mutated = ast.unparse(ast.fix_missing_locations(_Apply(target, how).visit(copied)))
        line = getattr(node, "lineno", 0)
        text = source.splitlines()[line - 1].strip() if line else ""
        found.append((Mutant(module, number, line, change, text), mutated))
    return found


def equivalent_reasons(path: Path = EQUIVALENT) -> dict[tuple[str, str, str], str]:
    """(module, stripped source line, change) -> why the mutant computes the same thing."""
    if not path.exists():
        return {}
    return {
        (entry["module"], entry["source_line"], entry["change"]): entry["why"]
        for entry in json.loads(path.read_text())
    }


def _installed_layout(into: Path) -> Path:
    """A copy of the package laid out as installed (strategies/ and verifiers/ inside)."""
    package = into / "ttscale"
    shutil.copytree(ROOT / "ttscale", package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("strategies", "verifiers"):
        shutil.copytree(ROOT / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "examples" / "data", package / "data")
    return package


def _installed_path(module: str) -> str:
    for name in ("strategies", "verifiers"):
        if module.startswith(f"{name}/"):
            return f"ttscale/{module}"
    return module


def run_one(mutant: Mutant, source: str | None, timeout: float) -> Outcome:
    """Run the module's tests against the mutant (``source`` None: the module unmutated)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutant-") as folder:
        tree = Path(folder)
        _installed_layout(tree)
        if source is not None:
            (tree / _installed_path(mutant.module)).write_text(source)
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
        command += ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT)]
        command += [str(ROOT / test) for test in TESTS[mutant.module]]
        # The copy is the working directory: ``python -m`` puts it first on sys.path, where the
        # repository's own package would otherwise shadow the mutant.
        try:
            done = subprocess.run(
                command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return Outcome(mutant, True, "timeout", time.monotonic() - started)
    how = "tests failed" if done.returncode != 0 else "survived"
    if done.returncode not in (0, 1):
        how = f"pytest exit {done.returncode}"
    return Outcome(mutant, done.returncode != 0, how, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(TESTS))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--timeout", type=float, help="a fixed per-mutant timeout in seconds instead of the factor"
    )
    parser.add_argument(
        "--timeout-factor",
        type=float,
        default=3.0,
        help="a mutant's tests may take this many times the unmutated run, plus 30 s",
    )
    parser.add_argument("--only", help="comma-separated mutant numbers (one module)")
    parser.add_argument(
        "--sample", type=int, help="at most this many mutants per module, a seeded random sample"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    modules = args.module or sorted(TESTS)
    work = [item for module in modules for item in mutants(module, args.sample, args.seed)]
    if args.only:
        wanted = {int(v) for v in args.only.split(",")}
        work = [item for item in work if item[0].number in wanted]
    if args.list:
        for mutant, _ in work:
            print(f"{mutant.module}#{mutant.number} line {mutant.line}: {mutant.change}")
        return
    print(f"{len(work)} mutants over {', '.join(modules)}", flush=True)
    timeouts = _baseline_timeouts(sorted({m.module for m, _ in work}), args.jobs)
    timeouts = {
        module: args.timeout or args.timeout_factor * took + 30.0
        for module, took in timeouts.items()
    }
    outcomes = []
    # Interleave the modules, so a run cut short still covers each of them.
    work.sort(key=lambda item: (item[0].number % 7, item[0].module, item[0].number))
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, m, source, timeouts[m.module]) for m, source in work]
        for future in concurrent.futures.as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            m = outcome.mutant
            print(
                f"{'KILLED  ' if outcome.killed else 'SURVIVED'} {m.module}#{m.number} "
                f"line {m.line}: {m.change} ({outcome.how}, {outcome.seconds:.0f} s)",
                flush=True,
            )
    _summarise(outcomes, modules, equivalent_reasons())
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))


def _baseline_timeouts(modules: list[str], jobs: int) -> dict[str, float]:
    """Each module's tests once, unmutated: they must pass; returns how long each took."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(lambda m: run_one(Mutant(m, -1, 0, "none"), None, 3600.0), modules))
    for outcome in runs:
        if outcome.killed:
            sys.exit(f"{outcome.mutant.module}: its tests fail unmutated ({outcome.how})")
        print(
            f"baseline {outcome.mutant.module}: tests pass in {outcome.seconds:.0f} s", flush=True
        )
    return {outcome.mutant.module: outcome.seconds for outcome in runs}


def _summarise(
    outcomes: list[Outcome], modules: list[str], reasons: dict[tuple[str, str, str], str]
) -> None:
    totals = [0, 0, 0]
    for module in modules:
        mine = [o for o in outcomes if o.mutant.module == module]
        killed = sum(o.killed for o in mine)
        same = [o for o in mine if not o.killed and _key(o.mutant) in reasons]
        for outcome in same:
            m = outcome.mutant
            print(f"  equivalent {module}#{m.number} line {m.line}: {reasons[_key(m)]}")
        print(f"{module}: {killed}/{len(mine)} killed, {len(same)} survivors equivalent")
        totals = [totals[0] + len(mine), totals[1] + killed, totals[2] + len(same)]
    run, killed, same = totals
    if run > same:
        print(
            f"all: {run} run, {killed} killed, {same} equivalent, {run - killed - same} "
            f"other survivors: {killed}/{run - same} = {100 * killed / (run - same):.1f}% "
            "of non-equivalent mutants killed"
        )


def _key(mutant: Mutant) -> tuple[str, str, str]:
    return (mutant.module, mutant.source_line, mutant.change)


if __name__ == "__main__":
    main()
