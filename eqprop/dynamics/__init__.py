"""Relaxation dynamics: schedules, the solver and its results (imports core)."""

from eqprop.dynamics.precision import PRECISIONS, precision_context, set_precision
from eqprop.dynamics.schedules import (
    SCHEDULES,
    Schedule,
    Workspace,
    even_odd_step,
    feedforward_state,
    forward_backward_step,
    synchronous_step,
)
from eqprop.dynamics.solver import INITS, FreeRelaxation, RelaxResult, Solver, relax

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
    "set_precision",
    "synchronous_step",
]
