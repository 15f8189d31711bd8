"""The GDU check: EP's per-step updates against BPTT's per-step gradients (spec §2 and §5).

Ernoult et al. (2019): from a converged free state s* and as β → 0, the update EP makes at its
t-th nudged step equals the gradient BPTT accumulates t steps back in time ("gradient descending
updates", GDU). :func:`check_gdu` measures how close a network, a batch and a β get.

Conventions. Every quantity is in the *gradient* sign (what goes into ``.grad``, ≈ +∂L/∂·);
steps run t = 0..T2, t = 0 being the estimate before any nudged step.

- EP, a phase at signed β from s*: g_β(t) is the descent direction the one-sided estimator
  returns after t nudged steps (``net.ep_surrogate`` then ``net.postprocess_grads``, so any
  network with that interface works). Parameter increment ΔEP_θ(t) = g_β(t) − g_β(t−1), with
  ΔEP_θ(0) = g_β(0) (the CE readout's gradient at s*; zero otherwise). For a symmetric network
  ΔEP_θ(t) = −(1/β)[∂Φ/∂θ(s^β_t) − ∂Φ/∂θ(s^β_{t−1})] plus the readout's CE-gradient change.
  Neuron increment, per example: ΔEP_s(t) = −(s^β_t − s^β_{t−1})/β (the spec's (s_{t+1} − s_t)/β
  negated, so that it estimates a gradient like the parameters' increments).
- Variants: ``plus`` (+β), ``minus`` (−β) and ``sym``, the average of the two, i.e. the
  difference of the two nudged trajectories over 2β (its cumulative sum is symmetric EP).
- BPTT: :func:`eqprop.estimators.bptt.bptt_step_contributions` over T2 steps from s*; entry t
  is the contribution of the step t steps back from the loss (parameters), and the gradient of
  each example's loss with respect to that step's pre-activation (neurons). GDU:
  ΔEP(t) → BPTT(t) for every t as β → 0 when s* is a fixed point.
- Relative RMSE of a tensor: sqrt(Σ_t ‖ΔEP(t) − BPTT(t)‖²) / sqrt(Σ_t ‖BPTT(t)‖²), over all steps
  t = 0..T2 and elements at once (a per-step ratio would blow up at steps where BPTT is exactly
  zero, as happens on alternate steps for layered nets). None when BPTT is zero throughout.
- Sign error of a tensor: among elements where both cumulative sums Σ_t ΔEP(t) and Σ_t BPTT(t)
  (the final updates) are non-zero, the fraction with opposite signs.
- Layer ratio: 2‖EP_sym − BPTT‖ / (‖EP_+ − BPTT‖ + ‖EP_− − BPTT‖) on the final updates of a
  weight layer's parameters: below 1 means the symmetric estimate is closer than one-sided ones.
- β sweep: relative error ‖g − g_BPTT‖/‖g_BPTT‖ of the final one-sided (±β) and symmetric estimates
  over all parameters, against the BPTT gradient over T2 steps from s* (the gradient of L(s*)
  when converged); least-squares slopes of log error against log β (bias O(β) gives 1, O(β²) 2).

Nudged phases always run exactly T2 steps (no tolerance), so that they align with BPTT's
unroll; the free phase uses the given solver, tolerance included.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from eqprop.core.network import EnergyNetwork
from eqprop.dynamics.relax import SCHEDULES, Solver, precision_context
from eqprop.estimators.bptt import iter_step_contributions

__all__ = [
    "DEFAULT_SWEEP_BETAS",
    "VARIANTS",
    "BetaComparison",
    "BetaSweep",
    "Curves",
    "GDUReport",
    "TensorComparison",
    "check_gdu",
    "format_table",
    "write_report",
]

#: The compared EP variants and how tables and plots label them.
VARIANTS: dict[str, str] = {"plus": "+β", "minus": "−β", "sym": "sym"}

#: Default β sweep: 10 values log-spaced over two decades.
DEFAULT_SWEEP_BETAS: tuple[float, ...] = tuple(float(b) for b in np.logspace(-3, -1, 10))

#: Elements per tensor followed step by step for the curves (the plot shows a few of them).
_CANDIDATES = 64

State = list[Tensor]


# ----------------------------------------------------------------- report


@dataclass
class TensorComparison:
    """EP against BPTT for one tensor, per variant (keys of :data:`VARIANTS`).

    Attributes:
        rmse: relative RMSE over all steps and elements (None when BPTT is zero throughout).
        sign_error: fraction of sign disagreements of the final updates (None: nothing to
            compare).
    """

    rmse: dict[str, float | None]
    sign_error: dict[str, float | None]


@dataclass
class Curves:
    """Cumulative sums Σ_{τ≤t} of a few elements of one tensor, t = 0..T2.

    Attributes:
        elements: flat indices (row-major, logical order) of the followed elements.
        series: ``"plus"``, ``"minus"``, ``"sym"`` and ``"bptt"`` → one list of T2 + 1 values
            per element.
    """

    elements: list[int]
    series: dict[str, list[list[float]]]


@dataclass
class BetaComparison:
    """The step-by-step comparison at one |β|.

    Attributes:
        beta: |β|.
        tensors: per parameter name and per ``"neurons.n"`` (state index n).
        totals: per variant, over all parameters together: ``"rmse"``, ``"sign_error"`` and
            ``"final_error"`` (relative error of the final update against the BPTT gradient).
        layers: per weight layer (module name), the ratio 2‖sym − BPTT‖/(‖+β − BPTT‖ +
            ‖−β − BPTT‖) of the final updates (None when both one-sided errors are zero).
        curves: per tensor, a few elements' cumulative sums.
    """

    beta: float
    tensors: dict[str, TensorComparison]
    totals: dict[str, dict[str, float | None]]
    layers: dict[str, float | None]
    curves: dict[str, Curves]


@dataclass
class BetaSweep:
    """Relative error of the final EP estimates against BPTT over a range of β.

    Attributes:
        betas: the |β| values.
        errors: per variant, one relative error per β.
        slopes: per variant, least-squares slope of log error against log β (None when fewer
            than two errors are positive).
        intercepts: the matching intercepts (log error at β = 1).
    """

    betas: list[float]
    errors: dict[str, list[float]]
    slopes: dict[str, float | None]
    intercepts: dict[str, float | None]


@dataclass
class GDUReport:
    """What :func:`check_gdu` measured; :meth:`to_dict` gives plain JSON-able data.

    Attributes:
        batch: examples in the batch.
        free_steps: T1 (budget of the free phase).
        free_steps_taken: steps the free phase actually ran (fewer with a tolerance).
        nudged_steps: T2.
        schedule: the solver's schedule.
        dtype: the network's dtype.
        free_residual: largest state change of one more free step from s* (0 at a fixed point;
            GDU assumes one).
        shapes: every compared tensor's shape (neurons include the batch dimension).
        layers: weight layer (module name) → the names of its parameters.
        comparisons: one per |β| of ``betas``.
        sweep: the β sweep, or None when none was asked for.
        seconds: wall time of the check.
    """

    batch: int
    free_steps: int
    free_steps_taken: int
    nudged_steps: int
    schedule: str
    dtype: str
    free_residual: float
    shapes: dict[str, list[int]]
    layers: dict[str, list[str]]
    comparisons: list[BetaComparison]
    sweep: BetaSweep | None
    seconds: float = field(default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, lists, numbers and None: ready for ``json.dumps``."""
        return asdict(self)

    def comparison(self, beta: float) -> BetaComparison:
        """The comparison at |β| = ``beta``.

        Raises:
            KeyError: no comparison at that β (the message lists those available).
        """
        for c in self.comparisons:
            if math.isclose(c.beta, beta, rel_tol=1e-9):
                return c
        raise KeyError(f"beta: no comparison at {beta}; have {[c.beta for c in self.comparisons]}")


