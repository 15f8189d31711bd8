"""The holomorphic-EP check: the N-point estimate against the true gradient, by N and by |β|.

``holomorphic-ep.md`` §6. From a free equilibrium s*, the true gradient is BPTT through
``reference_steps`` steps started at s* (for a converged, contracting net this is implicit
differentiation); the estimate of :class:`~eqprop.estimators.HolomorphicEP` (symmetric nets) or
:class:`~eqprop.estimators.GeneralizedHolomorphicEP` (asymmetric nets, whose δ̂ is then compared
with what EP can reach: the RBP gradient differs from it by the asymmetry) is computed for every
N at a fixed |β|, and for every N over a sweep of |β|, with the log-log slope of the error
(≈ N inside the convergence radius R). When the errors at the fixed |β| stop falling
geometrically in N, |β| is at or beyond R, and the report says so.

Example:
    >>> from eqprop import EnergyNetwork
    >>> net = EnergyNetwork((4,), dense=[3], num_classes=2, output="ce", activation="tanh")
    >>> x, y = torch.rand(2, 4), torch.tensor([0, 1])
    >>> r = check_hep(net.double(), x.double(), y, free_steps=40, nudged_steps=40, points=(2, 4),
    ...               beta=0.2, sweep_betas=())
    >>> r.errors[4] < r.errors[2]
    True
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eqprop.analysis.gdu_plots import _new_figure
from eqprop.analysis.gdu_report import _json_safe
from eqprop.analysis.gdu_results import _fit, _fmt
from eqprop.core.chain import ChainNetwork, State, WeightGrads
from eqprop.core.network import EnergyNetwork
from eqprop.dynamics import Solver
from eqprop.estimators import BPTT, GeneralizedHolomorphicEP, HolomorphicEP

__all__ = [
    "DEFAULT_HEP_POINTS",
    "DEFAULT_HEP_SWEEP",
    "HEPReport",
    "check_hep",
    "format_hep_table",
    "write_hep_report",
]

#: Numbers of points compared by default.
DEFAULT_HEP_POINTS: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
#: Default |β| sweep: 9 values log-spaced from 0.05 to 0.8.
DEFAULT_HEP_SWEEP: tuple[float, ...] = tuple(0.05 * 2 ** (k / 2) for k in range(9))
#: An error below this is round-off, not bias: it says nothing about the radius.
_FLOOR = 1e-12


@dataclass
class HEPReport:
    """What :func:`check_hep` measured (every error relative: ‖g − ref‖ / ‖ref‖).

    Attributes:
        estimator: the estimator's registry name.
        batch, free_steps, nudged_steps, reference_steps, schedule, dtype: the setting.
        free_residual: largest state change of one more free step from s*.
        beta: the fixed |β|.
        errors: N → error at ``beta``.
        sweep_betas: the swept |β|.
        sweep_errors: N → error at each swept |β|.
        slopes, intercepts: N → fitted log-log line of the sweep, over the errors above
            round-off (1e3 machine epsilons); None with fewer than two such points.
        geometric: whether the errors at ``beta`` fall geometrically in N.
        notes: what to make of the numbers, when something is off.
        seconds: wall time.
    """

    estimator: str
    batch: int
    free_steps: int
    nudged_steps: int
    reference_steps: int
    schedule: str
    dtype: str
    free_residual: float
    beta: float
    errors: dict[int, float]
    sweep_betas: list[float]
    sweep_errors: dict[int, list[float]]
    slopes: dict[int, float | None]
    intercepts: dict[int, float | None]
    geometric: bool
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON keys are strings)."""
        return asdict(self)


def _flat(net: ChainNetwork, grads: WeightGrads | dict[str, Tensor]) -> Tensor:
    if isinstance(grads, dict):
        return torch.cat([grads[name].reshape(-1) for name, _ in net.named_parameters()])
    by_id = {id(p): g for p, g in grads}
    return torch.cat([by_id[id(p)].reshape(-1) for p in net.parameters()])


