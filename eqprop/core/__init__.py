"""Mathematics of energy networks: activations, interactions, Φ, losses (imports only torch)."""

from eqprop.core.activations import ACTIVATIONS, Activation, get_activation
from eqprop.core.asymmetric import (
    FEEDBACK_INITS,
    UPDATE_RULES,
    AsymmetricConvInteraction,
    AsymmetricDenseInteraction,
    AsymmetricNetwork,
)
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
    "FEEDBACK_INITS",
    "OUTPUTS",
    "POOLS",
    "UPDATE_RULES",
    "Activation",
    "AsymmetricConvInteraction",
    "AsymmetricDenseInteraction",
    "AsymmetricNetwork",
    "ConvInteraction",
    "ConvLayer",
    "DenseInteraction",
    "EnergyNetwork",
    "Interaction",
    "get_activation",
]
