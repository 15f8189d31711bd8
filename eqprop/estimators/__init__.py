"""Gradient estimators behind one protocol (imports core and dynamics)."""

from eqprop.estimators.base import (
    ESTIMATORS,
    Estimate,
    GradientEstimator,
    make_estimator,
    predict,
    register,
)
from eqprop.estimators.bptt import BPTT
from eqprop.estimators.contributions import bptt_step_contributions, iter_step_contributions
from eqprop.estimators.ep import EPEstimator, OneSidedEP, RandomSignEP, SymmetricEP

__all__ = [
    "BPTT",
    "ESTIMATORS",
    "EPEstimator",
    "Estimate",
    "GradientEstimator",
    "OneSidedEP",
    "RandomSignEP",
    "SymmetricEP",
    "bptt_step_contributions",
    "iter_step_contributions",
    "make_estimator",
    "predict",
    "register",
]
