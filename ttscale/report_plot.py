"""Drawing ``ttscale fit``'s coverage plot (a PNG) from a computed report
(:class:`~ttscale.report.FitReport`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ttscale.errors import ConfigError

if TYPE_CHECKING:
    from ttscale.report import FitReport

__all__ = ["plot_report"]


def plot_report(report: FitReport, extras: Mapping[str, Mapping[int, float]], path: Path) -> None:
    """Draw the coverage, the laws, their band and the extra columns to ``path``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError(
            "plotting needs matplotlib; install it with: pip install 'ttscale[laws]'"
        ) from exc
    # A bare Figure on the Agg canvas: no pyplot, so no global backend or state is touched.
    figure = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    measured = [row for row in report.rows if row["coverage"] is not None]
    axes.plot(
        [row["k"] for row in measured],
        [row["coverage"] for row in measured],
        "o",
        markersize=3,
        label="coverage (unbiased pass@k)",
    )
    axes.fill_between(
        [row["k"] for row in measured],
        [row["coverage_low"] for row in measured],
        [row["coverage_high"] for row in measured],
        alpha=0.15,
        label=f"coverage {report.confidence:.0%} CI (bootstrap over problems)",
    )
    # The laws drawn over a log-spaced grid of k, not only at the measured ones.
    dense = np.unique(np.geomspace(1, report.rows[-1]["k"], 200).round()).astype(np.int64)
    if report.power is not None:
        axes.plot(
            dense,
            report.power.predict(dense),
            "-",
            label=f"power law a={report.power.a:.3g}, b={report.power.b:.3g}",
        )
    if report.beta is not None:
        axes.plot(
            dense,
            report.beta.predict(dense),
            "--",
            label=f"Beta({report.beta.alpha:.3g}, {report.beta.beta:.3g})",
        )
    if report.band is not None:
        axes.fill_between(
            report.band.ks,
            report.band.low,
            report.band.high,
            alpha=0.2,
            label=f"{report.band.confidence:.0%} band (bootstrap over problems)",
        )
    for name, values in extras.items():
        points = sorted(values.items())
        if points:
            (line,) = axes.plot([k for k, _ in points], [v for _, v in points], ".-", label=name)
            banded = [row for row in report.rows if row.get(f"{name} low") is not None]
            if banded:  # the strategy's CI in its own colour
                axes.fill_between(
                    [row["k"] for row in banded],
                    [row[f"{name} low"] for row in banded],
                    [row[f"{name} high"] for row in banded],
                    color=line.get_color(),
                    alpha=0.12,
                )
    axes.axvline(report.max_k, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("samples per problem (k)")
    axes.set_ylabel("coverage")
    axes.set_ylim(0, 1.02)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    title = f"{report.problems} problems" + (f", {report.strategy}" if report.strategy else "")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
