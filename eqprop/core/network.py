"""The energy network: a chain network with symmetric weights and a scalar Φ (spec §1).

Its primitive function is

    Φ(x, s, θ) = Σ_n φ_n(s_{n−1}, s_n),  s_0 = x,

one bilinear interaction per layer, and the dynamics are s ← σ(∂Φ/∂s − β ∂L/∂s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

from eqprop.core.chain import ChainNetwork, Phase, WeightGrads, stack_states
from eqprop.core.interactions import ConvLayer
from eqprop.core.kernels import fast_layout
from eqprop.core.settings import NetworkSettings

__all__ = ["EnergyNetwork"]


class EnergyNetwork(ChainNetwork):
    """A convergent recurrent network with symmetric weights: conv layers, then dense layers.

    Args:
        input_shape: shape of one input, ``(C, H, W)`` or ``(D,)`` for dense-only nets.
        conv, dense, output, activation, init_scale: see :class:`NetworkSettings`.
        num_classes: number of classes.

    Example:
        >>> net = EnergyNetwork((784,), dense=[512], num_classes=10)
        >>> [tuple(s) for s in net.state_shapes]
        [(512,), (10,)]
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        conv: Sequence[ConvLayer] = NetworkSettings.conv,
        dense: Sequence[int] = NetworkSettings.dense,
        num_classes: int = 10,
        output: str = NetworkSettings.output,
        activation: str = NetworkSettings.activation,
        init_scale: float | Sequence[float] | None = NetworkSettings.init_scale,
    ) -> None:
        # Any sequences are accepted here; the settings store tuples (__post_init__ turns an
        # init_scale list into one, as it does conv and dense).
        scale = cast("float | tuple[float, ...] | None", init_scale)
        settings = NetworkSettings(tuple(conv), tuple(dense), output, activation, scale)
        super().__init__(input_shape, num_classes, settings)

    def phi(self, x: Tensor, state: Sequence[Tensor]) -> Tensor:
        """Differentiable Φ(x, s, θ) per example, shape (B,); the loss term is not included."""
        total = self.interactions[0].phi(x, state[0])
        for n in range(1, len(self.interactions)):
            total = total + self.interactions[n].phi(state[n - 1], state[n])
        return total

    def weight_contrast(
        self, x: Tensor, free_state: Sequence[Tensor], phases: Sequence[Phase], input_ctx: Any
    ) -> WeightGrads:
        # Φ is bilinear: its θ-gradient at fixed states is each interaction's Hebbian product.
        # The states go through one evaluation, stacked along the batch, each example's weight
        # c_k / B folded into its postsynaptic state (φ is linear in it); the input term is
        # evaluated once on the combined s_1, x being shared (with input_ctx reused).
        b = x.shape[0]
        coefs = [c for c, _ in phases]
        states = [s for _, s in phases]
        layers = self.interactions
        with torch.no_grad():
            first = cast(Tensor, sum(c * s[0].detach() for c, s in phases) / b)
            out = layers[0].paired_weight_grads(fast_layout(x), first, input_ctx)
            if len(layers) > 1:
                stacked = stack_states(states)
                w = torch.tensor(coefs, dtype=x.dtype, device=x.device).repeat_interleave(b) / b
                for n in range(1, len(layers)):
                    post = stacked[n] * w.view(-1, *([1] * (stacked[n].dim() - 1)))
                    out += layers[n].paired_weight_grads(stacked[n - 1], post)
        return out
