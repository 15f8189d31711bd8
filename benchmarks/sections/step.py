"""``step``: seconds per relaxation step, closed form vs autograd of Φ."""

from __future__ import annotations

from typing import Any

from common import log, mnist_mlp, paper_cifar10, seeded
from context import Context
from relaxation_step import bench


def run(ctx: Context) -> dict[str, Any]:
    """Seconds per relaxation step, closed form vs autograd of Φ (``relaxation_step.bench``)."""
    s = ctx.s
    rows = []
    for batch in s.step_batches:
        for name, make, steps in (
            ("cifar10_paper_conv", paper_cifar10, 1 if s.quick else 3),
            ("mnist_mlp_784_512_10", mnist_mlp, 5 if s.quick else 50),
        ):
            log(f"step: {name} batch {batch}")
            rows.append(bench(name, seeded(make), batch, steps, s.reps, s.device))
    return {"results": rows}
