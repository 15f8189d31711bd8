"""The paper's claims reproduced at CPU scale: a resumable set of ``eqprop`` runs and its report.

Each experiment is an ordinary run directory under ``--root`` (default ``runs/claims/NAME``),
trained by the ``eqprop`` command in a subprocess, one run at a time, ``nice``d, with
``--threads`` torch threads (default 1). Running the same command again skips finished runs,
resumes interrupted ones (``eqprop resume DIR``) and starts those that never started; a run
directory whose config no longer matches the experiment set is left alone and reported. Ctrl-C
or SIGTERM stops the current run after it saves (the next invocation continues it).

The report is rebuilt from the run directories (``config.yaml``, ``metrics.jsonl``,
``summary.json``) after every invocation: ``claims.json`` and ``claims_*.png`` in ``--results``
(default ``benchmarks/results``), and a summary table on stdout (see ``claims_report.py``).
Run directories are not committed: a run whose directory is absent keeps its finished entry
from the ``claims.json`` already there (marked ``kept_from_previous_report``), as long as its
preset, overrides and resolved recipe fields still match, so new runs can be added on a fresh
checkout.

Groups (``EXPERIMENTS`` below):

- ``cifar``: the convnet of ``cifar10-conv-small-fast`` (32-64-128, even/odd 12 + 2×4 steps,
  3 epochs, seed 0) trained by symmetric, one-sided and random-sign EP and truncated BPTT with
  the squared-error output, by symmetric EP with the cross-entropy readout, and its asymmetric
  (VF) twin with symmetric EP and cross-entropy; each EP run logs the EP-versus-BPTT check
  every epoch;
- ``budget``: the symmetric-EP cross-entropy run at 60 + 2×15 synchronous steps (the exact
  ``cifar10-conv-small``), 12 + 2×4, 6 + 2×2 and 4 + 2×1 even/odd steps with batched phases,
  and node-by-node sweeps (``forward_backward``) with 1, 3, 4, 5 and 6 free sweeps;
- ``seeds``: the 1 + 2×1 and 3 + 2×1 node-sweep budgets at seeds 1-3;
- ``small``: ``mnist-conv-ce-fast`` and ``fashion-conv-ce-fast``, about 30 minutes each;
- ``residual``: ``cifar10-residual-small`` (the small Hopfield-ResNet) and the chain
  ``cifar10-conv-small-fast`` with the cross-entropy readout, 3 epochs each, run one after
  the other, the residual net with 3 free sweeps, and ``cifar10-residual-stem`` (the
  residual blocks on the chain's conv-pool stem, 6 epochs of 3 free sweeps, and 5 of 4);
- ``hour``: the symmetric-EP cross-entropy run given 6 epochs, about an hour of training, and
  the same net with 3 + 2×1 node sweeps (``cifar10-conv-small-sweep``'s budget) given 18.

Usage (from the repository root)::

    python benchmarks/claims.py                       # everything (about 7 hours on 2 cores)
    python benchmarks/claims.py --group cifar         # one group; --only NAME[,NAME]
    python benchmarks/claims.py --dry-run             # print the commands and statuses
    python benchmarks/claims.py --report-only         # rebuild claims.json and the PNGs
    python benchmarks/claims.py --start-checks        # add the initial weights' check to runs
                                                      # trained before the trainer wrote it
    python benchmarks/claims.py --set-file runs.json  # another experiment set (a JSON or
                                                      # YAML list of {name, preset, overrides,
                                                      # groups})
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from claims_report import PlannedRun, build_report, format_table, read_report, write_report

from eqprop.train.checkpoint import atomic_write
from eqprop.train.confdiff import INCIDENTAL, differences
from eqprop.train.config import ConfigError, ExperimentConfig, load_config
from eqprop.train.convert import config_to_dict
from eqprop.train.trainer import CHECK_AT_START, Trainer

RESULTS = Path(__file__).resolve().parent / "results"

#: ``eqprop`` exit statuses as the runner reports them (130/143: stopped by a signal, saved).
OUTCOMES = {0: "done", 1: "failed", 2: "refused", 130: "stopped", 143: "stopped"}


@dataclass(frozen=True)
class Experiment:
    """One run of the set: a preset (or YAML path), its overrides and the groups it belongs to."""

    name: str
    preset: str
    overrides: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


CIFAR = "cifar10-conv-small-fast"
#: The EP-versus-BPTT check every epoch on 32 validation images (a second or so each).
CHECK = ("log.check_every=1", "log.check_batch=32")
#: The paper's squared-error recipe: β = 0.5 (cross-entropy runs keep the preset's β = 1).
MSE = ("model.output=mse", "estimator.beta=0.5")
EPOCHS = ("train.epochs=3",)
FB = "dynamics.schedule=forward_backward"
#: The small-data presets: the check every 5 epochs.
SMALL_CHECK = ("log.check_every=5", "log.check_batch=32")


def _cifar(
    name: str, *extra: str, groups: tuple[str, ...] = ("cifar",), preset: str = CIFAR
) -> Experiment:
    return Experiment(name, preset, (*EPOCHS, *extra), groups)


def _steps(free: int, nudged: int) -> tuple[str, ...]:
    d = "dynamics."
    return (f"{d}free_steps={free}", f"{d}nudged_steps={nudged}", f"{d}eval_steps={free}")


EXPERIMENTS: tuple[Experiment, ...] = (
    _cifar("cifar-mse-symmetric", *MSE, *CHECK),
    _cifar("cifar-mse-one-sided", *MSE, "estimator.kind=one_sided", *CHECK),
    _cifar("cifar-mse-random-sign", *MSE, "estimator.kind=random_sign", *CHECK),
    _cifar("cifar-mse-bptt", *MSE, "estimator.kind=bptt"),
    # Also the 12 + 2×4 point of the budget study.
    _cifar("cifar-ce-symmetric", *CHECK, groups=("cifar", "budget")),
    _cifar("cifar-vf-ce-symmetric", "model.kind=asymmetric", *CHECK),
    # cifar10-conv-small: synchronous, 60 free and 15 nudged steps (eval 60), phases batched.
    _cifar("budget-t60-15-sync", *CHECK, groups=("budget",), preset="cifar10-conv-small"),
    _cifar("budget-t6-2", *_steps(6, 2), *CHECK, groups=("budget",)),
    _cifar("budget-t4-1", *_steps(4, 1), *CHECK, groups=("budget",)),
    # Gauss-Seidel sweeps in depth order (free ones alternating up and down, nudged ones from
    # the readout down): one nudged sweep carries the nudge to every layer, which one even/odd
    # step cannot.
    _cifar("budget-fb-t4-1", *_steps(4, 1), FB, *CHECK, groups=("budget",)),
    _cifar("budget-fb-t6-1", *_steps(6, 1), FB, *CHECK, groups=("budget",)),
    _cifar("budget-fb-t4-2", *_steps(4, 2), FB, *CHECK, groups=("budget",)),
    # An odd number of free sweeps ends the free phase on an upward sweep.
    _cifar("budget-fb-t1-1", *_steps(1, 1), FB, *CHECK, groups=("budget",)),
    _cifar("budget-fb-t3-1", *_steps(3, 1), FB, *CHECK, groups=("budget",)),
    _cifar("budget-fb-t5-1", *_steps(5, 1), FB, *CHECK, groups=("budget",)),
    # The 1 + 2x1 and 3 + 2x1 node-sweep budgets at other seeds (the chain's 12 + 2x4 at seeds
    # 1-3 is in docs/results.md, from issue 12's comparison).
    *(
        _cifar(f"budget-fb-t{t}-1-s{s}", *_steps(t, 1), FB, *CHECK, f"seed={s}", groups=("seeds",))
        for s in (1, 2, 3)
        for t in (3, 1)
    ),
    # Issue 12's comparison: the small residual graph against the chain of about its cost,
    # side by side (the chain is cifar-ce-symmetric again, trained under the same conditions).
    _cifar("residual-cifar", *CHECK, groups=("residual",), preset="cifar10-residual-small"),
    _cifar("residual-chain-cifar", *CHECK, groups=("residual",)),
    # The residual graph with 3 free sweeps (the Fashion-MNIST preset's count) at equal epochs.
    _cifar(
        "residual-cifar-t3",
        *_steps(3, 1),
        *CHECK,
        groups=("residual",),
        preset="cifar10-residual-small",
    ),
    # The residual blocks on the chain's conv-pool stem: 6 epochs of 3 + 2x1 node sweeps, about
    # the chain's 3 in time; and its first recipe, 5 epochs of 4 + 2x1, about the same.
    Experiment("residual-stem-cifar", "cifar10-residual-stem", (), ("residual",)),
    Experiment(
        "residual-stem-cifar-t4",
        "cifar10-residual-stem",
        ("dynamics.free_steps=4", "dynamics.eval_steps=4", "train.epochs=5"),
        ("residual",),
    ),
    # The 60-minute CIFAR target: the preset CE run given as many epochs as fit in an hour of
    # one-thread training here (about 470 s per epoch), its cosine schedule stretched to match.
    Experiment("cifar-ce-hour", CIFAR, ("train.epochs=6",), ("hour",)),
    # The same net with the 3 + 2x1 node-sweep budget: about 155 s per epoch, so 18 epochs.
    Experiment("cifar-fb-hour", CIFAR, ("train.epochs=18", FB, *_steps(3, 1)), ("hour",)),
    # The small-data targets: presets sized for about 30 minutes of training each (about
    # 75 s per epoch on one thread), their own epochs; the EP-vs-BPTT check every 5 epochs.
    Experiment("mnist-conv-ce-fast", "mnist-conv-ce-fast", SMALL_CHECK, ("small",)),
    Experiment("fashion-conv-ce-fast", "fashion-conv-ce-fast", SMALL_CHECK, ("small",)),
)


def load_set(path: Path) -> tuple[Experiment, ...]:
    """The experiments of a JSON or YAML list of ``{name, preset, overrides, groups}``."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise SystemExit(f"claims: error: {path}: expected a list of runs")
    out = []
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not {"name", "preset"} <= entry.keys()
            or not re.fullmatch(r"[A-Za-z0-9._+=-]+", str(entry["name"]))
            or not all(isinstance(entry.get(k, []), list) for k in ("overrides", "groups"))
        ):
            raise SystemExit(
                f"claims: error: {path}: each run needs a name (letters, digits, ._+=-), a "
                f"preset, and lists of overrides and groups; got {entry!r}"
            )
        out.append(
            Experiment(
                str(entry["name"]), str(entry["preset"]),
                tuple(str(o) for o in entry.get("overrides", ())),
                tuple(str(g) for g in entry.get("groups", ())),
            )
        )  # fmt: skip
    return tuple(out)


