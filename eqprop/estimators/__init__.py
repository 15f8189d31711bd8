"""Gradient estimators behind one interface (imports core and dynamics)."""

from eqprop.estimators.bptt import BPTT, bptt_step_contributions, iter_step_contributions
from eqprop.estimators.ep import (
    ESTIMATORS,
    EPEstimator,
    Estimate,
    OneSidedEP,
    RandomSignEP,
    SymmetricEP,
    make_estimator,
    predict,
)

__all__ = [
    "BPTT",
    "ESTIMATORS",
    "EPEstimator",
    "Estimate",
    "OneSidedEP",
    "RandomSignEP",
    "SymmetricEP",
    "bptt_step_contributions",
    "iter_step_contributions",
    "make_estimator",
    "predict",
]