# ----------------------------------------------------------------- EP pieces


def _ep_update(
    net: EnergyNetwork,
    params: Sequence[Tensor],
    x: Tensor,
    y: Tensor,
    free_state: State,
    nudged: list[State],
    betas: list[float],
    coefs: list[float],
    c_free: float,
) -> list[Tensor]:
    """The EP descent direction an estimator would put in ``.grad`` for these states.

    Same path as :meth:`EPEstimator.accumulate_gradients` (surrogate, backward, the network's
    post-processing), with the caller's ``.grad`` set aside and restored.
    """
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            net.ep_surrogate(x, y, free_state, nudged, betas, coefs, c_free).backward()
        net.postprocess_grads()
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g


def _nudged_trajectories(
    net: EnergyNetwork,
    drive: Tensor,
    free_state: State,
    y: Tensor,
    signed_betas: list[float],
    steps: int,
    solver: Solver,
) -> Iterator[list[State]]:
    """Yield, for t = 1..steps, the state of every nudged phase (one per signed β).

    All phases run as one batch (per-example β), each from s*, for exactly ``steps`` steps.
    """
    b, k = y.shape[0], len(signed_betas)

    def rep(t: Tensor) -> Tensor:
        return t.repeat(k, *([1] * (t.dim() - 1)))

    beta_col = torch.tensor(signed_betas, dtype=drive.dtype, device=drive.device)
    beta_col = beta_col.repeat_interleave(b)[:, None]  # (k*B, 1)
    y_rep = y.repeat(k)
    step = SCHEDULES[solver.schedule]
    drive_rep = rep(drive)
    current = [rep(s) for s in free_state]
    cache: dict = {}
    for _ in range(steps):
        with torch.no_grad(), precision_context(solver.precision, drive.device):
            current = step(
                net, drive_rep, current, lambda s: net.nudge_drive(s, y_rep, beta_col), cache
            )
        yield [[s[i * b : (i + 1) * b] for s in current] for i in range(k)]