def failure_mark(root: Path, name: str) -> Path:
    """Written when a run fails (exit status 1, e.g. non-finite values): it is not retried
    (a resume would fail the same way) until this file is deleted."""
    return root / "logs" / f"{name}.failed"


def status(root: Path, name: str, planned: ExperimentConfig) -> tuple[str, list[str]]:
    """``new``, ``started``, ``done``, ``failed`` or ``conflict`` (with the differing fields)."""
    run_dir = root / name
    if failure_mark(root, name).exists():
        return "failed", [f"delete {failure_mark(root, name)} to retry"]
    if not (run_dir / "config.yaml").is_file():
        return "new", []
    try:
        saved = load_config(run_dir / "config.yaml")
    except ConfigError as err:
        return "conflict", [str(err)]
    changed = differences(config_to_dict(saved), config_to_dict(planned), ignore=INCIDENTAL)
    if changed:
        return "conflict", [*changed, f"delete {run_dir} to rerun it"]
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict) and summary.get("epochs") == planned.train.epochs:
        return "done", []
    return "started", []


def command(exp: Experiment, run_dir: Path, state: str, data: str, threads: int) -> list[str]:
    """The ``eqprop train`` (new run) or ``eqprop resume`` (started run) command line."""
    eqprop = [sys.executable, "-m", "eqprop"]
    if state == "started":
        return [*eqprop, "resume", str(run_dir), "--data-dir", data, "--quiet"]
    sets = [*exp.overrides, f"name={exp.name}", f"data.root={data}", f"train.num_threads={threads}"]
    pairs = [item for s in sets for item in ("--set", s)]
    return [*eqprop, "train", exp.preset, *pairs, "--out", str(run_dir), "--quiet"]


