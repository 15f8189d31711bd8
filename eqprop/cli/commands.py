"""The commands that train and evaluate: ``train``, ``resume``, ``eval``, ``presets``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["HANDLERS", "UsageError", "default_run_dir", "run_overrides"]


class UsageError(Exception):
    """A bad command line; the message names the option."""


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides of ``--set``, ``--data-dir``, ``--device``, ``--epochs``,
    ``--download``."""
    overrides = list(getattr(args, "overrides", []))
    if getattr(args, "data_dir", None):
        overrides.append(f"data.root={args.data_dir}")
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    if getattr(args, "epochs", None) is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if getattr(args, "download", False):
        overrides.append("data.download=true")
    return overrides


def default_run_dir(prefix: str) -> Path:
    """``runs/PREFIX-TIMESTAMP``, with ``-2``, ``-3``... when two runs start in one second."""
    base = Path(f"runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _train(args: argparse.Namespace) -> int:
    from eqprop.train.config import load_config
    from eqprop.train.distributed import is_main_process
    from eqprop.train.rundir import RunDirectory
    from eqprop.train.trainer import Trainer

    cfg = load_config(args.config, run_overrides(args))
    out = Path(args.out) if args.out else default_run_dir(cfg.name)
    # Checked, created and locked before any data loads: a bad --out fails at once. Under
    # torchrun only rank 0 owns (and writes) the run directory.
    run = RunDirectory.claim(out, resume=False, field="--out") if is_main_process() else None
    try:
        trainer = Trainer(cfg, run or out, quiet=args.quiet)
        if trainer.ranks.is_main:
            print(f"eqprop: training {cfg.name} on {trainer.device} into {out}", flush=True)
        return _report(trainer.fit(), out, trainer.ranks.is_main)
    finally:
        if run is not None:
            run.release(remove_if_unused=True)


def _resume(args: argparse.Namespace) -> int:
    from eqprop.train.config import load_config
    from eqprop.train.distributed import is_main_process
    from eqprop.train.rundir import RunDirectory
    from eqprop.train.session import extension_overrides
    from eqprop.train.trainer import Trainer

    main = is_main_process()
    run = RunDirectory.claim(args.run_dir, resume=True, field="run_dir") if main else None
    path = run.path if run is not None else Path(args.run_dir)
    try:
        overrides = run_overrides(argparse.Namespace(data_dir=args.data_dir, device=args.device))
        cfg = load_config(path / "config.yaml", overrides)
        if args.epochs is not None:
            overrides += extension_overrides(cfg, args.epochs)
            cfg = load_config(path / "config.yaml", overrides)
        trainer = Trainer(cfg, run or path, quiet=args.quiet)
        if trainer.ranks.is_main:
            print(f"eqprop: resuming {cfg.name} on {trainer.device} in {path}", flush=True)
        return _report(trainer.fit(resume=True), path, trainer.ranks.is_main)
    finally:
        if run is not None:
            run.release()


def _report(summary: dict[str, Any], run_dir: Path, main: bool = True) -> int:
    if summary.get("interrupted"):
        return int(summary["exit_code"])
    if not main:  # under torchrun, rank 0 reports
        return 0
    val = summary.get("val_accuracy")
    selected = (
        f" (validation {val:.2%}, epoch {summary['selected_epoch']}/{summary['epochs']})"
        if val is not None
        else ""
    )
    print(
        f"test accuracy: {summary['test_accuracy']:.2%}{selected}; "
        f"{summary['wall_seconds']:.0f} s wall ({summary['train_seconds']:.0f} s training, "
        f"{summary['eval_seconds']:.0f} s evaluation); results in {run_dir}"
        + ("; warning: the run ended at chance level (diverged)" if summary.get("diverged") else "")
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from eqprop.dynamics.solver import FreeRelaxation
    from eqprop.train.saved import load_run

    trainer = load_run(Path(args.run_dir), args.checkpoint, device=args.device)
    trainer.quiet = args.quiet
    loader = {
        "test": trainer.splits.test,
        "val": trainer.splits.val,
        "train": trainer.splits.train,
    }[args.split]
    if loader is None:
        raise UsageError("--split: val is not valid for this run (data.val_size is 0)")
    where = f"epoch {trainer.epoch} of {trainer.cfg.train.epochs}" + (
        f", batch {trainer.batch}" if trainer.batch else ""
    )
    relaxation = trainer.net.relaxation
    assert isinstance(relaxation, FreeRelaxation)  # set by build_network
    for steps in args.steps or [None]:
        if steps is not None:
            trainer.net.relaxation = FreeRelaxation(relaxation.solver, steps)
        error, loss = trainer.evaluate(loader, desc=args.split)
        with_steps = "" if steps is None else f" with {steps} free steps"
        print(
            f"{args.split} accuracy of {trainer.checkpoint_path} ({where}){with_steps}: "
            f"{1 - error:.2%} (loss {loss:.4f}, {loader.num_samples} examples)",
            flush=True,
        )
    return 0


def _presets(args: argparse.Namespace) -> int:
    from eqprop.train.config import config_yaml, list_presets, load_config, preset_path

    if args.action == "show":
        if not args.name:
            raise UsageError("presets show: give a preset name (see 'eqprop presets')")
        if args.resolved:
            print(config_yaml(load_config(args.name)), end="")
        else:
            print(preset_path(args.name).read_text(), end="")
        return 0
    presets = list_presets()
    width = max(len(n) for n, _ in presets)
    for name, description in presets:
        print(f"{name:<{width}}  {' '.join(description.split())}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from eqprop.cli.check import run_check

    return run_check(args)


def _sweep(args: argparse.Namespace) -> int:
    from eqprop.cli.sweep import run_sweep

    return run_sweep(args)


#: Command name -> handler returning the exit status.
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train, "resume": _resume, "eval": _eval, "check": _check, "sweep": _sweep,
    "presets": _presets,
}  # fmt: skip