class _Running:
    """Running sums of one series of per-step increments, compared with a reference series."""

    def __init__(self, like: dict[str, Tensor], picks: dict[str, Tensor]) -> None:
        self.sq_diff = dict.fromkeys(like, 0.0)
        self.cum = {k: torch.zeros_like(v) for k, v in like.items()}
        self.trace: dict[str, list[Tensor]] = {k: [] for k in like}
        self.picks = picks

    def add(self, inc: dict[str, Tensor], ref: dict[str, Tensor] | None) -> None:
        """Add one step; without ``ref``, ``sq_diff`` accumulates the squared norm itself."""
        for k, cum in self.cum.items():
            v = inc[k]
            diff = v if ref is None else v - ref[k]
            self.sq_diff[k] += float(diff.pow(2).sum())
            cum.add_(v)
            self.trace[k].append(cum.reshape(-1)[self.picks[k]].clone())


def _sq_dist(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).sum())


def _ratio(num: float, den: float) -> float | None:
    return math.sqrt(num) / math.sqrt(den) if den > 0 else None


def _sign_error(ep: Tensor, ref: Tensor) -> float | None:
    e, r = ep.reshape(-1), ref.reshape(-1)
    both = (e != 0) & (r != 0)
    n = int(both.sum())
    return float(((e * r) < 0).sum()) / n if n else None


def _fit(betas: list[float], errors: list[float]) -> tuple[float | None, float | None]:
    pts = [(math.log(b), math.log(e)) for b, e in zip(betas, errors, strict=True) if e > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None, None
    slope, intercept = np.polyfit(*zip(*pts, strict=True), 1)
    return float(slope), float(intercept)


def _check_positive(name: str, values: Sequence[float], allow_empty: bool) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name}: {v!r} is not valid; expected numbers > 0")
        out.append(float(v))
    if not out and not allow_empty:
        raise ValueError(f"{name}: expected at least one value > 0")
    return out


# ----------------------------------------------------------------- the check