class Runner:
    """Runs commands one at a time, output to the terminal and ``ROOT/logs/NAME.log``; a signal
    stops the current run after it saves (Ctrl-C and SIGTERM are passed on to it)."""

    def __init__(self, logs: Path, threads: int, niceness: int) -> None:
        self.logs = logs
        self.stop: list[int] = []
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.prefix = ["nice", "-n", str(niceness)] if niceness and shutil.which("nice") else []
        self._proc: subprocess.Popen[str] | None = None

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stop.append(signum)
        if self._proc is not None:  # the run has its own session: only this reaches it
            self._proc.send_signal(signum)

    def run(self, name: str, cmd: list[str]) -> str:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (
            open(self.logs / f"{name}.log", "a", encoding="utf-8") as log,
            subprocess.Popen(
                [*self.prefix, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, env=self.env, start_new_session=True,
            ) as proc,
        ):  # fmt: skip
            self._proc = proc
            if self.stop:  # a signal came while it started
                proc.send_signal(self.stop[0])
            log.write("$ " + " ".join(cmd) + "\n")
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                print(f"[{name}] {line}", end="", flush=True)
            code = proc.wait()
        self._proc = None
        outcome = OUTCOMES.get(code, "failed")
        print(f"claims: {name}: {outcome} (exit status {code})", flush=True)
        return outcome


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run the claims experiments (resumable) and write claims.json and PNGs.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__,
    )  # fmt: skip
    p.add_argument("--root", default="runs/claims", help="run directories (default runs/claims)")
    p.add_argument("--data", default="../shared/data", help="data.root (default ../shared/data)")
    p.add_argument("--results", default=str(RESULTS), help="claims.json and PNGs go here")
    p.add_argument("--only", help="comma-separated run names to run")
    groups = ", ".join(dict.fromkeys(g for e in EXPERIMENTS for g in e.groups))
    p.add_argument("--group", help=f"run this group only ({groups})")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the runs (0: none)")
    p.add_argument("--dry-run", action="store_true", help="print statuses and commands only")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report")
    p.add_argument("--set-file", type=Path, help="JSON/YAML list of runs (replaces the set)")
    p.add_argument(
        "--start-checks", action="store_true",
        help="only write the check on the initial weights (check_at_start.json) of the chosen "
        "runs that log checks but predate it, then rebuild the report",
    )  # fmt: skip
    return p.parse_args(argv)


