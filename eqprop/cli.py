"""The ``eqprop`` command: train, resume, evaluate, list presets.

Every expected failure (bad config, missing data, unreadable checkpoint, a diverging run) ends
with one line on stderr, ``eqprop: error: ...``, and a non-zero exit status; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = """\
Train neural networks with Equilibrium Propagation (Laborieux et al., 2021).

  eqprop train                         train the digits quickstart (no download needed)
  eqprop train cifar10-ce-symmetric --data-dir ~/data
  eqprop train my.yaml --set optim.lr=0.01 --set estimator.kind=one_sided
  eqprop resume runs/NAME              continue an interrupted run exactly
  eqprop eval runs/NAME --split test   accuracy of a saved run
  eqprop check cifar10-mse-symmetric --random-data   EP versus BPTT, step by step
  eqprop presets [show NAME]           the shipped recipes
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eqprop", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a preset or a YAML config",
        description="Train a preset or YAML config.",
    )
    t.add_argument(
        "config", nargs="?", default="digits-quickstart",
        help="a preset name (see 'eqprop presets') or the path of a YAML config "
        "(default: digits-quickstart)",
    )  # fmt: skip
    t.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=0.01 --set model.dense=[256,256]; "
        "values are parsed as YAML; repeatable",
    )  # fmt: skip
    t.add_argument("--out", metavar="DIR", help="run directory (default: runs/NAME-TIMESTAMP)")
    t.add_argument(
        "--data-dir", metavar="DIR",
        help="dataset directory (same as --set data.root=DIR; default $EQPROP_DATA or ./data)",
    )  # fmt: skip
    t.add_argument("--device", help="cpu, cuda, cuda:N or auto (same as --set train.device=...)")
    t.add_argument("--epochs", type=int, help="number of epochs (same as --set train.epochs=N)")
    t.add_argument(
        "--download", action="store_true",
        help="download the dataset with torchvision if it is missing (needs network)",
    )  # fmt: skip
    t.add_argument("--quiet", action="store_true", help="no progress bar: one line per epoch")

    r = sub.add_parser(
        "resume", help="continue an interrupted run", description="Continue a run from last.pt."
    )
    r.add_argument("run_dir", help="the run directory of the interrupted run")
    r.add_argument("--quiet", action="store_true", help="no progress bar: one line per epoch")

    e = sub.add_parser("eval", help="evaluate a saved run", description="Evaluate a saved run.")
    e.add_argument("run_dir", help="a run directory written by 'eqprop train'")
    e.add_argument("--split", choices=["test", "val", "train"], default="test", help="default test")
    e.add_argument(
        "--checkpoint", choices=["best", "last"], default="best",
        help="best (highest validation accuracy; the default) or last",
    )  # fmt: skip
    e.add_argument("--device", help="device to evaluate on (default: the run's)")

    c = sub.add_parser(
        "check", help="compare EP's per-step updates with BPTT (GDU check)",
        description="Compare EP's per-step updates with BPTT's per-step gradients (spec §5) on "
        "a batch, for one-sided +beta, -beta and symmetric EP; with a beta sweep. Writes "
        "gdu.json and PNG figures, prints a table.",
    )  # fmt: skip
    c.add_argument(
        "source", nargs="?", default="digits-quickstart",
        help="a run directory (its checkpoint's weights) or a preset/YAML (a fresh network)",
    )  # fmt: skip
    c.add_argument("--checkpoint", choices=["best", "last"], default="last", help="default last")
    c.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field of a preset/YAML source (repeatable)",
    )  # fmt: skip
    c.add_argument("--batch", type=int, default=8, help="examples in the batch (default 8)")
    c.add_argument("--free-steps", type=int, help="T1 (default: the config's free_steps)")
    c.add_argument("--nudged-steps", type=int, help="T2 (default: the config's nudged_steps)")
    c.add_argument(
        "--beta", type=float, action="append",
        help="|beta| compared step by step (repeatable; default 0.01 and 0.1)",
    )  # fmt: skip
    c.add_argument(
        "--sweep", type=float, nargs=3, metavar=("MIN", "MAX", "N"), default=(1e-3, 1e-1, 10),
        help="beta sweep: N log-spaced values from MIN to MAX (default 1e-3 1e-1 10)",
    )  # fmt: skip
    c.add_argument("--no-sweep", action="store_true", help="skip the beta sweep")
    c.add_argument("--float64", action="store_true", help="run the check in float64")
    c.add_argument(
        "--random-data", action="store_true",
        help="use uniform random inputs and labels instead of the dataset",
    )  # fmt: skip
    c.add_argument("--data-dir", metavar="DIR", help="dataset directory")
    c.add_argument("--out", metavar="DIR", help="output folder (default runs/check-NAME-TIME)")

    s = sub.add_parser("presets", help="list the presets or show one", description="Presets.")
    s.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    s.add_argument("name", nargs="?", help="preset to show")
    return p


def _train(args: argparse.Namespace) -> int:
    from eqprop.train.config import load_config
    from eqprop.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.download:
        overrides.append("data.download=true")
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise _UsageError(
            f"--out: {run_dir} already holds a run; continue it with 'eqprop resume {run_dir}' "
            "or choose another directory"
        )
    trainer = Trainer(cfg, run_dir, quiet=args.quiet)
    print(f"eqprop: training {cfg.name} on {trainer.device} into {run_dir}", flush=True)
    return _report(trainer.fit(), run_dir)


