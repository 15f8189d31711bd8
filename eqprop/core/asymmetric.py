"""Asymmetric ("VF", vector-field) networks: separate forward and feedback weights (spec §4).

Interaction n ≥ 1 holds the forward weights W_n (with bias b_n, from s_{n−1} to s_n) *and* the
feedback weights B that carry s_n back to s_{n−1} (same shape as W_n, no bias). The spec calls
that feedback weight B_{n−1} (it belongs to the per-layer function of layer n−1); here it lives
next to W_n, as ``interactions[n].feedback``, so that it shares W_n's shapes, layout and
per-layer optimiser settings. Interaction 0 (from the clamped input) has no feedback weight.

There is no scalar Φ. Each layer has its own function, written with the storage indexing

    φ_n(s) = ⟨s_n, P_n(W_n s_{n−1} + b_n)⟩ + ⟨s_{n+1}, P_{n+1}(B_{n+1} s_n)⟩,

and the dynamics are s_n ← σ(∂φ_n/∂s_n) = σ(P_n(W_n s_{n−1} + b_n) + B_{n+1}ᵀ P⁻¹_{n+1}(s_{n+1})),
where the max-pool backward P⁻¹_{n+1} scatters to the argmax of the *feedback* pre-pool map
conv_B(s_n). The generic solver runs these dynamics unchanged: ``forward_drive`` returns the W
drive and, as context, that feedback argmax; ``backward_drive`` applies Bᵀ.

The update rules are objects (:data:`UPDATE_RULES`, in :mod:`eqprop.core.update_rules`), each
turning the compared phases into weight gradients in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqprop.core.chain import ChainNetwork, Interactions, Phase, WeightGrads
from eqprop.core.interactions import (
    NONLINEAR_POOLS,
    ConvInteraction,
    ConvLayer,
    DenseInteraction,
)
from eqprop.core.settings import NetworkSettings
from eqprop.core.update_rules import UPDATE_RULES, DifferentRule, SameRule, UpdateRule
from eqprop.core.validation import check_choice

__all__ = [
    "FEEDBACK_INITS",
    "UPDATE_RULES",
    "AsymmetricConvInteraction",
    "AsymmetricDenseInteraction",
    "AsymmetricNetwork",
    "AsymmetricSettings",
    "DifferentRule",
    "SameRule",
    "UpdateRule",
    "init_feedback",
    "weight_angle",
]

FEEDBACK_INITS: dict[str, str] = {
    "random": "a separate draw of PyTorch's default init (B starts about 90° from W)",
    "forward": "B equal to the forward weight W",
}


def _default_init_like(weight: Tensor) -> Tensor:
    """A fresh draw of PyTorch's default Linear/Conv2d weight init, in ``weight``'s layout."""
    fresh = torch.empty_like(weight)  # keeps dtype, device and (channels-last) strides
    nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
    return fresh


class AsymmetricConvInteraction(ConvInteraction):
    """Conv interaction with feedback weights: W s_{n−1} drives s_n, Bᵀ carries s_n back.

    ``forward_drive(pre)`` = P(conv_W(pre) + b); its context is the max-pool argmax of the
    feedback map conv_B(pre) (one extra conv per step, only for max-pooled layers), which
    ``backward_drive(post, ctx)`` = conv_Bᵀ(P⁻¹(post)) needs.
    """

    def __init__(self, pre_shape: tuple[int, int, int], spec: ConvLayer, index: int = 0) -> None:
        super().__init__(pre_shape, spec, index)
        # Channels-last like W (inherited from the empty_like of a channels-last weight).
        self.feedback = nn.Parameter(_default_init_like(self.conv.weight))

    @property
    def forward_weight(self) -> nn.Parameter:
        """The forward weight W (the feedback weight ``feedback`` has the same shape)."""
        return cast(nn.Parameter, self.conv.weight)  # annotated as a plain Tensor by torch

    def _feedback_conv(self, pre: Tensor) -> Tensor:
        s = self.spec
        return F.conv2d(pre, self.feedback, None, s.stride, s.padding)

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, Any]:
        z = self.conv(pre)
        if self.spec.pool not in NONLINEAR_POOLS:
            # Avg pool and identity are linear: the backward needs no context, so no B conv.
            return self._pool(z), None
        # The backward scatters to the argmax (max pool), or weighs by ∂P/∂z (softmax pool),
        # of the feedback map conv_B(pre).
        return self._pool(z), self.feedback_context(pre)

    def backward_context(self, pre: Tensor) -> Any:
        return self.feedback_context(pre)

    def feedback_context(self, pre: Tensor) -> Any:
        """The pool context of conv_B(pre) that ``backward_drive`` needs (None for a linear
        pool): what ``forward_drive`` returns, without its forward conv."""
        if self.spec.pool not in NONLINEAR_POOLS:
            return None
        return self._pool_with_context(self._feedback_conv(pre))[1]

    @property
    def backward_weight(self) -> Tensor:
        """The feedback weight B: its transposed convolution carries ``post`` back."""
        return self.feedback

    def feedback_map(self, pre: Tensor) -> Tensor:
        """conv_B(pre), whose pool context the backward drive uses."""
        return self._feedback_conv(pre)

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        # forward_drive's context is the *feedback* argmax: W's term takes its own.
        return super().weight_grads(pre, post, None)

    def feedback_grad(self, pre: Tensor, post: Tensor) -> Tensor:
        """Σ over the batch of ∂⟨post, P(conv_B(pre))⟩/∂B, the pool argmax that of conv_B."""
        with torch.no_grad():
            ctx = self.feedback_context(pre.detach())
            return self._hebbian(pre, post, ctx, self.feedback, bias=False)[0]

    def phi_forward(self, pre: Tensor, post: Tensor) -> Tensor:
        """⟨post, P(conv_W(pre) + b)⟩ per example, shape (B,)."""
        return self.phi(pre, post)

    def phi_feedback(self, pre: Tensor, post: Tensor) -> Tensor:
        """⟨post, P(conv_B(pre))⟩ per example, shape (B,); the pool argmax is that of conv_B."""
        return (post * self._pool(self._feedback_conv(pre))).sum(dim=(1, 2, 3))  # see phi


class AsymmetricDenseInteraction(DenseInteraction):
    """Dense interaction with feedback weights B of W's shape (out, prod(pre_shape)), no bias."""

    def __init__(self, pre_shape: tuple[int, ...], out_features: int) -> None:
        super().__init__(pre_shape, out_features)
        self.feedback = nn.Parameter(_default_init_like(self.linear.weight))

    @property
    def forward_weight(self) -> nn.Parameter:
        """The forward weight W (the feedback weight ``feedback`` has the same shape)."""
        return cast(nn.Parameter, self.linear.weight)  # annotated as a plain Tensor by torch

    def backward_drive(self, post: Tensor, ctx: None) -> Tensor:
        return torch.mm(post, self.feedback).view(post.shape[0], *self.pre_shape)

    def feedback_grad(self, pre: Tensor, post: Tensor) -> Tensor:
        """Σ over the batch of ∂⟨post, B·flatten(pre)⟩/∂B = postᵀ pre."""
        return torch.mm(post.detach().t(), pre.detach().flatten(1))

    def phi_forward(self, pre: Tensor, post: Tensor) -> Tensor:
        """⟨post, W·flatten(pre) + b⟩ per example, shape (B,)."""
        return self.phi(pre, post)

    def phi_feedback(self, pre: Tensor, post: Tensor) -> Tensor:
        """⟨post, B·flatten(pre)⟩ per example, shape (B,)."""
        return (post * F.linear(pre.flatten(1), self.feedback)).sum(1)


