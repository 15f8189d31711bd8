"""Generalised holomorphic EP for networks without weight symmetry, and Jacobian homeostasis.

``holomorphic-ep.md`` §5 (Laborieux & Zenke 2024). For the asymmetric ("VF") networks of
ep-spec §4 there is no Φ: the state obeys s = σ(G(s) − β ∂L/∂s), G(s) the sum of each layer's
forward drive and the top-down drive through the feedback weights. What EP can measure is the
neuronal error vector

    δ := −ds^β/dβ |₀ = (D⁻¹ − J)⁻¹ c,    J = ∂G/∂s, D = diag σ′, c = ∂L/∂s at s*,

and the update is g = ∂/∂θ ⟨δ̂, G(s*; θ)⟩ (s* and δ̂ held fixed, batch mean) plus the readout's
cross-entropy gradient at s*. The true gradient uses λ = (D⁻¹ − Jᵀ)⁻¹ c instead: the two agree
when J is symmetric (B = Wᵀ), and the Jacobian-homeostasis regulariser pushes J that way.

- δ̂ from N points (``points`` >= 1): δ̂ = −Re (1/N) Σ_k w_k s^{β_k}/β_k over the points of
  :func:`~eqprop.estimators.holomorphic.circle_points` (N = 1: −(s^β − s*)/β), relaxed as one
  planar batch exactly like :class:`~eqprop.estimators.holomorphic.HolomorphicEP`'s, with the
  same convergence guard (N > 2). Error O(|β|^N).
- ``points = 0``: the "exact δ" reference, the forward-mode derivative with respect to β of the
  T2-step nudged map started from s* (one forward-mode pass, tangent 1 on β). Not physical.
- Jacobian homeostasis (``jacobian_reg`` = λ_h > 0): with J̃ = ∂(G(s) − s)/∂s at s* (σ bypassed)
  and n neurons per example, per example and probe ε ~ N(0, I),
  ℓ = (‖J̃ε‖² − εᵀJ̃²ε)/n, whose expectation is ‖J̃ − J̃ᵀ‖²_F/(2n); two Jacobian-vector products
  v₁ = J̃ε, v₂ = J̃v₁ give ℓ = (‖v₁‖² − ⟨ε, v₂⟩)/n. L_h is its mean over the batch and
  ``jacobian_probes`` probes, differentiated at fixed s*; g ← g + λ_h ∇_θ L_h. The probes come
  from the estimator's own seeded generator (:meth:`state_dict` resumes it).

The update and the regulariser differentiate the network's own closed-form drives with autograd
(real arithmetic, once per batch, outside the relaxation loop); with softmax pooling this takes
the pool's second derivative in the top-down term, which no Hebbian product would. G(s) is
written for chain networks: energy graphs are refused (:func:`check_chain`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from eqprop.core.chain import ChainNetwork, State, WeightGrads
from eqprop.core.graph import GraphNetwork
from eqprop.core.holomorphic import check_holomorphic
from eqprop.core.kernels import fast_layout
from eqprop.core.planar import PlanarScale
from eqprop.core.validation import SettingError, check_int, check_number
from eqprop.estimators.base import Estimate, register
from eqprop.estimators.circle import (
    circle_points,
    guard_masks,
    point_columns,
    relax_points,
    relax_tracked,
    warm_state,
)
from eqprop.estimators.ep import EPEstimator

__all__ = [
    "GeneralizedHolomorphicEP",
    "check_chain",
    "drives",
    "homeostasis_loss",
]


@contextlib.contextmanager
def _forward_mode() -> Any:
    """Silence the deprecation warning PyTorch's forward-mode AD emits when it first loads its
    decompositions (through ``torch.jit.script``, its own internals)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        yield


def drives(net: ChainNetwork, x: Tensor | None, state: Sequence[Tensor]) -> list[Tensor]:
    """G(s): every layer's drive before σ (forward term plus top-down term), differentiable.

    The same closed forms as a synchronous step, without σ and without a nudge. With ``x``
    None the input's constant drive is left out (it does not depend on the state).
    """
    layers = net.interactions
    forward: list[Tensor | None] = [None]
    contexts: list[Any] = [None]
    if x is not None:
        forward[0] = layers[0].forward_drive(fast_layout(x))[0]
    for n in range(1, len(layers)):
        d, ctx = layers[n].forward_drive(state[n - 1])
        forward.append(d)
        contexts.append(ctx)
    out = []
    for n in range(len(layers)):
        first = forward[n]
        total = torch.zeros_like(state[n]) if first is None else first
        if n + 1 < len(layers):
            total = total + layers[n + 1].backward_drive(state[n + 1], contexts[n + 1])
        out.append(total)
    return out


