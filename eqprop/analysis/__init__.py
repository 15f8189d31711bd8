"""Checks and diagnostics built on the engine (imports core, dynamics, estimators, reference)."""

from eqprop.analysis.gdu import DEFAULT_SWEEP_BETAS, check_gdu
from eqprop.analysis.gdu_report import format_table, write_report
from eqprop.analysis.gdu_results import (
    VARIANTS,
    BetaComparison,
    BetaSweep,
    Curves,
    GDUReport,
    TensorComparison,
)

__all__ = [
    "DEFAULT_SWEEP_BETAS",
    "VARIANTS",
    "BetaComparison",
    "BetaSweep",
    "Curves",
    "GDUReport",
    "TensorComparison",
    "check_gdu",
    "format_table",
    "write_report",
]
