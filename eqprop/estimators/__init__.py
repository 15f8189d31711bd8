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
from eqprop.estimators.circle import circle_points
from eqprop.estimators.contributions import bptt_step_contributions, iter_step_contributions
from eqprop.estimators.distributed import SurrogateLoss
from eqprop.estimators.ep import EPEstimator, OneSidedEP, RandomSignEP, SymmetricEP
from eqprop.estimators.generalized import GeneralizedHolomorphicEP
from eqprop.estimators.holomorphic import HolomorphicEP

__all__ = [
    "BPTT",
    "ESTIMATORS",
    "EPEstimator",
    "Estimate",
    "GeneralizedHolomorphicEP",
    "GradientEstimator",
    "HolomorphicEP",
    "OneSidedEP",
    "RandomSignEP",
    "SurrogateLoss",
    "SymmetricEP",
    "bptt_step_contributions",
    "circle_points",
    "iter_step_contributions",
    "make_estimator",
    "predict",
    "register",
]
