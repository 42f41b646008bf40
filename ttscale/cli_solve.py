"""What ``ttscale solve`` shows and writes around its run: the progress bar while problems
finish, the summary after (coverage with bands, accuracy, spend, the law fit), and the problem
file beside human-eval output."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ttscale.errors import ConfigError, DataError, TTScaleError
from ttscale.tables import print_table
from ttscale.words import plural

__all__ = [
    "SUMMARY_CONFIDENCE",
    "band_text",
    "coverage_rows",
    "human_eval_problem_file",
    "print_summary",
    "solved_text",
    "spread_text",
    "styled",
    "with_progress",
]

SUMMARY_CONFIDENCE = 0.9  # the summary's intervals, as ttscale fit's
T = TypeVar("T")


def styled(label: str, style: str, message: object) -> Text:
    """``label`` in ``style``, then ``message`` as plain text (never read as markup)."""
    return Text.assemble((label, style), " ", str(message))


def with_progress(console: Console, total: int, run: Callable[..., T]) -> T:
    """``run(on_problem=...)``'s result, with a progress bar of its ``total`` problems (samples
    a second, tokens, accuracy so far) on ``console``."""
    columns = (
        TextColumn("[bold]solve"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("solve", total=total, status="")
        seen = {"samples": 0, "tokens": 0, "correct": 0, "done": 0}
        clock = time.perf_counter()

        def on_problem(record: dict[str, Any]) -> None:
            seen["done"] += 1
            seen["samples"] += int(record["n"])
            seen["tokens"] += int(record["usage"]["total_tokens"])
            seen["correct"] += int(bool(record["correct"]))
            rate = seen["samples"] / max(time.perf_counter() - clock, 1e-9)
            progress.update(
                task,
                advance=1,
                status=(
                    f"{rate:.1f} samples/s  {seen['tokens']} tokens  "
                    f"accuracy {seen['correct'] / seen['done']:.0%}"
                ),
            )

        result = run(on_problem=on_problem)
        progress.update(task, completed=total)
    return result


def print_summary(summary: Any, plot: bool, out: Console, err: Console) -> None:
    """The run's summary on ``out`` (coverage with bands, accuracy, spend, the law fit), and
    why it stopped early or has no law fit on ``err``."""
    records = summary.records
    table = Table(
        "k",
        "coverage pass@k ± se [90% CI]",
        title=f"{plural('problem', len(records))}, {summary.model}",
        caption="se: sd over problems / sqrt(P); CI: percentile bootstrap over problems",
    )
    for k_value, coverage, band in coverage_rows(records):
        table.add_row(str(k_value), band_text(coverage, band))
    print_table(out, table)
    usage = summary.usage
    chosen = [bool(r["correct"]) for r in records]
    if summary.k > 1:
        # k answers per problem: solved when any is right; the first answer alone is top-1.
        firsts = [bool(r.get("correct_first", r["correct"])) for r in records]
        accuracy = (
            f"strategy pass@{summary.k} of its selection {solved_text(chosen)}, first answer "
            f"{solved_text(firsts)}; ± se [90% CI]: selection {spread_text(chosen)}, first "
            f"answer {spread_text(firsts)}"
        )
    else:
        accuracy = f"strategy accuracy {solved_text(chosen)} {spread_text(chosen)}"
    out.print(
        f"{accuracy}; this run: {plural('sample', usage.samples)}, "
        f"{plural('request', usage.requests)}, "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"${usage.cost:.4f}, {summary.wall_time_s:.1f} s"
        + (
            f"; {plural('problem', summary.skipped)} resumed from the output"
            if summary.skipped
            else ""
        )
        + (
            f"; {plural('sample', summary.replayed_samples)} replayed"
            if summary.replayed_samples
            else ""
        )
    )
    if summary.stopped:
        err.print(
            styled(
                "stopped:",
                "yellow",
                f"{summary.stopped}; {plural('problem', summary.unfinished)} left unfinished "
                "(what they drew is journalled). Rerun with a larger --run-budget to go on.",
            )
        )
    if plot and len(records) >= 2:
        try:
            from ttscale.report import fit_report, offline_bands, render_table, sample_rows

            extra, bands, _ = offline_bands(sample_rows(summary.out))
            report = fit_report(
                summary.out,
                summary.out.parent / (summary.out.stem + "-fit"),
                extra_columns=extra,
                extra_bands=bands,
            )
        except TTScaleError as exc:
            err.print(styled("no law fit:", "yellow", exc))
            return
        columns = ["k", "coverage", "fit", "beta_fit", *extra, "tokens"]
        print_table(out, render_table(report, columns=columns))
        if report.plot_path is not None:
            out.print(f"plot: {report.plot_path}")


def solved_text(solved: list[bool]) -> str:
    """``0.833 (5/6)``: the share of problems solved; ``- (0/0)`` when none finished."""
    if not solved:
        return "- (0/0)"
    return f"{sum(solved) / len(solved):.3f} ({sum(solved)}/{len(solved)})"


def spread_text(solved: list[bool]) -> str:
    """``± 0.167 [0.500, 1.000]``: the standard error of the share solved and its 90% percentile
    bootstrap interval over problems (seed 0), as ``ttscale fit`` gives its values."""
    import numpy as np

    from ttscale.report import curve_bands

    if not solved:
        return ""
    values = np.asarray(solved, dtype=np.float64)[:, None]
    ((se, low, high),) = curve_bands(
        values, confidence=SUMMARY_CONFIDENCE, n_resamples=1000, seed=0
    )
    spread = "" if math.isnan(se) else f"± {se:.3f} "
    return f"{spread}[{low:.3f}, {high:.3f}]"


def coverage_rows(records: list[dict[str, Any]]) -> list[tuple[int, float, Any]]:
    """Coverage (unbiased pass@k) at k = 1, 2, 4, ... up to the fewest samples of a problem, each
    with its band ``(se, low, high)``: the sd over problems / sqrt(P) and the 90% percentile
    bootstrap over problems (seed 0), as ``ttscale fit`` gives."""
    import numpy as np

    from ttscale.estimators import per_problem_pass_at_k
    from ttscale.report import curve_bands

    if not records:
        return []
    smallest = min(int(r["n"]) for r in records)
    ns = [int(r["n"]) for r in records]
    cs = [int(r["num_correct"]) for r in records]
    ks = []
    k = 1
    while k <= smallest:
        ks.append(k)
        k *= 2
    if ks and ks[-1] != smallest:
        ks.append(smallest)
    if not ks:
        return []
    values = np.stack([per_problem_pass_at_k(ns, cs, k) for k in ks], axis=1)
    bands = curve_bands(values, confidence=SUMMARY_CONFIDENCE, n_resamples=1000, seed=0)
    return [
        (k, float(value), band)
        for k, value, band in zip(ks, values.mean(axis=0), bands, strict=True)
    ]


def band_text(value: float, band: Any) -> str:
    """``0.733 ± 0.081 [0.600, 0.867]``: a value, its standard error and its interval."""
    se, low, high = band
    spread = "" if math.isnan(se) else f" ± {se:.3f}"
    return f"{value:.3f}{spread} [{low:.3f}, {high:.3f}]"


def human_eval_problem_file(out: Path, problems: Any) -> str:
    """Write the problem file beside the human-eval samples (the problems they attempt); what
    to tell the user: the command that scores them, or why there is none."""
    import shlex

    from ttscale.records import human_eval_problem_lines

    samples = out.with_name(out.stem + ".human-eval.jsonl")
    problem_file = out.with_name(out.stem + ".human-eval-problems.jsonl")
    with samples.open(encoding="utf-8") as handle:
        attempted = {json.loads(line)["task_id"] for line in handle if line.strip()}
    try:
        lines = human_eval_problem_lines(problems, attempted)
    except DataError as exc:
        return f"{samples} holds the completions; no problem file for human-eval: {exc}"
    try:
        problem_file.write_text("".join(lines), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {problem_file}: {exc.strerror or exc}") from exc
    return (
        "score with human-eval: evaluate_functional_correctness "
        f"{shlex.quote(str(samples))} --problem_file={shlex.quote(str(problem_file))}"
    )