def check_gdu(
    net: EnergyNetwork,
    x: Tensor,
    y: Tensor,
    *,
    free_steps: int,
    nudged_steps: int,
    betas: Sequence[float] = (0.01, 0.1),
    sweep_betas: Sequence[float] | None = DEFAULT_SWEEP_BETAS,
    solver: Solver | None = None,
    curve_elements: int = 3,
    seed: int = 0,
) -> GDUReport:
    """Compare EP's per-step updates with BPTT's per-step gradients on one batch.

    Relaxes freely for ``free_steps`` to s*, runs nudged phases at ±β for every β of ``betas``
    (and of ``sweep_betas``) for exactly ``nudged_steps`` steps, and unrolls BPTT for
    ``nudged_steps`` steps from s*. See the module docstring for every definition. Cost: about
    free_steps + 2·(len(betas) + len(sweep_betas) + 3)·nudged_steps steps of the batch, plus
    one Φ gradient per nudged step and phase; memory holds O(nudged_steps) states and a few
    copies of the parameters per β, never a parameter-sized tensor per step.

    Args:
        net: any network with the dynamics interface and ``ep_surrogate`` (symmetric or not).
        x: inputs, shape (B, *net.input_shape).
        y: labels, shape (B,).
        free_steps: T1, >= 1.
        nudged_steps: T2, >= 1.
        betas: the |β| values compared step by step.
        sweep_betas: the |β| values of the sweep (None or empty: no sweep).
        solver: schedule, precision and free-phase tolerance (default: synchronous, no
            tolerance). GDU theory is for the synchronous schedule.
        curve_elements: elements per tensor kept for the curves, >= 1.
        seed: seed of the generator that picks those elements.

    Returns:
        The :class:`GDUReport`.
    """
    started = time.perf_counter()
    for name, value in (
        ("free_steps", free_steps),
        ("nudged_steps", nudged_steps),
        ("curve_elements", curve_elements),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r} is not valid; expected an int >= 1")
    betas = _check_positive("betas", betas, allow_empty=False)
    sweep = _check_positive("sweep_betas", sweep_betas or (), allow_empty=True)
    x, y_checked = net.check_input(x, y)
    assert y_checked is not None
    y = y_checked
    solver = solver or Solver()
    b = x.shape[0]

    # Free phase, then one more step to see how far s* is from a fixed point.
    drive = net.input_drive(x)
    free = solver.relax(net, drive, solver.initial_state(net, drive), free_steps)
    s_star = free.state
    with torch.no_grad(), precision_context(solver.precision, x.device):
        again = SCHEDULES[solver.schedule](net, drive, s_star, None, {})
    residual = max(float((a - s).abs().max()) for a, s in zip(again, s_star, strict=True))

    names, params = (list(t) for t in zip(*net.named_parameters(), strict=True))
    neuron_names = [f"neurons.{n}" for n in range(len(s_star))]
    like = dict(zip(names, params, strict=True)) | dict(zip(neuron_names, s_star, strict=True))
    keys = list(like)
    gen = torch.Generator().manual_seed(seed)
    picks = {
        k: torch.randperm(v.numel(), generator=gen)[:_CANDIDATES].to(v.device)
        for k, v in like.items()
    }

    # BPTT entries arrive one step at a time, in EP's time order.
    bptt_steps = iter_step_contributions(net, x, y, s_star, nudged_steps, solver=solver)
    bptt = _Running(like, picks)
    runs = [{v: _Running(like, picks) for v in VARIANTS} for _ in betas]
    signed = [s * beta for beta in betas for s in (1.0, -1.0)]

    def ep_update(state: State, beta: float, c_free: float) -> list[Tensor]:
        return _ep_update(net, params, x, y, s_star, [state], [beta], [-1.0 / beta], c_free)

    # t = 0: the estimate before any nudged step. Later increments use c_free = 0: the free
    # state's term is the same at every step and cancels in g(t) − g(t−1).
    ref = next(bptt_steps)
    bptt.add(ref, None)
    zeros = {k: torch.zeros_like(s) for k, s in zip(neuron_names, s_star, strict=True)}
    previous = [ep_update(s_star, beta, 0.0) for beta in signed]
    for j in range(len(betas)):
        inc: dict[str, dict[str, Tensor]] = {}
        for i, v in ((2 * j, "plus"), (2 * j + 1, "minus")):
            g0 = ep_update(s_star, signed[i], 1.0 / signed[i])
            inc[v] = dict(zip(names, g0, strict=True)) | zeros
        inc["sym"] = {k: 0.5 * (inc["plus"][k] + inc["minus"][k]) for k in keys}
        for v, run in runs[j].items():
            run.add(inc[v], ref)

    last = [s_star] * len(signed)
    for phases in _nudged_trajectories(net, drive, s_star, y, signed, nudged_steps, solver):
        ref = next(bptt_steps)
        bptt.add(ref, None)
        for j in range(len(betas)):
            inc = {}
            for i, v in ((2 * j, "plus"), (2 * j + 1, "minus")):
                now = ep_update(phases[i], signed[i], 0.0)
                d_theta = [a - p for a, p in zip(now, previous[i], strict=True)]
                d_s = [(p - a) / signed[i] for a, p in zip(phases[i], last[i], strict=True)]
                previous[i] = now
                inc[v] = dict(zip(names, d_theta, strict=True)) | dict(
                    zip(neuron_names, d_s, strict=True)
                )
            inc["sym"] = {k: 0.5 * (inc["plus"][k] + inc["minus"][k]) for k in keys}
            for v, run in runs[j].items():
                run.add(inc[v], ref)
        last = phases

    layer_params = _layer_params(net)
    comparisons = [
        _summarise(beta, run, bptt, names, keys, layer_params, curve_elements)
        for beta, run in zip(betas, runs, strict=True)
    ]
    truth = torch.cat([bptt.cum[k].reshape(-1) for k in names])
    sweep_result = (
        _sweep(net, params, x, y, drive, s_star, sweep, nudged_steps, solver, truth)
        if sweep
        else None
    )
    return GDUReport(
        batch=b,
        free_steps=free_steps,
        free_steps_taken=free.steps,
        nudged_steps=nudged_steps,
        schedule=solver.schedule,
        dtype=str(x.dtype).removeprefix("torch."),
        free_residual=residual,
        shapes={k: list(v.shape) for k, v in like.items()},
        layers=layer_params,
        comparisons=comparisons,
        sweep=sweep_result,
        seconds=time.perf_counter() - started,
    )


