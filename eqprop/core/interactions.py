"""Bilinear interaction terms of the primitive function Φ and their closed forms.

Spec §1. An interaction couples a presynaptic state ``pre`` (layer n−1, or the input) to a
postsynaptic state ``post`` (layer n):

- dense: φ = ⟨post, W·flatten(pre) + b⟩
- conv:  φ = ⟨post, P(conv(pre) + b)⟩, P a 2×2 stride-2 max pool, avg pool, softmax pool
  (holomorphic EP: P_w = Σ zᵢe^{zᵢ/τ}/Σ e^{zᵢ/τ} over each window) or identity.

Each interaction gives, without autograd,

- ``forward_drive(pre)`` = ∂φ/∂post, plus a context (the max-pool argmax of the current
  pre-pool map) that the matching backward call reuses;
- ``backward_drive(post, ctx)`` = ∂φ/∂pre: the transposed map applied to the pool's backward;
- ``weight_grads(pre, post)`` = Σ over the batch of ∂φ/∂θ at fixed states, aligned with
  ``weights()``: the local Hebbian product post ⊗ pre that EP's update is made of.

``phi(pre, post)`` is the plain, differentiable per-example value, used by the references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqprop.core.kernels import conv_param_grads, fast_layout, max_pool_scatter
from eqprop.core.planar import softmax_pool, softmax_unpool
from eqprop.core.validation import check_choice, check_int, check_number

__all__ = [
    "NONLINEAR_POOLS",
    "POOLS",
    "ConvInteraction",
    "ConvLayer",
    "DenseInteraction",
    "Interaction",
    "fast_layout",
]

#: Pooling after a conv layer, by the letter used in configs.
POOLS: dict[str, str] = {
    "m": "max pool 2x2",
    "a": "average pool 2x2",
    "i": "no pooling",
    "s": "softmax pool 2x2 at temperature tau (holomorphic)",
}

#: Pools whose transpose depends on the point (a context is kept); the others are linear.
NONLINEAR_POOLS = ("m", "s")


@dataclass(frozen=True)
class ConvLayer:
    """One convolutional layer of an energy network; its neurons live in the pooled space.

    Also the ``model.conv[i]`` config section: each default is written here only.

    Args:
        channels: output channels.
        kernel: square kernel size.
        stride: convolution stride.
        padding: zero padding on each side.
        pool: a key of :data:`POOLS`: ``m`` 2×2 max pool, ``a`` 2×2 average pool, ``i`` none,
            ``s`` 2×2 softmax pool.
        temperature: τ of the softmax pool (1 in the authors' VGG-5, 10 in their VGG-6).

    Example:
        >>> ConvLayer(32, kernel=5).output_hw(28, 28)
        (12, 12)
    """

    channels: int
    kernel: int = field(default=3)
    stride: int = 1
    padding: int = 0
    pool: str = field(default="m", metadata={"choices": POOLS})
    temperature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("channels", "kernel", "stride"):
            check_int(getattr(self, name), name, 1)
        check_int(self.padding, "padding", 0)
        check_choice(self.pool, POOLS, "pool")
        check_number(self.temperature, "temperature")

    def conv_hw(self, h: int, w: int) -> tuple[int, int]:
        """Height and width of the convolution's output (before pooling) for an h×w input."""
        k, s, p = self.kernel, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """Height and width of this layer's (pooled) state for an h×w input."""
        ch, cw = self.conv_hw(h, w)
        return (ch // 2, cw // 2) if self.pool != "i" else (ch, cw)

    def output_side(self, side: int) -> int:
        """Side of this layer's (pooled) state for a square input of side ``side``."""
        return self.output_hw(side, side)[0]


class Interaction(nn.Module):
    """Base class: one bilinear term of Φ between ``pre_shape`` and ``post_shape`` states."""

    pre_shape: tuple[int, ...]
    post_shape: tuple[int, ...]

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, Any]:
        """Return ∂φ/∂post (a fresh tensor, safe to modify in place) and a context."""
        raise NotImplementedError

    def backward_drive(self, post: Tensor, ctx: Any) -> Tensor:
        """Return ∂φ/∂pre given the context of ``forward_drive`` at the current ``pre``."""
        raise NotImplementedError

    def backward_context(self, pre: Tensor) -> Any:
        """The context :meth:`backward_drive` needs at ``pre``: ``forward_drive``'s, unless a
        subclass can get it for less (feedback weights: the feedback map's pool alone)."""
        return self.forward_drive(pre)[1]

    def phi(self, pre: Tensor, post: Tensor) -> Tensor:
        """Differentiable per-example value of the term, shape (B,)."""
        raise NotImplementedError

    def weights(self) -> list[nn.Parameter]:
        """The parameters of φ, in the order of :meth:`weight_grads`."""
        raise NotImplementedError

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        """Σ over the batch of ∂φ(pre, post)/∂θ at fixed states, one tensor per weight.

        φ is linear in θ for a fixed pool argmax, so this is the Hebbian product post ⊗ pre
        (routed through the argmax of the pre-pool map conv(pre) for max-pooled layers).
        ``ctx``: the context of ``forward_drive(pre)`` when the caller has it.
        """
        raise NotImplementedError

    def paired_weight_grads(
        self, pre: Tensor, post: Tensor, ctx: Any = None
    ) -> list[tuple[nn.Parameter, Tensor]]:
        """:meth:`weight_grads` as (parameter, gradient) pairs."""
        return list(zip(self.weights(), self.weight_grads(pre, post, ctx), strict=True))


class DenseInteraction(Interaction):
    """φ = ⟨post, W·flatten(pre) + b⟩ with W of shape (out, prod(pre_shape))."""

    def __init__(self, pre_shape: tuple[int, ...], out_features: int) -> None:
        super().__init__()
        self.pre_shape = tuple(pre_shape)
        self.post_shape = (out_features,)
        self.linear = nn.Linear(math.prod(pre_shape), out_features)

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, None]:
        return F.linear(pre.flatten(1), self.linear.weight, self.linear.bias), None

    def backward_drive(self, post: Tensor, ctx: None) -> Tensor:
        # (B, out) @ (out, in) -> (B, in), reshaped to the presynaptic layout (e.g. conv maps).
        return torch.mm(post, self.linear.weight).view(post.shape[0], *self.pre_shape)

    def phi(self, pre: Tensor, post: Tensor) -> Tensor:
        return (post * self.linear(pre.flatten(1))).sum(1)

    def weights(self) -> list[nn.Parameter]:
        # nn.Linear annotates its weight as a plain Tensor; it is a Parameter.
        return [cast(nn.Parameter, self.linear.weight), self.linear.bias]

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        # Σ_b ⟨post_b, W pre_b + b⟩: ∂/∂W = postᵀ pre (one matmul), ∂/∂b = Σ_b post_b.
        post = post.detach()
        return [torch.mm(post.t(), pre.detach().flatten(1)), post.sum(0)]


