"""Benchmark suite of eqprop: cost, convergence and numerical quality of relaxation and EP.

Prints one JSON object on stdout (progress goes to stderr) and writes ``residual.png`` and
``tolerance.png`` into ``--out``. Each section is a module of ``sections/`` whose ``run(ctx)``
returns a dict; a section that fails is reported as ``{"error": ...}`` and the others still
run. Shared helpers are in ``common.py`` and ``context.py``. See ``benchmarks/README.md``.

Usage::

    python benchmarks/suite.py [--out DIR] [--device cpu|cuda] [--quick]
        [--checkpoint RUN_DIR_OR_PT ...] [--sections step,residual,...] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from common import T0, finite, log
from context import Context, Settings
from sections import epoch, graph, precision, ratio, residual, schedules, step, tolerance

from eqprop.train.runlog import environment_facts

#: Sections in the order they run, each a function of the shared context to its JSON dict.
RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "step": step.run,
    "residual": residual.run,
    "tolerance": tolerance.run,
    "ratio": ratio.run,
    "precision": precision.run,
    "schedules": schedules.run,
    "epoch": epoch.run,
    "graph": graph.run,
}
SECTIONS = tuple(RUNNERS)
ROOT = Path(__file__).resolve().parents[1]


def _pair(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.split(","))
    return a, b


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (sizes left at None take the full or ``--quick`` default)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=str(Path(__file__).parent / "results"), help="folder for the PNGs"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, ~1-2 min")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        action="extend",
        default=[],
        metavar="RUN_OR_PT",
        help="trained run dirs (checkpoints/last.pt) or .pt files",
    )
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    p.add_argument("--reps", type=int, help="timing repetitions (default 3; quick 1)")
    p.add_argument("--data-dir", help="dataset folder (default $EQPROP_DATA, else ./data)")
    p.add_argument("--batch", type=int, help="residual/tolerance/schedules batch (32; quick 4)")
    p.add_argument("--trace-steps", type=int, help="residual trace length = tolerance cap (500)")
    p.add_argument("--ref-steps", type=int, help="steps of the reference fixed point (1000)")
    p.add_argument(
        "--exact",
        type=_pair,
        help="T1,T2 of exact EP (250,25); also the step counts of residual, precision, schedules",
    )
    p.add_argument("--fast", type=_pair, help="T1,T2 of fast EP (10,4)")
    p.add_argument("--ratio-batches", type=_ints, help="batches of the ratio section (128,32)")
    p.add_argument("--epoch-batches", type=int, help="batches timed per epoch estimate (200)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    return args


def resolve(args: argparse.Namespace) -> Settings:
    """Settings from the arguments: explicit values win, then the quick or full defaults."""
    q = args.quick

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if q else full)

    exact = pick(args.exact, (250, 25), (250, 25))
    return Settings(
        device=torch.device(args.device),
        quick=q,
        reps=pick(args.reps, 3, 1),
        batch=pick(args.batch, 32, 4),
        trace_steps=pick(args.trace_steps, 500, 20),
        ref_steps=pick(args.ref_steps, 1000, 40),
        match_steps=pick(None, exact[0], 10),
        nudged_steps=pick(None, exact[1], 5),
        exact=exact,
        fast=pick(args.fast, (10, 4), (10, 4)),
        exact_probe=(5, 2) if q else None,
        step_batches=pick(None, (32, 128), (4,)),
        ratio_batches=pick(args.ratio_batches, (128, 32), (4,)),
        precision_batch=pick(None, 8, 4),
        precision_steps=pick(None, exact, (20, 5)),
        epoch_batches=pick(args.epoch_batches, 200, 3),
    )


def cpu_model() -> str:
    """``model name`` of ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def git_dirty() -> bool | None:
    """Whether the checkout has uncommitted changes (None without git)."""
    try:
        res = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(res.stdout.strip())


def environment(device: torch.device) -> dict[str, Any]:
    """Machine and code facts for the top level of the JSON."""
    facts = environment_facts()
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": facts["torch"],
        "threads": facts["torch_threads"],
        "cpu": cpu_model(),
        "cpu_count": facts["cpu_count"],
        "git_commit": facts["git_commit"],
        "git_dirty": git_dirty(),
        "timestamp": facts["timestamp"],
        "python": facts["python"],
    }


def run_section(name: str, ctx: Context) -> dict[str, Any]:
    """One section's dict with its ``seconds``; ``{"error": ...}`` when it raised."""
    log(f"== {name}")
    t0 = time.perf_counter()
    try:
        result = RUNNERS[name](ctx)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = time.perf_counter() - t0
    log(f"== {name} done in {result['seconds']:.1f}s")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = resolve(args)
    torch.manual_seed(0)
    ctx = Context(settings, args)
    ctx.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "eqprop_suite",
        **environment(settings.device),
        "quick": settings.quick,
        "settings": {
            k: (str(v) if isinstance(v, torch.device) else v) for k, v in settings.__dict__.items()
        },
        "sections": {},
    }
    for name in SECTIONS:
        if name in args.sections:
            report["sections"][name] = run_section(name, ctx)
    if args.checkpoint:
        report["checkpoints"] = ctx.case_notes
    report["total_seconds"] = time.perf_counter() - T0
    print(json.dumps(finite(report), indent=2))


if __name__ == "__main__":
    main()