def _layer_params(net: EnergyNetwork) -> dict[str, list[str]]:
    """Weight layer (module name) → names of its parameters, in ``named_parameters`` order."""
    module_names = {id(m): name for name, m in net.named_modules()}
    param_names = {id(p): name for name, p in net.named_parameters()}
    return {
        module_names[id(layer)]: [param_names[id(p)] for p in layer.parameters()]
        for layer in net.weight_layers()
    }


def _summarise(
    beta: float,
    runs: dict[str, _Running],
    bptt: _Running,
    names: list[str],
    keys: list[str],
    layer_params: dict[str, list[str]],
    curve_elements: int,
) -> BetaComparison:
    tensors = {
        k: TensorComparison(
            rmse={v: _ratio(r.sq_diff[k], bptt.sq_diff[k]) for v, r in runs.items()},
            sign_error={v: _sign_error(r.cum[k], bptt.cum[k]) for v, r in runs.items()},
        )
        for k in keys
    }
    ref_sq = sum(bptt.sq_diff[k] for k in names)
    ref_final = sum(float(bptt.cum[k].pow(2).sum()) for k in names)
    truth = torch.cat([bptt.cum[k].reshape(-1) for k in names])
    totals = {
        v: {
            "rmse": _ratio(sum(r.sq_diff[k] for k in names), ref_sq),
            "sign_error": _sign_error(torch.cat([r.cum[k].reshape(-1) for k in names]), truth),
            "final_error": _ratio(sum(_sq_dist(r.cum[k], bptt.cum[k]) for k in names), ref_final),
        }
        for v, r in runs.items()
    }
    layers: dict[str, float | None] = {}
    for layer, members in layer_params.items():
        err = {
            v: math.sqrt(sum(_sq_dist(r.cum[k], bptt.cum[k]) for k in members))
            for v, r in runs.items()
        }
        den = err["plus"] + err["minus"]
        layers[layer] = 2.0 * err["sym"] / den if den > 0 else None
    curves = {}
    for k in keys:
        final = bptt.trace[k][-1]
        # Prefer elements that BPTT actually moves (dead units make flat, uninformative curves).
        order = sorted(range(final.numel()), key=lambda i: float(final[i]) == 0.0)
        chosen = order[:curve_elements]
        series = {
            name: [[float(step[i]) for step in run.trace[k]] for i in chosen]
            for name, run in [*runs.items(), ("bptt", bptt)]
        }
        curves[k] = Curves([int(bptt.picks[k][i]) for i in chosen], series)
    return BetaComparison(beta, tensors, totals, layers, curves)


