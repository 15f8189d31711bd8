"""The declaration of an energy graph: states (nodes) and interactions (edges), validated.

Residual-energies spec §1. A graph is a list of :class:`NodeSpec` (free states, each with its
activation box and an optional per-channel bias) and a list of :class:`EdgeSpec` (a bilinear
interaction from a source state, or the clamped input ``x``, to a target state: a conv of any
kernel, stride and padding with or without pooling, a 1×1 strided skip conv, or a dense map).
Φ is the sum of the edge terms plus ⟨b_n, s_n⟩ for every node with a bias. With ``feedback``,
every edge between two free states also has a feedback weight (spec §4): there is then no
scalar Φ, but one function φ_n per node.

Also the ``model.graph`` config section (:mod:`eqprop.train.graphs` reads it from YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from eqprop.core.activations import ACTIVATIONS, Activation
from eqprop.core.asymmetric import FEEDBACK_INITS
from eqprop.core.interactions import POOLS, ConvLayer
from eqprop.core.planar import complex_identity_
from eqprop.core.update_rules import UPDATE_RULES
from eqprop.core.validation import SettingError, check_choice, check_int, check_number, invalid

__all__ = [
    "EDGE_KINDS",
    "GRAPH_OUTPUTS",
    "INPUT",
    "NODE_ACTIVATIONS",
    "EdgeSpec",
    "GraphSpec",
    "NodeSpec",
    "check_feedback",
    "edge_post_shape",
]

#: The name of the clamped input in edge declarations.
INPUT = "x"

#: Edge kinds by the name used in configs.
EDGE_KINDS: dict[str, str] = {
    "conv": "convolution (kernel, stride, padding), then the pool (i: none)",
    "dense": "dense map on the flattened source state",
}

#: Output kinds of a graph network by the name used in configs.
GRAPH_OUTPUTS: dict[str, str] = {
    "mse": "the target node is a dynamical output, squared error on it (inside the energy)",
    "node_ce": "the target node is a dynamical output, cross-entropy of its softmax",
    "ce": "the target node is hidden; a linear readout outside the energy, cross-entropy",
}


def _relu6(x: Tensor) -> Tensor:
    return x.clamp(0.0, 6.0)


def _relu6_(x: Tensor) -> Tensor:
    return x.clamp_(0.0, 6.0)


def _identity(x: Tensor) -> Tensor:
    return x


#: Node activations: the chain activations plus the box clamp(·, 0, 6) and the identity (an
#: unbounded linear node, e.g. an output node inside the energy).
NODE_ACTIVATIONS: dict[str, Activation] = {
    **ACTIVATIONS,
    "relu6": Activation("relu6", _relu6, _relu6_, "clamp(x, 0, 6)"),
    "identity": Activation(
        "identity", _identity, _identity, "identity (linear node)", complex_identity_
    ),
}


def check_feedback(feedback: bool, update_rule: str, feedback_init: str) -> None:
    """Raise a one-line :class:`SettingError` naming the first bad feedback setting."""
    if not isinstance(feedback, bool):
        raise invalid(feedback, "true or false", "feedback")
    check_choice(update_rule, UPDATE_RULES, "update_rule")
    check_choice(feedback_init, FEEDBACK_INITS, "feedback_init")


def _check_gain(value: float | None, name: str) -> None:
    if value is not None:
        check_number(value, name)


@dataclass(frozen=True)
class NodeSpec:
    """One free state.

    Args:
        name: unique name, referred to by edges (not ``x``).
        shape: per-example shape, ``(C, H, W)`` or ``(D,)``.
        activation: a key of :data:`NODE_ACTIVATIONS` (the box the state is projected on).
        bias: whether the node carries a bias b_n (per channel) in Φ.
        bias_init: b_n ~ U(±bias_init); None gives 0.5/√fan_in of its first incoming edge.
    """

    name: str
    shape: tuple[int, ...]
    activation: str = field(default="hard_sigmoid", metadata={"choices": NODE_ACTIVATIONS})
    bias: bool = False
    bias_init: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if not isinstance(self.name, str) or not self.name or self.name == INPUT:
            raise invalid(self.name, f"a non-empty name other than {INPUT!r}", "name")
        if len(self.shape) not in (1, 3):
            raise invalid(self.shape, "a shape (C, H, W) or (D,)", f"{self.name}.shape")
        for d in self.shape:
            check_int(d, f"{self.name}.shape", 1)
        check_choice(self.activation, NODE_ACTIVATIONS, "activation")
        _check_gain(self.bias_init, "bias_init")


@dataclass(frozen=True)
class EdgeSpec:
    """One interaction ⟨s_dst, K s_src⟩ (plus ⟨s_dst, b⟩ when it has its own bias).

    Args:
        src: the source node's name, or ``x`` for the clamped input.
        dst: the target node's name.
        kind: a key of :data:`EDGE_KINDS`.
        kernel, stride, padding, pool: the conv (see :class:`ConvLayer`); a skip edge is a
            1×1 conv with stride 2.
        bias: whether the edge carries its own bias (the chain networks' layers do).
        gain: W ~ U(±gain/√fan_in); None keeps PyTorch's default initialisation.
    """

    src: str
    dst: str
    kind: str = field(default="conv", metadata={"choices": EDGE_KINDS})
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    pool: str = field(default="i", metadata={"choices": POOLS})
    bias: bool = False
    gain: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.kind, EDGE_KINDS, "kind")
        check_choice(self.pool, POOLS, "pool")
        for name in ("kernel", "stride"):
            check_int(getattr(self, name), name, 1)
        check_int(self.padding, "padding", 0)
        _check_gain(self.gain, "gain")

    @property
    def label(self) -> str:
        """``src->dst``, how errors name the edge."""
        return f"{self.src}->{self.dst}"


def edge_post_shape(edge: EdgeSpec, pre: tuple[int, ...], channels: int) -> tuple[int, ...]:
    """The shape ``edge`` maps a ``pre``-shaped state to, ``channels`` out (for a conv)."""
    if edge.kind == "dense":
        return (channels,)
    if len(pre) != 3:
        raise SettingError(f"edge {edge.label}: a conv needs an image source, got shape {pre}")
    spec = ConvLayer(channels, edge.kernel, edge.stride, edge.padding, edge.pool)
    return (channels, *spec.output_hw(pre[1], pre[2]))


@dataclass(frozen=True)
class GraphSpec:
    """A whole graph: its nodes, edges, output kind and the node the cost acts on.

    Args:
        nodes: the free states (their order is the parity split's and ties' order).
        edges: the interactions.
        output: a key of :data:`GRAPH_OUTPUTS`.
        target: the node the cost acts on (mse, node_ce) or the readout reads (ce); None:
            the last node.
        feedback: give every edge between two free states a feedback weight B of its
            forward weight's shape (an asymmetric, "VF" network; spec §4).
        update_rule: with feedback, a key of
            :data:`~eqprop.core.update_rules.UPDATE_RULES`.
        feedback_init: with feedback, a key of :data:`~eqprop.core.asymmetric.FEEDBACK_INITS`.
    """

    nodes: tuple[NodeSpec, ...]
    edges: tuple[EdgeSpec, ...]
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
        if not self.nodes:
            raise SettingError("graph.nodes is empty; expected at least one state")
        names = [n.name for n in self.nodes]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise invalid(name, "unique node names", f"nodes[{i}].name")
        if self.target is not None and self.target not in names:
            raise invalid(self.target, f"one of the node names {names}", "target")

    @property
    def target_name(self) -> str:
        """The name of the node the cost acts on."""
        return self.target if self.target is not None else self.nodes[-1].name

    def index(self, name: str) -> int:
        """Position of a node (−1 for the input)."""
        return -1 if name == INPUT else [n.name for n in self.nodes].index(name)

    def validate(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Check every edge's ends and shapes and that each node is reached; one-line errors.

        Raises:
            SettingError: naming the edge, both states and their shapes.
        """
        shapes = {INPUT: input_shape, **{n.name: n.shape for n in self.nodes}}
        reached = set()
        for i, e in enumerate(self.edges):
            for end in (e.src, e.dst):
                if end not in shapes:
                    raise invalid(
                        end, f"{INPUT!r} or a node name {list(shapes)[1:]}", f"edges[{i}]"
                    )
            if e.dst == INPUT or e.src == e.dst:
                raise SettingError(f"edges[{i}] ({e.label}): expected a free target other than src")
            dst = shapes[e.dst]
            if e.kind == "conv" and len(dst) != 3:
                raise SettingError(f"edge {e.label}: a conv needs an image target, got {dst}")
            got = edge_post_shape(e, shapes[e.src], dst[0])
            if got != dst:
                raise SettingError(
                    f"edge {e.label}: maps {e.src} {shapes[e.src]} to {got}, not to {e.dst} {dst}"
                )
            reached.add(e.dst)
            reached.add(e.src)
        for n in self.nodes:
            if n.name not in reached:
                raise SettingError(f"node {n.name}: no edge reaches it")
        target = shapes[self.target_name]
        if self.output != "ce" and target != (num_classes,):
            raise SettingError(
                f"output {self.output!r}: target node {self.target_name} has shape {target}; "
                f"expected ({num_classes},)"
            )
