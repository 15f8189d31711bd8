"""Mathematics of energy networks: activations, interactions, Φ, losses (imports only torch)."""

from eqprop.core.activations import ACTIVATIONS, Activation, get_activation
from eqprop.core.interactions import (
    POOLS,
    ConvInteraction,
    ConvLayer,
    DenseInteraction,
    Interaction,
)
from eqprop.core.network import OUTPUTS, EnergyNetwork

__all__ = [
    "ACTIVATIONS",
    "OUTPUTS",
    "POOLS",
    "Activation",
    "ConvInteraction",
    "ConvLayer",
    "DenseInteraction",
    "EnergyNetwork",
    "Interaction",
    "get_activation",
]
