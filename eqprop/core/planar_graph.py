"""Energy graphs on planar complex batches: holomorphic EP on a :class:`GraphNetwork`.

``holomorphic-ep.md`` §2–3 on the graphs of the residual spec §1. :class:`PlanarGraphNetwork`
is to a graph what :class:`~eqprop.core.holomorphic.PlanarNetwork` is to a chain: a view sharing
the graph's parameters and node structure that relaxes a planar batch
(:class:`~eqprop.core.planar.Rows`) with the graph schedules, unchanged:

- each edge is the chain's planar conv or dense interaction (with or without its own bias;
  the bias on the real rows and parts only, the softmax pool continued holomorphically);
- each node applies the planar form of its own activation (the identity is a no-op);
- the packed constant drive (node biases and input edges) is real: in planar form
  (:func:`~eqprop.core.holomorphic.to_planar`) it sits on the real rows and real parts, zero on
  the imaginary parts;
- the nudge at planar β is −β(s − y) (``mse``), −β(softmax(s) − y) (``node_ce``, complex
  softmax) on the target node, or the readout's (``ce``), the chain view's code.

:meth:`PlanarGraphNetwork.weight_contrast_planar` is Re Σ_rows c ∂Φ/∂θ in closed form, as
:meth:`GraphNetwork.weight_contrast <eqprop.core.graph.GraphNetwork.weight_contrast>` arranges
it: input edges once on the combined target state (x is real and shared), the other edges on
the planar states, node biases from the real rows and real parts of c·s_n.
:func:`planar_view` builds the right view for any symmetric network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from eqprop.core.chain import ChainNetwork, Interactions, WeightGrads
from eqprop.core.graph import GraphNetwork
from eqprop.core.holomorphic import (
    PlanarConv,
    PlanarDense,
    PlanarNetwork,
    _PlanarInteraction,
    planar_activation_of,
)
from eqprop.core.interactions import ConvInteraction, DenseInteraction, Interaction
from eqprop.core.kernels import fast_layout
from eqprop.core.planar import PlanarScale, Rows

__all__ = ["PlanarGraphConv", "PlanarGraphNetwork", "planar_view"]


class PlanarGraphConv(PlanarConv, ConvInteraction):
    """:class:`PlanarConv` that the graph schedules recognise as a conv edge.

    They ask a conv edge with a nonlinear pool for its context by type
    (``isinstance(layer, ConvInteraction)`` and ``layer.spec``), so the wrapper is one and
    carries the wrapped edge's spec; everything else is :class:`PlanarConv`'s.
    """

    def __init__(self, inner: ConvInteraction, rows: Rows) -> None:
        PlanarConv.__init__(self, inner, rows)
        self.spec = inner.spec


def _planar_edge(layer: Interaction, rows: Rows) -> Interaction:
    if isinstance(layer, ConvInteraction):
        return PlanarGraphConv(layer, rows)
    return PlanarDense(cast(DenseInteraction, layer), rows)


class PlanarGraphNetwork(PlanarNetwork, GraphNetwork):
    """A view of the graph ``net`` that relaxes planar complex batches laid out as ``rows``.

    Built per relaxation (cheap). The nudge, the readout's update and the refusal of
    ``weight_contrast`` are :class:`PlanarNetwork`'s; the structure and the constant drives
    are ``net``'s.

    Args:
        net: a graph whose pieces are holomorphic (:func:`check_holomorphic`).
        rows: the layout of the batches it will relax.
        compile: run the complex activations through ``torch.compile``.
    """

    def __init__(self, net: GraphNetwork, rows: Rows, compile: bool = False) -> None:
        nn.Module.__init__(self)  # a view: none of GraphNetwork's construction
        # Every plain attribute of the graph (edge ends, in/out edges, colouring, depth order,
        # the packing of the constants...), shared: the view follows GraphNetwork as it grows.
        # Submodules and parameters live in nn.Module's own dicts, already present here.
        for name, value in vars(net).items():
            if name not in vars(self):
                self.__dict__[name] = value
        self.relaxation = None
        self.rows = rows
        self.node_activations = [
            planar_activation_of(a, rows, compile) for a in net.node_activations
        ]
        self.activation = self.node_activations[0]
        self.interactions = Interactions([_planar_edge(layer, rows) for layer in net.interactions])
        self.biases = net.biases
        self.readout = net.readout
        self._nudge_cache = None

    def _output(self, state: Sequence[Tensor]) -> Tensor:
        return state[self.target_layer]

    def weight_contrast_planar(
        self, x: Tensor, state: Sequence[Tensor], coef: Tensor, input_ctx: Any
    ) -> WeightGrads:
        """Re Σ_rows c ∂Φ/∂θ(x, s) over the edges and node biases, in closed form.

        Args:
            x: the real inputs (B, ...); the planar rows hold whole batches of them, in order.
            state: planar states, one (rows.total, ...) tensor per node.
            coef: planar per-row coefficients (rows.total,), batch mean included.
            input_ctx: the input edges' contexts of ``input_drive_with_context(x)`` (a dict).
        """
        rows, b = self.rows, x.shape[0]
        contexts = input_ctx if isinstance(input_ctx, dict) else {}
        out: WeightGrads = []
        with torch.no_grad():
            scale = PlanarScale(coef, rows)
            scaled = [scale(s.detach()) for s in state]
            for e, layer in enumerate(self.interactions):
                p, q = self.edge_src[e], self.edge_dst[e]
                if p < 0:
                    # Linear in s_q with x shared and real: the real parts of c·s_q, summed
                    # over the stacked batches, meet x once.
                    first = scaled[q][: rows.with_bias].unflatten(0, (-1, b)).sum(0)
                    inner = cast(_PlanarInteraction, layer).inner
                    out += inner.paired_weight_grads(
                        fast_layout(x), fast_layout(first), contexts.get(e)
                    )
                else:
                    out += layer.paired_weight_grads(state[p].detach(), scaled[q])
            for n, s in enumerate(scaled):
                bias = self.node_bias(n)
                if bias is not None:  # Re Σ c s_n: the real rows and real parts
                    real = s[: rows.with_bias]
                    grad = real.flatten(2).sum((0, 2)) if real.dim() == 4 else real.sum(0)
                    out.append((cast(nn.Parameter, bias), grad))
        return out


def planar_view(net: ChainNetwork, rows: Rows, compile: bool = False) -> PlanarNetwork:
    """The planar view of a chain network or an energy graph (the estimators' one entry)."""
    if isinstance(net, GraphNetwork):
        return PlanarGraphNetwork(net, rows, compile)
    return PlanarNetwork(net, rows, compile)
