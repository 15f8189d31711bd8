"""``residual``: convergence of the free phase per net and schedule, and ``residual.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import SCHEDULE_NAMES, log, max_abs_diff, pyplot
from context import Case, Context


def run(ctx: Context) -> dict[str, Any]:
    """Residual and distance to the fixed point against steps, per net and schedule."""
    s = ctx.s
    out = {case.key: _entry(ctx, case) for case in ctx.cases()}
    plot_residual(ctx, ctx.out / "residual.png")
    return {
        "trace_steps": s.trace_steps,
        "reference_max_steps": s.ref_steps,
        "reference_stop_residual": s.ref_tol,
        "residual_definition": "max over layers, units and batch of |s_{t+1} - s_t|",
        "nets": out,
        "plot": str(ctx.out / "residual.png"),
    }


def _entry(ctx: Context, case: Case) -> dict[str, Any]:
    """One net's traces, summarised at the step count T1 it is matched against."""
    m = ctx.s.match_steps
    log(f"residual: {case.key}")
    traces = {sch: ctx.trace(case, sch) for sch in SCHEDULE_NAMES}
    target = traces["synchronous"].residual_at(m)
    entry: dict[str, Any] = {"batch": ctx.s.batch, **case.info}
    entry[f"residual_at_{m}_sync"] = target
    entry[f"steps_to_match_{m}_sync"] = {
        sch: (tr.first_at_most(target) if target is not None else None)
        for sch, tr in traces.items()
    }
    entry[f"distance_at_{m}"] = {
        sch: dict(zip(tr.probes, tr.distance, strict=True)).get(m) for sch, tr in traces.items()
    }
    entry["equilibria_max_abs_diff"] = max_abs_diff(
        traces["synchronous"].reference, traces["even_odd"].reference
    )
    entry["schedules"] = {
        sch: {
            "steps": tr.probes,
            "residual": [tr.residual_at(k) for k in tr.probes],
            "distance_to_reference": tr.distance,
            "reference_steps": tr.reference_steps,
            "reference_residual": tr.reference_residual,
            "exact_fixed_point_at": tr.exact_at,
        }
        for sch, tr in traces.items()
    }
    return entry


def plot_residual(ctx: Context, path: Path) -> None:
    """Log residual and log distance to the fixed point against steps."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    styles = {"synchronous": "-", "even_odd": "--", "forward_backward": ":"}
    for i, case in enumerate(ctx.cases()):
        for sch in SCHEDULE_NAMES:
            tr = ctx.cached_trace(case, sch)
            if tr is None:
                continue
            label = f"{case.key} · {sch}"
            kw = {"color": f"C{i}", "linestyle": styles[sch], "label": label}
            res = [r if r > 0 else float("nan") for r in tr.residual]
            axes[0].plot(range(1, len(res) + 1), res, **kw)
            dist = [d if d > 0 else float("nan") for d in tr.distance]
            axes[1].plot(tr.probes, dist, marker=".", **kw)
    axes[0].set(
        yscale="log",
        xlabel="step",
        ylabel="max |s(t+1) − s(t)|",
        title="Residual per step (free phase)",
    )
    axes[1].set(
        yscale="log",
        xlabel="step",
        ylabel="max |s(t) − s_ref|",
        title="Distance to the reference fixed point",
    )
    axes[0].axvline(ctx.s.match_steps, color="grey", linewidth=0.8, linestyle=":")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
