"""The relaxation driver: :class:`Solver` runs a schedule from a start to an equilibrium.

Spec §2. :meth:`Solver.trajectory` is the one loop over steps; :meth:`Solver.relax` (tolerance
stopping, no graph), BPTT (steps with a graph), the GDU check (every state) and ``net(x)``
(:class:`FreeRelaxation`) all run through it. The solver adds to a schedule
(:mod:`eqprop.dynamics.schedules`) a starting point, stopping on a tolerance, compilation and
reduced precision.

Example:
    >>> from eqprop import EnergyNetwork
    >>> net = EnergyNetwork((4,), dense=[3], num_classes=2)
    >>> relax(net, torch.rand(5, 4), steps=10).state[1].shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from eqprop.core import chain
from eqprop.core.chain import ChainNetwork, State
from eqprop.core.graph import GraphNetwork
from eqprop.core.validation import check_choice, check_int, check_number
from eqprop.dynamics.cuda_graph import can_capture, graphed_relax
from eqprop.dynamics.graph_schedules import (
    GRAPH_SCHEDULES,
    graph_feedforward_state,
    schedule_for,
)
from eqprop.dynamics.precision import PRECISIONS, precision_context
from eqprop.dynamics.schedules import SCHEDULES, Nudge, Schedule, Workspace, feedforward_state

__all__ = ["INITS", "FreeRelaxation", "RelaxResult", "Solver", "relax"]

#: Starting points of the free phase by name.
INITS: dict[str, str] = {
    "zeros": "all-zero states (the paper's)",
    "feedforward": "one feedforward sweep without feedback",
}


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


@functools.cache
def _compiled(schedule: str, graph: bool = False) -> Schedule:
    return torch.compile((GRAPH_SCHEDULES if graph else SCHEDULES)[schedule], dynamic=None)


def _nudge(net: ChainNetwork, dtype: torch.dtype, y: Tensor | None, beta: float | Tensor) -> Nudge:
    """The nudge of a phase at ``beta`` towards ``y``, or None for the free phase."""
    if not isinstance(beta, Tensor) and beta == 0.0:
        return None
    if y is None:
        raise ValueError("relax: labels y are required when beta is non-zero")
    target = F.one_hot(y, net.num_classes).to(dtype)  # once per relaxation, not per step
    return functools.partial(net.nudge_drive, y=target, beta=beta)


@dataclass(frozen=True)
class Solver:
    """How to relax: the schedule, an optional stopping tolerance and the arithmetic.

    Also the base of the ``dynamics`` config section: each default is written here only.

    Args:
        schedule: a key of :data:`~eqprop.dynamics.schedules.SCHEDULES`.
        tol: stop once the largest state change of a step (over all layers, units and examples)
            falls below ``tol``; None runs the fixed number of steps (exact reproduction).
        check_every: test the tolerance every this many steps (each test syncs with the device).
        init: free-phase starting point, a key of :data:`INITS` (nudged phases always start from
            the free state).
        compile: run the step through ``torch.compile``.
        precision: a key of :data:`~eqprop.dynamics.precision.PRECISIONS`.
        cuda_graph: on CUDA, capture fixed-step relaxations in a CUDA graph and replay them
            (:mod:`eqprop.dynamics.cuda_graph`); ignored (same results) on CPU and with
            ``tol``.
    """

    schedule: str = field(default="synchronous", metadata={"choices": SCHEDULES})
    tol: float | None = None
    check_every: int = 1
    init: str = field(default="zeros", metadata={"choices": INITS})
    compile: bool = False
    precision: str = field(default="float32", metadata={"choices": PRECISIONS})
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        check_choice(self.schedule, SCHEDULES, "schedule")
        check_choice(self.init, INITS, "init")
        check_choice(self.precision, PRECISIONS, "precision")
        if self.tol is not None:
            check_number(self.tol, "tol")
        check_int(self.check_every, "check_every", 1)

    @property
    def solver(self) -> Solver:
        """This solver's own settings as a plain :class:`Solver` (for config subclasses)."""
        return Solver(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Solver)})

    def initial_state(self, net: ChainNetwork, input_drive: Tensor) -> State:
        """The free phase's starting point for a batch."""
        return self.start(net, input_drive)[0]

    def start(self, net: ChainNetwork, input_drive: Tensor) -> tuple[State, Workspace]:
        """The free phase's starting point and a workspace that knows which states are zero."""
        if self.init == "feedforward" and isinstance(net, GraphNetwork):
            return graph_feedforward_state(net, input_drive), Workspace()
        if self.init == "feedforward":
            return feedforward_state(net, input_drive), Workspace()
        zeros = net.zero_state(input_drive.shape[0])
        # Under compile, identity tests on tensors would only add guards to the graph.
        return zeros, Workspace(zero=() if self.compile else tuple(zeros))

    def trajectory(
        self,
        net: ChainNetwork,
        input_drive: Tensor,
        state: Sequence[Tensor],
        steps: int,
        y: Tensor | None = None,
        beta: float | Tensor = 0.0,
        work: Workspace | None = None,
        first_step: int = 0,
    ) -> Iterator[State]:
        """Yield the states s_1..s_steps after each step from ``state`` (not modified).

        Runs in the caller's grad mode (BPTT keeps the graph), each step in the solver's
        precision; no tolerance. ``work``: from :meth:`start`, else a fresh one.
        ``first_step``: the index of the first step within a longer relaxation (schedules
        whose direction alternates from step to step depend on it).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: {steps!r} is not valid; expected an int >= 1")
        nudge = _nudge(net, input_drive.dtype, y, beta)
        graph = isinstance(net, GraphNetwork)
        step = _compiled(self.schedule, graph) if self.compile else schedule_for(net, self.schedule)
        work = work if work is not None else Workspace()
        current = list(state)
        for t in range(first_step, first_step + steps):
            with precision_context(self.precision, input_drive.device):
                current = step(net, input_drive, current, nudge, work, t % 2 == 1)
            yield current

    def relax(
        self,
        net: ChainNetwork,
        input_drive: Tensor,
        state: Sequence[Tensor] | None,
        steps: int,
        y: Tensor | None = None,
        beta: float | Tensor = 0.0,
    ) -> RelaxResult:
        """Run at most ``steps`` steps without a graph; nudged towards ``y`` when ``beta`` ≠ 0.

        Args:
            net: the network.
            input_drive: ``net.input_drive(x)``.
            state: initial states (not modified), or None for the solver's init.
            steps: step budget, >= 1.
            y: labels, shape (B,); needed when nudging.
            beta: nudging strength, a float or a per-example tensor of shape (B, 1).
        """
        work = None
        if state is None:
            state, work = self.start(net, input_drive)
        current = list(state)
        residual: float | None = None
        with torch.no_grad():
            if self.cuda_graph and can_capture(input_drive, self.tol):
                out = graphed_relax(
                    net, self.schedule, self.precision, input_drive, current, steps, y, beta
                )
                return RelaxResult(out, steps, None)
            trajectory = self.trajectory(net, input_drive, current, steps, y, beta, work)
            for t, new in enumerate(trajectory, start=1):
                if self.tol is not None and (t % self.check_every == 0 or t == steps):
                    residual = float(_max_change(new, current))  # the one device sync per check
                    if residual < self.tol:
                        return RelaxResult(new, t, residual)
                current = new
        return RelaxResult(current, steps, residual)


@dataclass(frozen=True)
class FreeRelaxation:
    """What ``net(x)`` relaxes with: ``steps`` free steps of ``solver`` from its init."""

    solver: Solver = field(default_factory=Solver)
    steps: int = 20

    def free_state(self, net: ChainNetwork, x: Tensor) -> State:
        """The free state after :attr:`steps` steps (or at the solver's tolerance)."""
        return self.solver.relax(net, net.input_drive(x), None, self.steps).state


chain.default_relaxation[:] = [FreeRelaxation()]


def relax(
    net: ChainNetwork,
    x: Tensor,
    steps: int,
    y: Tensor | None = None,
    beta: float | Tensor = 0.0,
    state: Sequence[Tensor] | None = None,
    solver: Solver | None = None,
) -> RelaxResult:
    """Convenience wrapper: validate ``x``, relax from ``state`` (default: the solver's init)."""
    x, y = net.check_input(x, y)
    solver = solver or Solver()
    return solver.relax(net, net.input_drive(x), state, steps, y, beta)
