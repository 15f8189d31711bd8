"""The ``eqprop`` command's arguments, help texts and exit statuses."""

from __future__ import annotations

import argparse

__all__ = ["EXIT_STATUS", "build_parser"]

DESCRIPTION = """\
Train neural networks with Equilibrium Propagation (Laborieux et al., 2021).

  eqprop train                         train the digits quickstart (no download needed)
  eqprop train cifar10-ce-symmetric --data-dir ~/data
  eqprop train my.yaml --set optim.lr=0.01 --set estimator.kind=one_sided
  eqprop resume runs/NAME              continue a stopped run exactly (--epochs N: longer)
  eqprop eval runs/NAME --split test   accuracy of a saved run
  eqprop check cifar10-mse-symmetric --random-data   EP versus BPTT, step by step
  eqprop sweep my.yaml --grid optim.lr=0.01,0.02 --seeds 3   a grid of runs, one table
  eqprop presets [show NAME]           the shipped recipes
"""

EXIT_STATUS = """\
exit status:
  0    done
  1    a run stopped on an error while training: non-finite values, or a file-system
       error such as a full disk; the message names the checkpoint that is kept
       (sweep: some runs did not finish; its table says which)
  2    bad input, nothing was trained: usage, config, data files, checkpoint, device,
       or a run directory that cannot be used or is in use by another process
  130  stopped by Ctrl-C after saving; 143 stopped by SIGTERM after saving:
       'eqprop resume RUN' continues exactly

Errors are one line on stderr, 'eqprop: error: ...', naming the field or file, the value
and what is accepted.
"""


def _sub(sub: argparse._SubParsersAction, name: str, help: str, description: str):
    return sub.add_parser(
        name, help=help, description=description, epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def _overrides(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=0.01 --set model.dense=[256,256]; "
        "values are parsed as YAML; repeatable",
    )  # fmt: skip
    if data:
        p.add_argument(
            "--data-dir", metavar="DIR",
            help="dataset directory (same as --set data.root=DIR; default $EQPROP_DATA or ./data)",
        )  # fmt: skip


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (same as --set train.device=...)")
    p.add_argument("--epochs", type=int, help="number of epochs (same as --set train.epochs=N)")
    p.add_argument(
        "--download", action="store_true",
        help="download the dataset with torchvision if it is missing (needs network)",
    )  # fmt: skip
    p.add_argument(
        "--quiet", action="store_true",
        help="no progress bars (bars are drawn only on a terminal; the epoch lines are the same)",
    )  # fmt: skip


def _config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", nargs="?", default="digits-quickstart",
        help="a preset name (see 'eqprop presets') or the path of a YAML config "
        "(default: digits-quickstart); a YAML file without 'name:' names its runs after itself",
    )  # fmt: skip


def _train_parsers(sub: argparse._SubParsersAction) -> None:
    t = _sub(sub, "train", "train a preset or a YAML config", "Train a preset or YAML config.")
    _config_argument(t)
    _overrides(t)
    t.add_argument(
        "--out", metavar="DIR",
        help="run directory: new, empty, or a run stopped before its first checkpoint "
        "(default: runs/NAME-TIMESTAMP); locked while the run writes it",
    )  # fmt: skip
    _run_options(t)

    r = _sub(
        sub, "resume", "continue a stopped run, or extend a finished one",
        "Continue a run from checkpoints/last.pt, exactly where it stopped (from the start if "
        "it stopped before its first checkpoint). With --epochs N, train a finished run on to "
        "N epochs (its learning-rate schedule continues from where it ended).",
    )  # fmt: skip
    r.add_argument("run_dir", help="the run directory")
    r.add_argument("--epochs", type=int, help="train to N epochs in all (extends the run)")
    r.add_argument("--data-dir", metavar="DIR", help="where the data is now (data.root)")
    r.add_argument("--device", help="device to continue on (train.device)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    s = _sub(
        sub, "sweep", "run a grid of configs and seeds, then tabulate",
        "Run every combination of the --grid values, for --seeds seeds each, as ordinary run "
        "directories under --out (resumable, locked while they run); then print and save "
        "(sweep.json, sweep.csv) a table with the mean and standard deviation over seeds. "
        "Running the same command again skips finished runs and resumes stopped ones.",
    )  # fmt: skip
    _config_argument(s)
    s.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2",
        help="values of one config field (YAML, commas inside [] kept); repeatable",
    )  # fmt: skip
    s.add_argument("--seeds", type=int, default=1, help="seeds per combination (default 1)")
    s.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    s.add_argument("--out", metavar="DIR", help="sweep folder (default runs/sweep-NAME-TIME)")
    _overrides(s)
    _run_options(s)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    e = _sub(
        sub, "eval", "evaluate a saved run",
        "Evaluate a saved run's checkpoint; prints which checkpoint and epoch it evaluated.",
    )  # fmt: skip
    e.add_argument("run_dir", help="a run directory written by 'eqprop train'")
    e.add_argument("--split", choices=["test", "val", "train"], default="test", help="default test")
    e.add_argument(
        "--checkpoint", choices=["best", "last"], default="best",
        help="best (highest validation accuracy; the default) or last; never falls back",
    )  # fmt: skip
    e.add_argument("--device", help="device to evaluate on (default: the run's)")
    e.add_argument(
        "--steps", type=step_counts, metavar="T[,T...]",
        help="free steps of the evaluation's relaxation instead of the run's eval_steps; "
        "several (e.g. 4,8,16) print one line each: does the net need its training budget's "
        "transient, or does it sit near a fixed point?",
    )  # fmt: skip
    e.add_argument("--quiet", action="store_true", help="no progress bar")


