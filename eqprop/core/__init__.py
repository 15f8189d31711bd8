"""Mathematics of chain networks: activations, interactions, Φ, losses (imports only torch)."""

from eqprop.core.activations import ACTIVATIONS, Activation, get_activation
from eqprop.core.asymmetric import (
    FEEDBACK_INITS,
    UPDATE_RULES,
    AsymmetricConvInteraction,
    AsymmetricDenseInteraction,
    AsymmetricNetwork,
    AsymmetricSettings,
    UpdateRule,
)
from eqprop.core.chain import ChainNetwork
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_builders import GraphSettings, ResidualBlocks
from eqprop.core.graph_spec import EdgeSpec, GraphSpec, NodeSpec
from eqprop.core.interactions import (
    POOLS,
    ConvInteraction,
    ConvLayer,
    DenseInteraction,
    Interaction,
)
from eqprop.core.network import EnergyNetwork
from eqprop.core.settings import OUTPUTS, NetworkSettings
from eqprop.core.validation import SettingError

#: Network kinds by the name used in configs (``model.kind``).
NETWORKS: dict[str, type[ChainNetwork]] = {
    "symmetric": EnergyNetwork,
    "asymmetric": AsymmetricNetwork,
    "graph": GraphNetwork,
}

__all__ = [
    "ACTIVATIONS",
    "FEEDBACK_INITS",
    "NETWORKS",
    "OUTPUTS",
    "POOLS",
    "UPDATE_RULES",
    "Activation",
    "AsymmetricConvInteraction",
    "AsymmetricDenseInteraction",
    "AsymmetricNetwork",
    "AsymmetricSettings",
    "ChainNetwork",
    "ConvInteraction",
    "ConvLayer",
    "DenseInteraction",
    "EdgeSpec",
    "EnergyNetwork",
    "GraphNetwork",
    "GraphSettings",
    "GraphSpec",
    "Interaction",
    "NetworkSettings",
    "NodeSpec",
    "ResidualBlocks",
    "SettingError",
    "UpdateRule",
    "get_activation",
]
