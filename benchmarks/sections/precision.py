"""``precision``: symmetric EP gradients in float32, bf16 (and TF32 on CUDA) against float64."""

from __future__ import annotations

import copy
from typing import Any

import torch
from common import compare, ep_gradient, log, paper_cifar10, seeded, small_conv, strict_fp32
from context import Context

from eqprop import Solver


def run(ctx: Context) -> dict[str, Any]:
    """Symmetric EP gradients in float32, bf16 (and tf32 on CUDA) against float64."""
    s = ctx.s
    t1, t2 = s.precision_steps
    b = s.precision_batch
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    for name, make in (("small_conv_16_32", small_conv), ("cifar10_paper_ce", None)):
        if make is None:
            net = seeded(lambda: paper_cifar10("ce")).to(s.device)
            x, y, src = ctx.batch("cifar10", b, "paper")
        else:
            net = seeded(make).to(s.device)
            x = torch.randn((b, *net.input_shape), generator=g).to(s.device)
            y = torch.randint(0, net.num_classes, (b,), generator=g).to(s.device)
            src = "standard normal inputs"

        log(f"precision: {name} float64")
        net64 = copy.deepcopy(net).to(torch.float64)
        g64 = ep_gradient(net64, x, y, Solver("synchronous"), (t1, t2))
        g64_eo = ep_gradient(net64, x, y, Solver("even_odd"), (t1, t2))
        runs = {"float32": "float32", "bf16": "bf16"}
        if s.device.type == "cuda":
            runs["tf32"] = "tf32"
        entry: dict[str, Any] = {
            "batch": b,
            "free_steps": t1,
            "nudged_steps": t2,
            "beta": 1.0,
            "schedule": "synchronous",
            "data": src,
            "grad_norm_float64": float(torch.cat(g64).norm()),
            "solver_noise_float64_sync_vs_even_odd": compare(g64_eo, g64),
        }
        for label, precision in runs.items():
            log(f"precision: {name} {label}")
            with strict_fp32(s.device):
                solver = Solver("synchronous", precision=precision)
                entry[label] = compare(ep_gradient(net, x, y, solver, (t1, t2)), g64)
        out[name] = entry
    return {
        "nets": out,
        "note": "reference: float64; rel_err = |g - g64| / |g64| of the flattened gradient; "
        "float32 runs with TF32 disabled on CUDA",
    }
