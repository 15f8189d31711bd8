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
from eqprop.analysis.hep_check import (
    DEFAULT_HEP_POINTS,
    DEFAULT_HEP_SWEEP,
    HEPReport,
    check_hep,
    format_hep_table,
    write_hep_report,
)

__all__ = [
    "DEFAULT_HEP_POINTS",
    "DEFAULT_HEP_SWEEP",
    "DEFAULT_SWEEP_BETAS",
    "VARIANTS",
    "BetaComparison",
    "BetaSweep",
    "Curves",
    "GDUReport",
    "HEPReport",
    "TensorComparison",
    "check_gdu",
    "check_hep",
    "format_hep_table",
    "format_table",
    "write_hep_report",
    "write_report",
]
