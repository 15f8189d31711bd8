"""The GDU check's figures: matplotlib plots of a :class:`GDUReport`, each saved as a PNG.

Every figure has an Agg canvas of its own (no pyplot, no global backend state);
:func:`eqprop.analysis.gdu_report.write_report` decides which figures to write and where.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from eqprop.analysis.gdu_results import VARIANTS, BetaComparison, BetaSweep, GDUReport, _fmt


def _new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches with an Agg canvas of its own."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot, no global backend state
    return fig


#: Line style per series (BPTT is also drawn thick and faint).
_STYLES: dict[str, str] = {"plus": "--", "minus": ":", "sym": "-", "bptt": "-"}


def _curve_tensors(report: GDUReport, comparison: BetaComparison, limit: int) -> list[str]:
    """Up to ``limit`` tensors for the curves figure: weights first, then neurons, then others."""
    keys = list(comparison.curves)
    weights = [k for k in keys if not k.startswith("neurons.") and len(report.shapes[k]) >= 2]
    neurons = [k for k in keys if k.startswith("neurons.")]
    others = [k for k in keys if k not in weights and k not in neurons]
    return [*weights, *neurons, *others][:limit]


def _plot_curves(report: GDUReport, comparison: BetaComparison, path: Path) -> None:
    """Cumulative EP ±β, symmetric and BPTT updates of a few elements per tensor."""
    shown = _curve_tensors(report, comparison, 6)
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = _new_figure(4.2 * cols, 3.2 * rows + 0.6)
    steps = list(range(report.nudged_steps + 1))
    for i, k in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        curves = comparison.curves[k]
        for e in range(len(curves.elements)):
            color = f"C{e}"
            ax.plot(steps, curves.series["bptt"][e], color=color, lw=4, alpha=0.3)
            for v in VARIANTS:
                ax.plot(steps, curves.series[v][e], color=color, ls=_STYLES[v], lw=1.2)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("nudged step t (BPTT: t steps back)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [Line2D([], [], color="k", lw=4, alpha=0.3, label="BPTT")] + [
        Line2D([], [], color="k", ls=_STYLES[v], label=f"EP {VARIANTS[v]}") for v in VARIANTS
    ]
    fig.suptitle(f"cumulative updates, |β| = {comparison.beta:g}", fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    fig.savefig(path, dpi=110)


def _plot_layers(report: GDUReport, path: Path) -> None:
    """Per weight layer and |β|, the symmetric-vs-one-sided ratio (log axis, line at 1)."""
    layers = list(report.layers)
    fig = _new_figure(max(5.5, 1.1 * len(layers) + 1.5), 3.6)
    ax = fig.add_subplot()
    n = len(report.comparisons)
    width = 0.8 / n
    for i, c in enumerate(report.comparisons):
        shown = [(j, r) for j, k in enumerate(layers) if (r := c.layers[k]) is not None]
        pos = [j + (i - (n - 1) / 2) * width for j, _ in shown]
        val = [r for _, r in shown]
        ax.bar(pos, val, width=width, label=f"|β| = {c.beta:g}")
    # Ratios span decades (O(β) for a converged net): a log axis keeps every bar visible.
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_xticks(range(len(layers)), layers, rotation=20, fontsize=8)
    ax.set_ylabel("2|sym−BPTT| / (|+β−BPTT| + |−β−BPTT|)", fontsize=8)
    ax.set_title("symmetric vs one-sided EP error per layer (<1: symmetric helps)", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=110)


def _plot_sweep(sweep: BetaSweep, path: Path) -> None:
    """The sweep's errors against |β|, log-log, with the fitted lines and slopes."""
    fig = _new_figure(5.0, 3.8)
    ax = fig.add_subplot()
    betas = np.asarray(sweep.betas)
    names = {"plus": "one-sided +β", "minus": "one-sided −β", "sym": "symmetric"}
    for i, v in enumerate(VARIANTS):
        errs = np.asarray(sweep.errors[v])
        ok = errs > 0
        slope, intercept = sweep.slopes[v], sweep.intercepts[v]
        label = f"{names[v]} (slope {_fmt(slope, '.2f')})"
        ax.plot(betas[ok], errs[ok], "o", color=f"C{i}", label=label, ms=4)
        if slope is not None and intercept is not None:
            ax.plot(betas, np.exp(intercept) * betas**slope, color=f"C{i}", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|β|")
    ax.set_ylabel("‖EP − BPTT‖ / ‖BPTT‖")
    ax.set_title("EP estimate error against BPTT", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
