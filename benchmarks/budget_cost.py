"""Cost of the claims' relaxation budgets: one EP training iteration over one backprop iteration.

Prints one JSON object. Usage: ``python benchmarks/budget_cost.py [--reps 5] [--threads 1]
[--claims benchmarks/results/claims.json] [--quick] [--only NAME[,NAME]]
[--rejoin results/budget_cost.json ...]``.

For each run of the ``budget`` group of ``claims.py`` (its preset and overrides), the network,
the estimator and the batch size are those ``eqprop train`` builds (``eqprop.train.builders``).
One EP training iteration (zero grads, estimate, SGD step) is timed against one backprop
iteration of the feedforward net of the same architecture (conv → pool → σ per layer, linear
readout, cross-entropy, backward, SGD step; ``common.feedforward_twin``; channels-last and
contiguous tensors, the faster counts) in the same process,
their calls interleaved so that a drift of the machine's speed weighs on both alike. Inputs are
random images of CIFAR-10's shape: the cost of a step does not depend on the pixels.

Per budget: ``steps_per_example``, the median wall and process-CPU seconds of each iteration,
and ``ep_over_bp`` (wall) and ``ep_over_bp_cpu``. With ``--threads 1`` the CPU ratio is the
compute alone even when another job shares the cores; the wall ratio is the one to quote from an
idle machine. When ``--claims`` holds the runs' results, each row also gets its ``test_error``,
and ``cheapest_within_half_point`` names the cheapest budget whose test error is within
0.5 points of the exact budget's (null while the exact run has no result). ``--rejoin FILE``
times nothing: it joins an earlier output's measurements with the current ``--claims`` (so a
run that finishes later need not cost a second timing on an idle machine); given several
files, it joins their rows, so a budget added later (timed with ``--only``) joins the earlier
ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from claims import EXPERIMENTS, RESULTS, Experiment
from claims_report import steps_per_example
from common import bp_iteration, ep_iteration, feedforward_twin, seeded, sgd, timed_side_by_side

from eqprop import EnergyNetwork
from eqprop.train.builders import build_estimator, build_network
from eqprop.train.config import load_config

#: The budget group's reference: the preset's own (exact) recipe.
EXACT = "budget-t60-15-sync"
SHAPE = (3, 32, 32)
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def budget_runs() -> list[Experiment]:
    """The budget group of ``claims.py``, the exact recipe first."""
    runs = [e for e in EXPERIMENTS if "budget" in e.groups]
    return sorted(runs, key=lambda e: e.name != EXACT)


def measure(exp: Experiment, reps: int, batch: int | None) -> dict[str, Any]:
    """EP and backprop iterations of ``exp``'s net, timed side by side."""
    cfg = load_config(exp.preset, exp.overrides)
    b = batch or cfg.train.batch_size
    net = build_network(cfg, SHAPE, 10)
    if not isinstance(net, EnergyNetwork):
        raise SystemExit(f"budget_cost: {exp.name}: needs a chain network, got {type(net)}")
    twin = seeded(lambda: feedforward_twin(net))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(b, *SHAPE, generator=gen)
    y = torch.randint(0, 10, (b,), generator=gen)
    fns: dict[str, Callable[[], object]] = {
        "ep": partial(ep_iteration, net, sgd(net), build_estimator(cfg), x, y)
    }
    for layout, fmt in LAYOUTS.items():
        bp = copy.deepcopy(twin).to(memory_format=fmt)  # type: ignore[call-overload]
        fns[f"bp_{layout}"] = partial(bp_iteration, bp, sgd(bp), x.contiguous(memory_format=fmt), y)
    t = timed_side_by_side(fns, reps, 1, torch.device("cpu"))
    # Backprop in the faster of the two layouts (EP itself runs channels-last).
    bp_key = min(LAYOUTS, key=lambda k: t[f"bp_{k}"]["wall_s"])
    t["bp"] = {**t[f"bp_{bp_key}"], "layout": bp_key}
    d = cfg.dynamics
    return {
        "name": exp.name,
        "preset": exp.preset,
        "schedule": d.schedule,
        "free_steps": d.free_steps,
        "nudged_steps": d.nudged_steps,
        "batch_phases": d.batch_phases,
        "steps_per_example": steps_per_example(cfg),
        "batch": b,
        "ep": t["ep"],
        "bp": t["bp"],
        "ep_over_bp": t["ep"]["wall_s"] / t["bp"]["wall_s"],
        "ep_over_bp_cpu": t["ep"]["cpu_s"] / t["bp"]["cpu_s"],
    }


def join_results(rows: list[dict[str, Any]], claims: Path) -> str | None:
    """Add each run's test error from ``claims``; the cheapest budget within 0.5 points of the
    exact one's (None while the exact run has no result)."""
    if not claims.is_file():
        return None
    data = json.loads(claims.read_text(encoding="utf-8"))
    errors = {r["name"]: r.get("test_error") for r in data.get("runs", [])}
    for row in rows:
        row["test_error"] = errors.get(row["name"])
    exact = errors.get(EXACT)
    if exact is None:
        return None
    good = [r for r in rows if r["test_error"] is not None and r["test_error"] <= exact + 0.005]
    return min(good, key=lambda r: r["ep"]["wall_s"])["name"]


def rejoin(paths: list[Path]) -> dict[str, Any]:
    """The first output with the result rows of all of them, by name, in order of first
    appearance; a later file's row replaces an earlier one's."""
    outs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    rows: dict[str, dict[str, Any]] = {}
    for out in outs:
        rows.update({r["name"]: r for r in out["results"]})
    return {**outs[0], "results": list(rows.values())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=None, help="default: each preset's batch size")
    p.add_argument("--claims", type=Path, default=RESULTS / "claims.json")
    p.add_argument("--quick", action="store_true", help="batch 8, one rep: a smoke test")
    p.add_argument("--only", help="time only these runs of the group (NAME[,NAME])")
    p.add_argument(
        "--rejoin", type=Path, action="append",
        help="earlier output to join with --claims; repeatable (a later file's row replaces an "
        "earlier one of the same name)",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.rejoin:
        out = rejoin(a.rejoin)
        out["cheapest_within_half_point"] = join_results(out["results"], a.claims)
        print(json.dumps(out, indent=1))
        return
    runs = budget_runs()
    if a.only:
        names = a.only.split(",")
        unknown = sorted(set(names) - {e.name for e in runs})
        if unknown:
            p.error(f"--only: {', '.join(unknown)} not in the budget group; it has "
                    f"{', '.join(e.name for e in runs)}")  # fmt: skip
        runs = [e for e in runs if e.name in names]
    torch.set_num_threads(a.threads)
    reps, batch = (1, 8) if a.quick else (a.reps, a.batch)
    rows = [measure(e, reps, batch) for e in runs]
    cheapest = join_results(rows, a.claims)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": a.threads,
        "cpu": platform.processor() or platform.machine(),
        "reps": reps,
        "quick": a.quick,
        "exact": EXACT,
        "cheapest_within_half_point": cheapest,
        "results": rows,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
