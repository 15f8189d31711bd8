"""The GDU check's outputs: a terminal table of a :class:`GDUReport`, and its JSON and figures.

The figures themselves are drawn by :mod:`eqprop.analysis.gdu_plots`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from eqprop.analysis.gdu_plots import _plot_curves, _plot_layers, _plot_sweep
from eqprop.analysis.gdu_results import VARIANTS, GDUReport, _fmt

__all__ = ["format_table", "write_report"]


def format_table(report: GDUReport) -> str:
    """A short terminal table: per tensor RMSE and sign error per variant, layers, sweep slopes."""
    labels = list(VARIANTS.values())
    width = max(len(k) for k in report.shapes)
    shape_w = max(len("x".join(map(str, s))) for s in report.shapes.values())
    lines = [
        f"GDU check (EP vs BPTT): batch {report.batch}, T1 {report.free_steps} "
        f"({report.free_steps_taken} run), T2 {report.nudged_steps}, {report.schedule}, "
        f"{report.dtype}; free residual {_fmt(report.free_residual)}; {report.seconds:.1f} s"
    ]
    for c in report.comparisons:
        head = "".join(f"{lab:>9}" for lab in labels)
        lines.append("")
        lines.append(f"β = {c.beta:g}: relative RMSE over steps  |  sign error of the final update")
        lines.append(f"  {'tensor':<{width}}  {'shape':<{shape_w}}{head}  |{head}")
        for k, t in c.tensors.items():
            shape = "x".join(map(str, report.shapes[k]))
            rmse = "".join(f"{_fmt(t.rmse[v]):>9}" for v in VARIANTS)
            sign = "".join(f"{_fmt(t.sign_error[v], '.3f'):>9}" for v in VARIANTS)
            lines.append(f"  {k:<{width}}  {shape:<{shape_w}}{rmse}  |{sign}")
        rmse = "".join(f"{_fmt(c.totals[v]['rmse']):>9}" for v in VARIANTS)
        sign = "".join(f"{_fmt(c.totals[v]['sign_error'], '.3f'):>9}" for v in VARIANTS)
        lines.append(f"  {'all parameters':<{width}}  {'':<{shape_w}}{rmse}  |{sign}")
        final = ", ".join(f"{VARIANTS[v]} {_fmt(c.totals[v]['final_error'])}" for v in VARIANTS)
        lines.append(f"  final update, relative error against BPTT: {final}")
        ratios = ", ".join(f"{k} {_fmt(r, '.3f')}" for k, r in c.layers.items())
        lines.append(f"  layer ratio 2|sym−BPTT|/(|+β−BPTT|+|−β−BPTT|) (<1: sym helps): {ratios}")
    if report.sweep is not None:
        s = report.sweep
        slopes = ", ".join(f"{VARIANTS[v]} {_fmt(s.slopes[v], '.2f')}" for v in VARIANTS)
        lines.append("")
        lines.append(
            f"β sweep {min(s.betas):.0e}..{max(s.betas):.0e} ({len(s.betas)} values), "
            f"log-log slope of the final-update error: {slopes} (expect 1, 1, 2)"
        )
    return "\n".join(lines)


def write_report(
    report: GDUReport, out_dir: str | Path, *, beta: float | None = None
) -> dict[str, Path]:
    """Write ``gdu.json`` and the PNG figures into ``out_dir`` (created if needed).

    Figures: ``gdu_curves.png`` (cumulative EP ±β, symmetric and BPTT updates of a few elements
    of up to 6 tensors), ``gdu_layers.png`` (per-layer ratio, line at 1) and, with a sweep,
    ``gdu_beta_sweep.png`` (log-log errors with fitted slopes).

    Args:
        report: what :func:`check_gdu` returned.
        out_dir: output folder.
        beta: |β| of the curves figure (default: the largest compared, where EP ± visibly
            part from BPTT).

    Returns:
        File kind (``"json"``, ``"curves"``, ``"layers"``, ``"beta_sweep"``) → path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "gdu.json", "curves": out / "gdu_curves.png"}
    paths["layers"] = out / "gdu_layers.png"
    data = _json_safe(report.to_dict())
    paths["json"].write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    if beta is None:
        comparison = max(report.comparisons, key=lambda c: c.beta)
    else:
        comparison = report.comparison(beta)
    _plot_curves(report, comparison, paths["curves"])
    _plot_layers(report, paths["layers"])
    if report.sweep is not None:
        paths["beta_sweep"] = out / "gdu_beta_sweep.png"
        _plot_sweep(report.sweep, paths["beta_sweep"])
    return paths


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by None (strict JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
