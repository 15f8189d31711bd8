"""eqprop: Equilibrium Propagation for convergent recurrent networks, in PyTorch.

The layers, from the mathematics up: :mod:`eqprop.core` (activations, interactions, Φ),
:mod:`eqprop.dynamics` (relaxation), :mod:`eqprop.estimators` (EP gradients),
:mod:`eqprop.train` (data, configs, the trainer) and :mod:`eqprop.cli`.
"""

from eqprop.core import ACTIVATIONS, ConvLayer, EnergyNetwork
from eqprop.core.asymmetric import AsymmetricNetwork
from eqprop.dynamics import RelaxResult, Solver, relax
from eqprop.estimators import (
    ESTIMATORS,
    Estimate,
    OneSidedEP,
    RandomSignEP,
    SymmetricEP,
    make_estimator,
    predict,
)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BPTT",
    "ESTIMATORS",
    "AsymmetricNetwork",
    "ConvLayer",
    "EnergyNetwork",
    "Estimate",
    "OneSidedEP",
    "RandomSignEP",
    "RelaxResult",
    "Solver",
    "SymmetricEP",
    "__version__",
    "make_estimator",
    "predict",
    "relax",
]