class ConvInteraction(Interaction):
    """φ = ⟨post, P(conv(pre) + b)⟩; post lives in the pooled space."""

    def __init__(self, pre_shape: tuple[int, int, int], spec: ConvLayer, index: int = 0) -> None:
        super().__init__()
        c, h, w = pre_shape
        self.spec = spec
        self.pre_shape = tuple(pre_shape)
        self.conv = nn.Conv2d(c, spec.channels, spec.kernel, spec.stride, spec.padding)
        # Channels-last weights, like the states (see EnergyNetwork.zero_state): oneDNN and
        # cuDNN then skip a layout conversion of the weight at every conv call.
        self.conv.weight.data = fast_layout(self.conv.weight.data)
        ch, cw = spec.conv_hw(h, w)
        if ch < 1 or cw < 1:
            raise ValueError(
                f"conv layer {index}: input {h}x{w} with kernel {spec.kernel}, stride "
                f"{spec.stride}, padding {spec.padding} gives an empty {ch}x{cw} output"
            )
        self.conv_hw = (ch, cw)
        ph, pw = spec.output_hw(h, w)
        if ph < 1 or pw < 1:
            raise ValueError(
                f"conv layer {index}: the {ch}x{cw} conv output is too small for 2x2 pooling"
            )
        self.post_shape = (spec.channels, ph, pw)
        # Output padding that makes the transposed conv return exactly the presynaptic size:
        # the input rows a strided conv never reaches (always fewer than the stride).
        self._output_padding = (
            (h + 2 * spec.padding - spec.kernel) % spec.stride,
            (w + 2 * spec.padding - spec.kernel) % spec.stride,
        )

    def _pool(self, pre_pool: Tensor) -> Tensor:
        if self.spec.pool == "m":
            return F.max_pool2d(pre_pool, 2, 2)
        if self.spec.pool == "a":
            return F.avg_pool2d(pre_pool, 2, 2)
        if self.spec.pool == "s":
            return softmax_pool(pre_pool, self.spec.temperature)[0]
        return pre_pool

    def _pool_with_context(self, z: Tensor) -> tuple[Tensor, Any]:
        """P(z) and what the pool's transpose needs: (argmax, z) for max pool, the window
        weights ∂P/∂z for softmax pool, else None."""
        if self.spec.pool == "m":
            pooled, argmax = F.max_pool2d(z, 2, 2, return_indices=True)
            return pooled, (argmax, z)
        if self.spec.pool == "s":
            return softmax_pool(z, self.spec.temperature)
        return self._pool(z), None

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, Any]:
        return self._pool_with_context(self.conv(pre))

    def _unpool(self, post: Tensor, ctx: Any) -> Tensor:
        """The pool's transpose: ``post`` back in the conv output's space."""
        if self.spec.pool == "m":
            argmax, z = ctx
            return max_pool_scatter(post, z, argmax)
        if self.spec.pool == "s":
            return softmax_unpool(post, ctx, self.conv_hw)
        if self.spec.pool == "a":
            ch, cw = self.conv_hw
            up = post.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).mul_(0.25)
            if up.shape[-2:] != (ch, cw):  # odd conv output: the last row/column is not pooled
                up = F.pad(up, (0, cw - up.shape[-1], 0, ch - up.shape[-2]))
            return up
        return post

    def _transposed_conv(self, g: Tensor, weight: Tensor) -> Tensor:
        s = self.spec
        return F.conv_transpose2d(
            g, weight, stride=s.stride, padding=s.padding, output_padding=self._output_padding
        )

    @property
    def backward_weight(self) -> Tensor:
        """The weight whose transposed convolution carries ``post`` back (W; B if asymmetric)."""
        return self.conv.weight

    def feedback_map(self, pre: Tensor) -> Tensor | None:
        """The pre-pool map whose pool context ``backward_drive`` needs, when it is not the
        forward map conv(pre) itself (asymmetric nets: conv_B(pre)); None here."""
        return None

    def backward_drive(self, post: Tensor, ctx: Any) -> Tensor:
        return self._transposed_conv(self._unpool(post, ctx), self.backward_weight)

    def weights(self) -> list[nn.Parameter]:
        # nn.Conv2d annotates weight and bias as (optional) plain Tensors; both are Parameters
        # (the conv is built with a bias).
        return [cast(nn.Parameter, self.conv.weight), cast(nn.Parameter, self.conv.bias)]

    def _hebbian(self, pre: Tensor, post: Tensor, ctx: Any, weight: Tensor, bias: bool):
        # For a fixed pool argmax, φ = ⟨u, conv(pre, W) + b⟩ with u the unpooled post: linear in
        # (W, b). One weight-gradient convolution gives both, with no graph through the pool.
        u = self._unpool(post.detach(), ctx).to(pre.dtype)
        s = self.spec
        return conv_param_grads(u, pre.detach(), weight, s.stride, s.padding, bias)

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        with torch.no_grad():
            if ctx is None:  # the argmax of this term's own pre-pool map conv_W(pre)
                ctx = self._pool_with_context(self.conv(pre.detach()))[1]
            g_w, g_b = self._hebbian(pre, post, ctx, self.conv.weight, bias=True)
        assert g_b is not None
        return [g_w, g_b]

    def phi(self, pre: Tensor, post: Tensor) -> Tensor:
        # sum over (C, H, W), not flatten(1).sum(1): flatten copies channels-last maps to NCHW,
        # and the gradient then reaches the max pool in NCHW, whose backward is 8x slower.
        return (post * self._pool(self.conv(pre))).sum(dim=(1, 2, 3))
