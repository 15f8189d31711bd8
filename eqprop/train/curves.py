"""``curves.png``: error rates, losses and learning rates of a run against the epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eqprop.train.checkpoint import atomic_write

__all__ = ["draw_curves"]


def _is_number(value: Any) -> bool:
    # bools are ints in Python but are flags, not curves.
    return isinstance(value, int | float) and not isinstance(value, bool)


def draw_curves(history: list[dict[str, Any]], fields: list[str], path: Path) -> None:
    """Draw every numeric field of ``history`` whose name holds ``error``, ``loss`` or starts
    with ``lr`` into ``path`` (written atomically), one panel per kind."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series: dict[str, tuple[list[int], list[float]]] = {}
    for key in fields:
        if key == "epoch":
            continue
        points = [(r["epoch"], float(r[key])) for r in history if _is_number(r.get(key))]
        if points:
            series[key] = ([p[0] for p in points], [p[1] for p in points])
    panels: list[tuple[str, list[str]]] = [
        ("error rate", [k for k in series if "error" in k.lower()]),
        ("loss", [k for k in series if "loss" in k.lower()]),
    ]
    lr_keys = [k for k in series if k.lower().startswith("lr")]
    if lr_keys:
        panels.append(("learning rate", lr_keys))

    # A bare Figure with its own Agg canvas: no pyplot, so no global backend state or
    # figure registry is touched (safe in headless runs and alongside user plotting).
    fig = Figure(figsize=(7.0, 2.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, keys) in zip(axes, panels, strict=True):
        for key in keys:
            xs, ys = series[key]
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if keys:
            ax.legend(fontsize="small")
    axes[-1].set_xlabel("epoch")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
