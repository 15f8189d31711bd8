"""``eqprop sweep``: run the planned runs as ``eqprop train``/``resume`` processes, K at a time.

Each run is its own process (its own threads, its own signal handling), writing its output to
``SWEEP/logs/RUN.log``. Ctrl-C reaches the runs from the terminal and SIGTERM is passed on to
them: they save and stop, the sweep starts no new run and waits for them, and the same command
continues the sweep later.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from eqprop.cli.commands import UsageError, default_run_dir, run_overrides
from eqprop.train.checkpoint import atomic_write
from eqprop.train.interrupt import EXIT_CODES
from eqprop.train.reporting import say
from eqprop.train.sweep import SweepRun, aggregate, format_table, plan

__all__ = ["run_sweep"]

#: Run exit statuses as the sweep reports them.
_OUTCOMES = {0: "done", 1: "failed", 2: "refused", 130: "stopped", 143: "stopped"}


class _Runner:
    """Runs commands ``parallel`` at a time, passing SIGTERM on; records each outcome."""

    def __init__(self, parallel: int, logs: Path) -> None:
        self.parallel = parallel
        self.logs = logs
        self.stop: list[int] = []
        self.outcomes: dict[Path, str] = {}
        self._running: dict[Path, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
        self._env = dict(os.environ)
        if parallel > 1 and "OMP_NUM_THREADS" not in self._env:  # share the cores
            self._env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stop.append(signum)
        if signum == signal.SIGTERM:  # Ctrl-C reaches the runs' process group by itself
            for proc, _ in self._running.values():
                proc.send_signal(signal.SIGTERM)

    def run(self, todo: list[tuple[SweepRun, list[str]]]) -> None:
        queue = list(todo)
        while (queue and not self.stop) or self._running:
            while queue and len(self._running) < self.parallel and not self.stop:
                run, command = queue.pop(0)
                log = open(self.logs / f"{run.directory.name}.log", "ab")  # noqa: SIM115
                say(f"starting {run.directory.name}")
                proc = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=self._env
                )
                self._running[run.directory] = (proc, log)
            self._collect()
            time.sleep(0.1)

    def _collect(self) -> None:
        for directory, (proc, log) in list(self._running.items()):
            if proc.poll() is None:
                continue
            log.close()
            outcome = _OUTCOMES.get(proc.returncode, "failed")
            self.outcomes[directory] = outcome
            say(f"{directory.name}: {outcome} (exit status {proc.returncode})")
            del self._running[directory]


def _command(run: SweepRun, config: str, overrides: list[str], status: str) -> list[str]:
    eqprop = [sys.executable, "-m", "eqprop"]
    if status == "started":
        return [*eqprop, "resume", str(run.directory), "--quiet"]
    sets = [item for o in [*overrides, *run.overrides()] for item in ("--set", o)]
    return [*eqprop, "train", config, *sets, "--out", str(run.directory), "--quiet"]


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is a file; expected a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "sweep.json").exists():
        raise UsageError(f"--out: {out} is not empty and is not a sweep folder")


def _write(out: Path, runs: list[SweepRun], outcomes: dict[Path, str]) -> list[dict[str, Any]]:
    """Write ``sweep.json`` (runs and table) and ``sweep.csv`` (table); return the table."""
    rows = aggregate(runs, outcomes)
    listed = [
        {"directory": str(r.directory), "point": r.point, "seed": r.seed,
         "outcome": outcomes.get(r.directory, "not run")}
        for r in runs
    ]  # fmt: skip
    text = json.dumps({"runs": listed, "table": rows}, indent=2) + "\n"
    atomic_write(out / "sweep.json", lambda f: f.write(text.encode()))
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "sweep.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def run_sweep(args: argparse.Namespace) -> int:
    """Plan, run what is not done yet, tabulate; the exit status of ``eqprop sweep``."""
    if args.parallel < 1:
        raise UsageError(f"--parallel: {args.parallel} is not valid; expected an int >= 1")
    name = Path(args.config).stem if Path(args.config).is_file() else args.config
    out = Path(args.out) if args.out else default_run_dir(f"sweep-{name}")
    _check_out(out)
    overrides = run_overrides(args)
    _, runs = plan(args.config, overrides, args.grid, args.seeds, out)
    status = {run.directory: run.status() for run in runs}
    todo = [
        (run, _command(run, args.config, overrides, status[run.directory]))
        for run in runs
        if status[run.directory] != "done"
    ]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    runner = _Runner(args.parallel, out / "logs")
    runner.outcomes = {d: "done" for d, s in status.items() if s == "done"}
    _write(out, runs, runner.outcomes)
    print(
        f"eqprop: sweep of {len(runs)} runs ({len(runs) - len(todo)} done before) in {out}; "
        f"the same command with --out {out} continues it",
        flush=True,
    )
    previous = {sig: signal.signal(sig, runner.on_signal) for sig in EXIT_CODES}
    try:
        runner.run(todo)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(format_table(_write(out, runs, runner.outcomes)))
    print(f"table in {out / 'sweep.json'} and {out / 'sweep.csv'}")
    if runner.stop:
        return EXIT_CODES[signal.Signals(runner.stop[0])]
    return 0 if all(runner.outcomes.get(r.directory) == "done" for r in runs) else 1