def homeostasis_loss(
    net: ChainNetwork, state: Sequence[Tensor], probes: Sequence[Tensor]
) -> Tensor:
    """Jacobian homeostasis L_h at ``state`` for given probes (module docstring), with a graph
    to the parameters.

    Args:
        net: the network.
        state: s*, one (B, ...) tensor per layer (held fixed).
        probes: ε, one (K·B, ...) tensor per layer: K probes of every example, probe-major.

    Returns:
        The mean of ℓ over the K·B (example, probe) pairs.
    """
    k = probes[0].shape[0] // state[0].shape[0]
    fixed = tuple(s.detach().repeat(k, *([1] * (s.dim() - 1))) for s in state)
    n = sum(math.prod(s.shape[1:]) for s in state)

    def jac_minus_identity(v: tuple[Tensor, ...]) -> list[Tensor]:
        def g(*s: Tensor) -> tuple[Tensor, ...]:
            return tuple(drives(net, None, s))

        out = torch.func.jvp(g, fixed, v)[1]
        return [a - b for a, b in zip(out, v, strict=True)]

    with torch.enable_grad(), _forward_mode():
        eps = tuple(probes)
        v1 = jac_minus_identity(eps)
        v2 = jac_minus_identity(tuple(v1))
        per_row = sum(
            (a * a).flatten(1).sum(1) - (e * b).flatten(1).sum(1)
            for a, e, b in zip(v1, eps, v2, strict=True)
        )
        return torch.as_tensor(per_row).mean() / n


def check_chain(net: ChainNetwork) -> None:
    """Raise unless ``net`` is a chain network: G(s) (:func:`drives`) is written for chains.

    Raises:
        SettingError: one line, for an energy graph.
    """
    if isinstance(net, GraphNetwork):
        raise SettingError(
            "generalized holomorphic EP needs a chain network (its update differentiates the "
            "chain's drives G(s)), not a graph; use estimator.kind: holomorphic for graphs",
            "estimator.kind",
        )


def _dynamics_params(net: ChainNetwork) -> list[nn.Parameter]:
    return [p for layer in net.interactions for p in layer.parameters()]


