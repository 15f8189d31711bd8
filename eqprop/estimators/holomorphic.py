"""Holomorphic EP (Laborieux & Zenke 2022): exact gradients at finite nudging.

``holomorphic-ep.md`` §2 and §4. With holomorphic dynamics the nudged fixed point s^β continues
to complex β, and the EP gradient is the first Fourier coefficient of ∂Φ_β/∂θ(s^β) round a
circle |β| = r. With N points β_k = r e^{2πik/N} (trapezoid rule):

    g_N = Re (1/N) Σ_k (−1/β_k) ∂Φ_{β_k}/∂θ(x, s^{β_k}, θ),        bias O(r^N),

the readout (outside Φ) getting Re (1/N) Σ_k ∂L/∂θ_out(s^{β_k}). θ, x, biases and targets are
real, so point N − k is the conjugate of point k: only k = 0..⌊N/2⌋ are relaxed, the real ones
(k = 0, and N/2 for even N) with weight 1, the others with weight 2. They run as one planar
batch (:mod:`eqprop.core.planar`: the real points, then the real and imaginary parts of the
complex ones), with per-row β, through the ordinary schedules and solver on a planar view
(:func:`~eqprop.core.planar_graph.planar_view`: a chain's
:class:`~eqprop.core.holomorphic.PlanarNetwork`, an energy graph's
:class:`~eqprop.core.planar_graph.PlanarGraphNetwork`); the update is the view's closed form.

- N = 1 is one-sided EP (with the free-state term) and N = 2 symmetric EP: both run the
  :class:`~eqprop.estimators.ep.EPEstimator` code of ``OneSidedEP`` / ``SymmetricEP``, in real
  arithmetic, and any network is accepted. N > 2 needs holomorphic pieces
  (:func:`~eqprop.core.holomorphic.check_holomorphic`) and a symmetric network, a chain or an
  energy graph without feedback weights (asymmetric chains:
  :class:`~eqprop.estimators.generalized.GeneralizedHolomorphicEP`).
- Convergence guard (N > 2, ``guard``): the residual ρ = ‖s_T − s_{T−2}‖₂ of every example's
  last two steps (no extra steps). An example whose free phase has log₁₀ρ > 2 or is not finite
  is dropped (its gradient is zero, it still counts in the batch mean); an example whose complex
  points have a mean log₁₀ρ > 0 falls back to N = 2 (even N; the ±r points are in the batch) or
  is dropped (odd N). Non-finite values are zeroed in the gradient. The counts are reported in
  ``Estimate.stats`` (``guard_dropped``, ``guard_fallback``).
- Online variant (``online``): β keeps turning round the circle, T2 steps per point, the state
  carried from point to point from s*, for ``online_periods`` periods; the first period (the
  transient from s*) is discarded and each later point adds Re[(−1/β_k) ∂Φ_{β_k}/∂θ(s)]. All N
  points are visited (the carried trajectory is not conjugate-symmetric).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from eqprop.core.chain import ChainNetwork, State, WeightGrads
from eqprop.core.graph import GraphNetwork
from eqprop.core.holomorphic import PlanarNetwork, check_holomorphic, planar_states, to_planar
from eqprop.core.network import EnergyNetwork
from eqprop.core.planar import Rows
from eqprop.core.planar_graph import planar_view
from eqprop.core.validation import SettingError, check_int, invalid
from eqprop.estimators.base import Estimate, register
from eqprop.estimators.circle import (
    Points,
    circle_points,
    eager,
    guard_masks,
    point_columns,
    relax_points,
    relax_tracked,
    sum_grads,
    warm_state,
)
from eqprop.estimators.ep import EPEstimator, OneSidedEP, SymmetricEP

__all__ = ["HolomorphicEP"]


def _symmetric(net: ChainNetwork) -> bool:
    """Whether ``net`` has a Φ: an energy network, or an energy graph none of whose edges
    carries feedback weights (``feedback``, the asymmetric interactions' convention)."""
    if isinstance(net, GraphNetwork):
        return not any(hasattr(layer, "feedback") for layer in net.interactions)
    return isinstance(net, EnergyNetwork)


@register
@dataclass
class HolomorphicEP(EPEstimator):
    """Holomorphic EP with N points on a circle of radius |β| (module docstring).

    Args:
        beta, free_steps, nudged_steps, solver: as for every EP estimator (β is the radius).
        batch_phases: N <= 2 only (N > 2 always relaxes its points as one batch).
        points: N >= 1; 1 and 2 are one-sided and symmetric EP, exactly.
        online: turn β round the circle continuously (N >= 2; see the module docstring).
        online_periods: periods of the online variant, the first discarded (>= 2).
        guard: the convergence guard of the N > 2 estimate.
        half_circle: relax only the points k = 0..⌊N/2⌋ (conjugate symmetry); False relaxes
            all N (a check: the estimate is the same).
    """

    name: ClassVar[str] = "holomorphic"
    points: int = 4
    online: bool = False
    online_periods: int = 3
    guard: bool = True
    half_circle: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.points, "points", 1)
        check_int(self.online_periods, "online_periods", 2)
        if self.online and self.points < 2:
            raise invalid(self.points, "at least 2 for the online variant", "points")

    @property
    def complex_points(self) -> bool:
        """Whether the estimate nudges at complex β (N > 2, or the online variant)."""
        return self.points > 2 or self.online

    # --- N <= 2: the one-sided and symmetric estimators themselves ------------------------

    def real_twin(self) -> EPEstimator:
        """:class:`OneSidedEP` (N = 1) or :class:`SymmetricEP` (N = 2) with this β: their
        phases and coefficients are this estimator's for N <= 2 (run by the shared
        :meth:`EPEstimator._run <eqprop.estimators.ep.EPEstimator._run>`)."""
        cls = OneSidedEP if self.points == 1 else SymmetricEP
        return cls(self.beta, self.free_steps, self.nudged_steps)

    def phase_betas(self) -> list[float]:
        return self.real_twin().phase_betas()

    def coefficients(self, betas: list[float]) -> tuple[list[float], float]:
        return self.real_twin().coefficients(betas)

    # --- N > 2 ---------------------------------------------------------------------------

    def check_network(self, net: ChainNetwork) -> None:
        """Raise unless ``net`` can be nudged at complex β by this estimator."""
        if not self.complex_points:
            return
        check_holomorphic(net, f"points: {self.points}" + (", online" if self.online else ""))
        if not _symmetric(net):
            kind = type(net).__name__ + (" with feedback" if isinstance(net, GraphNetwork) else "")
            raise SettingError(
                f"holomorphic with points > 2 or online needs a symmetric network, not {kind}; "
                "use estimator.kind: generalized for asymmetric chain networks",
                "estimator.kind",
            )

    def _run(
        self, net: ChainNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor] | None
    ) -> tuple[WeightGrads, Estimate]:
        if not self.complex_points:
            return super()._run(net, x, y, state)
        self.check_network(net)
        x, y = net.check_input(x, y)
        drive, input_ctx = net.input_drive_with_context(x)
        state = warm_state(self, state, x.shape[0])
        if self.guard and not self.online:
            free, free_steps, free_residual = relax_tracked(
                self.solver, net, drive, state, self.free_steps
            )
        else:
            _, free, free_steps = self.relax_free(net, x, state, drive)
            free_residual = drive.new_zeros(x.shape[0])
        nudged: list[State] = []
        betas: list[float] = []
        stats: dict[str, float] = {}
        if self.online:
            grads, nudged_steps = self._online(net, x, y, drive, free, input_ctx)
        else:
            grads, nudged, betas, nudged_steps, stats = self._phased(
                net, x, y, drive, free, free_residual, input_ctx
            )
        with torch.no_grad():
            logits, loss = net.logits(free), net.loss(free, y)
        est = Estimate(free, nudged, betas, logits, loss, free_steps, nudged_steps, stats)
        return grads, est

    def grads_at(self, net: ChainNetwork, x: Tensor, y: Tensor, free_state: State) -> WeightGrads:
        """The estimate's gradients from a given free state s* (no guard), for checks."""
        x, y = net.check_input(x, y)
        drive, input_ctx = net.input_drive_with_context(x)
        if not self.complex_points:
            betas = self.phase_betas()
            nudged, _ = self.relax_nudged(net, drive, free_state, y, betas)
            return self.weight_grads(net, x, y, free_state, nudged, betas, input_ctx)
        self.check_network(net)
        if self.online:
            return self._online(net, x, y, drive, free_state, input_ctx)[0]
        zeros = drive.new_zeros(x.shape[0])
        return self._phased(net, x, y, drive, free_state, zeros, input_ctx, guard=False)[0]

    def _phased(
        self, net: ChainNetwork, x: Tensor, y: Tensor, drive: Tensor, free: State,
        free_residual: Tensor, input_ctx: Any, guard: bool | None = None,
    ) -> tuple[WeightGrads, list[State], list[float], int, dict[str, float]]:  # fmt: skip
        """The N-point estimate from s* (module docstring)."""
        guard = self.guard if guard is None else guard
        b = x.shape[0]
        circle = circle_points(self.points, self.beta, self.half_circle)
        pts = relax_points(self.solver, net, drive, free, y, circle, self.nudged_steps, track=guard)
        keep, fallback = drive.new_ones(b, dtype=torch.bool), drive.new_zeros(b, dtype=torch.bool)
        stats: dict[str, float] = {}
        if guard:
            keep, fallback = guard_masks(pts, free_residual, b, even=self.points % 2 == 0)
            for s in pts.state:
                s.nan_to_num_(0.0, 0.0, 0.0)
            stats = {
                "guard_dropped": float((~keep & ~fallback).sum()),
                "guard_fallback": float(fallback.sum()),
            }
        grads = self.point_grads(net, x, y, pts, input_ctx, keep, fallback)
        if guard:
            for _, g in grads:
                g.nan_to_num_(0.0, 0.0, 0.0)
        real_states = [[s[i * b : (i + 1) * b] for s in pts.state] for i in range(pts.n_real)]
        if self.warm_start:  # the +|β| point, the first of the batch
            self._warm = [s.detach().clone() for s in real_states[0]]
        betas = [beta.real for beta in pts.betas[: pts.n_real]]
        return grads, real_states, betas, pts.steps, stats

    def point_grads(
        self, net: ChainNetwork, x: Tensor, y: Tensor, pts: Points, input_ctx: Any,
        keep: Tensor | None = None, fallback: Tensor | None = None,
    ) -> WeightGrads:  # fmt: skip
        """The estimate from relaxed points: Re Σ_k c_k ∂Φ/∂θ(s_k) (batch mean) and the
        readout's Re Σ_k a_k ∂L/∂θ_out(s_k), in closed form (see :func:`point_columns`)."""
        b = x.shape[0]
        keep = x.new_ones(b, dtype=torch.bool) if keep is None else keep
        fallback = x.new_zeros(b, dtype=torch.bool) if fallback is None else fallback
        coef, read = point_columns(pts, keep.to(x.dtype), fallback.to(x.dtype))
        view = pts.net
        assert isinstance(view, PlanarNetwork)
        onehot = F.one_hot(y, net.num_classes).to(x.dtype).repeat(pts.rows.total // b, 1)
        grads = view.weight_contrast_planar(x, pts.state, coef / b, input_ctx)
        return grads + view.readout_grads_planar(pts.state, onehot, read / b)

    def _online(
        self, net: ChainNetwork, x: Tensor, y: Tensor, drive: Tensor, free: State,
        input_ctx: Any,
    ) -> tuple[WeightGrads, int]:  # fmt: skip
        """The online estimate (module docstring): N points per period, state carried."""
        b, n, periods = x.shape[0], self.points, self.online_periods
        rows = Rows(0, b)
        view = planar_view(net, rows, self.solver.compile)
        p_drive = to_planar([], [drive])
        state = planar_states(free, 0, 1)
        y_rows = y.repeat(2)
        onehot = F.one_hot(y_rows, net.num_classes).to(drive.dtype)
        kept = n * (periods - 1)
        solver = eager(self.solver)
        parts: list[WeightGrads] = []
        ones = drive.new_ones(b)
        steps = 0
        for period in range(periods):
            for beta, _ in circle_points(n, self.beta, half=False):
                beta_col = torch.cat([ones * beta.real, ones * beta.imag])[:, None]
                res = solver.relax(view, p_drive, state, self.nudged_steps, y_rows, beta_col)
                state, steps = res.state, steps + res.steps
                if period == 0:
                    continue  # the transient from s*
                c = -1.0 / (kept * beta * b)
                coef = torch.cat([ones * c.real, ones * c.imag])
                read = ones.new_full((2 * b,), 1.0 / (kept * b))
                parts.append(
                    view.weight_contrast_planar(x, state, coef, input_ctx)
                    + view.readout_grads_planar(state, onehot, read)
                )
        return sum_grads(parts), steps