def select(experiments: Sequence[Experiment], args: argparse.Namespace) -> list[Experiment]:
    """The experiments named by ``--only`` and in ``--group`` (all without either)."""
    chosen = list(experiments)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {e.name for e in experiments})
        if unknown:
            raise SystemExit(f"claims: error: --only: unknown run(s) {', '.join(unknown)}")
        chosen = [e for e in chosen if e.name in names]
    if args.group:
        if args.group not in {g for e in experiments for g in e.groups}:
            raise SystemExit(f"claims: error: --group: unknown group {args.group!r}")
        chosen = [e for e in chosen if args.group in e.groups]
    return chosen


def start_checks(chosen: Sequence[Experiment], root: Path, data: str) -> None:
    """Write ``check_at_start.json`` into each chosen run directory that logs EP-versus-BPTT
    checks but was trained before the trainer wrote it: the trainer's own check, on the initial
    weights that the run's saved config (and so its seed) gives."""
    for exp in chosen:
        run_dir = root / exp.name
        path = run_dir / CHECK_AT_START
        if path.exists() or not (run_dir / "config.yaml").is_file():
            continue
        cfg = load_config(run_dir / "config.yaml", [f"data.root={data}"])
        if not cfg.log.check_every:
            continue
        with tempfile.TemporaryDirectory() as scratch:  # the trainer writes nothing here
            record = Trainer(cfg, Path(scratch), quiet=True).start_check()
        text = json.dumps(record, indent=2) + "\n"
        atomic_write(path, lambda f, text=text: f.write(text.encode("utf-8")))
        print(f"claims: {exp.name}: wrote {path}", flush=True)