def step_counts(text: str) -> list[int]:
    """``T`` or ``T,T,...``: positive step counts."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid; expected positive integers separated by commas, e.g. 4,8,16"
        )
    return counts


def _check_parser(sub: argparse._SubParsersAction) -> None:
    c = _sub(
        sub, "check", "compare EP's per-step updates with BPTT (GDU check)",
        "Compare EP's per-step updates with BPTT's per-step gradients (spec §5) on a batch, "
        "for one-sided +beta, -beta and symmetric EP; with a beta sweep. Writes gdu.json and "
        "PNG figures, prints a table, and warns when round-off or an unconverged free phase "
        "makes the sweep's slopes meaningless.",
    )  # fmt: skip
    c.add_argument(
        "source", nargs="?", default="digits-quickstart",
        help="a run directory (its checkpoint's weights) or a preset/YAML (a fresh network)",
    )  # fmt: skip
    c.add_argument("--checkpoint", choices=["best", "last"], default="last", help="default last")
    _overrides(c)
    c.add_argument("--batch", type=int, default=8, help="examples in the batch (default 8)")
    c.add_argument("--free-steps", type=int, help="T1 (default: the config's free_steps)")
    c.add_argument("--nudged-steps", type=int, help="T2 (default: the config's nudged_steps)")
    c.add_argument(
        "--beta", type=float, action="append",
        help="|beta| compared step by step (repeatable; default 0.01 and 0.1)",
    )  # fmt: skip
    c.add_argument(
        "--sweep", type=float, nargs=3, metavar=("MIN", "MAX", "N"),
        help="beta sweep: N log-spaced values from MIN to MAX (default 1e-3 1e-1 10; with "
        "--hep 0.05 0.8 9)",
    )  # fmt: skip
    c.add_argument("--no-sweep", action="store_true", help="skip the beta sweep")
    c.add_argument(
        "--hep", action="store_true",
        help="holomorphic EP instead: the N-point estimates against the true gradient (BPTT "
        "from the free state) for each --points at --beta (default 0.5) and over the sweep, "
        "with log-log slopes (expect N); writes hep.json and hep_errors.png",
    )  # fmt: skip
    c.add_argument(
        "--points", type=int, nargs="+", metavar="N",
        help="with --hep: the numbers of points compared (default 1 2 3 4 6 8)",
    )  # fmt: skip
    c.add_argument("--float64", action="store_true", help="run the check in float64")
    c.add_argument(
        "--random-data", action="store_true",
        help="use uniform random inputs and labels instead of the dataset",
    )  # fmt: skip
    c.add_argument("--out", metavar="DIR", help="output folder (default runs/check-NAME-TIME)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eqprop", description=DESCRIPTION, epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _train_parsers(sub)
    _eval_parser(sub)
    _check_parser(sub)
    s = _sub(sub, "presets", "list the presets or show one", "List the presets or show one.")
    s.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    s.add_argument("name", nargs="?", help="preset (or YAML file) to show")
    s.add_argument(
        "--resolved", action="store_true",
        help="show the whole resolved config ('extends' followed, defaults filled in)",
    )  # fmt: skip
    return p