AsymmetricInteraction = AsymmetricConvInteraction | AsymmetricDenseInteraction


def init_feedback(layer: AsymmetricInteraction, init: str, scale: float = 1.0) -> None:
    """Set B from its fresh default draw: W's copy (``forward``) or that draw times ``scale``
    (``random``; ``scale``: the factor W's own init has over the default)."""
    check_choice(init, FEEDBACK_INITS, "feedback_init")
    with torch.no_grad():
        if init == "forward":
            layer.feedback.copy_(layer.forward_weight)
        else:
            layer.feedback.mul_(scale)


@torch.no_grad()
def weight_angle(forward: Tensor, feedback: Tensor) -> float:
    """Angle in degrees between two weights, flattened (0 when equal, about 90 at random)."""
    uw = forward.flatten() / forward.norm()
    ub = feedback.flatten() / feedback.norm()
    # 2·atan2(|u−v|, |u+v|) is exact near 0° and 180°, where acos of a dot product is not.
    return math.degrees(float(2.0 * torch.atan2((uw - ub).norm(), (uw + ub).norm())))


@dataclass(frozen=True)
class AsymmetricSettings(NetworkSettings):
    """:class:`~eqprop.core.settings.NetworkSettings` plus the feedback weights' settings.

    Args:
        update_rule: a key of :data:`UPDATE_RULES`.
        feedback_init: a key of :data:`FEEDBACK_INITS`.
    """

    update_rule: str = field(default="different", metadata={"choices": UPDATE_RULES})
    feedback_init: str = field(default="random", metadata={"choices": FEEDBACK_INITS})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.update_rule, UPDATE_RULES, "update_rule")
        check_choice(self.feedback_init, FEEDBACK_INITS, "feedback_init")


