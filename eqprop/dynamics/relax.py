"""Relaxation of an energy network to its fixed point (spec §1–2).

The hot path of EP. Every step uses the closed-form drives of :mod:`eqprop.core`, runs under
``torch.no_grad()`` (no autograd graph, memory independent of the number of steps) and takes
the constant input drive P(conv_1(x) + b_1) computed once per relaxation.

A schedule is a step function registered by name in :data:`SCHEDULES`; :class:`Solver` picks
one and adds stopping on a tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from eqprop.core.network import EnergyNetwork

__all__ = ["SCHEDULES", "RelaxResult", "Solver", "relax", "synchronous_step"]

State = list[Tensor]
Nudge = Callable[[State], Tensor] | None


def synchronous_step(
    net: EnergyNetwork, input_drive: Tensor, state: Sequence[Tensor], nudge: Nudge = None
) -> State:
    """One synchronous step s_{t+1} = σ(∂Φ/∂s(s_t) − β ∂L/∂s(s_t)) of every layer (the paper's).

    Args:
        net: the network.
        input_drive: the first layer's constant drive, shape (B, *state_shapes[0]).
        state: current states, one (B, ...) tensor per layer; not modified.
        nudge: ``state -> −β ∂L/∂s_target``, or None for the free phase.

    Returns:
        The new states (fresh tensors).
    """
    layers = net.interactions
    n_layers = len(layers)
    drives: list[Tensor] = [input_drive.clone()]
    contexts: list[object] = [None]
    for n in range(1, n_layers):
        drive, ctx = layers[n].forward_drive(state[n - 1])  # (B, *post_shape), pool argmax
        drives.append(drive)
        contexts.append(ctx)
    for n in range(n_layers - 1):
        drives[n].add_(layers[n + 1].backward_drive(state[n + 1], contexts[n + 1]))
    if nudge is not None:
        drives[net.target_layer].add_(nudge(list(state)))
    act_ = net.activation.fn_
    return [act_(d) for d in drives]


Step = Callable[[EnergyNetwork, Tensor, Sequence[Tensor], Nudge], State]

#: Update schedules by name; each maps (net, input_drive, state, nudge) to the next state.
SCHEDULES: dict[str, Step] = {"synchronous": synchronous_step}


@dataclass
class RelaxResult:
    """Outcome of a relaxation.

    Attributes:
        state: final states, one (B, ...) tensor per layer.
        steps: number of steps taken.
        residual: largest absolute state change of the last checked step (a float), or None
            when no tolerance was requested.
    """

    state: State
    steps: int
    residual: float | None = None


def _max_change(new: Sequence[Tensor], old: Sequence[Tensor]) -> Tensor:
    return torch.stack([(a - b).abs().amax() for a, b in zip(new, old, strict=True)]).amax()


@dataclass(frozen=True)
class Solver:
    """How to relax: the schedule and an optional stopping tolerance.

    Args:
        schedule: a key of :data:`SCHEDULES`.
        tol: stop once the largest state change of a step falls below ``tol`` (None: run the
            fixed number of steps, which reproduces the paper exactly).
        check_every: test the tolerance every this many steps (each test syncs with the device).
    """

    schedule: str = "synchronous"
    tol: float | None = None
    check_every: int = 1

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule: unknown name {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol: {self.tol!r} is not valid; expected a number > 0 or None")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(
                f"check_every: {self.check_every!r} is not valid; expected an int >= 1"
            )

    def relax(
        self,
        net: EnergyNetwork,
        input_drive: Tensor,
        state: Sequence[Tensor],
        steps: int,
        y: Tensor | None = None,
        beta: float | Tensor = 0.0,
    ) -> RelaxResult:
        """Run at most ``steps`` steps from ``state``; nudged towards ``y`` when ``beta`` ≠ 0.

        Args:
            net: the network.
            input_drive: ``net.input_drive(x)``.
            state: initial states (not modified).
            steps: step budget, >= 1.
            y: labels, shape (B,); needed when nudging.
            beta: nudging strength, a float or a per-example tensor of shape (B, 1).
        """
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps: {steps!r} is not valid; expected an int >= 1")
        nudging = isinstance(beta, Tensor) or beta != 0.0
        if nudging and y is None:
            raise ValueError("relax: labels y are required when beta is non-zero")
        nudge: Nudge = (lambda s: net.nudge_drive(s, y, beta)) if nudging else None  # type: ignore[arg-type]
        step = SCHEDULES[self.schedule]
        current = list(state)
        residual: float | None = None
        with torch.no_grad():
            for t in range(1, steps + 1):
                new = step(net, input_drive, current, nudge)
                if self.tol is not None and (t % self.check_every == 0 or t == steps):
                    residual = float(_max_change(new, current))  # the one device sync per check
                    current = new
                    if residual < self.tol:
                        return RelaxResult(current, t, residual)
                else:
                    current = new
        return RelaxResult(current, steps, residual)


def relax(
    net: EnergyNetwork,
    x: Tensor,
    steps: int,
    y: Tensor | None = None,
    beta: float | Tensor = 0.0,
    state: Sequence[Tensor] | None = None,
    solver: Solver | None = None,
) -> RelaxResult:
    """Convenience wrapper: validate ``x``, start from ``state`` (default zeros) and relax.

    Example:
        >>> net = EnergyNetwork((4,), dense=[3], num_classes=2)
        >>> relax(net, torch.rand(5, 4), steps=10).state[1].shape
        torch.Size([5, 2])
    """
    x, y = net.check_input(x, y)
    if state is None:
        state = net.zero_state(x.shape[0])
    return (solver or Solver()).relax(net, net.input_drive(x), state, steps, y, beta)
