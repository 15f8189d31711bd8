"""Gradient estimators behind one interface (imports core and dynamics)."""

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
    "ESTIMATORS",
    "EPEstimator",
    "Estimate",
    "OneSidedEP",
    "RandomSignEP",
    "SymmetricEP",
    "make_estimator",
    "predict",
]