def _reference(net: ChainNetwork, x: Tensor, y: Tensor, free: State, steps: int) -> Tensor:
    """BPTT through ``steps`` synchronous steps from s*: the gradient of L(s_T)."""
    value, _ = BPTT(steps, steps, full=True).surrogate(net, x, y, free)
    params = list(net.parameters())
    with torch.enable_grad():
        grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for p, g in zip(params, grads, strict=True)
    ])  # fmt: skip


def _estimate(
    net: ChainNetwork, x: Tensor, y: Tensor, free: State, n: int, beta: float,
    nudged_steps: int, solver: Solver,
) -> Tensor:  # fmt: skip
    """The N-point estimate from s*, flattened like the parameters."""
    if isinstance(net, EnergyNetwork):
        est = HolomorphicEP(beta, 1, nudged_steps, solver, points=n, guard=False)
        return _flat(net, est.grads_at(net, x, y, free))
    gen = GeneralizedHolomorphicEP(beta, 1, nudged_steps, solver, points=n, guard=False)
    delta, _, _ = gen.neuron_errors(net, net.input_drive(x), free, y)
    return _flat(net, gen.update(net, x, y, free, delta))


def check_hep(
    net: ChainNetwork,
    x: Tensor,
    y: Tensor,
    *,
    free_steps: int,
    nudged_steps: int,
    points: Sequence[int] = DEFAULT_HEP_POINTS,
    beta: float = 0.5,
    sweep_betas: Sequence[float] = DEFAULT_HEP_SWEEP,
    solver: Solver | None = None,
    reference_steps: int | None = None,
) -> HEPReport:
    """Compare the N-point holomorphic estimates with the true gradient on one batch.

    Args:
        net: any chain network (symmetric: HolomorphicEP; asymmetric: the generalised one).
        x: inputs (B, *net.input_shape); y: labels (B,).
        free_steps: T1 of the free phase (the solver's tolerance applies).
        nudged_steps: T2 of every point (fixed).
        points: the N compared (N > 2 needs a holomorphic net).
        beta: the fixed |β|.
        sweep_betas: the |β| of the sweep (empty: none).
        solver: schedule, tolerance and precision (default synchronous).
        reference_steps: BPTT steps from s* for the true gradient (default max(200, 4·T2)).
    """
    started = time.perf_counter()
    solver = solver or Solver()
    x, y = net.check_input(x, y)
    drive = net.input_drive(x)
    free = solver.relax(net, drive, None, free_steps).state
    again = solver.relax(net, drive, free, 1).state
    residual = max(float((a - s).abs().max()) for a, s in zip(again, free, strict=True))
    ref_steps = reference_steps or max(200, 4 * nudged_steps)
    ref = _reference(net, x, y, free, ref_steps)
    norm = float(ref.norm())

    def error(n: int, b: float) -> float:
        g = _estimate(net, x, y, free, n, b, nudged_steps, solver)
        return float((g - ref).norm()) / norm if norm > 0 else math.nan

    ns = sorted(set(points))
    errors = {n: error(n, beta) for n in ns}
    betas = [float(b) for b in sweep_betas]
    sweep = {n: [error(n, b) for b in betas] for n in ns} if betas else {}
    # Errors at round-off level say nothing about the bias: the fit leaves them out.
    floor = 1e3 * torch.finfo(x.dtype).eps
    fits = {n: _fit(betas, [v if v > floor else 0.0 for v in e]) for n, e in sweep.items()}
    geometric, notes = _geometric(errors, beta)
    if residual > 1e-6:
        notes.append(
            f"the free phase is not converged (one more step moves a state by {residual:.1e}); "
            "the reference and the estimates then differ by more than the estimator's bias: "
            "raise --free-steps"
        )
    return HEPReport(
        estimator=(HolomorphicEP if isinstance(net, EnergyNetwork) else GeneralizedHolomorphicEP)
        .name,
        batch=x.shape[0], free_steps=free_steps, nudged_steps=nudged_steps,
        reference_steps=ref_steps, schedule=solver.schedule,
        dtype=str(x.dtype).removeprefix("torch."), free_residual=residual, beta=beta,
        errors=errors, sweep_betas=betas, sweep_errors=sweep,
        slopes={n: f[0] for n, f in fits.items()}, intercepts={n: f[1] for n, f in fits.items()},
        geometric=geometric, notes=notes, seconds=time.perf_counter() - started,
    )  # fmt: skip


