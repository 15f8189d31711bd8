"""``eqprop check``: EP against BPTT on one batch, and what to make of the β sweep's slopes.

The sweep's slopes follow the EP theorem (1 for one-sided, 2 for symmetric nudging) only where
the error of the estimate is the O(β) or O(β²) bias. :func:`sweep_warnings` says when something
else dominates, from what the report measured:

- an unconverged free phase: its drift over the nudged steps, divided by β, swamps the
  one-sided estimates at small β (raise ``--free-steps``);
- round-off: errors that grow as β shrinks, as float32 round-off divided by β does (use
  ``--float64``);
- kinks: with a piecewise-linear activation (the hard sigmoids are clamps), a nudge that pushes
  a unit across a kink changes the fixed point's slope, so the laws hold only for β below the
  distance of the closest unit to a kink; on ``digits-quickstart`` (``my_hard_sig``) that is
  about 1e-3, below the whole default sweep, hence slopes like 1.64 / 0.42 / 0.55 in float64
  with a converged free phase. A smooth activation (``--set model.activation=dsilu``, the
  smooth twin of ``my_hard_sig``) gives 1.00 / 1.00 / 2.00.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqprop.analysis import check_gdu, format_table, write_report
from eqprop.analysis.gdu_results import VARIANTS, GDUReport

__all__ = ["run_check", "sweep_warnings"]

#: Expected log-log slopes of the final-update error against β, and the tolerance.
EXPECTED_SLOPES = {"plus": 1.0, "minus": 1.0, "sym": 2.0}
SLOPE_TOLERANCE = 0.25


def is_piecewise_linear(fn: Any) -> bool:
    """Whether ``fn`` is linear almost everywhere on [-4, 6] (a clamp; kinks in between)."""
    x = torch.linspace(-4.0, 6.0, 1001, dtype=torch.float64)
    second = fn(x).diff(n=2).abs()
    return bool((second < 1e-9).float().mean() > 0.9 and (second >= 1e-9).any())


def sweep_warnings(report: GDUReport, activation: Any) -> list[str]:
    """Why the sweep's slopes are off the EP theorem's, when they are (see the module doc)."""
    sweep = report.sweep
    if sweep is None or len(sweep.betas) < 2:
        return []
    slopes = sweep.slopes
    if all(_near(slopes[v], EXPECTED_SLOPES[v]) for v in VARIANTS):
        return []
    shown = ", ".join(f"{VARIANTS[v]} {_fmt_slope(slopes[v])}" for v in VARIANTS)
    head = f"the β sweep's slopes ({shown}) are not the expected 1, 1, 2: "
    smallest = min(sweep.betas)
    drift = report.free_residual * report.nudged_steps
    if drift > 0.1 * smallest:
        return [
            head + f"the free phase is not converged (one more step moves a state by "
            f"{report.free_residual:.1e}; over {report.nudged_steps} nudged steps that drift is "
            f"not small against β = {smallest:.0e}, and one-sided EP divides it by β); raise "
            "--free-steps or sweep larger β"
        ]
    at_smallest = int(np.argmin(sweep.betas))
    growing = [v for v in VARIANTS if sweep.errors[v][at_smallest] > 2 * min(sweep.errors[v])]
    if growing and report.dtype != "float64":
        return [
            head + f"errors grow as β shrinks ({', '.join(VARIANTS[v] for v in growing)}), the "
            f"signature of {report.dtype} round-off divided by β; rerun with --float64"
        ]
    if is_piecewise_linear(activation):
        return [
            head + "the activation is piecewise linear, and nudges that push units across its "
            "kinks dominate the error for every β swept (the laws hold only below the distance "
            "of the closest unit to a kink); use a smooth activation "
            "(--set model.activation=dsilu or mysig) or smaller β to see them"
        ]
    return [head + "β is outside the range where the bias dominates; try a range of smaller β"]


def _near(slope: float | None, expected: float) -> bool:
    return slope is not None and abs(slope - expected) <= SLOPE_TOLERANCE


def _fmt_slope(slope: float | None) -> str:
    return "-" if slope is None else f"{slope:.2f}"


def _random_dataset(cfg: Any, batch: int) -> Any:
    """A dataset of uniform random images of the configured dataset's size (no files needed)."""
    from eqprop.train.datasets import DATASETS, Dataset

    spec = DATASETS[cfg.data.dataset]
    shape = spec.image_shape or (3, 32, 32)
    classes = spec.num_classes or 10
    g = torch.Generator().manual_seed(cfg.seed)
    n = max(batch, 2)

    def images() -> torch.Tensor:
        return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)

    def labels() -> torch.Tensor:
        return torch.randint(0, classes, (n,), generator=g)

    return Dataset(images(), labels(), images(), labels(), classes, "npz", shape)


def _source(args: argparse.Namespace) -> Any:
    """The trainer whose network and data the check uses (a saved run's, or a fresh one)."""
    from eqprop.train.config import load_config
    from eqprop.train.saved import load_run
    from eqprop.train.trainer import Trainer

    source = Path(args.source)
    if (source / "checkpoints").is_dir():
        return load_run(source, args.checkpoint)
    overrides = [*args.overrides, "log.tensorboard=false", "log.plots=false"]
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.random_data:
        overrides.append("data.val_size=0")
    cfg = load_config(args.source, overrides)
    data = _random_dataset(cfg, args.batch) if args.random_data else None
    return Trainer(cfg, Path("."), quiet=True, data=data)


def _batch(trainer: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(trainer.splits.train.epoch(0)))
    while x.shape[0] < size and x.shape[0] < trainer.splits.train.num_samples:
        more_x, more_y = next(iter(trainer.splits.train.epoch(1)))
        x, y = torch.cat([x, more_x]), torch.cat([y, more_y])
    return x[:size], y[:size]


def run_check(args: argparse.Namespace) -> int:
    from eqprop.cli.commands import UsageError
    from eqprop.train.builders import build_solver
    from eqprop.train.rundir import os_error_message

    if args.batch < 1:
        raise UsageError(f"--batch: {args.batch} is not valid; expected an int >= 1")
    trainer = _source(args)
    cfg, net = trainer.cfg, trainer.net
    out = Path(args.out or f"runs/check-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create {os_error_message(err)}") from None
    if args.float64:
        net = net.double()
    x, y = _batch(trainer, args.batch)
    if args.hep:
        from eqprop.cli.hep import run_hep_check

        return run_hep_check(args, cfg, net, x, y, out)
    low, high, n = args.sweep or (1e-3, 1e-1, 10)
    sweep = () if args.no_sweep else tuple(np.geomspace(low, high, int(n)))
    report = check_gdu(
        net, x.to(next(net.parameters()).dtype), y,
        free_steps=args.free_steps or cfg.dynamics.free_steps,
        nudged_steps=args.nudged_steps or cfg.dynamics.nudged_steps,
        betas=tuple(args.beta or (0.01, 0.1)), sweep_betas=sweep, solver=build_solver(cfg),
    )  # fmt: skip
    write_report(report, out)
    print(format_table(report))
    for warning in sweep_warnings(report, net.activation):
        print(f"warning: {warning}")
    print(f"report and figures in {out}")
    return 0
