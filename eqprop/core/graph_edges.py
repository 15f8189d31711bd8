"""The interactions of an energy graph: the chain's conv and dense terms, with or without bias.

A residual graph's edges carry no bias of their own (the biases sit on the nodes), so the
bias-free forms drop the bias from Φ, from ``weights()`` and from the Hebbian product; their
closed forms are otherwise the chain's (:mod:`eqprop.core.interactions`). With feedback weights
(spec §4), an edge between two free states is the asymmetric chain's interaction
(:mod:`eqprop.core.asymmetric`), with or without bias likewise (:func:`with_feedback`).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn

from eqprop.core.asymmetric import (
    AsymmetricConvInteraction,
    AsymmetricDenseInteraction,
    AsymmetricInteraction,
    init_feedback,
)
from eqprop.core.graph_spec import EdgeSpec
from eqprop.core.interactions import ConvInteraction, ConvLayer, DenseInteraction, Interaction

__all__ = [
    "BiasFreeAsymmetricConv",
    "BiasFreeAsymmetricDense",
    "BiasFreeConv",
    "BiasFreeDense",
    "build_edge",
    "with_feedback",
]


class BiasFreeConv(ConvInteraction):
    """φ = ⟨post, P(conv(pre))⟩: a conv term without bias."""

    def __init__(self, pre_shape: tuple[int, int, int], spec: ConvLayer, index: int = 0) -> None:
        super().__init__(pre_shape, spec, index)
        self.conv.register_parameter("bias", None)

    def weights(self) -> list[nn.Parameter]:
        return [cast(nn.Parameter, self.conv.weight)]

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        with torch.no_grad():
            if ctx is None:
                ctx = self._pool_with_context(self.conv(pre.detach()))[1]
            g_w, _ = self._hebbian(pre, post, ctx, self.conv.weight, bias=False)
        return [g_w]


class BiasFreeDense(DenseInteraction):
    """φ = ⟨post, W·flatten(pre)⟩: a dense term without bias."""

    def __init__(self, pre_shape: tuple[int, ...], out_features: int) -> None:
        super().__init__(pre_shape, out_features)
        self.linear.register_parameter("bias", None)

    def weights(self) -> list[nn.Parameter]:
        return [cast(nn.Parameter, self.linear.weight)]

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        return [torch.mm(post.detach().t(), pre.detach().flatten(1))]


class BiasFreeAsymmetricConv(BiasFreeConv, AsymmetricConvInteraction):
    """A conv term without bias, with feedback weights (the dynamics of
    :class:`~eqprop.core.asymmetric.AsymmetricConvInteraction`)."""

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        # forward_drive's context is the *feedback* map's: W's term takes its own.
        return BiasFreeConv.weight_grads(self, pre, post, None)


class BiasFreeAsymmetricDense(BiasFreeDense, AsymmetricDenseInteraction):
    """A dense term without bias, with feedback weights B of W's shape."""


def build_edge(
    edge: EdgeSpec, pre: tuple[int, ...], post: tuple[int, ...], index: int
) -> Interaction:
    """The interaction of a validated edge from a ``pre``- to a ``post``-shaped state.

    With a ``gain``, W ~ U(±gain/√fan_in) (and an edge bias likewise); else PyTorch's default.
    """
    layer: Interaction
    if edge.kind == "dense":
        layer = (DenseInteraction if edge.bias else BiasFreeDense)(pre, post[0])
    else:
        spec = ConvLayer(post[0], edge.kernel, edge.stride, edge.padding, edge.pool)
        image = cast("tuple[int, int, int]", pre)
        layer = (ConvInteraction if edge.bias else BiasFreeConv)(image, spec, index)
    if edge.gain is not None:
        with torch.no_grad():
            weights = layer.weights()
            bound = edge.gain / math.sqrt(weights[0][0].numel())
            for w in weights:
                w.uniform_(-bound, bound)
    return layer


def with_feedback(
    layer: Interaction, edge: EdgeSpec, index: int, init: str
) -> AsymmetricInteraction:
    """``layer`` (built by :func:`build_edge`) with a feedback weight: the same W (and bias),
    and B a fresh default draw scaled by the edge's ``gain`` (as W's init is), or W's copy
    when ``init`` is ``forward``."""
    new: AsymmetricInteraction
    if isinstance(layer, ConvInteraction):
        image = cast("tuple[int, int, int]", layer.pre_shape)
        cls = AsymmetricConvInteraction if edge.bias else BiasFreeAsymmetricConv
        new = cls(image, layer.spec, index)
    else:
        dense = AsymmetricDenseInteraction if edge.bias else BiasFreeAsymmetricDense
        new = dense(layer.pre_shape, layer.post_shape[0])
    with torch.no_grad():
        for mine, theirs in zip(new.weights(), layer.weights(), strict=True):
            mine.copy_(theirs)
    # PyTorch's default draw is U(±1/√fan_in); a gain g makes W's U(±g/√fan_in).
    init_feedback(new, init, 1.0 if edge.gain is None else edge.gain)
    return new
