"""The N points of holomorphic EP on the circle |β| = r: their β and weights, their relaxation
as one batch (complex points stacked), the convergence guard and warm starts."""

from __future__ import annotations

import cmath
import collections
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from eqprop.core.chain import ChainNetwork, State, WeightGrads
from eqprop.core.holomorphic import planar_states, to_planar
from eqprop.core.planar import Rows
from eqprop.core.planar_graph import planar_view
from eqprop.dynamics.solver import Solver
from eqprop.estimators.ep import EPEstimator

__all__ = [
    "Points",
    "circle_points",
    "eager",
    "guard_masks",
    "point_columns",
    "relax_points",
    "relax_tracked",
    "sum_grads",
    "warm_state",
]


def circle_points(points: int, beta: float, half: bool = True) -> list[tuple[complex, float]]:
    """The points β_k = r e^{2πik/N} and their weights w_k in the N-point sum.

    Args:
        points: N >= 1.
        beta: the radius r > 0.
        half: only k = 0..⌊N/2⌋, using conjugate symmetry (weight 2 for the complex ones);
            False: all N points, weight 1 each.

    Example:
        >>> [(round(b.real, 3), round(b.imag, 3), w) for b, w in circle_points(4, 1.0)]
        [(1.0, 0.0, 1.0), (0.0, 1.0, 2.0), (-1.0, 0.0, 1.0)]
    """
    ks = range(points // 2 + 1) if half else range(points)
    out = []
    for k in ks:
        b = beta * cmath.exp(2j * math.pi * k / points)
        real = 2 * k % points == 0  # k = 0 and k = N/2: exactly ±r
        if real:
            b = complex(beta if k == 0 else -beta, 0.0)
        out.append((b, 1.0 if real or not half else 2.0))
    return out


def relax_tracked(
    solver: Solver, net: ChainNetwork, drive: Tensor, state: Sequence[Tensor] | None,
    steps: int, y: Tensor | None = None, beta: float | Tensor = 0.0,
) -> tuple[State, int, Tensor]:  # fmt: skip
    """Relax like ``solver.relax`` and also return each row's residual ‖s_T − s_{T−2}‖₂.

    The last two steps are run through ``solver.trajectory`` to keep s_{T−2}: no extra step.

    Returns:
        (final states, steps taken, residual per row (B,)).
    """
    taken = 0
    if steps > 2:
        res = solver.relax(net, drive, state, steps - 2, y, beta)
        start, taken = res.state, res.steps
    elif state is None:
        start = solver.initial_state(net, drive)
    else:
        start = list(state)
    with torch.no_grad():
        trajectory = solver.trajectory(net, drive, start, min(steps, 2), y, beta, None, taken)
        last = collections.deque(trajectory, maxlen=1)[0]
        sq = sum((a - b).pow(2).flatten(1).sum(1) for a, b in zip(last, start, strict=True))
    return last, taken + min(steps, 2), torch.as_tensor(sq).sqrt()


@dataclass
class Points:
    """The nudged points of one batch, relaxed together as one planar batch.

    Attributes:
        betas: β_k of each point, the real ones first (row order).
        weights: w_k of each point in the N-point sum.
        rows: the planar layout (``n_real`` batches of real rows, then ``n_complex`` batches).
        net: what relaxed them: a planar view (:func:`~eqprop.core.planar_graph.planar_view`),
            or the network itself when every point is real.
        state: the final planar states.
        steps: steps taken.
        residual: per row ‖s_T − s_{T−2}‖₂ (None without the guard).
    """

    betas: list[complex]
    weights: list[float]
    rows: Rows
    net: ChainNetwork
    state: State
    steps: int
    residual: Tensor | None

    @property
    def n_real(self) -> int:
        """Number of real points."""
        return sum(b.imag == 0 for b in self.betas)

    def column(self, values: Sequence[complex], mask: Tensor) -> Tensor:
        """A planar per-row column: one complex value per point, times a (B,) mask."""
        real = [mask * v.real for b, v in zip(self.betas, values, strict=True) if not b.imag]
        cplx = [v for b, v in zip(self.betas, values, strict=True) if b.imag]
        return torch.cat(real + [mask * v.real for v in cplx] + [mask * v.imag for v in cplx])

    def real_sum(self, t: Tensor, batch: int) -> Tensor:
        """Σ over the points of the real parts of a planar batch ``t`` (already weighted)."""
        return t[: self.rows.with_bias].unflatten(0, (-1, batch)).sum(0)


def point_columns(pts: Points, keep: Tensor, fallback: Tensor) -> tuple[Tensor, Tensor]:
    """The N-point sum's planar per-row coefficients, N = Σ_k w_k.

    Returns:
        (c, a): c_k = −w_k/(N β_k) on the state (so that Re Σ_k c_k s_k ≈ −ds/dβ) and the
        readout's real weight a_k = w_k/N (on both parts of a complex example), for the
        examples where ``keep`` is 1; the N = 2 values (c = −1/(2β) and a = ½ at the ±r points,
        0 at the complex ones) where ``fallback`` is 1; 0 elsewhere.
    """
    n = sum(pts.weights)
    betas, weights = pts.betas, pts.weights
    coef = pts.column([-w / (n * b) for b, w in zip(betas, weights, strict=True)], keep)
    coef += pts.column([0j if b.imag else -0.5 / b for b in betas], fallback)
    read = pts.column([complex(w / n) for w in weights], keep)
    read += pts.column([0j if b.imag else 0.5 + 0j for b in betas], fallback)
    rows = pts.rows
    read[rows.with_bias :] = read[rows.real : rows.with_bias]  # a real weight: both parts
    return coef, read


def eager(solver: Solver) -> Solver:
    """``solver`` without ``torch.compile``."""
    return dataclasses.replace(solver, compile=False) if solver.compile else solver


def relax_points(
    solver: Solver, net: ChainNetwork, drive: Tensor, free_state: State, y: Tensor,
    circle: list[tuple[complex, float]], steps: int, track: bool,
) -> Points:  # fmt: skip
    """Relax the points of ``circle`` from s* as one batch (planar when some are complex).

    A planar batch runs its steps eagerly (its network view is built per batch, and a compiled
    step would recompile for every new view); with ``solver.compile`` only the complex
    activation is compiled, once per function and shape.
    """
    ordered = [p for p in circle if not p[0].imag] + [p for p in circle if p[0].imag]
    betas, weights = [b for b, _ in ordered], [w for _, w in ordered]
    b = y.shape[0]
    n_real = sum(not beta.imag for beta in betas)
    n_complex = len(betas) - n_real
    rows = Rows(n_real * b, n_complex * b)
    view: ChainNetwork = planar_view(net, rows, solver.compile) if n_complex else net
    if n_complex:
        solver = eager(solver)
    pts = Points(betas, weights, rows, view, [], 0, None)
    beta_col = pts.column(betas, drive.new_ones(b))[:, None]
    p_drive = to_planar([drive] * n_real, [drive] * n_complex)
    start = planar_states(free_state, n_real, n_complex)
    y_rows = y.repeat(rows.total // b)
    if track:
        pts.state, pts.steps, pts.residual = relax_tracked(
            solver, view, p_drive, start, steps, y_rows, beta_col
        )
    else:
        res = solver.relax(view, p_drive, start, steps, y_rows, beta_col)
        pts.state, pts.steps = res.state, res.steps
    return pts


def guard_masks(
    pts: Points, free_residual: Tensor, batch: int, even: bool
) -> tuple[Tensor, Tensor]:
    """(keep, fallback) per example: keep = its N-point estimate is used; fallback = its
    complex points are discarded and its ±r points give the N = 2 estimate."""
    assert pts.residual is not None
    per_point = pts.residual.unflatten(0, (-1, batch))  # (blocks, B)
    n_real = pts.n_real
    n_complex = (per_point.shape[0] - n_real) // 2
    sq = per_point[n_real : n_real + n_complex].pow(2) + per_point[n_real + n_complex :].pow(2)
    complex_ok = sq.sqrt().log10().mean(0) <= 0.0  # False for NaN
    real_ok = per_point[:n_real].isfinite().all(0)
    free_ok = free_residual <= 100.0  # log10 ρ <= 2; False for NaN
    alive = free_ok & real_ok
    fallback = alive & ~complex_ok if even else torch.zeros_like(alive)
    return alive & complex_ok, fallback


def warm_state(
    est: EPEstimator, state: Sequence[Tensor] | None, batch: int
) -> Sequence[Tensor] | None:
    """The free phase's start: ``state``, else the warm start kept by ``est`` (when it has one
    for this batch size), else None (the solver's init)."""
    warm = est._warm
    if state is None and warm is not None and warm[0].shape[0] == batch:
        return warm
    return state


def sum_grads(parts: Sequence[WeightGrads]) -> WeightGrads:
    """Per-parameter sums of several gradient lists (first-seen order)."""
    total: dict[int, tuple[Any, Tensor]] = {}
    for grads in parts:
        for p, g in grads:
            if id(p) in total:
                total[id(p)][1].add_(g)
            else:
                total[id(p)] = (p, g.clone())
    return list(total.values())
