"""Backpropagation through time (BPTT) through the closed-form dynamics (spec §5).

The paper's baseline: relax T1 − T2 steps without a graph, then T2 steps with one, take the mean
loss at the last state and back-propagate through those T2 steps (``full=True``: through all T1
steps). The steps with a graph are the solver's own closed-form steps
(:meth:`eqprop.dynamics.Solver.trajectory`) run under ``torch.enable_grad()``: convolutions,
transposed convolutions, max-pool's backward at the argmax and the in-place activation on fresh
buffers are all differentiable, so BPTT differentiates exactly the dynamics that EP relaxes.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from eqprop.core.chain import ChainNetwork, State
from eqprop.core.graph import GraphNetwork
from eqprop.core.kernels import fast_layout
from eqprop.core.validation import check_int, invalid
from eqprop.dynamics.solver import Solver
from eqprop.estimators.base import Estimate, GradientEstimator, register

__all__ = ["BPTT", "graph_input_drive"]


def graph_input_drive(net: ChainNetwork, x: Tensor) -> Tensor:
    """``net.input_drive(x)`` with a graph to the first layer's parameters.

    ``input_drive`` runs under ``no_grad`` (it is the relaxation's constant), but the first
    layer's weights act on every step through it, so BPTT needs it differentiable.
    """
    if isinstance(net, GraphNetwork):  # the packed constants of every node
        return net.graph_drive(x)[0]
    # The same channels-last layout as input_drive, for the same conv kernels.
    return fast_layout(net.interactions[0].forward_drive(fast_layout(x))[0])


@register
@dataclass
class BPTT(GradientEstimator):
    """Truncated (or full) backpropagation through time, the paper's baseline (spec §5).

    Memory grows linearly with the steps kept in the graph (``nudged_steps``, or
    ``free_steps`` when ``full``): every kept step stores its activations for the backward pass.

    Args:
        free_steps: total steps T1, >= 1.
        nudged_steps: steps T2 kept in the graph (the last ones), 1 <= T2 <= T1.
        full: keep all T1 steps in the graph (``nudged_steps`` is then unused).
        solver: schedule, tolerance, init and precision. The tolerance only applies to the
            T1 − T2 steps without a graph; the graph always holds exactly T2 (or T1) steps, run
            without ``torch.compile``.
    """

    name: ClassVar[str] = "bptt"

    free_steps: int
    nudged_steps: int
    full: bool = False
    solver: Solver = field(default_factory=Solver)

    def __post_init__(self) -> None:
        check_int(self.free_steps, "free_steps", 1)
        check_int(self.nudged_steps, "nudged_steps", 1)
        if self.nudged_steps > self.free_steps:
            raise invalid(
                self.nudged_steps,
                f"at most free_steps ({self.free_steps}), the steps it is taken from",
                "nudged_steps",
            )
        if not isinstance(self.full, bool):
            raise invalid(self.full, "True or False", "full")
        if not isinstance(self.solver, Solver):
            raise ValueError(f"solver: expected a Solver, got {type(self.solver).__name__}")

    @property
    def graph_steps(self) -> int:
        """Steps back-propagated through: T1 when ``full``, else T2."""
        return self.free_steps if self.full else self.nudged_steps

    def surrogate(
        self, net: ChainNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Estimate]:
        """The mean loss at the last state, with a graph through the last T2 (or T1) steps.

        Returns:
            That loss and an :class:`Estimate` whose ``free_state`` is the last state s_T
            (where the loss and predictions are taken), with no nudged states;
            ``free_steps`` counts all steps taken and ``nudged_steps`` the steps in the graph.
        """
        x, y = net.check_input(x, y)
        drive = net.input_drive(x)
        taken = 0
        start: Sequence[Tensor] | None = None if state is None else [s.detach() for s in state]
        if not self.full and self.free_steps > self.nudged_steps:
            res = self.solver.relax(net, drive, start, self.free_steps - self.nudged_steps)
            start, taken = res.state, res.steps
        elif start is None:
            start = self.solver.initial_state(net, drive)
        eager = dataclasses.replace(self.solver, compile=False)
        with torch.enable_grad():
            steps = eager.trajectory(
                net, graph_input_drive(net, x), start, self.graph_steps, first_step=taken
            )
            final: State = list(collections.deque(steps, maxlen=1)[0])  # the last state
            value = net.loss(final, y).mean()
        final = [s.detach() for s in final]
        with torch.no_grad():
            logits, loss = net.logits(final), net.loss(final, y)
        est = Estimate(final, [], [], logits, loss, taken + self.graph_steps, self.graph_steps)
        return value, est
