"""eqprop: Equilibrium Propagation for convergent recurrent networks, in PyTorch.

The layers, from the mathematics up: :mod:`eqprop.core` (activations, interactions, Φ),
:mod:`eqprop.dynamics` (relaxation), :mod:`eqprop.estimators` (EP and BPTT gradients),
:mod:`eqprop.analysis` (checks), :mod:`eqprop.train` (data, configs, the trainer) and
:mod:`eqprop.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

from eqprop.core import ACTIVATIONS, AsymmetricNetwork, ChainNetwork, ConvLayer, EnergyNetwork
from eqprop.core.graph import GraphNetwork
from eqprop.dynamics import FreeRelaxation, RelaxResult, Solver, relax
from eqprop.estimators import (
    BPTT,
    ESTIMATORS,
    Estimate,
    GeneralizedHolomorphicEP,
    GradientEstimator,
    HolomorphicEP,
    OneSidedEP,
    RandomSignEP,
    SymmetricEP,
    make_estimator,
    predict,
)

try:
    __version__ = version("eqprop")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ACTIVATIONS",
    "BPTT",
    "ESTIMATORS",
    "AsymmetricNetwork",
    "ChainNetwork",
    "ConvLayer",
    "EnergyNetwork",
    "Estimate",
    "FreeRelaxation",
    "GeneralizedHolomorphicEP",
    "GradientEstimator",
    "GraphNetwork",
    "HolomorphicEP",
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
