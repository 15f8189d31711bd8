"""Relaxation dynamics: schedules, solvers and their results (imports core)."""

from eqprop.dynamics.relax import (
    INITS,
    PRECISIONS,
    SCHEDULES,
    RelaxResult,
    Solver,
    even_odd_step,
    feedforward_state,
    forward_backward_step,
    precision_context,
    relax,
    synchronous_step,
)

__all__ = [
    "INITS",
    "PRECISIONS",
    "SCHEDULES",
    "RelaxResult",
    "Solver",
    "even_odd_step",
    "feedforward_state",
    "forward_backward_step",
    "precision_context",
    "relax",
    "synchronous_step",
]