@register
@dataclass
class GeneralizedHolomorphicEP(EPEstimator):
    """Generalised hEP (module docstring): any chain network, symmetric or not.

    An :class:`~eqprop.estimators.ep.EPEstimator` for its settings, free phase and closed-form
    protocol (``estimate`` without a backward pass, ``surrogate``); its update is
    :meth:`update`, not the Φ contrast of ``weight_grads``.

    Args:
        beta: radius |β| of the points, > 0 (unused with ``points = 0``).
        free_steps: T1, >= 1.
        nudged_steps: T2, >= 1.
        solver: schedule and tolerance.
        batch_phases: unused (the points always relax as one batch).
        warm_start: start each free phase from the previous batch's free state.
        points: N >= 1 points for δ̂, or 0 for the forward-mode "exact δ".
        jacobian_reg: λ_h >= 0, the weight of the Jacobian-homeostasis regulariser.
        jacobian_probes: probes per example of the regulariser, >= 1.
        guard: the convergence guard of the N > 2 points.
        seed: seed of the probes' generator (never the global RNG).
    """

    name: ClassVar[str] = "generalized"
    points: int = 2
    jacobian_reg: float = 0.0
    jacobian_probes: int = 5
    guard: bool = True
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.points, "points", 0)
        check_number(self.jacobian_reg, "jacobian_reg", positive=False)
        check_int(self.jacobian_probes, "jacobian_probes", 1)
        self.generator = torch.Generator().manual_seed(self.seed)

    # --- δ̂ ------------------------------------------------------------------------------

    def neuron_errors(
        self, net: ChainNetwork, drive: Tensor, free: State, y: Tensor,
        free_residual: Tensor | None = None,
    ) -> tuple[State, int, dict[str, float]]:  # fmt: skip
        """δ̂ at s* (one (B, ...) tensor per layer), the nudged steps taken and guard counts."""
        check_chain(net)
        if self.points == 0:
            return self._exact_delta(net, drive, free, y)
        b, n = y.shape[0], self.points
        guard = self.guard and n > 2 and free_residual is not None
        if n > 2:
            check_holomorphic(net, f"points: {n}")
        circle = circle_points(n, self.beta)
        pts = relax_points(self.solver, net, drive, free, y, circle, self.nudged_steps, track=guard)
        ones = drive.new_ones(b)
        keep, fallback = ones, ones * 0
        stats: dict[str, float] = {}
        if guard:
            assert free_residual is not None
            k, f = guard_masks(pts, free_residual, b, even=n % 2 == 0)
            keep, fallback = k.to(drive.dtype), f.to(drive.dtype)
            stats = {
                "guard_dropped": float(b - keep.sum() - fallback.sum()),
                "guard_fallback": float(fallback.sum()),
            }
            for s in pts.state:
                s.nan_to_num_(0.0, 0.0, 0.0)
        coef, _ = point_columns(pts, keep, fallback)
        delta = []
        for s_free, s in zip(free, pts.state, strict=True):
            d = pts.real_sum(PlanarScale(coef, pts.rows)(s.detach()), b)
            if n == 1:  # one-sided: −(s^β − s*)/β
                d = d + s_free.detach() / self.beta
            delta.append(fast_layout(d))
        return delta, pts.steps, stats

    def _exact_delta(
        self, net: ChainNetwork, drive: Tensor, free: State, y: Tensor
    ) -> tuple[State, int, dict[str, float]]:
        """−ds_T/dβ at β = 0 by forward-mode differentiation of the T2-step nudged map."""
        # Fixed T2 steps: a tolerance would look at the primal, which starts converged.
        solver = dataclasses.replace(self.solver, compile=False, tol=None)
        b = y.shape[0]
        with _forward_mode(), fwAD.dual_level():
            beta = fwAD.make_dual(drive.new_zeros(b, 1), drive.new_ones(b, 1))
            res = solver.relax(net, drive, free, self.nudged_steps, y, beta)
            tangents = [fwAD.unpack_dual(s).tangent for s in res.state]
        delta = [
            torch.zeros_like(s) if t is None else -t for s, t in zip(free, tangents, strict=True)
        ]
        return delta, res.steps, {}

    # --- the update -----------------------------------------------------------------------

    def update(
        self, net: ChainNetwork, x: Tensor, y: Tensor, free: State, delta: State
    ) -> WeightGrads:
        """∂/∂θ ⟨δ̂, G(s*; θ)⟩ (batch mean), plus the regulariser and the readout at s*."""
        params = _dynamics_params(net)
        live = [p for p in params if p.requires_grad]
        s = [t.detach() for t in free]
        with torch.enable_grad():
            inner = sum(
                (d.detach() * g).sum() for d, g in zip(delta, drives(net, x, s), strict=True)
            )
            total = torch.as_tensor(inner) / x.shape[0]
            if self.jacobian_reg > 0:
                total = total + self.jacobian_reg * homeostasis_loss(net, s, self.probes(s))
            found = torch.autograd.grad(total, live, allow_unused=True)
        grads = [
            (p, torch.zeros_like(p) if g is None else g) for p, g in zip(live, found, strict=True)
        ]
        return grads + net.readout_grads([s], y)

    def probes(self, state: Sequence[Tensor]) -> list[Tensor]:
        """``jacobian_probes`` Gaussian probes per example, from the estimator's generator."""
        k = self.jacobian_probes
        return [
            torch.randn((k * s.shape[0], *s.shape[1:]), generator=self.generator).to(
                device=s.device, dtype=s.dtype
            )
            for s in state
        ]

    def _run(
        self, net: ChainNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor] | None
    ) -> tuple[WeightGrads, Estimate]:
        check_chain(net)
        x, y = net.check_input(x, y)
        drive = net.input_drive(x)
        state = warm_state(self, state, x.shape[0])
        track = self.guard and self.points > 2
        if track:
            free, free_steps, residual = relax_tracked(
                self.solver, net, drive, state, self.free_steps
            )
        else:
            res = self.solver.relax(net, drive, state, self.free_steps)
            free, free_steps, residual = res.state, res.steps, None
        delta, nudged_steps, stats = self.neuron_errors(net, drive, free, y, residual)
        if self.warm_start:  # the free state (the exact δ keeps no nudged state)
            self._warm = [s.detach().clone() for s in free]
        grads = self.update(net, x, y, free, delta)
        if stats:
            for _, g in grads:
                g.nan_to_num_(0.0, 0.0, 0.0)
        with torch.no_grad():
            logits, loss = net.logits(free), net.loss(free, y)
        est = Estimate(free, [], [], logits, loss, free_steps, nudged_steps, stats)
        return grads, est

    def state_dict(self) -> dict[str, Any]:
        """The probes' generator state (and the warm start's), for exact resumption."""
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
