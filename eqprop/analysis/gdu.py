"""The GDU check's computation: EP's per-step updates against BPTT's per-step gradients.

Ernoult et al. (2019): from a converged free state s* and as β → 0, the update EP makes at its
t-th nudged step equals the gradient BPTT accumulates t steps back in time ("gradient descending
updates", GDU). :func:`check_gdu` measures how close a network, a batch and a β get.

Conventions. Every quantity is in the *gradient* sign (what goes into ``.grad``, ≈ +∂L/∂·);
steps run t = 0..T2, t = 0 being the estimate before any nudged step.

- EP, a phase at signed β from s*: g_β(t) is the descent direction the one-sided estimator
  returns after t nudged steps (``net.weight_contrast`` plus ``net.readout_grads``, so any
  chain network works, symmetric or not). Parameter increment ΔEP_θ(t) = g_β(t) − g_β(t−1), with
  ΔEP_θ(0) = g_β(0) (the CE readout's gradient at s*; zero otherwise). For a symmetric network
  ΔEP_θ(t) = −(1/β)[∂Φ/∂θ(s^β_t) − ∂Φ/∂θ(s^β_{t−1})] plus the readout's CE-gradient change.
  Neuron increment, per example: ΔEP_s(t) = −(s^β_t − s^β_{t−1})/β (the spec's (s_{t+1} − s_t)/β
  negated, so that it estimates a gradient like the parameters' increments).
- Variants: ``plus`` (+β), ``minus`` (−β) and ``sym``, the average of the two, i.e. the
  difference of the two nudged trajectories over 2β (its cumulative sum is symmetric EP).
- BPTT: :func:`eqprop.estimators.bptt_step_contributions` over T2 steps from s*; entry t
  is the contribution of the step t steps back from the loss (parameters), and the gradient of
  each example's loss with respect to that step's pre-activation (neurons). GDU:
  ΔEP(t) → BPTT(t) for every t as β → 0 when s* is a fixed point.
- Statistics (relative RMSE, sign error, layer ratio, β sweep) and the result types:
  :mod:`eqprop.analysis.gdu_results`; table and JSON: ``gdu_report``; figures: ``gdu_plots``.

Nudged phases always run exactly T2 steps (no tolerance), so that they align with BPTT's
unroll; the free phase uses the given solver, tolerance included. Spec §2 and §5.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from eqprop.analysis.gdu_results import (
    VARIANTS,
    BetaComparison,
    BetaSweep,
    GDUReport,
    _fit,
    _pick_elements,
    _Running,
    _summarise,
)
from eqprop.core.chain import ChainNetwork, repeat_batch
from eqprop.dynamics import Solver
from eqprop.estimators import iter_step_contributions

__all__ = ["DEFAULT_SWEEP_BETAS", "check_gdu"]

#: Default β sweep: 10 values log-spaced over two decades.
DEFAULT_SWEEP_BETAS: tuple[float, ...] = tuple(float(b) for b in np.logspace(-3, -1, 10))

State = list[Tensor]


def _ep_update(
    net: ChainNetwork,
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

    The same closed forms as :meth:`EPEstimator.weight_grads`: the network's weight contrast
    (its update rule, for asymmetric nets) plus the readout's CE gradient.
    """
    phases = list(zip(coefs, nudged, strict=True))
    if c_free != 0.0:
        phases.append((c_free, free_state))
    out = {id(p): torch.zeros_like(p) for p in params}
    for p, g in net.weight_contrast(x, free_state, phases, None) + net.readout_grads(nudged, y):
        out[id(p)] += g
    return [out[id(p)] for p in params]