def _sweep(
    net: EnergyNetwork,
    params: list[Tensor],
    x: Tensor,
    y: Tensor,
    drive: Tensor,
    s_star: State,
    betas: list[float],
    steps: int,
    solver: Solver,
    truth: Tensor,
) -> BetaSweep:
    signed = [s * beta for beta in betas for s in (1.0, -1.0)]
    # Only the last states are needed: a one-slot deque drops the others as they come.
    (final,) = deque(_nudged_trajectories(net, drive, s_star, y, signed, steps, solver), maxlen=1)
    norm = float(truth.norm())
    errors: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for j, beta in enumerate(betas):
        plus, minus = final[2 * j], final[2 * j + 1]
        estimates = {
            "plus": _ep_update(net, params, x, y, s_star, [plus], [beta], [-1 / beta], 1 / beta),
            "minus": _ep_update(net, params, x, y, s_star, [minus], [-beta], [1 / beta], -1 / beta),
            "sym": _ep_update(
                net, params, x, y, s_star, [plus, minus], [beta, -beta],
                [-0.5 / beta, 0.5 / beta], 0.0,
            ),
        }  # fmt: skip
        for v, g in estimates.items():
            flat = torch.cat([t.reshape(-1) for t in g])
            errors[v].append(float((flat - truth).norm()) / norm if norm > 0 else math.nan)
    fits = {v: _fit(betas, e) for v, e in errors.items()}
    return BetaSweep(
        betas=list(betas),
        errors=errors,
        slopes={v: f[0] for v, f in fits.items()},
        intercepts={v: f[1] for v, f in fits.items()},
    )


# ----------------------------------------------------------------- output


def _fmt(value: float | None, spec: str = ".1e") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def format_table(report: GDUReport) -> str:
    """A short terminal table: per tensor RMSE and sign error per variant, layers, sweep slopes."""
    labels = list(VARIANTS.values())
    width = max(len(k) for k in report.shapes)
    shape_w = max(len("x".join(map(str, s))) for s in report.shapes.values())
    lines = [
        f"GDU check (EP vs BPTT): batch {report.batch}, T1 {report.free_steps} "
        f"({report.free_steps_taken} run), T2 {report.nudged_steps}, {report.schedule}, "
        f"{report.dtype}; free residual {_fmt(report.free_residual)}; {report.seconds:.1f} s"
    ]
    for c in report.comparisons:
        head = "".join(f"{lab:>9}" for lab in labels)
        lines.append("")
        lines.append(f"β = {c.beta:g}: relative RMSE over steps  |  sign error of the final update")
        lines.append(f"  {'tensor':<{width}}  {'shape':<{shape_w}}{head}  |{head}")
        for k, t in c.tensors.items():
            shape = "x".join(map(str, report.shapes[k]))
            rmse = "".join(f"{_fmt(t.rmse[v]):>9}" for v in VARIANTS)
            sign = "".join(f"{_fmt(t.sign_error[v], '.3f'):>9}" for v in VARIANTS)
            lines.append(f"  {k:<{width}}  {shape:<{shape_w}}{rmse}  |{sign}")
        rmse = "".join(f"{_fmt(c.totals[v]['rmse']):>9}" for v in VARIANTS)
        sign = "".join(f"{_fmt(c.totals[v]['sign_error'], '.3f'):>9}" for v in VARIANTS)
        lines.append(f"  {'all parameters':<{width}}  {'':<{shape_w}}{rmse}  |{sign}")
        final = ", ".join(f"{VARIANTS[v]} {_fmt(c.totals[v]['final_error'])}" for v in VARIANTS)
        lines.append(f"  final update, relative error against BPTT: {final}")
        ratios = ", ".join(f"{k} {_fmt(r, '.3f')}" for k, r in c.layers.items())
        lines.append(f"  layer ratio 2|sym−BPTT|/(|+β−BPTT|+|−β−BPTT|) (<1: sym helps): {ratios}")
    if report.sweep is not None:
        s = report.sweep
        slopes = ", ".join(f"{VARIANTS[v]} {_fmt(s.slopes[v], '.2f')}" for v in VARIANTS)
        lines.append("")
        lines.append(
            f"β sweep {min(s.betas):.0e}..{max(s.betas):.0e} ({len(s.betas)} values), "
            f"log-log slope of the final-update error: {slopes} (expect 1, 1, 2)"
        )
    return "\n".join(lines)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot, no global backend state
    return fig


_STYLES = {"plus": "--", "minus": ":", "sym": "-", "bptt": "-"}


def _curve_tensors(report: GDUReport, comparison: BetaComparison, limit: int) -> list[str]:
    keys = list(comparison.curves)
    weights = [k for k in keys if not k.startswith("neurons.") and len(report.shapes[k]) >= 2]
    neurons = [k for k in keys if k.startswith("neurons.")]
    others = [k for k in keys if k not in weights and k not in neurons]
    return [*weights, *neurons, *others][:limit]


