"""Rendering ``ttscale fit``'s table (a ``rich`` Table) from a computed report
(:class:`~ttscale.report.FitReport`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from ttscale.report import FitReport

__all__ = ["render_table"]


def _cell(column: str, row: Mapping[str, Any]) -> str:
    value = row.get(column)
    if value is None:
        return "-"
    if column == "k":
        return str(value)
    if column == "tokens":
        return f"{value:,.0f}"
    if column == "cost":
        return f"${value:,.4f}"
    low = row.get("coverage_low" if column == "coverage" else f"{column} low")
    high = row.get("coverage_high" if column == "coverage" else f"{column} high")
    if low is not None and high is not None:
        return f"{value:.4f} [{low:.3f}, {high:.3f}]"
    return f"{value:.4f}"


def render_table(report: FitReport, columns: Sequence[str] | None = None) -> Table:
    """The report's table as a ``rich`` Table (rows past the data show the fit only)."""
    chosen = list(columns) if columns is not None else list(report.columns)
    table = Table(
        *chosen,
        title=f"coverage of {report.problems} problems ({report.source}); "
        f"[{report.confidence:.0%} CI, bootstrap over problems]",
    )
    for row in report.rows:
        table.add_row(*(_cell(column, row) for column in chosen))
    if report.power is not None and report.power_error is not None:
        spans = report.power_intervals.intervals if report.power_intervals else None
        a_span = f" [{spans['a'][0]:.4g}, {spans['a'][1]:.4g}]" if spans else ""
        b_span = f" [{spans['b'][0]:.4g}, {spans['b'][1]:.4g}]" if spans else ""
        caption = (
            f"power law a={report.power.a:.4g}{a_span} b={report.power.b:.4g}{b_span}; fit error "
            f"in-sample (k 1..{report.max_k}) {report.power_error.mean:.4f} ± "
            f"{report.power_error.sd:.4f}"
        )
        llmonk = report.llmonk_errors[0]
        if llmonk is not None:
            caption += f", over 100 log-spaced k {llmonk.mean:.4f} ± {llmonk.sd:.4f}"
        held = report.held_out
        if held is not None:
            caption += (
                f", held-out (fitted on {held.fit_k} samples, scored at k "
                f"{int(held.held_out_ks[0])}..{int(held.held_out_ks[-1])}) "
                f"{held.power_error.mean:.4f} ± {held.power_error.sd:.4f}"
            )
        table.caption = caption
    return table
