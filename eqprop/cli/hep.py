"""``eqprop check --hep``: holomorphic EP's N-point estimates against the true gradient."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqprop.analysis import (
    DEFAULT_HEP_POINTS,
    DEFAULT_HEP_SWEEP,
    check_hep,
    format_hep_table,
    write_hep_report,
)

__all__ = ["run_hep_check"]


def run_hep_check(
    args: argparse.Namespace, cfg: Any, net: Any, x: torch.Tensor, y: torch.Tensor, out: Path
) -> int:
    """Run :func:`~eqprop.analysis.check_hep` with the command line's settings; print, write."""
    from eqprop.cli.commands import UsageError
    from eqprop.train.builders import build_solver

    points = tuple(args.points or DEFAULT_HEP_POINTS)
    if any(n < 1 for n in points):
        raise UsageError(f"--points: {list(points)} is not valid; expected integers >= 1")
    if args.beta and len(args.beta) > 1:
        raise UsageError("--beta: give one |beta| with --hep (the sweep covers the others)")
    sweep: tuple[float, ...] = DEFAULT_HEP_SWEEP
    if args.sweep:
        low, high, n = args.sweep
        sweep = tuple(float(b) for b in np.geomspace(low, high, int(n)))
    report = check_hep(
        net, x.to(next(net.parameters()).dtype), y,
        free_steps=args.free_steps or cfg.dynamics.free_steps,
        nudged_steps=args.nudged_steps or cfg.dynamics.nudged_steps, points=points,
        beta=args.beta[0] if args.beta else 0.5, sweep_betas=() if args.no_sweep else sweep,
        solver=build_solver(cfg),
    )  # fmt: skip
    write_hep_report(report, out)
    print(format_hep_table(report))
    print(f"report and figure in {out}")
    return 0
