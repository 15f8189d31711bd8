"""Benchmark suite of eqprop: cost, convergence and numerical quality of relaxation and EP.

Prints one JSON object on stdout (progress goes to stderr) and writes ``residual.png`` and
``tolerance.png`` into ``--out``. Each section is one function returning a dict; a section that
fails is reported as ``{"error": ...}`` and the others still run. See ``benchmarks/README.md``.

Usage::

    python benchmarks/suite.py [--out DIR] [--device cpu|cuda] [--quick]
        [--checkpoint RUN_DIR_OR_PT ...] [--sections step,residual,...] [--reps N]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from relaxation_step import bench, mnist_mlp, paper_cifar10, sync
from torch import Tensor, nn

from eqprop import ConvLayer, EnergyNetwork, Solver, SymmetricEP
from eqprop.core import ConvInteraction
from eqprop.dynamics import SCHEDULES
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.config import config_from_dict, load_config
from eqprop.train.data import (
    DataError,
    Dataset,
    EpochLoader,
    load_dataset,
    normalizer_for,
    resolve_data_dir,
)
from eqprop.train.trainer import build_estimator, build_network, build_optimizer

State = list[Tensor]
SECTIONS = ("step", "residual", "tolerance", "ratio", "precision", "schedules", "epoch")
SCHEDULE_NAMES = ("synchronous", "even_odd", "forward_backward")
HATCHES = {"synchronous": None, "even_odd": "//", "forward_backward": ".."}
TOLERANCES = (1e-3, 1e-4, 1e-5)
IMAGE_SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}
CIFAR10_TRAIN = 50_000
T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress line on stderr, with the seconds since start."""
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Sizes of every section, resolved from the CLI (``--quick`` shrinks the defaults)."""

    device: torch.device
    quick: bool
    reps: int
    batch: int  # residual, tolerance, schedules
    trace_steps: int  # length of the residual traces = tolerance cap
    ref_steps: int  # steps of the reference fixed point
    match_steps: int  # synchronous steps to match, schedules' T1 (exact T1 = the paper's 250)
    nudged_steps: int  # schedules' T2 (exact T2)
    exact: tuple[int, int]
    fast: tuple[int, int]
    exact_probe: tuple[int, int] | None  # quick: time exact EP with these steps, then scale
    step_batches: tuple[int, ...]
    ratio_batches: tuple[int, ...]
    precision_batch: int
    precision_steps: tuple[int, int]
    epoch_batches: int
    ref_tol: float = 1e-7


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


# ------------------------------------------------------------------------------- helpers


def seeded(make: Callable[[], EnergyNetwork], seed: int = 0) -> EnergyNetwork:
    """Build a network from a fixed seed, whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def mnist_conv() -> EnergyNetwork:
    """The original code's MNIST conv net: 32-64, 5×5, max pools, mse, hard_sigmoid."""
    return EnergyNetwork(
        (1, 28, 28), conv=[ConvLayer(32, 5), ConvLayer(64, 5)], activation="hard_sigmoid"
    )


def small_conv() -> EnergyNetwork:
    """A small conv net for the precision section: 16-32, 3×3 on 3×16×16, ce readout."""
    conv = [ConvLayer(16, 3, 1, 1), ConvLayer(32, 3, 1, 1)]
    return EnergyNetwork((3, 16, 16), conv=conv, output="ce", activation="my_hard_sig")


#: Networks of the residual, tolerance and schedules sections: (builder, dataset, normalisation).
BASES: dict[str, tuple[Callable[[], EnergyNetwork], str, str]] = {
    "paper_cifar10_ce": (lambda: paper_cifar10("ce"), "cifar10", "paper"),
    "mnist_conv_32_64": (mnist_conv, "mnist", "standard"),
}


def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Largest absolute difference over all layers, units and examples."""
    return float(torch.stack([(u - v).abs().amax() for u, v in zip(a, b, strict=True)]).amax())


def flat_grad(layers: Sequence[nn.Module]) -> list[Tensor]:
    """Gradients in float64, one flat vector per layer (zeros where no grad)."""
    out = []
    for layer in layers:
        parts = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
            for p in layer.parameters()
        ]
        out.append(torch.cat(parts))
    return out


def compare(g: Sequence[Tensor], ref: Sequence[Tensor]) -> dict[str, Any]:
    """Cosine similarity and relative error ‖g − ref‖/‖ref‖, overall and per layer."""

    def pair(a: Tensor, b: Tensor) -> tuple[float, float]:
        a, b = a.cpu(), b.cpu()
        cos = float(F.cosine_similarity(a, b, dim=0, eps=1e-30))
        return cos, float((a - b).norm() / b.norm().clamp_min(1e-300))

    cos, rel = pair(torch.cat(list(g)), torch.cat(list(ref)))
    per = [pair(a, b) for a, b in zip(g, ref, strict=True)]
    return {
        "cosine": cos,
        "rel_err": rel,
        "per_layer_cosine": [c for c, _ in per],
        "per_layer_rel_err": [r for _, r in per],
    }


def median_time(fn: Callable[[], object], reps: int, warmup: int, device: torch.device) -> float:
    """Median wall seconds of ``fn`` over ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of every timed training iteration (EP and backprop alike)."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)