def _nudged_trajectories(
    net: ChainNetwork,
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
    beta_col = torch.tensor(signed_betas, dtype=drive.dtype, device=drive.device)
    trajectory = solver.trajectory(
        net, repeat_batch(drive, k), [repeat_batch(s, k) for s in free_state], steps,
        y.repeat(k), beta_col.repeat_interleave(b)[:, None],
    )  # fmt: skip
    for _ in range(steps):
        with torch.no_grad():  # per step: the caller's grad mode is untouched between steps
            current = next(trajectory)
        yield [[s[i * b : (i + 1) * b] for s in current] for i in range(k)]


def check_gdu(
    net: ChainNetwork,
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
    ``nudged_steps`` steps from s*. See the module docstrings (this one and
    :mod:`~eqprop.analysis.gdu_results`) for every definition. Cost: about
    free_steps + 2·(len(betas) + len(sweep_betas) + 3)·nudged_steps steps of the batch, plus
    one Φ gradient per nudged step and phase; memory holds O(nudged_steps) states and a few
    copies of the parameters per β, never a parameter-sized tensor per step.

    Args:
        net: any chain network (symmetric or not).
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
    betas, sweep = _checked_arguments(free_steps, nudged_steps, curve_elements, betas, sweep_betas)
    setup = _free_phase(net, x, y, solver or Solver(), free_steps)
    layer_params = _layer_params(net)
    comparisons, sweep_result = _compare(
        setup, betas, sweep, nudged_steps, layer_params, curve_elements, seed
    )
    return GDUReport(
        batch=setup.x.shape[0],
        free_steps=free_steps,
        free_steps_taken=setup.free_steps_taken,
        nudged_steps=nudged_steps,
        schedule=setup.solver.schedule,
        dtype=str(setup.x.dtype).removeprefix("torch."),
        free_residual=setup.free_residual,
        shapes={k: list(v.shape) for k, v in setup.like.items()},
        layers=layer_params,
        comparisons=comparisons,
        sweep=sweep_result,
        seconds=time.perf_counter() - started,
    )


def _checked_arguments(
    free_steps: int,
    nudged_steps: int,
    curve_elements: int,
    betas: Sequence[float],
    sweep_betas: Sequence[float] | None,
) -> tuple[list[float], list[float]]:
    """Validate the counts; return the compared |β| values and the sweep's (maybe none)."""
    for name, value in (
        ("free_steps", free_steps),
        ("nudged_steps", nudged_steps),
        ("curve_elements", curve_elements),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r} is not valid; expected an int >= 1")
    return (
        _check_positive("betas", betas, allow_empty=False),
        _check_positive("sweep_betas", sweep_betas or (), allow_empty=True),
    )


def _check_positive(name: str, values: Sequence[float], allow_empty: bool) -> list[float]:
    """``values`` as floats, each checked to be a number > 0."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name}: {v!r} is not valid; expected numbers > 0")
        out.append(float(v))
    if not out and not allow_empty:
        raise ValueError(f"{name}: expected at least one value > 0")
    return out


@dataclass(frozen=True)
class _Setup:
    """What every stage of the check shares: the network, the batch, its solver and s*."""

    net: ChainNetwork
    x: Tensor
    y: Tensor
    drive: Tensor
    solver: Solver
    s_star: State
    free_steps_taken: int
    free_residual: float
    names: list[str]
    params: list[Tensor]

    @property
    def like(self) -> dict[str, Tensor]:
        """Every compared tensor by name: the parameters, then the neurons ``"neurons.n"``."""
        return self.named(self.params, self.s_star)

    def named(self, params: Sequence[Tensor], neurons: Sequence[Tensor]) -> dict[str, Tensor]:
        """Parameter-shaped and state-shaped tensors, keyed like :attr:`like`."""
        by_name = dict(zip(self.names, params, strict=True))
        return by_name | {f"neurons.{n}": s for n, s in enumerate(neurons)}

    def ep_update(self, state: State, beta: float, c_free: float) -> list[Tensor]:
        """The descent direction of the phase at signed ``beta`` that reached ``state``."""
        return _ep_update(
            self.net, self.params, self.x, self.y, self.s_star, [state], [beta], [-1.0 / beta],
            c_free,
        )  # fmt: skip


def _free_phase(net: ChainNetwork, x: Tensor, y: Tensor, solver: Solver, free_steps: int) -> _Setup:
    """Check the batch, relax freely to s*, and take one more step: how far is a fixed point?"""
    x, y_checked = net.check_input(x, y)
    assert y_checked is not None
    drive = net.input_drive(x)
    free = solver.relax(net, drive, None, free_steps)
    s_star = free.state
    again = solver.relax(net, drive, s_star, 1).state
    residual = max(float((a - s).abs().max()) for a, s in zip(again, s_star, strict=True))
    names, params = (list(t) for t in zip(*net.named_parameters(), strict=True))
    return _Setup(net, x, y_checked, drive, solver, s_star, free.steps, residual, names, params)


def _compare(
    setup: _Setup,
    betas: list[float],
    sweep: list[float],
    steps: int,
    layer_params: dict[str, list[str]],
    curve_elements: int,
    seed: int,
) -> tuple[list[BetaComparison], BetaSweep | None]:
    """The step-by-step comparison at every |β| of ``betas``; the sweep (None: no sweep)."""
    like = setup.like
    bptt, runs = _run_steps(setup, betas, steps, _pick_elements(like, seed))
    comparisons = [
        _summarise(beta, run, bptt, setup.names, list(like), layer_params, curve_elements)
        for beta, run in zip(betas, runs, strict=True)
    ]
    truth = torch.cat([bptt.cum[k].reshape(-1) for k in setup.names])
    return comparisons, _sweep(setup, sweep, steps, truth) if sweep else None


def _run_steps(
    setup: _Setup, betas: list[float], steps: int, picks: dict[str, Tensor]
) -> tuple[_Running, list[dict[str, _Running]]]:
    """BPTT's running sums, and per |β| each variant's, over t = 0..``steps``."""
    s = setup
    # BPTT entries arrive one step at a time, in EP's time order.
    bptt_steps = iter_step_contributions(s.net, s.x, s.y, s.s_star, steps, solver=s.solver)
    bptt = _Running(s.like, picks)
    runs = [{v: _Running(s.like, picks) for v in VARIANTS} for _ in betas]
    signed = [sign * beta for beta in betas for sign in (1.0, -1.0)]
    ref = next(bptt_steps)
    bptt.add(ref, None)
    incs, previous = _first_increments(s, signed)
    _add_increments(runs, incs, ref)
    last = [s.s_star] * len(signed)
    for phases in _nudged_trajectories(s.net, s.drive, s.s_star, s.y, signed, steps, s.solver):
        ref = next(bptt_steps)
        bptt.add(ref, None)
        _add_increments(runs, _step_increments(s, signed, phases, last, previous), ref)
        last = phases
    return bptt, runs


def _first_increments(
    setup: _Setup, signed: list[float]
) -> tuple[list[dict[str, Tensor]], list[list[Tensor]]]:
    """Per phase, the increment at t = 0 (the estimate before any nudged step), and g(0).

    g(0) has c_free = 0 like every later g(t): the free state's term cancels in g(t) − g(t−1).
    """
    s_star = setup.s_star
    zeros = [torch.zeros_like(s) for s in s_star]
    previous = [setup.ep_update(s_star, beta, 0.0) for beta in signed]
    incs = [setup.named(setup.ep_update(s_star, beta, 1.0 / beta), zeros) for beta in signed]
    return incs, previous


def _step_increments(
    setup: _Setup,
    signed: list[float],
    phases: list[State],
    last: list[State],
    previous: list[list[Tensor]],
) -> list[dict[str, Tensor]]:
    """Per phase, the increment of the step from ``last`` to ``phases``; updates ``previous``."""
    incs = []
    for i, beta in enumerate(signed):
        now = setup.ep_update(phases[i], beta, 0.0)
        d_theta = [a - p for a, p in zip(now, previous[i], strict=True)]
        d_s = [(p - a) / beta for a, p in zip(phases[i], last[i], strict=True)]
        previous[i] = now
        incs.append(setup.named(d_theta, d_s))
    return incs


def _add_increments(
    runs: list[dict[str, _Running]], incs: list[dict[str, Tensor]], ref: dict[str, Tensor]
) -> None:
    """Add, per |β| j, the increments of phases +β (2j) and −β (2j + 1) and their average."""
    for j, run in enumerate(runs):
        plus, minus = incs[2 * j], incs[2 * j + 1]
        inc = {"plus": plus, "minus": minus, "sym": {k: 0.5 * (plus[k] + minus[k]) for k in plus}}
        for v, r in run.items():
            r.add(inc[v], ref)


def _layer_params(net: ChainNetwork) -> dict[str, list[str]]:
    """Weight layer (module name) → names of its parameters, in ``named_parameters`` order."""
    module_names = {id(m): name for name, m in net.named_modules()}
    param_names = {id(p): name for name, p in net.named_parameters()}
    return {
        module_names[id(layer)]: [param_names[id(p)] for p in layer.parameters()]
        for layer in net.weight_layers()
    }


def _sweep(setup: _Setup, betas: list[float], steps: int, truth: Tensor) -> BetaSweep:
    """The final estimates' errors against ``truth`` (BPTT's gradient) for every |β|."""
    net, params, x, y, s_star = setup.net, setup.params, setup.x, setup.y, setup.s_star
    signed = [s * beta for beta in betas for s in (1.0, -1.0)]
    # Only the last states are needed: a one-slot deque drops the others as they come.
    (final,) = deque(
        _nudged_trajectories(net, setup.drive, s_star, y, signed, steps, setup.solver), maxlen=1
    )
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
