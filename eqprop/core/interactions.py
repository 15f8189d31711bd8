"""Bilinear interaction terms of the primitive function Φ and their closed-form gradients.

Spec §1. An interaction couples a presynaptic state ``pre`` (layer n−1, or the input) to a
postsynaptic state ``post`` (layer n):

- dense: φ = ⟨post, W·flatten(pre) + b⟩
- conv:  φ = ⟨post, P(conv(pre) + b)⟩, P a 2×2 stride-2 max pool, avg pool or identity.

Each interaction gives, without autograd,

- ``forward_drive(pre)``  = ∂φ/∂post, plus a context (the max-pool argmax of the current
  pre-pool map) that the matching backward call reuses;
- ``backward_drive(post, ctx)`` = ∂φ/∂pre: the transposed map applied to the pool's backward
  (max-unpooling at the argmax, or spreading ¼ for avg pool).

``phi(pre, post)`` is the plain, differentiable per-example value, used for the weight
gradient of EP and by the references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "POOLS",
    "ConvInteraction",
    "ConvLayer",
    "DenseInteraction",
    "Interaction",
    "fast_layout",
]

POOLS: dict[str, str] = {"m": "max pool 2x2", "a": "average pool 2x2", "i": "no pooling"}


def fast_layout(t: Tensor) -> Tensor:
    """``t`` in channels-last strides when it is 4-D (image maps and conv weights), else ``t``.

    Convolutions and pooling run several times faster in that layout on CPU and GPU.
    """
    if t.dim() != 4:
        return t
    out = torch.empty_like(t, memory_format=torch.channels_last)
    if out.stride() == t.stride():
        return t
    # Not t.contiguous(memory_format=...): with one channel that keeps the NCHW strides (they
    # count as channels-last too), and convolutions of such a tensor then return NCHW maps,
    # whose max pooling is about 9x slower on CPU.
    return out.copy_(t)


@dataclass(frozen=True)
class ConvLayer:
    """Specification of one convolutional layer of an energy network.

    Args:
        channels: output channels.
        kernel: square kernel size.
        stride: convolution stride.
        padding: zero padding of the convolution.
        pool: ``"m"`` (max 2×2), ``"a"`` (avg 2×2) or ``"i"`` (none), applied after the conv.
    """

    channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    pool: str = "m"

    def __post_init__(self) -> None:
        for name in ("channels", "kernel", "stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"conv layer {name}: {value!r} is not valid; expected an int >= 1")
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(
                f"conv layer padding: {self.padding!r} is not valid; expected an int >= 0"
            )
        if self.pool not in POOLS:
            choices = ", ".join(f"{k!r} ({v})" for k, v in POOLS.items())
            raise ValueError(
                f"conv layer pool: unknown pooling {self.pool!r}; choose one of {choices}"
            )


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

    def phi(self, pre: Tensor, post: Tensor) -> Tensor:
        """Differentiable per-example value of the term, shape (B,)."""
        raise NotImplementedError

    def hebbian(self, pre: Tensor, post: Tensor, ctx: Any = None) -> Tensor:
        """Σ over the batch of φ(pre, post) as a scalar whose θ-gradient is the Hebbian product.

        States are constants here (EP's weight update). Subclasses build the value from the
        gradient itself, which is cheaper than differentiating φ. ``ctx``: the context of
        ``forward_drive(pre)`` when the caller has it (e.g. the input drive's pool argmax).
        """
        return self.phi(pre.detach(), post.detach()).sum()

    def scale_(self, factor: float) -> None:
        """Multiply weight and bias by ``factor`` (the paper's scaled initialisation)."""
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(factor)


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

    def hebbian(self, pre: Tensor, post: Tensor, ctx: Any = None) -> Tensor:
        # Σ_b ⟨post_b, W pre_b + b⟩ = ⟨W, postᵀ pre⟩ + ⟨b, Σ_b post_b⟩: one matmul gives both the
        # value and the gradient (postᵀ pre), where autograd of φ would add a forward matmul.
        with torch.no_grad():
            post = post.detach()
            g_w = torch.mm(post.t(), pre.detach().flatten(1))
            g_b = post.sum(0)
        return (self.linear.weight * g_w).sum() + (self.linear.bias * g_b).sum()


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
        ch = (h + 2 * spec.padding - spec.kernel) // spec.stride + 1
        cw = (w + 2 * spec.padding - spec.kernel) // spec.stride + 1
        if ch < 1 or cw < 1:
            raise ValueError(
                f"conv layer {index}: input {h}x{w} with kernel {spec.kernel}, stride "
                f"{spec.stride}, padding {spec.padding} gives an empty {ch}x{cw} output"
            )
        self.conv_hw = (ch, cw)
        ph, pw = (ch // 2, cw // 2) if spec.pool in ("m", "a") else (ch, cw)
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
        return pre_pool

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, Any]:
        z = self.conv(pre)  # (B, C_out, ch, cw)
        if self.spec.pool == "m":
            pooled, argmax = F.max_pool2d(z, 2, 2, return_indices=True)
            return pooled, (argmax, z)
        if self.spec.pool == "a":
            return F.avg_pool2d(z, 2, 2), None
        return z, None

    def _unpool(self, post: Tensor, ctx: Any) -> Tensor:
        ch, cw = self.conv_hw
        if self.spec.pool == "m":
            argmax, z = ctx
            # Max-pool's backward scatters post to the argmax of the current pre-pool map z. It
            # is the same map as max_unpool2d, many times faster on CPU, and keeps z's layout.
            return torch.ops.aten.max_pool2d_with_indices_backward(
                post.to(z.dtype), z, [2, 2], [2, 2], [0, 0], [1, 1], False, argmax
            )  # (z is bf16 under autocast while states stay float32)
        if self.spec.pool == "a":
            up = post.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).mul_(0.25)
            if up.shape[-2:] != (ch, cw):  # odd conv output: the last row/column is not pooled
                up = F.pad(up, (0, cw - up.shape[-1], 0, ch - up.shape[-2]))
            return up
        return post

    def backward_drive(self, post: Tensor, ctx: Any) -> Tensor:
        g = self._unpool(post, ctx)
        s = self.spec
        return F.conv_transpose2d(
            g, self.conv.weight, stride=s.stride, padding=s.padding,
            output_padding=self._output_padding,
        )  # fmt: skip

    def hebbian(self, pre: Tensor, post: Tensor, ctx: Any = None) -> Tensor:
        # For a fixed pool argmax, φ = ⟨u, conv(pre, W) + b⟩ with u the unpooled post: linear in
        # (W, b). One weight-gradient convolution gives ∂φ/∂W and ∂φ/∂b, and the value is
        # ⟨W, ∂φ/∂W⟩ + ⟨b, ∂φ/∂b⟩: no graph through the conv and the pool.
        s = self.spec
        with torch.no_grad():
            pre, post = pre.detach(), post.detach()
            if ctx is None:
                ctx = self.forward_drive(pre)[1]
            u = self._unpool(post, ctx).to(pre.dtype)
            w = self.conv.weight
            _, g_w, g_b = torch.ops.aten.convolution_backward(
                u, pre, w, [w.shape[0]], [s.stride] * 2, [s.padding] * 2, [1, 1], False,
                [0, 0], 1, [False, True, True],
            )  # fmt: skip
        return (w * g_w).sum() + (self.conv.bias * g_b).sum()

    def phi(self, pre: Tensor, post: Tensor) -> Tensor:
        # sum over (C, H, W), not flatten(1).sum(1): flatten copies channels-last maps to NCHW,
        # and the gradient then reaches the max pool in NCHW, whose backward is 8x slower.
        return (post * self._pool(self.conv(pre))).sum(dim=(1, 2, 3))