def run_all(
    chosen: list[Experiment], planned: dict[str, ExperimentConfig], args: argparse.Namespace,
    runner: Runner,
) -> dict[str, str]:  # fmt: skip
    """Skip, resume or start each chosen run in turn (or print its command); the outcomes."""
    root, data = Path(args.root), str(Path(args.data).resolve())
    outcomes: dict[str, str] = {}
    for exp in chosen:
        if runner.stop:
            break
        state, why = status(root, exp.name, planned[exp.name])
        if state in ("done", "failed", "conflict"):
            note = f" ({'; '.join(why)})" if why else ""
            print(f"claims: {exp.name}: {state}, skipped{note}")
            outcomes[exp.name] = state
            continue
        cmd = command(exp, root / exp.name, state, data, args.threads)
        if args.dry_run:
            print(f"# {exp.name} ({state})\n" + " ".join([*runner.prefix, *cmd]))
            continue
        print(f"claims: {exp.name}: {'starting' if state == 'new' else 'resuming'}", flush=True)
        outcomes[exp.name] = runner.run(exp.name, cmd)
        if outcomes[exp.name] == "failed":
            failure_mark(root, exp.name).write_text(f"see {exp.name}.log\n", encoding="utf-8")
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """Run what is not done yet, then write the report; the exit status."""
    args = parse_args(argv)
    if args.threads < 1:
        raise SystemExit("claims: error: --threads: expected an integer >= 1")
    experiments = load_set(args.set_file) if args.set_file else EXPERIMENTS
    if len({e.name for e in experiments}) != len(experiments):
        raise SystemExit("claims: error: run names must be unique")
    try:
        planned = {e.name: load_config(e.preset, e.overrides) for e in experiments}
    except ConfigError as err:
        raise SystemExit(f"claims: error: {err}") from None
    chosen = [] if args.report_only else select(experiments, args)
    root = Path(args.root)
    if args.start_checks:
        start_checks(chosen, root, str(Path(args.data).resolve()))
        chosen = []
    runner = Runner(root / "logs", args.threads, args.nice)
    previous = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        outcomes = run_all(chosen, planned, args, runner)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.dry_run:
        return 0
    runs = [
        PlannedRun(e.name, e.preset, e.overrides, e.groups, root / e.name, planned[e.name],
                   status(root, e.name, planned[e.name])[0])
        for e in experiments
    ]  # fmt: skip
    settings = {"root": str(root), "data": str(Path(args.data).resolve()), "threads": args.threads}
    report = build_report(runs, settings, read_report(Path(args.results)))
    paths = write_report(report, Path(args.results))
    print(format_table(report))
    print("report: " + ", ".join(str(p) for p in paths))
    if runner.stop:
        return 130 if runner.stop[0] == signal.SIGINT else 143
    bad = {"failed", "refused", "conflict", "stopped"}
    return 1 if any(o in bad for o in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