def _resume(args: argparse.Namespace) -> int:
    from eqprop.train.config import load_config
    from eqprop.train.trainer import Trainer

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").exists():
        raise _UsageError(f"run_dir: {run_dir} has no config.yaml; is it an eqprop run directory?")
    cfg = load_config(run_dir / "config.yaml")
    trainer = Trainer(cfg, run_dir, quiet=args.quiet)
    return _report(trainer.fit(resume=True), run_dir)


def _report(summary: dict, run_dir: Path) -> int:
    if summary.get("interrupted"):
        return 130
    val = summary.get("val_accuracy")
    print(
        f"test accuracy: {summary['test_accuracy']:.2%}"
        + (
            f" (validation {val:.2%}, epoch {summary['selected_epoch']}/{summary['epochs']})"
            if val is not None
            else ""
        )
        + f"; {summary['wall_seconds']:.0f} s; results in {run_dir}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from eqprop.train.trainer import load_run

    run_dir = Path(args.run_dir)
    trainer = load_run(run_dir, args.checkpoint, device=args.device)
    loader = {
        "test": trainer.splits.test,
        "val": trainer.splits.val,
        "train": trainer.splits.train,
    }[args.split]
    if loader is None:
        raise _UsageError("--split: this run has no validation split (data.val_size is 0)")
    error, loss = trainer.evaluate(loader)
    print(
        f"{args.split} accuracy: {1 - error:.2%} (loss {loss:.4f}, {loader.num_samples} examples)"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from eqprop.analysis import check_gdu, format_table, write_report
    from eqprop.train.builders import build_solver
    from eqprop.train.config import load_config
    from eqprop.train.trainer import Trainer, load_run

    source = Path(args.source)
    overrides = [*args.overrides, "log.tensorboard=false", "log.plots=false"]
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if (source / "checkpoints").is_dir():
        trainer = load_run(source, args.checkpoint)
    else:
        if args.random_data:
            overrides.append("data.val_size=0")
        cfg = load_config(args.source, overrides)
        data = _random_dataset(cfg, args.batch) if args.random_data else None
        trainer = Trainer(cfg, Path("."), quiet=True, data=data)
    cfg, net = trainer.cfg, trainer.net
    if args.float64:
        net = net.double()
    if args.batch < 1:
        raise _UsageError(f"--batch: {args.batch} is not valid; expected an int >= 1")
    x, y = next(iter(trainer.splits.train.epoch(0)))
    while x.shape[0] < args.batch and x.shape[0] < trainer.splits.train.num_samples:
        more_x, more_y = next(iter(trainer.splits.train.epoch(1)))
        x, y = torch.cat([x, more_x]), torch.cat([y, more_y])
    x, y = x[: args.batch], y[: args.batch]
    sweep = (
        ()
        if args.no_sweep
        else tuple(np.geomspace(args.sweep[0], args.sweep[1], int(args.sweep[2])))
    )
    report = check_gdu(
        net, x.to(next(net.parameters()).dtype), y,
        free_steps=args.free_steps or cfg.dynamics.free_steps,
        nudged_steps=args.nudged_steps or cfg.dynamics.nudged_steps,
        betas=tuple(args.beta or (0.01, 0.1)), sweep_betas=sweep, solver=build_solver(cfg),
    )  # fmt: skip
    out = Path(args.out or f"runs/check-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    write_report(report, out)
    print(format_table(report))
    print(f"report and figures in {out}")
    return 0


def _random_dataset(cfg, batch: int):
    """A dataset of uniform random images of the configured dataset's size (no files needed)."""
    import torch

    from eqprop.train.datasets import Dataset

    shapes = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}
    shape = shapes.get(cfg.data.dataset, (3, 32, 32))
    classes = 100 if cfg.data.dataset == "cifar100" else 10
    g = torch.Generator().manual_seed(cfg.seed)
    n = max(batch, 2)

    def images() -> torch.Tensor:
        return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)

    def labels() -> torch.Tensor:
        return torch.randint(0, classes, (n,), generator=g)

    return Dataset(images(), labels(), images(), labels(), classes, "npz", shape)


def _presets(args: argparse.Namespace) -> int:
    from eqprop.train.config import list_presets, preset_path

    if args.action == "show":
        if not args.name:
            raise _UsageError("presets show: give a preset name (see 'eqprop presets')")
        print(preset_path(args.name).read_text(), end="")
        return 0
    presets = list_presets()
    width = max(len(n) for n, _ in presets)
    for name, description in presets:
        print(f"{name:<{width}}  {' '.join(description.split())}")
    return 0


class _UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eqprop`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from eqprop.train.checkpoint import CheckpointError
    from eqprop.train.config import ConfigError
    from eqprop.train.datasets import DataError
    from eqprop.train.trainer import TrainingError

    handlers = {
        "train": _train, "resume": _resume, "eval": _eval, "check": _check, "presets": _presets
    }  # fmt: skip
    try:
        return handlers[args.command](args)
    except (ConfigError, DataError, CheckpointError, _UsageError, ValueError) as err:
        print(f"eqprop: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"eqprop: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("eqprop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
