"""``schedules``: do the schedules agree? Fixed points and symmetric EP gradients vs synchronous."""

from __future__ import annotations

from typing import Any

import torch
from common import SCHEDULE_NAMES, State, compare, flat_grad, log, max_abs_diff
from context import Case, Context
from torch import Tensor

from eqprop import EnergyNetwork, Solver, SymmetricEP
from eqprop.estimators.base import add_to_grads


def run(ctx: Context) -> dict[str, Any]:
    """Synchronous vs even/odd on the paper net: fixed points and symmetric EP gradients."""
    s = ctx.s
    out: dict[str, Any] = {}
    for case in ctx.cases():
        if case.base != "paper_cifar10_ce":
            continue
        log(f"schedules: {case.key}")
        free, grads, source = free_states_and_gradients(ctx, case)
        # even/odd at the top level (as first published), other schedules under their name
        entry = {**case.info, **versus_sync(case.net, free, grads, "even_odd")}
        entry["free_state_source"] = source
        for sch in SCHEDULE_NAMES[2:]:
            entry[sch] = versus_sync(case.net, free, grads, sch)
        out[case.key] = entry
    return {
        "free_steps": s.match_steps,
        "nudged_steps": s.nudged_steps,
        "beta": 1.0,
        "batch": s.batch,
        "dtype": "float32",
        "nets": out,
    }


def free_states_and_gradients(
    ctx: Context, case: Case
) -> tuple[dict[str, State], dict[str, list[Tensor]], str]:
    """Per schedule: the free state after T1 steps and the symmetric EP gradient from it.

    The free states come from the residual traces when available; the last element says so.
    """
    f, t2 = ctx.s.match_steps, ctx.s.nudged_steps
    net = case.net
    x, y = net.check_input(case.x, case.y)
    drive = net.input_drive(x)
    free: dict[str, State] = {}
    grads: dict[str, list[Tensor]] = {}
    source = "residual trace"
    for sch in SCHEDULE_NAMES:
        solver = Solver(sch)
        tr = ctx.cached_trace(case, sch)
        if tr is not None and f in tr.kept:
            free[sch] = tr.kept[f]
        else:
            free[sch] = solver.relax(net, drive, net.zero_state(x.shape[0]), f).state
            source = "relaxed here"
        est = SymmetricEP(1.0, f, t2, solver, batch_phases=True)
        grads[sch] = gradient_from(est, net, x, y, drive, free[sch])
    return free, grads, source


def gradient_from(
    est: SymmetricEP, net: EnergyNetwork, x: Tensor, y: Tensor, drive: Tensor, free: State
) -> list[Tensor]:
    """``est.estimate`` after its free phase: nudged phases from ``free``, then the gradient."""
    betas = est.phase_betas()
    nudged, _ = est.relax_nudged(net, drive, free, y, betas)
    net.zero_grad(set_to_none=True)
    add_to_grads(est.weight_grads(net, x, y, free, nudged, betas))
    est.after_backward(net)
    return flat_grad(net.weight_layers())


def versus_sync(
    net: EnergyNetwork, free: dict[str, State], grads: dict[str, list[Tensor]], sch: str
) -> dict[str, Any]:
    """How far schedule ``sch`` lands from the synchronous one: fixed point and EP gradient."""
    with torch.no_grad():
        agree = net.predict_from_state(free["synchronous"]) == net.predict_from_state(free[sch])
    cmp = compare(grads[sch], grads["synchronous"])
    return {
        "fixed_point_max_abs_diff": max_abs_diff(free["synchronous"], free[sch]),
        "prediction_agreement": float(agree.float().mean()),
        "gradient_cosine": cmp["cosine"],
        "gradient_rel_err_vs_sync": cmp["rel_err"],
        "per_layer_cosine": cmp["per_layer_cosine"],
    }
