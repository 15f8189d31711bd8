"""``graph``: energy graphs (the Hopfield-ResNet family): one sweep of each schedule against
the convolutions and transposed convolutions it performs timed alone, and EP/BP per iteration.

The measurements are those of ``graph_step.py`` (its module docstring says what each is). Full:
the Hopfield-ResNet13 (widths 128-256-512-512, 32×32 inputs) at batch 8 with the ``-fast``
presets' 30 free and 10 nudged sweeps; ``--quick``: widths 8-16 on 16×16 inputs, batch 4.
"""

from __future__ import annotations

from typing import Any

from context import Context
from graph_step import measure

from eqprop.core.graph_builders import HR13_WIDTHS


def run(ctx: Context) -> dict[str, Any]:
    """The graph figures of the residual net sized by ``--quick``."""
    s = ctx.s
    if s.quick:
        return measure((8, 16), 16, 4, max(s.reps, 2), (6, 2), s.device)
    return measure(HR13_WIDTHS, 32, 8, max(s.reps, 3), (30, 10), s.device)
