"""Which pieces of a network are holomorphic, so that its nudged phases continue to complex β.

``holomorphic-ep.md`` §3: the clamps (kinks) and max pooling (an ordering) have no complex
derivative; the smooth activations, the softmax and average pools and the identity do.
:func:`check_holomorphic` refuses a network with a non-holomorphic piece in one line naming the
piece as a config path: ``model.activation`` and ``model.conv[i].pool`` on chains,
``model.graph.nodes[i].activation`` and ``model.graph.edges[i].pool`` on energy graphs.
"""

from __future__ import annotations

from eqprop.core.chain import ChainNetwork
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_spec import NODE_ACTIVATIONS
from eqprop.core.interactions import ConvInteraction
from eqprop.core.validation import SettingError

__all__ = ["check_holomorphic"]


_MAX_POOL = "'m' (max pool) is not holomorphic, so complex nudging ({}) cannot use it; " \
    "use s (softmax pool), a (average pool) or i (none)"  # fmt: skip


def _check_graph(net: GraphNetwork, why: str) -> None:
    """:func:`check_holomorphic` for an energy graph: each node's activation, each edge's pool."""
    names = [name for name, a in NODE_ACTIVATIONS.items() if a.complex_fn_ is not None]
    accepted = f"{', '.join(names[:-1])} or {names[-1]}"
    for i, (node, act) in enumerate(zip(net.graph.nodes, net.node_activations, strict=True)):
        if act.complex_fn_ is None:
            raise SettingError(
                f"node {node.name}: {act.name!r} is not holomorphic (a clamp has kinks), so "
                f"complex nudging ({why}) cannot use it; use {accepted} (dsilu: a smooth clamp)",
                f"model.graph.nodes[{i}].activation",
            )
    for i, edge in enumerate(net.graph.edges):
        if edge.kind == "conv" and edge.pool == "m":
            raise SettingError(
                f"edge {edge.label}: {_MAX_POOL.format(why)}", f"model.graph.edges[{i}].pool"
            )


def check_holomorphic(net: ChainNetwork, why: str = "more than 2 points") -> None:
    """Raise unless every piece of ``net``'s dynamics is holomorphic.

    Raises:
        SettingError: one line naming the piece (``model.activation``, ``model.conv[i].pool``;
            on a graph ``model.graph.nodes[i].activation`` or ``model.graph.edges[i].pool``)
            and what would be accepted.
    """
    if isinstance(net, GraphNetwork):
        _check_graph(net, why)
        return
    act = net.activation
    if not act.holomorphic:
        raise SettingError(
            f"{act.name!r} is not holomorphic (a clamp has kinks), so complex nudging ({why}) "
            "cannot use it; use dsilu (a smooth clamp), mysig, sigmoid or tanh",
            "model.activation",
        )
    for i, layer in enumerate(net.interactions):
        if isinstance(layer, ConvInteraction) and layer.spec.pool == "m":
            raise SettingError(_MAX_POOL.format(why), f"model.conv[{i}].pool")
