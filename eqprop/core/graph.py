"""Energy graphs: a network whose states and interactions form any graph (residual spec §1).

    Φ(x, s, θ) = Σ_{e=(p→q)} ⟨s_q, K_e s_p⟩ + Σ_n ⟨b_n, s_n⟩,
    h_n = ∂Φ/∂s_n = b_n + Σ_{e: q=n} K_e s_p + Σ_{e: p=n} K_eᵀ s_q.

:class:`GraphNetwork` is a :class:`~eqprop.core.chain.ChainNetwork` to the estimators and the
solver (the same inputs, losses, nudges, readout and EP update), with ``state[n]`` the state of
node n. The constant part of every drive (the node's bias plus its edges from the input) is the
network's "input drive": computed once per batch and packed, node after node, into one
(B, total) tensor (:meth:`GraphNetwork.constants` gives the per-node views back), so phases can be
batched and cast like a chain's. The schedules are in :mod:`eqprop.dynamics.graph_schedules`.

With ``graph.feedback`` (spec §4), every edge e = (p→q) between two free nodes also carries a
feedback weight B_e: node n's drive is then ∂φ_n/∂s_n of its own function

    φ_n(s) = ⟨b_n, s_n⟩ + Σ_{e: q=n} ⟨s_n, K_{W_e} s_p⟩ + Σ_{e: p=n} ⟨s_q, K_{B_e} s_n⟩,

(the pool context of a backward term that of K_{B_e} s_n), there is no scalar Φ, and the EP
update is the update rule's (:mod:`eqprop.core.update_rules`), edge by edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqprop.core.activations import Activation
from eqprop.core.asymmetric import AsymmetricInteraction, weight_angle
from eqprop.core.chain import ChainNetwork, Interactions, Phase, WeightGrads
from eqprop.core.colouring import depths, greedy_colouring
from eqprop.core.graph_builders import GraphSettings
from eqprop.core.graph_edges import build_edge, with_feedback
from eqprop.core.graph_spec import NODE_ACTIVATIONS, GraphSpec
from eqprop.core.kernels import fast_layout
from eqprop.core.settings import NetworkSettings
from eqprop.core.update_rules import UPDATE_RULES, PhaseStates, UpdateRule
from eqprop.core.validation import SettingError, invalid

__all__ = ["GraphNetwork", "NodeBias"]


class NodeBias(nn.Module):
    """The bias b_n of one node, per channel (broadcast over space)."""

    def __init__(self, channels: int, bound: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))


class GraphNetwork(ChainNetwork):
    """An energy network on a graph of states (:class:`~eqprop.core.graph_spec.GraphSpec`).

    Args:
        input_shape: shape of one input, ``(C, H, W)`` or ``(D,)``.
        graph: the nodes, edges, output kind and target node, and whether the edges between
            free nodes have feedback weights (with their update rule and init).
        num_classes: number of classes.

    Example:
        >>> from eqprop.core.graph_spec import EdgeSpec, NodeSpec
        >>> g = GraphSpec((NodeSpec("h", (5,)), NodeSpec("y", (3,))),
        ...               (EdgeSpec("x", "h", "dense"), EdgeSpec("h", "y", "dense")))
        >>> GraphNetwork((4,), g, num_classes=3).state_shapes
        [(5,), (3,)]
    """

    def __init__(self, input_shape: Sequence[int], graph: GraphSpec, num_classes: int) -> None:
        nn.Module.__init__(self)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise invalid(num_classes, "an int >= 2", "num_classes")
        self.input_shape = tuple(int(d) for d in input_shape)
        graph.validate(self.input_shape, num_classes)
        self.graph = graph
        self.num_classes = num_classes
        self.output = graph.output
        self.relaxation = None
        self.node_names = [n.name for n in graph.nodes]
        self._shapes = [n.shape for n in graph.nodes]
        self.node_activations: list[Activation] = [
            NODE_ACTIVATIONS[n.activation] for n in graph.nodes
        ]
        self.activation = self.node_activations[0]
        shapes = {"x": self.input_shape, **dict(zip(self.node_names, self._shapes, strict=True))}
        self.interactions = Interactions(
            [build_edge(e, shapes[e.src], shapes[e.dst], i) for i, e in enumerate(graph.edges)]
        )
        self.edge_src = [graph.index(e.src) for e in graph.edges]
        self.edge_dst = [graph.index(e.dst) for e in graph.edges]
        n = len(graph.nodes)
        self.input_edges = [[e for e in range(len(self.edge_src)) if self._ends(e) == (-1, q)]
                            for q in range(n)]  # fmt: skip
        self.in_edges = [[e for e, (p, q) in enumerate(self._pairs()) if q == m and p >= 0]
                         for m in range(n)]  # fmt: skip
        self.out_edges = [[e for e, (p, _) in enumerate(self._pairs()) if p == m]
                          for m in range(n)]  # fmt: skip
        self.biases = nn.ModuleDict()
        for node in graph.nodes:
            if node.bias:
                bound = node.bias_init
                if bound is None:
                    first = self.interactions[self.edges_into(node.name)[0]].weights()[0]
                    bound = 0.5 / math.sqrt(first[0].numel())
                self.biases[node.name] = NodeBias(node.shape[0], bound)
        self.readout = (
            nn.Linear(math.prod(self._shapes[self.target_layer]), num_classes)
            if graph.output == "ce"
            else None
        )
        self.colouring = greedy_colouring(n, list(self._pairs()))
        depth = depths(n, self._pairs())
        #: Free nodes by depth from the input (ties by node order).
        self.depth_order = sorted(range(n), key=lambda k: (depth[k], k))
        # Where each node's constant drive sits in the packed input drive (None: no constant).
        self._packed: list[tuple[int, tuple[int, ...]] | None] = []
        offset = 0
        for m, shape in enumerate(self._shapes):
            has = bool(self.input_edges[m]) or self.graph.nodes[m].bias
            self._packed.append((offset, shape) if has else None)
            offset += math.prod(shape) if has else 0
        self.update_rule = graph.update_rule
        self.feedback_init = graph.feedback_init
        if graph.feedback:
            # Last, as AsymmetricNetwork does: W and the biases are the symmetric graph's draws.
            edges = zip(self.interactions, graph.edges, self.edge_src, strict=True)
            self.interactions = Interactions([
                layer if p < 0 else with_feedback(layer, e, i, graph.feedback_init)
                for i, (layer, e, p) in enumerate(edges)
            ])  # fmt: skip

    @classmethod
    def from_settings(
        cls, input_shape: Sequence[int], num_classes: int, settings: NetworkSettings
    ) -> GraphNetwork:
        """Build from settings with a ``graph`` field (:class:`GraphSettings`), e.g. a config."""
        graph = getattr(settings, "graph", None)
        if not isinstance(graph, GraphSettings):
            raise SettingError("graph: a graph network needs model.graph (nodes and edges)")
        try:
            return cls(input_shape, graph.spec(tuple(input_shape), num_classes), num_classes)
        except SettingError as err:
            raise (err.within("model.graph") if err.path else err) from None

    def _pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.edge_src, self.edge_dst, strict=True))

    def _ends(self, e: int) -> tuple[int, int]:
        return self.edge_src[e], self.edge_dst[e]

    def edges_into(self, name: str) -> list[int]:
        """Indices of the edges whose target is node ``name``."""
        q = self.graph.index(name)
        return [e for e, d in enumerate(self.edge_dst) if d == q]

    # ----------------------------------------------------------------- structure

    @property
    def state_shapes(self) -> list[tuple[int, ...]]:
        return list(self._shapes)

    @property
    def target_layer(self) -> int:
        return self.graph.index(self.graph.target_name)

    @property
    def n_layers(self) -> int:
        return len(self.weight_layers())

    def weight_layers(self) -> list[nn.Module]:
        """Edges in order, then node biases in node order, then the readout."""
        layers: list[nn.Module] = [*self.interactions, *self.biases.values()]
        if self.readout is not None:
            layers.append(self.readout)
        return layers

    @property
    def rule(self) -> UpdateRule:
        """The update rule object named by :attr:`update_rule` (used with feedback only)."""
        return UPDATE_RULES[self.update_rule]

    def feedback_edges(self) -> dict[int, AsymmetricInteraction]:
        """The edges with a feedback weight by index (none without ``graph.feedback``)."""
        if not self.graph.feedback:
            return {}
        return {e: cast(AsymmetricInteraction, self.interactions[e])
                for e in range(len(self.edge_src)) if self.edge_src[e] >= 0}  # fmt: skip

    def weight_angles(self) -> dict[str, float]:
        """Angle in degrees between each feedback weight and its forward weight, keyed by the
        edge's label ``src->dst`` (empty without feedback)."""
        return {
            self.graph.edges[e].label: weight_angle(layer.forward_weight, layer.feedback)
            for e, layer in self.feedback_edges().items()
        }

    def node_bias(self, n: int) -> Tensor | None:
        """b_n, or None for a node without a bias."""
        name = self.node_names[n]
        if name not in self.biases:
            return None
        return cast(NodeBias, self.biases[name]).bias

    # ----------------------------------------------------------------- the constant drives

    def graph_drive(self, x: Tensor) -> tuple[Tensor, dict[int, Any]]:
        """The packed constant drives (B, total) and the input edges' contexts, in the
        caller's grad mode (BPTT keeps the graph to the input edges and biases)."""
        x = fast_layout(x)
        parts: list[Tensor] = []
        contexts: dict[int, Any] = {}
        for n, shape in enumerate(self._shapes):
            drive: Tensor | None = None
            for e in self.input_edges[n]:
                d, contexts[e] = self.interactions[e].forward_drive(x)
                drive = d if drive is None else drive + d
            bias = self.node_bias(n)
            if bias is not None:
                b = bias.view(1, -1, *([1] * (len(shape) - 1)))
                drive = b.expand(x.shape[0], *shape) if drive is None else drive + b
            if drive is not None:  # channels last: (B, H, W, C) flattened for images
                parts.append((drive.permute(0, 2, 3, 1) if drive.dim() == 4 else drive).flatten(1))
        return torch.cat(parts, 1), contexts

    def input_drive_with_context(self, x: Tensor) -> tuple[Tensor, Any]:
        with torch.no_grad():
            return self.graph_drive(x)

    def constants(self, packed: Tensor) -> list[Tensor | None]:
        """Per-node views of the packed constant drives (None for a node without one)."""
        out: list[Tensor | None] = []
        for place in self._packed:
            if place is None:
                out.append(None)
                continue
            offset, shape = place
            flat = packed[:, offset : offset + math.prod(shape)]
            if len(shape) == 3:
                c, h, w = shape
                out.append(flat.unflatten(1, (h, w, c)).permute(0, 3, 1, 2))
            else:
                out.append(flat)
        return out

    # ----------------------------------------------------------------- energy and cost

    def phi(self, x: Tensor, state: Sequence[Tensor]) -> Tensor:
        """Differentiable Φ(x, s, θ) per example, shape (B,); the cost is not included.

        Raises:
            TypeError: with feedback weights, which leave no scalar Φ.
        """
        if self.graph.feedback:
            raise TypeError(
                "phi: a graph with feedback weights (graph.feedback) has no scalar energy Φ; "
                "each node has its own φ_n (spec §4)"
            )
        total = x.new_zeros(x.shape[0], dtype=state[0].dtype)
        for e, layer in enumerate(self.interactions):
            p, q = self._ends(e)
            total = total + layer.phi(x if p < 0 else state[p], state[q])
        for n, s in enumerate(state):
            bias = self.node_bias(n)
            if bias is not None:
                total = total + (s.flatten(2).sum(2) if s.dim() == 4 else s) @ bias
        return total

    def loss(self, state: Sequence[Tensor], y: Tensor) -> Tensor:
        out = state[self.target_layer]
        if self.output == "mse":
            target = F.one_hot(y, self.num_classes).to(out.dtype)
            return 0.5 * (out - target).pow(2).sum(1)
        return F.cross_entropy(self.logits(state), y, reduction="none")

    def nudge_drive(self, state: Sequence[Tensor], y: Tensor, beta: Tensor | float) -> Tensor:
        out = state[self.target_layer]
        if self.output != "node_ce":
            return self._chain_nudge(state, y, beta)
        onehot = y if y.is_floating_point() else F.one_hot(y, self.num_classes).to(out.dtype)
        return torch.softmax(out, dim=1).sub_(onehot).mul_(beta).neg_()

    def _chain_nudge(self, state: Sequence[Tensor], y: Tensor, beta: Tensor | float) -> Tensor:
        t = self.target_layer
        if self.output == "mse":
            onehot = y if y.is_floating_point() else F.one_hot(y, self.num_classes)
            return (onehot.to(state[t].dtype) - state[t]).mul_(beta)
        # The readout case is the chain's, read at the target node.
        return ChainNetwork.nudge_drive(self, [*state[: t + 1]], y, beta)

    # ----------------------------------------------------------------- the EP update

    def weight_contrast(
        self, x: Tensor, free_state: Sequence[Tensor], phases: Sequence[Phase], input_ctx: Any
    ) -> WeightGrads:
        """As EnergyNetwork's: input edges once on the combined target state, the other edges
        on the phases stacked along the batch with c_k / B folded into the target state. With
        feedback, the update rule's terms (:meth:`UpdateRule.edge_grads` for the edges between
        free nodes, :meth:`UpdateRule.input_grads` for those from the input), as a chain
        :class:`~eqprop.core.asymmetric.AsymmetricNetwork` has them."""
        b = x.shape[0]
        out: WeightGrads = []
        rule = self.rule if self.graph.feedback else None
        with torch.no_grad():
            states = PhaseStates(x, free_state, phases)
            for e, layer in enumerate(self.interactions):
                p, q = self._ends(e)
                ctx = input_ctx.get(e) if isinstance(input_ctx, dict) else None
                if p < 0 and rule is not None:  # the input term as the chain's rule has it
                    out += rule.input_grads(layer, x, states, q, ctx)
                elif p < 0:
                    first = cast(Tensor, sum(c * s[q].detach() for c, s in phases) / b)
                    out += layer.paired_weight_grads(fast_layout(x), first, ctx)
                elif rule is not None:
                    out += rule.edge_grads(cast(AsymmetricInteraction, layer), states, p, q)
                else:
                    out += layer.paired_weight_grads(
                        states.stacked(p), states.weighted(states.stacked(q))
                    )
            for n in range(len(self._shapes)):
                bias = self.node_bias(n)
                if bias is not None:
                    s = states.weighted(states.stacked(n))
                    grad = s.flatten(2).sum((0, 2)) if s.dim() == 4 else s.sum(0)
                    out.append((cast(nn.Parameter, bias), grad))
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["nodes"] = self.node_names
        out["edges"] = [e.label for e in self.graph.edges]
        out["colouring"] = [[self.node_names[n] for n in block] for block in self.colouring]
        out["feedback"] = self.graph.feedback
        if self.graph.feedback:
            out["update_rule"] = self.update_rule
            out["feedback_init"] = self.feedback_init
        return out

    def extra_repr(self) -> str:
        text = f"input_shape={self.input_shape}, output={self.output!r}, nodes={self.node_names}"
        if self.graph.feedback:
            text += f", update_rule={self.update_rule!r}, feedback_init={self.feedback_init!r}"
        return text
