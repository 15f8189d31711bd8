"""Relaxation dynamics: schedules, the solver and its results (imports core)."""

from eqprop.dynamics.schedules import (
    SCHEDULES,
    Schedule,
    Workspace,
    even_odd_step,
    feedforward_state,
    forward_backward_step,
    synchronous_step,
)
from eqprop.dynamics.solver import (
    INITS,
    PRECISIONS,
    FreeRelaxation,
    RelaxResult,
    Solver,
    precision_context,
    relax,
)

__all__ = [
    "INITS",
    "PRECISIONS",
    "SCHEDULES",
    "FreeRelaxation",
    "RelaxResult",
    "Schedule",
    "Solver",
    "Workspace",
    "even_odd_step",
    "feedforward_state",
    "forward_backward_step",
    "precision_context",
    "relax",
    "synchronous_step",
]