def _plot_curves(report: GDUReport, comparison: BetaComparison, path: Path) -> None:
    shown = _curve_tensors(report, comparison, 6)
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = _new_figure(4.2 * cols, 3.2 * rows + 0.6)
    steps = list(range(report.nudged_steps + 1))
    for i, k in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        curves = comparison.curves[k]
        for e in range(len(curves.elements)):
            color = f"C{e}"
            ax.plot(steps, curves.series["bptt"][e], color=color, lw=4, alpha=0.3)
            for v in VARIANTS:
                ax.plot(steps, curves.series[v][e], color=color, ls=_STYLES[v], lw=1.2)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("nudged step t (BPTT: t steps back)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [Line2D([], [], color="k", lw=4, alpha=0.3, label="BPTT")] + [
        Line2D([], [], color="k", ls=_STYLES[v], label=f"EP {VARIANTS[v]}") for v in VARIANTS
    ]
    fig.suptitle(f"cumulative updates, |β| = {comparison.beta:g}", fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    fig.savefig(path, dpi=110)


def _plot_layers(report: GDUReport, path: Path) -> None:
    layers = list(report.layers)
    fig = _new_figure(max(5.5, 1.1 * len(layers) + 1.5), 3.6)
    ax = fig.add_subplot()
    n = len(report.comparisons)
    width = 0.8 / n
    for i, c in enumerate(report.comparisons):
        shown = [(j, c.layers[k]) for j, k in enumerate(layers) if c.layers[k] is not None]
        pos = [j + (i - (n - 1) / 2) * width for j, _ in shown]
        val = [r for _, r in shown]
        ax.bar(pos, val, width=width, label=f"|β| = {c.beta:g}")
    # Ratios span decades (O(β) for a converged net): a log axis keeps every bar visible.
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_xticks(range(len(layers)), layers, rotation=20, fontsize=8)
    ax.set_ylabel("2|sym−BPTT| / (|+β−BPTT| + |−β−BPTT|)", fontsize=8)
    ax.set_title("symmetric vs one-sided EP error per layer (<1: symmetric helps)", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=110)


def _plot_sweep(sweep: BetaSweep, path: Path) -> None:
    fig = _new_figure(5.0, 3.8)
    ax = fig.add_subplot()
    betas = np.asarray(sweep.betas)
    names = {"plus": "one-sided +β", "minus": "one-sided −β", "sym": "symmetric"}
    for i, v in enumerate(VARIANTS):
        errs = np.asarray(sweep.errors[v])
        ok = errs > 0
        slope, intercept = sweep.slopes[v], sweep.intercepts[v]
        label = f"{names[v]} (slope {_fmt(slope, '.2f')})"
        ax.plot(betas[ok], errs[ok], "o", color=f"C{i}", label=label, ms=4)
        if slope is not None and intercept is not None:
            ax.plot(betas, np.exp(intercept) * betas**slope, color=f"C{i}", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|β|")
    ax.set_ylabel("‖EP − BPTT‖ / ‖BPTT‖")
    ax.set_title("EP estimate error against BPTT", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def write_report(
    report: GDUReport, out_dir: str | Path, *, beta: float | None = None
) -> dict[str, Path]:
    """Write ``gdu.json`` and the PNG figures into ``out_dir`` (created if needed).

    Figures: ``gdu_curves.png`` (cumulative EP ±β, symmetric and BPTT updates of a few elements
    of up to 6 tensors), ``gdu_layers.png`` (per-layer ratio, line at 1) and, with a sweep,
    ``gdu_beta_sweep.png`` (log-log errors with fitted slopes).

    Args:
        report: what :func:`check_gdu` returned.
        out_dir: output folder.
        beta: |β| of the curves figure (default: the largest compared, where EP ± visibly
            part from BPTT).

    Returns:
        File kind (``"json"``, ``"curves"``, ``"layers"``, ``"beta_sweep"``) → path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "gdu.json", "curves": out / "gdu_curves.png"}
    paths["layers"] = out / "gdu_layers.png"
    data = _json_safe(report.to_dict())
    paths["json"].write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    if beta is None:
        comparison = max(report.comparisons, key=lambda c: c.beta)
    else:
        comparison = report.comparison(beta)
    _plot_curves(report, comparison, paths["curves"])
    _plot_layers(report, paths["layers"])
    if report.sweep is not None:
        paths["beta_sweep"] = out / "gdu_beta_sweep.png"
        _plot_sweep(report.sweep, paths["beta_sweep"])
    return paths


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by None (strict JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
