"""``tolerance``: steps until a step changes the state by less than tol, and ``tolerance.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import SCHEDULE_NAMES, TOLERANCES, pyplot
from context import Context

HATCHES = {"synchronous": None, "even_odd": "//", "forward_backward": ".."}


def run(ctx: Context) -> dict[str, Any]:
    """Steps until a step changes the state by less than tol (Solver(tol, check_every=1))."""
    cap = ctx.s.trace_steps
    rows = []
    for case in ctx.cases():
        for sch in SCHEDULE_NAMES:
            tr = ctx.trace(case, sch)
            for tol in TOLERANCES:
                steps = tr.first_at_most(tol, strict=True)
                rows.append(
                    {
                        "net": case.key,
                        "schedule": sch,
                        "tol": tol,
                        "steps": steps if steps is not None and steps <= cap else None,
                    }
                )
    plot_tolerance(rows, cap, ctx.out / "tolerance.png")
    return {
        "cap": cap,
        "tolerances": list(TOLERANCES),
        "note": "steps = first step whose max |Δs| < tol, as Solver(tol=tol, check_every=1) "
        "stops; null = not reached within cap",
        "rows": rows,
        "plot": str(ctx.out / "tolerance.png"),
    }


def plot_tolerance(rows: list[dict[str, Any]], cap: int, path: Path) -> None:
    """Grouped bars: steps to reach each tolerance, per net and schedule (log y)."""
    plt = pyplot()
    from matplotlib.patches import Patch

    nets = list(dict.fromkeys(r["net"] for r in rows))
    combos = [(sch, tol) for sch in SCHEDULE_NAMES for tol in TOLERANCES]
    width = 0.8 / len(combos)
    fig, ax = plt.subplots(figsize=(max(7, 2.5 * len(nets)), 5), constrained_layout=True)
    lookup = {(r["net"], r["schedule"], r["tol"]): r["steps"] for r in rows}
    for j, (sch, tol) in enumerate(combos):
        color, hatch = f"C{TOLERANCES.index(tol)}", HATCHES[sch]
        for i, net in enumerate(nets):
            v = lookup.get((net, sch, tol))
            x = i - 0.4 + width * (j + 0.5)
            if v is not None:
                ax.bar(x, v, width, color=color, hatch=hatch, edgecolor="black", lw=0.5)
            else:  # not reached within the cap: an empty dashed bar up to the cap
                ax.bar(x, cap, width, fill=False, hatch=hatch, edgecolor=color, ls="--", lw=0.8)
                ax.text(x, cap, f">{cap}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(nets)), nets, rotation=15, fontsize=8)
    ax.set(yscale="log", ylabel=f"steps (cap {cap})", ylim=(1, cap * 3))
    ax.set_title("Steps until a step changes the state by less than tol (max |Δs| < tol)")
    handles = [
        Patch(
            facecolor=f"C{TOLERANCES.index(tol)}",
            edgecolor="black",
            lw=0.5,
            hatch=HATCHES[sch],
            label=f"{sch}, tol {tol:g}",
        )
        for sch, tol in combos
    ]
    handles.append(Patch(fill=False, edgecolor="grey", ls="--", label="not reached within cap"))
    ax.legend(handles=handles, fontsize=7, ncol=3, loc="upper left")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
