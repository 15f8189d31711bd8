"""Graphs built in code: a chain network as a graph, the Hopfield-ResNet13 and its small twins.

Residual spec §1. :func:`chain_graph` gives the graph of a chain network's architecture (the
same parameters, by the same names, so ``load_state_dict`` carries a chain's weights over);
:func:`residual_graph` the Hopfield-ResNet family: blocks k = 1..K, each reading s_{2k−2} with a
mid state s_{2k−1} (3×3 conv, stride 1) and an out state s_{2k} at half the resolution (3×3 conv
stride 2 from the mid state, 1×1 stride-2 skip conv from the block's input), then a dense map to
an output node inside the energy. ``widths=(128, 256, 512, 512)`` on 32×32 inputs is HR13.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from eqprop.core.asymmetric import FEEDBACK_INITS, AsymmetricSettings
from eqprop.core.graph_spec import (
    GRAPH_OUTPUTS,
    INPUT,
    NODE_ACTIVATIONS,
    EdgeSpec,
    GraphSpec,
    NodeSpec,
    check_feedback,
)
from eqprop.core.settings import NetworkSettings
from eqprop.core.update_rules import UPDATE_RULES
from eqprop.core.validation import SettingError, check_choice, check_int, check_number, invalid

__all__ = ["HR13_WIDTHS", "GraphSettings", "ResidualBlocks", "chain_graph", "residual_graph"]

#: The channel widths of the Hopfield-ResNet13's four blocks.
HR13_WIDTHS = (128, 256, 512, 512)


def chain_graph(
    input_shape: Sequence[int],
    num_classes: int,
    settings: NetworkSettings,
    feedback: bool | None = None,
) -> GraphSpec:
    """The graph of a chain network: s_n interacts with s_{n−1} (edges with their own bias).

    ``feedback``: whether the edges between states get feedback weights; None: exactly for
    :class:`~eqprop.core.asymmetric.AsymmetricSettings` (whose update rule and feedback init
    the graph then takes).
    """
    nodes: list[NodeSpec] = []
    edges: list[EdgeSpec] = []
    shape = tuple(input_shape)
    src = INPUT
    for i, layer in enumerate(settings.conv):
        name = f"s{i + 1}"
        shape = (layer.channels, *layer.output_hw(shape[1], shape[2]))
        nodes.append(NodeSpec(name, shape, settings.activation))
        edges.append(EdgeSpec(src, name, "conv", layer.kernel, layer.stride, layer.padding,
                              layer.pool, bias=True))  # fmt: skip
        src = name
    sizes = [*settings.dense, num_classes] if settings.output == "mse" else list(settings.dense)
    for size in sizes:
        name = f"s{len(nodes) + 1}"
        nodes.append(NodeSpec(name, (size,), settings.activation))
        edges.append(EdgeSpec(src, name, "dense", bias=True))
        src = name
    spec = GraphSpec(tuple(nodes), tuple(edges), settings.output)
    if isinstance(settings, AsymmetricSettings):
        spec = dataclasses.replace(spec, feedback=True, update_rule=settings.update_rule,
                                   feedback_init=settings.feedback_init)  # fmt: skip
    return spec if feedback is None else dataclasses.replace(spec, feedback=feedback)


def residual_graph(
    input_shape: Sequence[int],
    num_classes: int,
    widths: Sequence[int] = HR13_WIDTHS,
    activation: str = "relu6",
    output: str = "mse",
    gains: tuple[float, float, float] = (0.6, 0.7, 0.8),
    stem_stride: int = 1,
) -> GraphSpec:
    """The Hopfield-ResNet graph (spec §1) with node biases and init gains (conv, skip, dense).

    ``stem_stride`` 2 makes the first block's mid conv strided (and its skip stride 4): every
    state at half the resolution, about a quarter of the cost, for small CPU nets.

    Node biases get U(±0.5/√fan_in) with fan_in that of the 3×3 conv into the node (the last
    block's for the output node, as the reference code does). With ``output="ce"`` there is no
    output node: the last block's state is the target of a readout outside the energy, as in
    the chain networks (the dense gain is then unused).
    """
    c, h, w = (int(d) for d in input_shape)
    gain_conv, gain_skip, gain_dense = gains
    nodes: list[NodeSpec] = []
    edges: list[EdgeSpec] = []
    src, fan = INPUT, c
    for k, width in enumerate(widths, start=1):
        mid, out = f"s{2 * k - 1}", f"s{2 * k}"
        stride = stem_stride if k == 1 else 1
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1  # 3x3, padding 1
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        nodes.append(NodeSpec(mid, (width, h, w), activation, True, 0.5 / math.sqrt(9 * fan)))
        nodes.append(NodeSpec(out, (width, h2, w2), activation, True, 0.5 / math.sqrt(9 * width)))
        edges.append(EdgeSpec(src, mid, "conv", 3, stride, 1, gain=gain_conv))
        edges.append(EdgeSpec(mid, out, "conv", 3, 2, 1, gain=gain_conv))
        edges.append(EdgeSpec(src, out, "conv", 1, 2 * stride, 0, gain=gain_skip))
        src, fan, h, w = out, width, h2, w2
    if output == "ce":
        return GraphSpec(tuple(nodes), tuple(edges), output)
    last = 0.5 / math.sqrt(9 * widths[-1])
    head = f"s{2 * len(widths) + 1}"
    nodes.append(NodeSpec(head, (num_classes,), "identity", True, last))
    edges.append(EdgeSpec(src, head, "dense", gain=gain_dense))
    return GraphSpec(tuple(nodes), tuple(edges), output)


@dataclass(frozen=True)
class ResidualBlocks:
    """The compact form of a Hopfield-ResNet graph (see :func:`residual_graph`).

    Args:
        widths: channels of each block (``[128, 256, 512, 512]``: HR13).
        activation: the hidden nodes' box, a key of :data:`NODE_ACTIVATIONS`.
        gains: init gains of the 3×3 convs, the 1×1 skips and the dense head.
        stem_stride: stride of the first block's first conv (1 or 2; 2 halves every state's
            resolution).
    """

    widths: tuple[int, ...] = HR13_WIDTHS
    activation: str = field(default="relu6", metadata={"choices": NODE_ACTIVATIONS})
    gains: tuple[float, float, float] = (0.6, 0.7, 0.8)
    stem_stride: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        if not self.widths:
            raise invalid(self.widths, "at least one block width", "widths")
        for w in self.widths:
            check_int(w, "widths", 1)
        check_choice(self.activation, NODE_ACTIVATIONS, "activation")
        for g in self.gains:
            check_number(g, "gains")
        check_int(self.stem_stride, "stem_stride", 1)
        if self.stem_stride not in (1, 2):
            raise invalid(self.stem_stride, "1 or 2", "stem_stride")


@dataclass(frozen=True)
class GraphSettings:
    """A graph as configs declare it (``model.graph``): a list of states and a list of edges,
    or the compact ``residual`` form; ``output``, ``target``, ``feedback``, ``update_rule`` and
    ``feedback_init`` as in :class:`GraphSpec`.

    Example (YAML)::

        graph:
          nodes:
            - {name: h, shape: [16, 14, 14], activation: relu6, bias: true}
            - {name: y, shape: [10], activation: identity, bias: true}
          edges:
            - {src: x, dst: h, kernel: 3, stride: 2, padding: 1}
            - {src: h, dst: y, kind: dense}
          feedback: true            # h->y also gets a feedback weight (spec §4)
          update_rule: different
    """

    nodes: tuple[NodeSpec, ...] = ()
    edges: tuple[EdgeSpec, ...] = ()
    residual: ResidualBlocks | None = None
    output: str = field(default="mse", metadata={"choices": GRAPH_OUTPUTS})
    target: str | None = None
    feedback: bool = False
    update_rule: str = field(default="different", metadata={"choices": UPDATE_RULES})
    feedback_init: str = field(default="random", metadata={"choices": FEEDBACK_INITS})

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "edges", tuple(self.edges))
        check_choice(self.output, GRAPH_OUTPUTS, "output")
        check_feedback(self.feedback, self.update_rule, self.feedback_init)
        if (self.residual is None) == (not self.nodes and not self.edges):
            raise SettingError("graph: expected either nodes and edges or residual, not both")

    @property
    def n_layers(self) -> int:
        """Weight layers of the network (edges, node biases, the readout), for per-layer
        learning rates and weight decay."""
        if self.residual is not None:
            k = len(self.residual.widths)  # 3 edges and 2 node biases per block, then the head
            return 3 * k + 2 * k + (1 if self.output == "ce" else 2)
        biases = sum(node.bias for node in self.nodes)
        return len(self.edges) + biases + (self.output == "ce")

    def spec(self, input_shape: Sequence[int], num_classes: int) -> GraphSpec:
        """The graph for inputs of ``input_shape`` (the residual form needs an image)."""
        r = self.residual
        if r is None:
            spec = GraphSpec(self.nodes, self.edges, self.output, self.target)
        elif len(input_shape) != 3:
            raise SettingError(f"graph.residual: needs an image input (C, H, W), got {input_shape}")
        else:
            spec = residual_graph(
                input_shape, num_classes, r.widths, r.activation, self.output, r.gains,
                r.stem_stride,
            )  # fmt: skip
        return dataclasses.replace(spec, feedback=self.feedback, update_rule=self.update_rule,
                                   feedback_init=self.feedback_init)  # fmt: skip
