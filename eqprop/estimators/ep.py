"""Equilibrium Propagation gradient estimators (spec §2–3).

All estimators share one recipe: relax freely from zero to s*, relax one or more nudged phases
from s*, then turn the contrast of ∂Φ/∂θ between the compared states into a descent direction
in each parameter's ``.grad``:

- one-sided:   g = −(1/β) [∂Φ/∂θ(s^β) − ∂Φ/∂θ(s*)]                 (bias O(β))
- random sign: the same with β ← ±β, the sign drawn per batch from a seeded generator
- symmetric:   g = −(1/2β) [∂Φ/∂θ(s^{+β}) − ∂Φ/∂θ(s^{−β})]          (bias O(β²))

With a cross-entropy readout (outside Φ) the readout's gradient is the CE gradient at the
nudged state(s), averaged over them. The weight gradient is one autograd call on Φ at fixed,
detached states: Φ is bilinear, so this is exactly the local Hebbian contrast
post ⊗ pre (routed through each state's pool argmax for conv layers), and it runs once per
batch, outside the relaxation loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from eqprop.core.network import EnergyNetwork
from eqprop.dynamics.relax import Solver

__all__ = [
    "ESTIMATORS",
    "EPEstimator",
    "Estimate",
    "OneSidedEP",
    "RandomSignEP",
    "SymmetricEP",
    "make_estimator",
    "predict",
]

State = list[Tensor]


@dataclass
class Estimate:
    """What one EP estimate computed besides the gradients.

    Attributes:
        free_state: the free equilibrium s*.
        nudged_states: one state per nudged phase, in the order of ``betas``.
        betas: the signed nudging strength of each phase.
        logits: class scores at s*, shape (B, K).
        loss: per-example loss at s*, shape (B,).
        free_steps: steps taken by the free phase.
        nudged_steps: steps taken by the nudged phase(s) (the largest, when separate).
    """

    free_state: State
    nudged_states: list[State]
    betas: list[float]
    logits: Tensor
    loss: Tensor
    free_steps: int
    nudged_steps: int

    @property
    def predictions(self) -> Tensor:
        """Predicted classes at the free equilibrium, shape (B,)."""
        return self.logits.argmax(1)


@dataclass
class EPEstimator:
    """Base EP estimator; subclasses choose the nudged phases and how states are contrasted.

    Args:
        beta: nudging strength, > 0.
        free_steps: step budget of the free phase (T1), >= 1.
        nudged_steps: step budget of each nudged phase (T2), >= 1.
        solver: schedule and tolerance (default: synchronous, fixed steps).
        batch_phases: relax several nudged phases together as one batch (same result, faster).
    """

    name: ClassVar[str] = ""

    beta: float
    free_steps: int
    nudged_steps: int
    solver: Solver = field(default_factory=Solver)
    batch_phases: bool = True

    def __post_init__(self) -> None:
        if (
            isinstance(self.beta, bool)
            or not isinstance(self.beta, (int, float))
            or not self.beta > 0
        ):
            raise ValueError(f"beta: {self.beta!r} is not valid; expected a number > 0")
        for name in ("free_steps", "nudged_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not valid; expected an int >= 1")

    # --- what subclasses define ------------------------------------------------------

    def phase_betas(self) -> list[float]:
        """Signed β of each nudged phase for the next batch."""
        raise NotImplementedError

    def contrast(self, betas: list[float]) -> tuple[list[float], float]:
        """Coefficients c_k on Φ(nudged_k) and c_free on Φ(s*): g = ∂/∂θ Σ c Φ."""
        raise NotImplementedError

    # --- the shared recipe -------------------------------------------------------------

    def relax_free(
        self,
        net: EnergyNetwork,
        x: Tensor,
        state: Sequence[Tensor] | None = None,
        drive: Tensor | None = None,
    ) -> tuple[Tensor, State, int]:
        """Relax freely; returns (input drive, s*, steps). ``drive``: ``net.input_drive(x)``."""
        drive = net.input_drive(x) if drive is None else drive
        start = state if state is not None else self.solver.initial_state(net, drive)
        free = self.solver.relax(net, drive, start, self.free_steps)
        return drive, free.state, free.steps

    def relax_nudged(
        self,
        net: EnergyNetwork,
        drive: Tensor,
        free_state: State,
        y: Tensor,
        betas: list[float],
    ) -> tuple[list[State], int]:
        """Relax one phase per β from s*; batched along the batch dimension when allowed."""
        if self.batch_phases and len(betas) > 1:
            b = y.shape[0]
            k = len(betas)
            beta_col = torch.tensor(betas, dtype=drive.dtype, device=drive.device)
            beta_col = beta_col.repeat_interleave(b)[:, None]  # (k*B, 1)
            res = self.solver.relax(
                net,
                drive.repeat(k, *([1] * (drive.dim() - 1))),
                [s.repeat(k, *([1] * (s.dim() - 1))) for s in free_state],
                self.nudged_steps,
                y.repeat(k),
                beta_col,
            )
            return [[s[i * b : (i + 1) * b] for s in res.state] for i in range(k)], res.steps
        results = [
            self.solver.relax(net, drive, free_state, self.nudged_steps, y, beta) for beta in betas
        ]
        return [r.state for r in results], max(r.steps for r in results)

    def estimate(
        self,
        net: EnergyNetwork,
        x: Tensor,
        y: Tensor,
        state: Sequence[Tensor] | None = None,
    ) -> Estimate:
        """Compute the EP descent direction for one batch and accumulate it into ``.grad``.

        Gradients are the mean over the batch and are *added* to ``.grad`` like
        ``loss.backward()`` would: call ``optimizer.zero_grad()`` first. No optimizer is
        stepped.

        Args:
            net: the network.
            x: inputs, shape (B, *net.input_shape).
            y: integer labels, shape (B,).
            state: optional starting state of the free phase (default: the solver's init).
        """
        x, y = net.check_input(x, y)
        drive, input_ctx = net.input_drive_with_context(x)
        _, free_state, free_steps = self.relax_free(net, x, state, drive)
        betas = self.phase_betas()
        nudged, nudged_steps = self.relax_nudged(net, drive, free_state, y, betas)
        self.accumulate_gradients(net, x, y, free_state, nudged, betas, input_ctx)
        with torch.no_grad():
            logits = net.logits(free_state)
            loss = net.loss(free_state, y)
        return Estimate(free_state, nudged, betas, logits, loss, free_steps, nudged_steps)

    def accumulate_gradients(
        self,
        net: EnergyNetwork,
        x: Tensor,
        y: Tensor,
        free_state: State,
        nudged: list[State],
        betas: list[float],
        input_ctx: Any = None,
    ) -> None:
        """Add the EP descent direction (batch mean) to every ``.grad``.

        The network turns the contrast coefficients into a surrogate scalar whose gradient is
        the update (:meth:`EnergyNetwork.ep_surrogate`), then may post-process the gradients
        (:meth:`EnergyNetwork.postprocess_grads`). ``input_ctx``: the first layer's context from
        :meth:`EnergyNetwork.input_drive_with_context`, reused when given.
        """
        coefs, c_free = self.contrast(betas)
        with torch.enable_grad():
            net.ep_surrogate(x, y, free_state, nudged, betas, coefs, c_free, input_ctx).backward()
        net.postprocess_grads()


@dataclass
class OneSidedEP(EPEstimator):
    """One nudged phase at +β (the original EP; first-order bias)."""

    name: ClassVar[str] = "one_sided"

    def phase_betas(self) -> list[float]:
        return [float(self.beta)]

    def contrast(self, betas: list[float]) -> tuple[list[float], float]:
        (beta,) = betas
        return [-1.0 / beta], 1.0 / beta


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
        """Generator state, for exact resumption."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.set_state(state["generator"])


@dataclass
class SymmetricEP(EPEstimator):
    """Two nudged phases at +β and −β, both from s* (second-order bias)."""

    name: ClassVar[str] = "symmetric"

    def phase_betas(self) -> list[float]:
        return [float(self.beta), -float(self.beta)]

    def contrast(self, betas: list[float]) -> tuple[list[float], float]:
        beta = betas[0]
        return [-0.5 / beta, 0.5 / beta], 0.0


#: Estimators by the name used in configs, the CLI and logs.
ESTIMATORS: dict[str, type[EPEstimator]] = {
    cls.name: cls for cls in (OneSidedEP, RandomSignEP, SymmetricEP)
}


def make_estimator(kind: str, **kwargs: Any) -> EPEstimator:
    """Build the estimator registered as ``kind`` (see :data:`ESTIMATORS`)."""
    if kind not in ESTIMATORS:
        raise ValueError(f"estimator: unknown kind {kind!r}; choose one of {', '.join(ESTIMATORS)}")
    cls = ESTIMATORS[kind]
    if "seed" in kwargs and cls is not RandomSignEP:
        kwargs.pop("seed")
    return cls(**kwargs)


def predict(
    net: EnergyNetwork, x: Tensor, steps: int, solver: Solver | None = None
) -> tuple[Tensor, Tensor]:
    """Relax freely for ``steps`` and return (predicted classes (B,), logits (B, K))."""
    x, _ = net.check_input(x)
    solver = solver or Solver()
    drive = net.input_drive(x)
    res = solver.relax(net, drive, solver.initial_state(net, drive), steps)
    with torch.no_grad():
        logits = net.logits(res.state)
    return logits.argmax(1), logits