class AsymmetricNetwork(ChainNetwork):
    """A chain network with separate, trained feedback weights (spec §4).

    Same layers, outputs, losses and solver interface as
    :class:`~eqprop.core.network.EnergyNetwork`; the forward weights are drawn exactly as the
    symmetric network's (same seed, same W), then the feedback weights. There is no scalar Φ.

    Args:
        input_shape, conv, dense, num_classes, output, activation: as for ``EnergyNetwork``.
        init_scale: as for ``EnergyNetwork``; a layer's factor also scales its feedback.
        update_rule, feedback_init: see :class:`AsymmetricSettings`.

    Example:
        >>> net = AsymmetricNetwork((8,), dense=[6], num_classes=3, feedback_init="forward")
        >>> net.weight_angles()
        {'layer1': 0.0}
    """

    settings_class = AsymmetricSettings
    settings: AsymmetricSettings

    def __init__(
        self,
        input_shape: Sequence[int],
        conv: Sequence[ConvLayer] = AsymmetricSettings.conv,
        dense: Sequence[int] = AsymmetricSettings.dense,
        num_classes: int = 10,
        output: str = AsymmetricSettings.output,
        activation: str = AsymmetricSettings.activation,
        init_scale: float | Sequence[float] | None = AsymmetricSettings.init_scale,
        update_rule: str = AsymmetricSettings.update_rule,
        feedback_init: str = AsymmetricSettings.feedback_init,
    ) -> None:
        # Any sequences are accepted here; the settings store tuples (__post_init__ turns an
        # init_scale list into one, as it does conv and dense).
        scale = cast("float | tuple[float, ...] | None", init_scale)
        settings = AsymmetricSettings(
            tuple(conv), tuple(dense), output, activation, scale, update_rule, feedback_init
        )
        super().__init__(input_shape, num_classes, settings)
        self.update_rule = update_rule
        self.feedback_init = feedback_init
        scales = settings.layer_scales() or [1.0] * self.n_layers
        layers: list[nn.Module] = [self.interactions[0]]  # from the input: no feedback
        for n in range(1, len(self.interactions)):
            layers.append(self._with_feedback(n, scales[n]))
        self.interactions = Interactions(layers)

    def _with_feedback(self, n: int, scale: float) -> AsymmetricInteraction:
        old = self.interactions[n]
        new: AsymmetricInteraction
        if isinstance(old, ConvInteraction):
            image = cast("tuple[int, int, int]", old.pre_shape)  # a conv's input: (C, H, W)
            new = AsymmetricConvInteraction(image, old.spec, index=n)
        else:
            new = AsymmetricDenseInteraction(old.pre_shape, old.post_shape[0])
        with torch.no_grad():
            # Keep the parent's W and b (already scaled), so W matches a symmetric net.
            for mine, theirs in zip(new.weights(), old.weights(), strict=True):
                mine.copy_(theirs)
        init_feedback(new, self.feedback_init, scale)
        return new

    @property
    def rule(self) -> UpdateRule:
        """The update rule object named by :attr:`update_rule`."""
        return UPDATE_RULES[self.update_rule]

    def feedback_layers(self) -> list[AsymmetricInteraction]:
        """The interactions that hold a feedback weight: 1..N−1 (index n−1 in this list)."""
        return cast("list[AsymmetricInteraction]", list(self.interactions)[1:])

    @torch.no_grad()
    def weight_angles(self) -> dict[str, float]:
        """Angle in degrees between each feedback weight and its forward weight, flattened.

        Keyed ``"layer{n}"`` for interaction n (the spec's B_{n−1} against W_n): about 90 for
        independent random draws, 0 when B = W.
        """
        return {
            f"layer{n}": weight_angle(layer.forward_weight, layer.feedback)
            for n, layer in enumerate(self.feedback_layers(), start=1)
        }

    def weight_contrast(
        self, x: Tensor, free_state: Sequence[Tensor], phases: Sequence[Phase], input_ctx: Any
    ) -> WeightGrads:
        """The update rule's contrast (see :data:`UPDATE_RULES`)."""
        return self.rule.weight_contrast(self, x, free_state, phases, input_ctx)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, update_rule={self.update_rule!r}, "
            f"feedback_init={self.feedback_init!r}"
        )

    def describe(self) -> dict[str, Any]:
        """A plain summary (shapes, parameter count, update rule) for logs."""
        return {
            **super().describe(),
            "update_rule": self.update_rule,
            "feedback_init": self.feedback_init,
        }
