"""``ratio``: seconds per EP training iteration over seconds per backprop iteration."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
from common import (
    bp_iteration,
    conv_signature,
    ep_iteration,
    feedforward_twin,
    log,
    median_time,
    mnist_mlp,
    paper_cifar10,
    seeded,
    sgd,
)
from context import Context, Settings
from torch import Tensor, nn

from eqprop import EnergyNetwork, Solver, SymmetricEP

NETS = (
    ("cifar10_paper_ce", lambda: paper_cifar10("ce"), "cifar10", "paper"),
    ("mnist_mlp_784_512_10", mnist_mlp, "mnist", "standard"),
)


def run(ctx: Context) -> dict[str, Any]:
    """Seconds per EP training iteration over seconds per backprop iteration."""
    s = ctx.s
    settings = ep_settings(s)
    rows = []
    for name, make, dataset, norm in NETS:
        template = seeded(make)
        twin = seeded(lambda: feedforward_twin(template))  # noqa: B023
        has_conv = bool(conv_signature(template))
        for batch in s.ratio_batches:
            log(f"ratio: {name} batch {batch}")
            x, y, src = ctx.batch(dataset, batch, norm)
            row: dict[str, Any] = {"net": name, "batch": batch, "data": src}
            row["bp_s_by_layout"] = backprop_times(twin, has_conv, x, y, s)
            row["bp_s"] = min(row["bp_s_by_layout"].values())
            for kind in ("fast", "exact"):
                t = ep_time(kind, template, settings, x, y, s, row)
                row[f"ep_{kind}_s"] = t
                row[f"ratio_{kind}"] = t / row["bp_s"]
                log(f"  {kind}: {t:.3f}s, backprop {row['bp_s']:.4f}s, ratio {t / row['bp_s']:.1f}")
            rows.append(row)
    return {
        "settings": settings,
        "beta": 1.0,
        "optimizer": "SGD lr 0.01, momentum 0.9, weight decay 3e-4 (EP and backprop)",
        "backprop_net": "same architecture feedforward: conv -> pool -> sigma per conv layer, "
        "flatten, linear to 10, cross-entropy",
        "dtype": "float32",
        "exact_reps": 1,
        "results": rows,
    }


def ep_settings(s: Settings) -> dict[str, dict[str, Any]]:
    """The exact (the paper's) and fast EP recipes, with their steps per example."""
    settings: dict[str, dict[str, Any]] = {
        "exact": {
            "schedule": "synchronous",
            "free_steps": s.exact[0],
            "nudged_steps": s.exact[1],
            "batch_phases": False,
        },
        "fast": {
            "schedule": "even_odd",
            "free_steps": s.fast[0],
            "nudged_steps": s.fast[1],
            "batch_phases": True,
        },
    }
    for v in settings.values():
        v["steps_per_example"] = v["free_steps"] + 2 * v["nudged_steps"]
    return settings


def estimator(v: dict[str, Any], steps: tuple[int, int] | None = None) -> SymmetricEP:
    """Symmetric EP (β = 1) of recipe ``v``, with its own step counts unless ``steps``."""
    t1, t2 = steps or (v["free_steps"], v["nudged_steps"])
    return SymmetricEP(1.0, t1, t2, Solver(v["schedule"]), v["batch_phases"])


def backprop_times(
    twin: nn.Module, has_conv: bool, x: Tensor, y: Tensor, s: Settings
) -> dict[str, float]:
    """Backprop iteration in both memory layouts (EP runs channels-last); the faster counts."""
    bp_times = {}
    for layout in ("channels_last", "contiguous") if has_conv else ("contiguous",):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        bp = copy.deepcopy(twin).to(s.device, memory_format=fmt)
        it = partial(bp_iteration, bp, sgd(bp), x.contiguous(memory_format=fmt), y)
        bp_times[layout] = median_time(it, max(s.reps, 5), 2, s.device)
    return bp_times


def ep_time(
    kind: str,
    template: EnergyNetwork,
    settings: dict[str, dict[str, Any]],
    x: Tensor,
    y: Tensor,
    s: Settings,
    row: dict[str, Any],
) -> float:
    """Seconds of one EP iteration of recipe ``kind`` on a fresh copy of ``template``.

    Exact EP is timed once after a cheap warm-up; with ``exact_probe`` (``--quick``) it is timed
    with fewer steps and scaled, and ``row`` records the probe's steps.
    """
    v = settings[kind]
    net = copy.deepcopy(template).to(s.device)
    opt = sgd(net)
    full = v["steps_per_example"]
    if kind == "exact" and s.exact_probe is not None:
        probe = s.exact_probe
        it = partial(ep_iteration, net, opt, estimator(v, probe), x, y)
        row["exact_extrapolated_from_steps"] = list(probe)
        return median_time(it, 1, 1, s.device) * full / (probe[0] + 2 * probe[1])
    if kind == "exact":
        ep_iteration(net, opt, estimator(v, (2, 1)), x, y)  # cheap warm-up
        return median_time(partial(ep_iteration, net, opt, estimator(v), x, y), 1, 0, s.device)
    return median_time(partial(ep_iteration, net, opt, estimator(v), x, y), s.reps, 1, s.device)