def bp_iteration(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    """One backprop training iteration: cross-entropy, backward, optimizer step."""
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def ep_iteration(
    net: EnergyNetwork, opt: torch.optim.Optimizer, est: SymmetricEP, x: Tensor, y: Tensor
) -> None:
    """One EP training iteration: estimate (relaxations + gradient), optimizer step."""
    opt.zero_grad(set_to_none=True)
    est.estimate(net, x, y)
    opt.step()


def ep_gradient(
    net: EnergyNetwork, x: Tensor, y: Tensor, solver: Solver, steps: tuple[int, int]
) -> list[Tensor]:
    """Symmetric EP gradient (β = 1, batched phases), float64, one vector per weight layer."""
    est = SymmetricEP(1.0, steps[0], steps[1], solver, batch_phases=True)
    net.zero_grad(set_to_none=True)
    est.estimate(net, x.to(next(net.parameters()).dtype), y)
    return flat_grad(net.weight_layers())


@contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 on CUDA (PyTorch lets cuDNN convolutions use it by default)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _Act(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def feedforward_twin(net: EnergyNetwork) -> nn.Sequential:
    """The feedforward net of the same architecture, for backprop.

    Each conv layer is conv → its pool → σ; dense layers are linear → σ; the last layer (mse
    output layer or ce readout) is a plain linear map to the classes, trained with cross-entropy.
    """
    act = _Act(net.activation.fn)
    pools = {"m": nn.MaxPool2d(2), "a": nn.AvgPool2d(2), "i": nn.Identity()}
    layers: list[nn.Module] = []
    inters = list(net.interactions)
    for i, inter in enumerate(inters):
        if isinstance(inter, ConvInteraction):
            s = inter.spec
            layers += [nn.Conv2d(inter.pre_shape[0], s.channels, s.kernel, s.stride, s.padding)]
            layers += [pools[s.pool], act]
        else:
            layers += [nn.Flatten(), nn.Linear(math.prod(inter.pre_shape), inter.post_shape[0])]
            if net.readout is not None or i < len(inters) - 1:
                layers.append(act)
    if net.readout is not None:
        layers += [nn.Flatten(), nn.Linear(net.readout.in_features, net.num_classes)]
    return nn.Sequential(*layers)


def random_dataset(name: str, n_train: int, n_test: int) -> Dataset:
    """Random uint8 images of a dataset's shape, with random labels (seeded)."""
    g = torch.Generator().manual_seed(0)
    shape = IMAGE_SHAPES[name]

    def images(n: int) -> Tensor:
        return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)

    def labels(n: int) -> Tensor:
        return torch.randint(0, 10, (n,), generator=g)

    return Dataset(
        images(n_train), labels(n_train), images(n_test), labels(n_test), 10, name, shape
    )


# ------------------------------------------------------------------------------- context


@dataclass
class Case:
    """A network and the batch it is relaxed on (residual, tolerance and schedules)."""

    key: str
    base: str
    net: EnergyNetwork
    x: Tensor
    y: Tensor
    info: dict[str, Any]


@dataclass
class Trace:
    """A free relaxation from zero: per-step residuals and distances to its own fixed point.

    Attributes:
        residual: max |s_{t+1} − s_t| of steps 1..len (shorter than asked when an exact fixed
            point was reached; the residual is 0 from then on).
        exact_at: step at which the state stopped changing at all, or None.
        probes: steps at which the distance to the reference was measured.
        distance: max |s_t − s_ref| at those steps.
        reference: the state after ``reference_steps`` steps.
        reference_residual: residual of its last step.
        kept: states kept for later sections (by step).
    """

    residual: list[float]
    exact_at: int | None
    probes: list[int]
    distance: list[float]
    reference: State
    reference_steps: int
    reference_residual: float
    kept: dict[int, State] = field(default_factory=dict)

    def residual_at(self, t: int) -> float | None:
        if t <= len(self.residual):
            return self.residual[t - 1]
        return 0.0 if self.exact_at is not None and t >= self.exact_at else None

    def first_at_most(self, target: float, strict: bool = False) -> int | None:
        """First step whose residual is <= target (< when ``strict``), within the trace."""
        for t, r in enumerate(self.residual, 1):
            if r < target or (not strict and r == target):
                return t
        if self.exact_at is not None and (target > 0 or not strict):
            return self.exact_at  # the residual is 0 from there on
        return None


def probe_steps(n: int) -> list[int]:
    """About 35 steps in 1..n: log-spaced early on, evenly spaced later."""
    logs = {round(10 ** (k * math.log10(n) / 14)) for k in range(15)}
    lin = {round(n * k / 20) for k in range(1, 21)}
    return sorted(s for s in logs | lin if 1 <= s <= n)


class Context:
    """What the sections share: settings, datasets, cases and cached relaxations."""

    def __init__(self, s: Settings, args: argparse.Namespace) -> None:
        self.s = s
        self.args = args
        self.out = Path(args.out)
        self._datasets: dict[str, Dataset | None] = {}
        self._cases: list[Case] | None = None
        self.case_notes: list[dict[str, Any]] = []
        self._traces: dict[tuple[str, str], Trace] = {}

    # --- data

    def dataset(self, name: str) -> Dataset | None:
        """The real dataset when found (``--data-dir`` / ``$EQPROP_DATA``), else None."""
        if name not in self._datasets:
            try:
                self._datasets[name] = load_dataset(name, self.args.data_dir)
                log(f"loaded {name} from {self.args.data_dir or '$EQPROP_DATA/./data'}")
            except (DataError, OSError) as exc:
                where = resolve_data_dir(self.args.data_dir)
                log(f"{name}: not found in {where} ({type(exc).__name__}); using random images")
                self._datasets[name] = None
        return self._datasets[name]

    def batch(self, name: str, n: int, normalize: str) -> tuple[Tensor, Tensor, str]:
        """First ``n`` test images (normalised, on the device) and labels, and their source."""
        ds = self.dataset(name)
        source = f"{name} test[:{n}]"
        if ds is None:
            ds, source = random_dataset(name, 1, n), "random uint8 images"
        x = normalizer_for(ds, normalize)(ds.x_test[:n]).to(self.s.device)
        return x, ds.y_test[:n].to(self.s.device), f"{source}, normalize={normalize}"

    # --- networks

    def cases(self) -> list[Case]:
        """Untrained base networks, then each matching ``--checkpoint``."""
        if self._cases is None:
            cases = []
            for key, (make, dataset, norm) in BASES.items():
                net = seeded(make).to(self.s.device)
                x, y, src = self.batch(dataset, self.s.batch, norm)
                cases.append(Case(key, key, net, x, y, {"trained": False, "data": src}))
            for path in self.args.checkpoint:
                case, note = self.load_trained(path)
                self.case_notes.append(note)
                if case is not None:
                    cases.append(case)
            self._cases = cases
        return self._cases

    def load_trained(self, path: str) -> tuple[Case | None, dict[str, Any]]:
        """A checkpoint's network if its conv stack matches one of :data:`BASES`."""
        p = Path(path)
        if p.is_dir():
            p = p / "checkpoints" / "last.pt"
        label = p.stem
        if p.parent.name == "checkpoints":  # a run's checkpoint: name it after the run
            label = p.parent.parent.name + ("" if p.stem == "last" else f"/{p.stem}")
        while any(n.get("label") == label for n in self.case_notes):
            label += "'"
        note: dict[str, Any] = {"checkpoint": str(p), "label": label}
        try:
            ckpt = load_checkpoint(p)
            cfg = config_from_dict(ckpt["config"]) if "config" in ckpt else None
        except Exception as exc:
            return None, {**note, "skipped": f"{type(exc).__name__}: {exc}"}
        failure = f"conv stack matches none of {', '.join(BASES)}"
        for key, (make, dataset, norm) in BASES.items():
            ref = seeded(make)
            try:
                net = build_network(cfg, ref.input_shape, ref.num_classes) if cfg else ref
            except (ValueError, TypeError):
                continue
            if conv_signature(net) != conv_signature(ref) or net.input_shape != ref.input_shape:
                continue
            try:
                net.load_state_dict(ckpt["model"])
            except (RuntimeError, KeyError) as exc:
                failure = f"does not load into {key}: {str(exc).splitlines()[0]}"
                continue
            net = net.to(device=self.s.device, dtype=torch.float32)
            norm = cfg.data.normalize if cfg else norm
            x, y, src = self.batch(dataset, self.s.batch, norm)
            history = ckpt.get("metrics_history") or [{}]
            info = {
                "trained": True,
                "data": src,
                "checkpoint": str(p),
                "base": key,
                "epoch": ckpt.get("epoch"),
                "config_name": cfg.name if cfg else None,
                "output": net.output,
                "activation": net.activation.name,
                "test_error": history[-1].get("test_error"),
            }
            return Case(f"{key}@{label}", key, net, x, y, info), {**note, "matched": key}
        return None, {**note, "skipped": failure}

    # --- relaxations

    def cached_trace(self, case: Case, schedule: str) -> Trace | None:
        """The trace if an earlier section computed it."""
        return self._traces.get((case.key, schedule))

    def trace(self, case: Case, schedule: str) -> Trace:
        """The free relaxation of ``case`` under ``schedule`` (computed once)."""
        k = (case.key, schedule)
        if k not in self._traces:
            s = self.s
            ref_steps = s.ref_steps if "residual" in self.args.sections else s.trace_steps
            self._traces[k] = run_trace(
                case,
                schedule,
                s.trace_steps,
                max(ref_steps, s.trace_steps),
                s.ref_tol,
                keep={s.match_steps},
            )
            t = self._traces[k]
            log(
                f"  {case.key} {schedule}: {len(t.residual)} traced, reference "
                f"{t.reference_steps} steps, residual {t.reference_residual:.1e}"
            )
        return self._traces[k]


def conv_signature(net: EnergyNetwork) -> list[tuple[Any, ...]]:
    """Shapes of the conv interactions and their parameters (architecture identity)."""
    return [
        (inter.pre_shape, inter.post_shape, *(tuple(p.shape) for p in inter.parameters()))
        for inter in net.interactions
        if isinstance(inter, ConvInteraction)
    ]


@torch.no_grad()
def run_trace(
    case: Case, schedule: str, trace_steps: int, ref_steps: int, ref_tol: float, keep: set[int]
) -> Trace:
    """Relax freely from zero, recording the residual of each step.

    Runs the schedule's step function exactly as :meth:`Solver.relax` does (one cache per
    relaxation). Continues past ``trace_steps`` up to ``ref_steps`` to get the reference fixed
    point, stopping early once a step changes the state by less than ``ref_tol``; stops at once
    on an exact fixed point.
    """
    net, step = case.net, SCHEDULES[schedule]
    drive = net.input_drive(case.x)
    state = net.zero_state(drive.shape[0])
    probes = probe_steps(trace_steps)
    wanted = set(probes) | {k for k in keep if k <= trace_steps}
    saved: dict[int, State] = {}
    cache: dict = {}
    residual: list[float] = []
    exact_at, r, t = None, float("inf"), 0
    for t in range(1, ref_steps + 1):
        new = step(net, drive, state, None, cache)
        r = max_abs_diff(new, state)
        state = new
        if t <= trace_steps:
            residual.append(r)
        if t in wanted:
            saved[t] = state
        if r == 0.0:
            exact_at = t
            break
        if t >= trace_steps and r < ref_tol:
            break
    ref = state

    def at(k: int) -> State:
        return saved.get(k, ref)  # beyond an exact fixed point: the reference

    return Trace(
        residual=residual,
        exact_at=exact_at,
        probes=probes,
        distance=[max_abs_diff(at(k), ref) for k in probes],
        reference=ref,
        reference_steps=t,
        reference_residual=r,
        kept={k: at(k) for k in keep if k <= trace_steps},
    )


# ------------------------------------------------------------------------------- sections


def section_step(ctx: Context) -> dict[str, Any]:
    """Seconds per relaxation step, closed form vs autograd of Φ (``relaxation_step.bench``)."""
    s = ctx.s
    rows = []
    for batch in s.step_batches:
        for name, make, steps in (
            ("cifar10_paper_conv", paper_cifar10, 1 if s.quick else 3),
            ("mnist_mlp_784_512_10", mnist_mlp, 5 if s.quick else 50),
        ):
            log(f"step: {name} batch {batch}")
            rows.append(bench(name, seeded(make), batch, steps, s.reps, s.device))
    return {"results": rows}


def section_residual(ctx: Context) -> dict[str, Any]:
    """Residual and distance to the fixed point against steps, per net and schedule."""
    s, m = ctx.s, ctx.s.match_steps
    out: dict[str, Any] = {}
    for case in ctx.cases():
        log(f"residual: {case.key}")
        traces = {sch: ctx.trace(case, sch) for sch in SCHEDULE_NAMES}
        target = traces["synchronous"].residual_at(m)
        entry: dict[str, Any] = {"batch": s.batch, **case.info}
        entry[f"residual_at_{m}_sync"] = target
        entry[f"steps_to_match_{m}_sync"] = {
            sch: (tr.first_at_most(target) if target is not None else None)
            for sch, tr in traces.items()
        }
        entry[f"distance_at_{m}"] = {
            sch: dict(zip(tr.probes, tr.distance, strict=True)).get(m) for sch, tr in traces.items()
        }
        entry["equilibria_max_abs_diff"] = max_abs_diff(
            traces["synchronous"].reference, traces["even_odd"].reference
        )
        entry["schedules"] = {
            sch: {
                "steps": tr.probes,
                "residual": [tr.residual_at(k) for k in tr.probes],
                "distance_to_reference": tr.distance,
                "reference_steps": tr.reference_steps,
                "reference_residual": tr.reference_residual,
                "exact_fixed_point_at": tr.exact_at,
            }
            for sch, tr in traces.items()
        }
        out[case.key] = entry
    plot_residual(ctx, ctx.out / "residual.png")
    return {
        "trace_steps": s.trace_steps,
        "reference_max_steps": s.ref_steps,
        "reference_stop_residual": s.ref_tol,
        "residual_definition": "max over layers, units and batch of |s_{t+1} - s_t|",
        "nets": out,
        "plot": str(ctx.out / "residual.png"),
    }


def section_tolerance(ctx: Context) -> dict[str, Any]:
    """Steps until a step changes the state by less than tol (Solver(tol, check_every=1))."""
    cap = ctx.s.trace_steps
    rows = []
    for case in ctx.cases():
        for sch in SCHEDULE_NAMES:
            tr = ctx.trace(case, sch)
            for tol in TOLERANCES:
                steps = tr.first_at_most(tol, strict=True)
                rows.append(
                    {
                        "net": case.key,
                        "schedule": sch,
                        "tol": tol,
                        "steps": steps if steps is not None and steps <= cap else None,
                    }
                )
    plot_tolerance(rows, cap, ctx.out / "tolerance.png")
    return {
        "cap": cap,
        "tolerances": list(TOLERANCES),
        "note": "steps = first step whose max |Δs| < tol, as Solver(tol=tol, check_every=1) "
        "stops; null = not reached within cap",
        "rows": rows,
        "plot": str(ctx.out / "tolerance.png"),
    }


def section_ratio(ctx: Context) -> dict[str, Any]:
    """Seconds per EP training iteration over seconds per backprop iteration."""
    s = ctx.s
    settings = {
        "exact": {
            "schedule": "synchronous",
            "free_steps": s.exact[0],
            "nudged_steps": s.exact[1],
            "batch_phases": False,
        },
        "fast": {
            "schedule": "even_odd",
            "free_steps": s.fast[0],
            "nudged_steps": s.fast[1],
            "batch_phases": True,
        },
    }
    for v in settings.values():
        v["steps_per_example"] = v["free_steps"] + 2 * v["nudged_steps"]

    def estimator(kind: str, steps: tuple[int, int] | None = None) -> SymmetricEP:
        v = settings[kind]
        t1, t2 = steps or (v["free_steps"], v["nudged_steps"])
        return SymmetricEP(1.0, t1, t2, Solver(v["schedule"]), v["batch_phases"])

    rows = []
    for name, make, dataset, norm in (
        ("cifar10_paper_ce", lambda: paper_cifar10("ce"), "cifar10", "paper"),
        ("mnist_mlp_784_512_10", mnist_mlp, "mnist", "standard"),
    ):
        template = seeded(make)
        twin = seeded(lambda: feedforward_twin(template))  # noqa: B023
        has_conv = bool(conv_signature(template))
        for batch in s.ratio_batches:
            log(f"ratio: {name} batch {batch}")
            x, y, src = ctx.batch(dataset, batch, norm)
            row: dict[str, Any] = {"net": name, "batch": batch, "data": src}
            # Backprop in both memory layouts (EP runs channels-last); the faster one counts.
            bp_times = {}
            for layout in ("channels_last", "contiguous") if has_conv else ("contiguous",):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                bp = copy.deepcopy(twin).to(s.device, memory_format=fmt)
                it = partial(bp_iteration, bp, sgd(bp), x.contiguous(memory_format=fmt), y)
                bp_times[layout] = median_time(it, max(s.reps, 5), 2, s.device)
            row["bp_s_by_layout"] = bp_times
            row["bp_s"] = min(bp_times.values())
            for kind in ("fast", "exact"):
                net = copy.deepcopy(template).to(s.device)
                opt = sgd(net)
                full = settings[kind]["steps_per_example"]
                if kind == "exact" and s.exact_probe is not None:
                    probe = s.exact_probe
                    it = partial(ep_iteration, net, opt, estimator(kind, probe), x, y)
                    t = median_time(it, 1, 1, s.device) * full / (probe[0] + 2 * probe[1])
                    row["exact_extrapolated_from_steps"] = list(probe)
                elif kind == "exact":
                    ep_iteration(net, opt, estimator(kind, (2, 1)), x, y)  # cheap warm-up
                    it = partial(ep_iteration, net, opt, estimator(kind), x, y)
                    t = median_time(it, 1, 0, s.device)
                else:
                    it = partial(ep_iteration, net, opt, estimator(kind), x, y)
                    t = median_time(it, s.reps, 1, s.device)
                row[f"ep_{kind}_s"] = t
                row[f"ratio_{kind}"] = t / row["bp_s"]
                log(f"  {kind}: {t:.3f}s, backprop {row['bp_s']:.4f}s, ratio {t / row['bp_s']:.1f}")
            rows.append(row)
    return {
        "settings": settings,
        "beta": 1.0,
        "optimizer": "SGD lr 0.01, momentum 0.9, weight decay 3e-4 (EP and backprop)",
        "backprop_net": "same architecture feedforward: conv -> pool -> sigma per conv layer, "
        "flatten, linear to 10, cross-entropy",
        "dtype": "float32",
        "exact_reps": 1,
        "results": rows,
    }


def section_precision(ctx: Context) -> dict[str, Any]:
    """Symmetric EP gradients in float32, bf16 (and tf32 on CUDA) against float64."""
    s = ctx.s
    t1, t2 = s.precision_steps
    b = s.precision_batch
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    for name, make in (("small_conv_16_32", small_conv), ("cifar10_paper_ce", None)):
        if make is None:
            net = seeded(lambda: paper_cifar10("ce")).to(s.device)
            x, y, src = ctx.batch("cifar10", b, "paper")
        else:
            net = seeded(make).to(s.device)
            x = torch.randn((b, *net.input_shape), generator=g).to(s.device)
            y = torch.randint(0, net.num_classes, (b,), generator=g).to(s.device)
            src = "standard normal inputs"

        log(f"precision: {name} float64")
        net64 = copy.deepcopy(net).to(torch.float64)
        g64 = ep_gradient(net64, x, y, Solver("synchronous"), (t1, t2))
        g64_eo = ep_gradient(net64, x, y, Solver("even_odd"), (t1, t2))
        runs = {"float32": "float32", "bf16": "bf16"}
        if s.device.type == "cuda":
            runs["tf32"] = "tf32"
        entry: dict[str, Any] = {
            "batch": b,
            "free_steps": t1,
            "nudged_steps": t2,
            "beta": 1.0,
            "schedule": "synchronous",
            "data": src,
            "grad_norm_float64": float(torch.cat(g64).norm()),
            "solver_noise_float64_sync_vs_even_odd": compare(g64_eo, g64),
        }
        for label, precision in runs.items():
            log(f"precision: {name} {label}")
            with strict_fp32(s.device):
                solver = Solver("synchronous", precision=precision)
                entry[label] = compare(ep_gradient(net, x, y, solver, (t1, t2)), g64)
        out[name] = entry
    return {
        "nets": out,
        "note": "reference: float64; rel_err = |g - g64| / |g64| of the flattened gradient; "
        "float32 runs with TF32 disabled on CUDA",
    }


def versus_sync(
    net: EnergyNetwork, free: dict[str, State], grads: dict[str, list[Tensor]], sch: str
) -> dict[str, Any]:
    """How far schedule ``sch`` lands from the synchronous one: fixed point and EP gradient."""
    with torch.no_grad():
        agree = net.predict_from_state(free["synchronous"]) == net.predict_from_state(free[sch])
    cmp = compare(grads[sch], grads["synchronous"])
    return {
        "fixed_point_max_abs_diff": max_abs_diff(free["synchronous"], free[sch]),
        "prediction_agreement": float(agree.float().mean()),
        "gradient_cosine": cmp["cosine"],
        "gradient_rel_err_vs_sync": cmp["rel_err"],
        "per_layer_cosine": cmp["per_layer_cosine"],
    }


def section_schedules(ctx: Context) -> dict[str, Any]:
    """Synchronous vs even/odd on the paper net: fixed points and symmetric EP gradients."""
    s = ctx.s
    f, t2 = s.match_steps, s.nudged_steps
    out: dict[str, Any] = {}
    for case in ctx.cases():
        if case.base != "paper_cifar10_ce":
            continue
        log(f"schedules: {case.key}")
        net = case.net
        x, y = net.check_input(case.x, case.y)
        drive = net.input_drive(x)
        free: dict[str, State] = {}
        grads: dict[str, list[Tensor]] = {}
        source = "residual trace"
        for sch in SCHEDULE_NAMES:
            solver = Solver(sch)
            tr = ctx.cached_trace(case, sch)
            if tr is not None and f in tr.kept:
                free[sch] = tr.kept[f]
            else:
                free[sch] = solver.relax(net, drive, net.zero_state(x.shape[0]), f).state
                source = "relaxed here"
            est = SymmetricEP(1.0, f, t2, solver, batch_phases=True)
            betas = est.phase_betas()
            nudged, _ = est.relax_nudged(net, drive, free[sch], y, betas)
            net.zero_grad(set_to_none=True)
            est.accumulate_gradients(net, x, y, free[sch], nudged, betas)
            grads[sch] = flat_grad(net.weight_layers())
        # even/odd at the top level (as first published), other schedules under their name
        entry = {**case.info, **versus_sync(net, free, grads, "even_odd")}
        entry["free_state_source"] = source
        for sch in SCHEDULE_NAMES[2:]:
            entry[sch] = versus_sync(net, free, grads, sch)
        out[case.key] = entry
    return {
        "free_steps": f,
        "nudged_steps": t2,
        "beta": 1.0,
        "batch": s.batch,
        "dtype": "float32",
        "nets": out,
    }


def section_epoch(ctx: Context) -> dict[str, Any]:
    """CUDA only: seconds per CIFAR-10 epoch (exact and fast presets, and backprop)."""
    if ctx.s.device.type != "cuda":
        return {"skipped": "no CUDA device"}
    return {
        "gpu": torch.cuda.get_device_name(ctx.s.device),
        **epoch_timings(ctx),
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
    }


def epoch_timings(ctx: Context) -> dict[str, Any]:
    """Seconds per training batch of the paper net, extrapolated to a CIFAR-10 epoch."""
    s = ctx.s
    ds = ctx.dataset("cifar10")
    source = "cifar10 train" if ds is not None else "random uint8 images of CIFAR-10's size"
    ds = ds or random_dataset("cifar10", CIFAR10_TRAIN, 1)
    loader = EpochLoader(
        ds.x_train,
        ds.y_train,
        128,
        s.device,
        torch.float32,
        normalizer_for(ds, "paper"),
        shuffle=True,
        augment=True,
        seed=0,
    )
    n = min(s.epoch_batches, len(loader) - 3)
    per_epoch = math.ceil(CIFAR10_TRAIN / 128)

    def time_batches(train: Callable[[Tensor, Tensor], None]) -> float:
        batches = loader.epoch(0)
        for _ in range(3):  # warm-up
            train(*next(batches))
        sync(s.device)
        t0 = time.perf_counter()
        for _ in range(n):
            train(*next(batches))
        sync(s.device)
        return (time.perf_counter() - t0) / n

    out: dict[str, Any] = {}
    for kind, preset in (("fast", "cifar10-ce-symmetric-fast"), ("exact", "cifar10-ce-symmetric")):
        log(f"epoch: {preset}, {n} batches")
        cfg = load_config(preset)
        net = build_network(cfg, ds.input_shape, 10).to(s.device)
        est, opt = build_estimator(cfg), build_optimizer(cfg, net)

        spb = time_batches(partial(ep_iteration, net, opt, est))
        out[kind] = {
            "preset": preset,
            "seconds_per_batch": spb,
            "seconds_per_epoch": spb * per_epoch,
        }
    twin = seeded(lambda: feedforward_twin(paper_cifar10("ce")))
    by_layout = {}
    for fmt in (torch.channels_last, torch.contiguous_format):
        log(f"epoch: backprop, {fmt}")
        bp = copy.deepcopy(twin).to(s.device, memory_format=fmt)
        by_layout[str(fmt).removeprefix("torch.")] = time_batches(
            partial(bp_iteration, bp, sgd(bp))
        )
    spb = min(by_layout.values())
    out["backprop"] = {
        "seconds_per_batch": spb,
        "seconds_per_epoch": spb * per_epoch,
        "seconds_per_batch_by_layout": by_layout,
    }
    for kind in ("exact", "fast"):
        out[f"ratio_{kind}"] = out[kind]["seconds_per_epoch"] / out["backprop"]["seconds_per_epoch"]
    return {
        **out,
        "data": source,
        "timed_batches": n,
        "batches_per_epoch": per_epoch,
        "extrapolated": f"seconds per batch over {n} timed batches (after 3 warm-up) x "
        f"{per_epoch} batches (= ceil(50000/128)); training iterations with data loading and "
        "augmentation, no evaluation",
    }


# ------------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_residual(ctx: Context, path: Path) -> None:
    """Log residual and log distance to the fixed point against steps."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    styles = {"synchronous": "-", "even_odd": "--", "forward_backward": ":"}
    for i, case in enumerate(ctx.cases()):
        for sch in SCHEDULE_NAMES:
            tr = ctx.cached_trace(case, sch)
            if tr is None:
                continue
            label = f"{case.key} · {sch}"
            kw = {"color": f"C{i}", "linestyle": styles[sch], "label": label}
            res = [r if r > 0 else float("nan") for r in tr.residual]
            axes[0].plot(range(1, len(res) + 1), res, **kw)
            dist = [d if d > 0 else float("nan") for d in tr.distance]
            axes[1].plot(tr.probes, dist, marker=".", **kw)
    axes[0].set(
        yscale="log",
        xlabel="step",
        ylabel="max |s(t+1) − s(t)|",
        title="Residual per step (free phase)",
    )
    axes[1].set(
        yscale="log",
        xlabel="step",
        ylabel="max |s(t) − s_ref|",
        title="Distance to the reference fixed point",
    )
    axes[0].axvline(ctx.s.match_steps, color="grey", linewidth=0.8, linestyle=":")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tolerance(rows: list[dict[str, Any]], cap: int, path: Path) -> None:
    """Grouped bars: steps to reach each tolerance, per net and schedule (log y)."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    nets = list(dict.fromkeys(r["net"] for r in rows))
    combos = [(sch, tol) for sch in SCHEDULE_NAMES for tol in TOLERANCES]
    width = 0.8 / len(combos)
    fig, ax = plt.subplots(figsize=(max(7, 2.5 * len(nets)), 5), constrained_layout=True)
    lookup = {(r["net"], r["schedule"], r["tol"]): r["steps"] for r in rows}
    for j, (sch, tol) in enumerate(combos):
        color, hatch = f"C{TOLERANCES.index(tol)}", HATCHES[sch]
        for i, net in enumerate(nets):
            v = lookup.get((net, sch, tol))
            x = i - 0.4 + width * (j + 0.5)
            if v is not None:
                ax.bar(x, v, width, color=color, hatch=hatch, edgecolor="black", lw=0.5)
            else:  # not reached within the cap: an empty dashed bar up to the cap
                ax.bar(x, cap, width, fill=False, hatch=hatch, edgecolor=color, ls="--", lw=0.8)
                ax.text(x, cap, f">{cap}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(nets)), nets, rotation=15, fontsize=8)
    ax.set(yscale="log", ylabel=f"steps (cap {cap})", ylim=(1, cap * 3))
    ax.set_title("Steps until a step changes the state by less than tol (max |Δs| < tol)")
    handles = [
        Patch(
            facecolor=f"C{TOLERANCES.index(tol)}",
            edgecolor="black",
            lw=0.5,
            hatch=HATCHES[sch],
            label=f"{sch}, tol {tol:g}",
        )
        for sch, tol in combos
    ]
    handles.append(Patch(fill=False, edgecolor="grey", ls="--", label="not reached within cap"))
    ax.legend(handles=handles, fontsize=7, ncol=3, loc="upper left")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------- main


def environment(device: torch.device) -> dict[str, Any]:
    """Machine and code facts for the top level of the JSON."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    root = Path(__file__).resolve().parents[1]

    def git(*cmd: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
            return res.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain")
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }


def finite(obj: Any) -> Any:
    """Replace non-finite floats by None so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "step": section_step,
    "residual": section_residual,
    "tolerance": section_tolerance,
    "ratio": section_ratio,
    "precision": section_precision,
    "schedules": section_schedules,
    "epoch": section_epoch,
}


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
        if name not in args.sections:
            continue
        log(f"== {name}")
        t0 = time.perf_counter()
        try:
            result = RUNNERS[name](ctx)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = time.perf_counter() - t0
        report["sections"][name] = result
        log(f"== {name} done in {result['seconds']:.1f}s")
    if args.checkpoint:
        report["checkpoints"] = ctx.case_notes
    report["total_seconds"] = time.perf_counter() - T0
    print(json.dumps(finite(report), indent=2))


if __name__ == "__main__":
    main()
