"""What the suite's sections share: resolved sizes, data, networks and cached free relaxations."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import (
    State,
    conv_signature,
    log,
    max_abs_diff,
    mnist_conv,
    paper_cifar10,
    random_dataset,
    seeded,
)
from torch import Tensor

from eqprop import EnergyNetwork, Solver
from eqprop.train.builders import build_network
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.config import config_from_dict
from eqprop.train.datasets import DataError, Dataset, load_dataset, resolve_data_dir
from eqprop.train.loader import normalizer_for

#: Networks of the residual, tolerance and schedules sections: (builder, dataset, normalisation).
BASES: dict[str, tuple[Callable[[], EnergyNetwork], str, str]] = {
    "paper_cifar10_ce": (lambda: paper_cifar10("ce"), "cifar10", "paper"),
    "mnist_conv_32_64": (mnist_conv, "mnist", "standard"),
}


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
        """Residual of step ``t`` (0 past an exact fixed point, None beyond the trace)."""
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


@torch.no_grad()
def run_trace(
    case: Case, schedule: str, trace_steps: int, ref_steps: int, ref_tol: float, keep: set[int]
) -> Trace:
    """Relax freely from zero, recording the residual of each step.

    Steps with :meth:`Solver.trajectory`, as :meth:`Solver.relax` does. Continues past
    ``trace_steps`` up to ``ref_steps`` to get the reference fixed point, stopping early once a
    step changes the state by less than ``ref_tol``; stops at once on an exact fixed point.
    """
    net = case.net
    drive = net.input_drive(case.x)
    state = net.zero_state(drive.shape[0])
    probes = probe_steps(trace_steps)
    wanted = set(probes) | {k for k in keep if k <= trace_steps}
    saved: dict[int, State] = {}
    residual: list[float] = []
    exact_at, r, t = None, float("inf"), 0
    steps = Solver(schedule).trajectory(net, drive, state, ref_steps)
    for t, new in enumerate(steps, 1):
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