def _geometric(errors: dict[int, float], beta: float) -> tuple[bool, list[str]]:
    """Whether the errors at ``beta`` keep falling in N (above round-off), and a note if not."""
    ns = [n for n in sorted(errors) if n >= 2]
    stalled = [
        (a, b)
        for a, b in itertools.pairwise(ns)
        if errors[a] > _FLOOR and not errors[b] < 0.9 * errors[a]
    ]
    if not stalled:
        return True, []
    a, b = stalled[0]
    return False, [
        f"the errors at |β| = {beta:g} stop falling geometrically in N (N = {a}: "
        f"{errors[a]:.1e}, N = {b}: {errors[b]:.1e}): |β| is at or beyond the radius R in which "
        "the nudged fixed point is holomorphic in β (or the nudged phases are not converged); "
        "use a smaller --beta or more --nudged-steps"
    ]


def format_hep_table(report: HEPReport) -> str:
    """A short terminal table: error per N at the fixed |β|, and the sweep's slopes."""
    r = report
    lines = [
        f"hEP check ({r.estimator} against BPTT over {r.reference_steps} steps from s*): batch "
        f"{r.batch}, T1 {r.free_steps}, T2 {r.nudged_steps}, {r.schedule}, {r.dtype}; free "
        f"residual {_fmt(r.free_residual)}; {r.seconds:.1f} s",
        "",
    ]
    sweep = (
        f"  slope over |β| {min(r.sweep_betas):g}..{max(r.sweep_betas):g} (expect N)"
        if r.sweep_betas
        else ""
    )
    lines.append(f"   N  error at |β| = {r.beta:g}{sweep}")
    for n, e in r.errors.items():
        slope = f"  {_fmt(r.slopes.get(n), '.2f')}" if r.sweep_betas else ""
        lines.append(f"  {n:>2}  {_fmt(e):>9}{' ' * 11}{slope}")
    lines += [f"note: {note}" for note in r.notes]
    return "\n".join(lines)


def write_hep_report(report: HEPReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``hep.json`` and ``hep_errors.png`` (error against N, and against |β| per N).

    Returns:
        ``{"json": path, "errors": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "hep.json", "errors": out / "hep_errors.png"}
    data = _json_safe(json.loads(json.dumps(report.to_dict(), default=float)))
    paths["json"].write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    fig = _new_figure(10.0, 4.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ns = list(report.errors)
    left.semilogy(ns, [max(report.errors[n], 1e-17) for n in ns], "o-")
    left.set_xlabel("N (points on the circle)")
    left.set_ylabel("‖g_N − ∇L‖ / ‖∇L‖")
    left.set_title(f"|β| = {report.beta:g}", fontsize=9)
    for i, n in enumerate(report.sweep_errors):
        errs = report.sweep_errors[n]
        pts = [(b, e) for b, e in zip(report.sweep_betas, errs, strict=True) if e > 0]
        if not pts:
            continue
        bs, es = zip(*pts, strict=True)
        slope, intercept = report.slopes[n], report.intercepts[n]
        right.loglog(
            bs, es, "o", color=f"C{i}", ms=4, label=f"N = {n} (slope {_fmt(slope, '.2f')})"
        )
        if slope is not None and intercept is not None:
            right.loglog(bs, [math.exp(intercept) * b**slope for b in bs], color=f"C{i}", lw=1)
    right.set_xlabel("|β|")
    right.set_title("error against |β| (expect slope N)", fontsize=9)
    if report.sweep_errors:
        right.legend(fontsize=7)
    fig.savefig(paths["errors"], dpi=110)
    return paths
