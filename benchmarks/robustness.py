"""Robustness of ``eqprop`` runs against real life (issue 13), as counts.

Runs the real command (``python -m eqprop``) in subprocesses and reports, as one JSON object on
stdout (progress on stderr):

- ``bad_inputs``: bad configs, data files, paths, checkpoints and command lines tried, and how
  many ended in exactly one ``eqprop: error:`` line, no traceback, exit status 1 or 2;
- ``kills``: SIGKILLs at random moments and aimed at checkpoint writes, and how many left an
  unreadable ``last.pt`` (goal 0) or temporary files after the next start (goal 0);
- ``resumes``: runs stopped (SIGKILL chains, SIGTERM, Ctrl-C, a full disk) then resumed to the
  end, and how many logged exactly the uninterrupted run's metrics (goal: all);
- ``concurrent_writers``: second ``train``/``resume`` processes started on a directory another
  process is writing, and how many were refused at once (goal: all);
- ``full_disk``: a run on a small tmpfs that fills up (when ``mount`` is permitted, else it says
  why not).

``python benchmarks/robustness.py [--kills 25] [--stops 4] [--work DIR] > robustness.json``
(about 12 minutes on 2 cores; needs root for the tmpfs and read-only mounts, skipped otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from robustness_cases import PWNED, bad_input_cases

from eqprop.train.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

EQPROP = [sys.executable, "-m", "eqprop"]
#: A digits run of about 30 s of training (8 s epochs) with 13.5 MB checkpoints.
RUN = [
    "--set", "train.epochs=4", "--set", "train.batch_size=8", "--set", "model.dense=[1024,1024]",
    "--set", "dynamics.free_steps=30", "--set", "dynamics.nudged_steps=8",
    "--set", "log.tensorboard=false", "--quiet",
]  # fmt: skip
TIMING = {"seconds", "train_seconds", "eval_seconds"}
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def eqprop(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EQPROP, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def one_line_error(res: subprocess.CompletedProcess[str]) -> bool:
    lines = res.stderr.strip().splitlines()
    errors = [x for x in lines if x.startswith("eqprop: error: ")]
    return (
        res.returncode in (1, 2)
        and len(errors) == 1
        and "Traceback" not in res.stderr + res.stdout
        and all(x.startswith("eqprop: ") for x in lines)
    )


# ------------------------------------------------------------------------------ bad inputs


def bad_inputs(work: Path, run: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(work / "shim")}  # a torchvision that fails to import
    tried, failures = 0, []
    for name, args in bad_input_cases(work, run).items():
        res = (
            eqprop(*args, "--quiet", env=env)
            if args[0] in ("train", "resume")
            else eqprop(*args, env=env)
        )
        tried += 1
        last = (res.stderr.strip().splitlines() or [""])[-1]
        log(f"bad input {name!r}: exit {res.returncode}: {last[:160]}")
        if not one_line_error(res) or PWNED.exists():
            failures.append({"case": name, "exit": res.returncode, "stderr": res.stderr[-600:]})
    ro = read_only_case(work)
    if ro is not None:
        tried += 1
        if not ro:
            failures.append({"case": "read-only --out"})
    return {"tried": tried, "one_line_errors": tried - len(failures), "failures": failures}


def read_only_case(work: Path) -> bool | None:
    target = work / "read-only"
    target.mkdir()
    if subprocess.run(
        ["mount", "--bind", str(target), str(target)], capture_output=True
    ).returncode:
        return None
    try:
        subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(target)], check=True, capture_output=True
        )
        res = eqprop("train", "--out", str(target / "run"), "--quiet")
        log(f"bad input 'read-only --out': exit {res.returncode}: {res.stderr.strip()}")
        return one_line_error(res) and "Read-only file system" in res.stderr
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


# ------------------------------------------------------------------------------ kills


def _temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*.tmp")]


def _kill_once(run: Path, aimed: bool, rng: random.Random) -> None:
    """Start (or resume) the run and SIGKILL it at a random moment, or (``aimed``) as soon as
    a checkpoint's temporary file appears."""
    args = (
        ["resume", str(run)]
        if (run / "config.yaml").exists()
        else ["train", *RUN, "--out", str(run)]
    )
    with subprocess.Popen(
        [*EQPROP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    ) as proc:
        if aimed:  # a new temporary file, not one a killed predecessor left
            stale = set(run.glob("checkpoints/.*.pt.*.tmp"))
            deadline = time.time() + 90
            while proc.poll() is None and time.time() < deadline:
                if set(run.glob("checkpoints/.*.pt.*.tmp")) - stale:
                    break
                time.sleep(0.001)
        else:
            time.sleep(rng.uniform(3.0, 25.0))
        proc.send_signal(signal.SIGKILL)


def _last_checkpoint(run: Path) -> dict[str, Any] | str | None:
    """The run's ``last.pt`` (None when absent, ``"unreadable"`` when it does not load)."""
    last = run / "checkpoints" / "last.pt"
    if not last.exists():
        return None
    try:
        return load_checkpoint(last)
    except CheckpointError:
        return "unreadable"


def kill_chains(
    work: Path, reference: list[dict[str, Any]], kills: int, rng: random.Random
) -> tuple[dict[str, Any], list[bool]]:
    """SIGKILL train/resume chains; a chain whose checkpoint reaches the last epoch is resumed
    to its end, compared with the reference, and a new chain starts."""
    keys = ("aimed_at_checkpoint_writes", "unreadable_checkpoints", "chains",
            "starts_that_found_temp_files", "temp_files_left_after_resume")  # fmt: skip
    counts = {"kills": kills, **dict.fromkeys(keys, 0)}
    exact: list[bool] = []
    run = work / "killed-0"
    for i in range(kills):
        counts["starts_that_found_temp_files"] += int(bool(_temp_files(run)))
        aimed = i % 3 == 2
        counts["aimed_at_checkpoint_writes"] += int(aimed)
        _kill_once(run, aimed, rng)
        ckpt = _last_checkpoint(run)
        counts["unreadable_checkpoints"] += int(ckpt == "unreadable")
        state = (
            ckpt if not isinstance(ckpt, dict) else f"epoch {ckpt['epoch']}, batch {ckpt['batch']}"
        )
        log(f"kill {i + 1}/{kills}{' (aimed)' if aimed else ''}: last.pt {state or 'absent'}")
        if i == kills - 1 or (isinstance(ckpt, dict) and ckpt["epoch"] >= len(reference)):
            res = eqprop("resume", str(run))
            counts["temp_files_left_after_resume"] += len(_temp_files(run))
            exact.append(res.returncode == 0 and records(run) == reference)
            counts["chains"] += 1
            log(f"chain {counts['chains']} resumed to its end: exact {exact[-1]}")
            run = work / f"killed-{counts['chains']}"
    return counts, exact


def _start_training(run: Path) -> subprocess.Popen[str]:
    command = [*EQPROP, "train", *RUN, "--out", str(run)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def stopped_runs(
    work: Path, reference: list[dict[str, Any]], stops: int, rng: random.Random
) -> dict[str, Any]:
    """Runs stopped by SIGTERM or Ctrl-C at a random moment, then resumed to the end."""
    out: dict[str, Any] = {"stopped": 0, "saved_and_exit_status_right": 0, "exact": 0}
    for i in range(stops):
        sig = (signal.SIGTERM, signal.SIGINT)[i % 2]
        run = work / f"stopped-{i}"
        proc = _start_training(run)
        time.sleep(rng.uniform(4.0, 10.0))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            log(f"stop {i + 1}: the run finished before the signal; not counted")
            continue
        out["stopped"] += 1
        expected = {signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
        out["saved_and_exit_status_right"] += int(
            proc.returncode == expected and f"eqprop resume {run}" in err
        )
        res = eqprop("resume", str(run))
        out["exact"] += int(res.returncode == 0 and records(run) == reference)
        name = signal.Signals(sig).name
        log(f"{name} stop {i + 1}: exit {proc.returncode}, resume exit {res.returncode}")
    return out


# ------------------------------------------------------------------------------ writers


def concurrent_writers(work: Path, trials: int) -> dict[str, Any]:
    second, failures = 0, []
    for i in range(trials):
        run = work / f"busy-{i}"
        first = _start_training(run)
        assert first.stdout is not None
        first.stdout.readline()  # "eqprop: training ... into RUN": it holds the lock
        for args in (["train", *RUN, "--out", str(run)], ["resume", str(run)]):
            res = eqprop(*args)
            second += 1
            if not (res.returncode == 2 and "is in use by" in res.stderr and one_line_error(res)):
                alive = first.poll() is None
                failures.append({"args": args[0], "exit": res.returncode, "first_alive": alive,
                                 "stderr": res.stderr[-600:]})  # fmt: skip
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
        log(f"concurrent writers {i + 1}/{trials}: {len(failures)} not refused so far")
    return {"second_writers": second, "refused": second - len(failures), "failures": failures}


# ------------------------------------------------------------------------------ full disk


def full_disk(work: Path, reference: list[dict[str, Any]]) -> tuple[dict[str, Any], bool | None]:
    mount = work / "tmpfs"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=34m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        return {"skipped": "mount -t tmpfs is not permitted here"}, None
    try:
        run = mount / "run"
        res = eqprop("train", *RUN, "--set", "log.plots=false", "--out", str(run))
        last = run / "checkpoints" / "last.pt"
        kept = last.exists() and load_checkpoint(last)["epoch"] >= 1
        result = {
            "exit_status": res.returncode,
            "one_line_error": one_line_error(res),
            "error": res.stderr.strip(),
            "last_good_checkpoint_kept": kept,
            "temp_files_left": len(_temp_files(run)),
        }
        subprocess.run(["mount", "-o", "remount,size=128m", str(mount)], check=True)
        resumed = eqprop("resume", str(run))
        exact = resumed.returncode == 0 and records(run) == reference
        return result, exact
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=25)
    p.add_argument("--stops", type=int, default=4)
    p.add_argument("--writers", type=int, default=3)
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="eqprop-robustness-", dir=args.work))
    log("reference run")
    reference_run = work / "reference"
    res = eqprop("train", *RUN, "--out", str(reference_run))
    assert res.returncode == 0, res.stderr
    reference = records(reference_run)
    result: dict[str, Any] = {"bad_inputs": bad_inputs(work, reference_run)}
    kills, kill_exact = kill_chains(work, reference, args.kills, rng)
    result["kills"] = kills
    stops = stopped_runs(work, reference, args.stops, rng)
    result["signals"] = stops
    disk, disk_exact = full_disk(work, reference)
    result["full_disk"] = disk
    resumes = [
        *kill_exact,
        *[True] * stops["exact"],
        *[False] * (stops["stopped"] - stops["exact"]),
    ]
    if disk_exact is not None:
        resumes.append(disk_exact)
    result["resumes"] = {"resumes": len(resumes), "exact": sum(resumes)}
    result["concurrent_writers"] = concurrent_writers(work, args.writers)
    result["seconds"] = round(time.perf_counter() - T0, 1)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
