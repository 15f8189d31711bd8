"""Relaxation dynamics: schedules, solvers and their results (imports core)."""

from eqprop.dynamics.relax import SCHEDULES, RelaxResult, Solver, relax, synchronous_step

__all__ = ["SCHEDULES", "RelaxResult", "Solver", "relax", "synchronous_step"]
