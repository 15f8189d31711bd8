"""Equilibrium Propagation gradient estimators (spec §2–3).

All EP estimators share one recipe: relax freely to s*, relax one or more nudged phases from
s*, then combine the compared states with the coefficients of the formula,

    g = Σ_k c_k ∂Φ/∂θ(x, s_k)   (batch mean),

- one-sided:   c = −1/β at s^β, +1/β at s*                        (bias O(β))
- random sign: the same with β ← ±β, the sign drawn per batch from a seeded generator
- symmetric:   c = −1/(2β) at s^{+β}, +1/(2β) at s^{−β}           (bias O(β²))

Φ is bilinear, so ∂Φ/∂θ at fixed states is the local Hebbian product post ⊗ pre of each
interaction, computed in closed form (:meth:`~eqprop.core.chain.ChainNetwork.weight_contrast`;
asymmetric networks apply their update rule). With a cross-entropy readout (outside Φ) the
readout's gradient is the CE gradient at the nudged state(s), averaged over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from eqprop.core.chain import ChainNetwork, Phase, State, WeightGrads, repeat_batch
from eqprop.core.validation import check_int, check_number
from eqprop.dynamics.solver import Solver
from eqprop.estimators.base import (
    Estimate,
    GradientEstimator,
    add_to_grads,
    register,
    surrogate_of,
)

__all__ = ["EPEstimator", "OneSidedEP", "RandomSignEP", "SymmetricEP"]


@dataclass
class EPEstimator(GradientEstimator):
    """Base EP estimator; subclasses choose the nudged phases and their coefficients.

    Args:
        beta: nudging strength, > 0.
        free_steps: step budget of the free phase (T1), >= 1.
        nudged_steps: step budget of each nudged phase (T2), >= 1.
        solver: schedule and tolerance (default: synchronous, fixed steps).
        batch_phases: relax several nudged phases together as one batch (same result, faster).
        warm_start: start each free phase from the state the previous batch's largest-β phase
            ended in (the Hopfield-ResNet recipe), from the solver's init when the batch size
            changes; the state is part of :meth:`state_dict`.
        clip_grad_norm: after the estimate, scale all gradients so their global L2 norm is at
            most this (:func:`torch.nn.utils.clip_grad_norm_`); None: no clipping.
    """

    beta: float
    free_steps: int
    nudged_steps: int
    solver: Solver = field(default_factory=Solver)
    batch_phases: bool = True
    warm_start: bool = False
    clip_grad_norm: float | None = None
    _warm: list[Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_number(self.beta, "beta")
        check_int(self.free_steps, "free_steps", 1)
        check_int(self.nudged_steps, "nudged_steps", 1)
        if self.clip_grad_norm is not None:
            check_number(self.clip_grad_norm, "clip_grad_norm")

    # --- what subclasses define ------------------------------------------------------

    def phase_betas(self) -> list[float]:
        """Signed β of each nudged phase for the next batch."""
        raise NotImplementedError

    def coefficients(self, betas: list[float]) -> tuple[list[float], float]:
        """Coefficients c_k on ∂Φ/∂θ(s^{β_k}) and c_free on ∂Φ/∂θ(s*)."""
        raise NotImplementedError

    # --- the shared recipe -------------------------------------------------------------

    def relax_free(
        self, net: ChainNetwork, x: Tensor, state: Sequence[Tensor] | None = None,
        drive: Tensor | None = None,
    ) -> tuple[Tensor, State, int]:  # fmt: skip
        """Relax freely; returns (input drive, s*, steps). ``drive``: ``net.input_drive(x)``."""
        drive = net.input_drive(x) if drive is None else drive
        free = self.solver.relax(net, drive, state, self.free_steps)
        return drive, free.state, free.steps

    def relax_nudged(
        self, net: ChainNetwork, drive: Tensor, free_state: State, y: Tensor, betas: list[float]
    ) -> tuple[list[State], int]:
        """Relax one phase per β from s*; batched along the batch dimension when allowed."""
        if self.batch_phases and len(betas) > 1:
            b, k = y.shape[0], len(betas)
            beta_col = torch.tensor(betas, dtype=drive.dtype, device=drive.device)
            res = self.solver.relax(
                net, repeat_batch(drive, k), [repeat_batch(s, k) for s in free_state],
                self.nudged_steps, y.repeat(k), beta_col.repeat_interleave(b)[:, None],
            )  # fmt: skip
            return [[s[i * b : (i + 1) * b] for s in res.state] for i in range(k)], res.steps
        results = [
            self.solver.relax(net, drive, free_state, self.nudged_steps, y, beta) for beta in betas
        ]
        return [r.state for r in results], max(r.steps for r in results)

    def weight_grads(
        self, net: ChainNetwork, x: Tensor, y: Tensor, free_state: State, nudged: list[State],
        betas: list[float], input_ctx: Any = None,
    ) -> WeightGrads:  # fmt: skip
        """The EP update of every parameter: Σ_k c_k ∂Φ/∂θ(s_k) plus the readout's CE gradient.

        ``input_ctx``: the first layer's context from
        :meth:`~eqprop.core.chain.ChainNetwork.input_drive_with_context`, reused when given.
        """
        coefs, c_free = self.coefficients(betas)
        phases: list[Phase] = list(zip(coefs, nudged, strict=True))
        if c_free != 0.0:
            phases.append((c_free, free_state))
        grads = net.weight_contrast(x, free_state, phases, input_ctx)
        return grads + net.readout_grads(nudged, y)

    def _run(
        self, net: ChainNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor] | None
    ) -> tuple[WeightGrads, Estimate]:
        x, y = net.check_input(x, y)
        drive, input_ctx = net.input_drive_with_context(x)
        warm = self._warm
        if state is None and warm is not None and warm[0].shape[0] == x.shape[0]:
            state = warm
        _, free_state, free_steps = self.relax_free(net, x, state, drive)
        betas = self.phase_betas()
        nudged, nudged_steps = self.relax_nudged(net, drive, free_state, y, betas)
        if self.warm_start:
            self._warm = [s.detach() for s in nudged[betas.index(max(betas))]]
        grads = self.weight_grads(net, x, y, free_state, nudged, betas, input_ctx)
        with torch.no_grad():
            logits, loss = net.logits(free_state), net.loss(free_state, y)
        return grads, Estimate(free_state, nudged, betas, logits, loss, free_steps, nudged_steps)

    def surrogate(
        self, net: ChainNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Estimate]:
        grads, est = self._run(net, x, y, state)
        return surrogate_of(grads), est

    def after_backward(self, net: ChainNetwork) -> None:
        """Clip the global gradient norm when asked (after any all-reduce)."""
        if self.clip_grad_norm is not None:
            grads = [p for p in net.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, self.clip_grad_norm)

    def state_dict(self) -> dict[str, Any]:
        """The warm-start state, when there is one."""
        return {} if self._warm is None else {"warm": list(self._warm)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        warm = state.get("warm")
        self._warm = None if warm is None else list(warm)

    def accumulate(
        self, net: ChainNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor] | None
    ) -> Estimate:
        """Add the EP descent direction (batch mean) to every ``.grad``; no backward pass."""
        grads, est = self._run(net, x, y, state)
        add_to_grads(grads)
        return est


@register
@dataclass
class OneSidedEP(EPEstimator):
    """One nudged phase at +β (the original EP; first-order bias)."""

    name: ClassVar[str] = "one_sided"

    def phase_betas(self) -> list[float]:
        return [float(self.beta)]

    def coefficients(self, betas: list[float]) -> tuple[list[float], float]:
        (beta,) = betas
        return [-1.0 / beta], 1.0 / beta


@register
@dataclass
class RandomSignEP(OneSidedEP):
    """One nudged phase at ±β, the sign drawn per batch from a seeded generator.

    Args:
        seed: seed of the estimator's own generator (never the global RNG).
    """

    name: ClassVar[str] = "random_sign"
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.generator = torch.Generator().manual_seed(self.seed)

    def phase_betas(self) -> list[float]:
        sign = 1.0 if int(torch.randint(0, 2, (1,), generator=self.generator)) else -1.0
        return [sign * float(self.beta)]

    def state_dict(self) -> dict[str, Any]:
        """Generator state (and the warm start's), for exact resumption."""
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


@register
@dataclass
class SymmetricEP(EPEstimator):
    """Two nudged phases at +β and −β, both from s* (second-order bias)."""

    name: ClassVar[str] = "symmetric"

    def phase_betas(self) -> list[float]:
        return [float(self.beta), -float(self.beta)]

    def coefficients(self, betas: list[float]) -> tuple[list[float], float]:
        beta = betas[0]
        return [-0.5 / beta, 0.5 / beta], 0.0
