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

Update rules (:data:`UPDATE_RULES`):

- ``"different"`` (the spec's default): each synapse pairs its postsynaptic *nudged* state with
  its presynaptic *free* state: ΔW_n ∝ (s^β_n − s*_n) ⊗ s*_{n−1} and
  ΔB_{n+1} ∝ s*_{n+1} ⊗ (s^β_n − s*_n).
- ``"same"``: the plain per-layer φ_n contrasted at the compared states, then W_n and B_n (same
  shape) both receive the average of their two gradients (Kolen–Pollack-like).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqprop.core.interactions import ConvInteraction, ConvLayer, DenseInteraction
from eqprop.core.network import EnergyNetwork, cat_states

__all__ = [
    "FEEDBACK_INITS",
    "UPDATE_RULES",
    "AsymmetricConvInteraction",
    "AsymmetricDenseInteraction",
    "AsymmetricNetwork",
]

UPDATE_RULES: dict[str, str] = {
    "different": "post nudged ⊗ pre free for every synapse (spec §4 default)",
    "same": "plain per-layer φ contrast, then W and B share the average gradient",
}

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

    Args:
        pre_shape: presynaptic state shape (C, H, W).
        spec: the conv layer.
        index: layer index, for error messages.
    """

    def __init__(self, pre_shape: tuple[int, int, int], spec: ConvLayer, index: int = 0) -> None:
        super().__init__(pre_shape, spec, index)
        # Channels-last like W (inherited from the empty_like of a channels-last weight).
        self.feedback = nn.Parameter(_default_init_like(self.conv.weight))

    @property
    def forward_weight(self) -> Tensor:
        """The forward weight W (the feedback weight ``feedback`` has the same shape)."""
        return self.conv.weight

    def _feedback_conv(self, pre: Tensor) -> Tensor:
        s = self.spec
        return F.conv2d(pre, self.feedback, None, s.stride, s.padding)

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, Any]:
        z = self.conv(pre)
        if self.spec.pool != "m":
            # Avg pool and identity are linear: the backward needs no argmax, so no B conv.
            return self._pool(z), None
        zb = self._feedback_conv(pre)
        _, argmax = F.max_pool2d(zb, 2, 2, return_indices=True)
        return F.max_pool2d(z, 2, 2), (argmax, zb)

    def backward_drive(self, post: Tensor, ctx: Any) -> Tensor:
        g = self._unpool(post, ctx)  # scatters to the argmax of conv_B(pre) for max pool
        s = self.spec
        return F.conv_transpose2d(
            g, self.feedback, stride=s.stride, padding=s.padding,
            output_padding=self._output_padding,
        )  # fmt: skip

    def phi_forward(self, pre: Tensor, post: Tensor) -> Tensor:
        """⟨post, P(conv_W(pre) + b)⟩ per example, shape (B,)."""
        return self.phi(pre, post)

    def phi_feedback(self, pre: Tensor, post: Tensor) -> Tensor:
        """⟨post, P(conv_B(pre))⟩ per example, shape (B,); the pool argmax is that of conv_B."""
        return (post * self._pool(self._feedback_conv(pre))).sum(dim=(1, 2, 3))  # see phi


class AsymmetricDenseInteraction(DenseInteraction):
    """Dense interaction with feedback weights B of W's shape (out, prod(pre_shape)), no bias.

    Args:
        pre_shape: presynaptic state shape.
        out_features: size of the postsynaptic layer.
    """

    def __init__(self, pre_shape: tuple[int, ...], out_features: int) -> None:
        super().__init__(pre_shape, out_features)
        self.feedback = nn.Parameter(_default_init_like(self.linear.weight))

    @property
    def forward_weight(self) -> Tensor:
        """The forward weight W (the feedback weight ``feedback`` has the same shape)."""
        return self.linear.weight

    def backward_drive(self, post: Tensor, ctx: None) -> Tensor:
        return torch.mm(post, self.feedback).view(post.shape[0], *self.pre_shape)

    def phi_forward(self, pre: Tensor, post: Tensor) -> Tensor:
        """⟨post, W·flatten(pre) + b⟩ per example, shape (B,)."""
        return self.phi(pre, post)

    def phi_feedback(self, pre: Tensor, post: Tensor) -> Tensor:
        """⟨post, B·flatten(pre)⟩ per example, shape (B,)."""
        return (post * F.linear(pre.flatten(1), self.feedback)).sum(1)


AsymmetricInteraction = AsymmetricConvInteraction | AsymmetricDenseInteraction


class AsymmetricNetwork(EnergyNetwork):
    """An energy-network layout with separate, trained feedback weights (spec §4).

    Same layers, outputs, losses and solver interface as :class:`EnergyNetwork`; the forward
    weights are drawn exactly as the symmetric network's (same seed, same W), then the feedback
    weights. There is no scalar Φ, so :meth:`phi` raises; the EP update comes from
    :meth:`ep_surrogate` and :meth:`postprocess_grads`.

    Args:
        input_shape, conv, dense, num_classes, output, activation: as for
            :class:`EnergyNetwork`.
        init_scale: as for :class:`EnergyNetwork`; a layer's factor also scales its feedback.
        update_rule: ``"different"`` or ``"same"`` (see :data:`UPDATE_RULES`).
        feedback_init: ``"random"`` or ``"forward"`` (see :data:`FEEDBACK_INITS`).

    Example:
        >>> net = AsymmetricNetwork((8,), dense=[6], num_classes=3, feedback_init="forward")
        >>> net.weight_angles()
        {'layer1': 0.0}
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        conv: Sequence[ConvLayer] = (),
        dense: Sequence[int] = (),
        num_classes: int = 10,
        output: str = "mse",
        activation: str = "my_hard_sig",
        init_scale: float | Sequence[float] | None = None,
        update_rule: str = "different",
        feedback_init: str = "random",
    ) -> None:
        if update_rule not in UPDATE_RULES:
            raise ValueError(
                f"update_rule: unknown rule {update_rule!r}; "
                f"choose one of {', '.join(UPDATE_RULES)}"
            )
        if feedback_init not in FEEDBACK_INITS:
            raise ValueError(
                f"feedback_init: unknown init {feedback_init!r}; "
                f"choose one of {', '.join(FEEDBACK_INITS)}"
            )
        super().__init__(input_shape, conv, dense, num_classes, output, activation, init_scale)
        self.update_rule = update_rule
        self.feedback_init = feedback_init
        # The parent validated init_scale; repeat its per-layer factors for the feedback draws.
        if init_scale is None:
            scales = [1.0] * self.n_layers
        elif isinstance(init_scale, (int, float)):
            scales = [float(init_scale)] * self.n_layers
        else:
            scales = [float(s) for s in init_scale]

        layers: list[nn.Module] = [self.interactions[0]]  # from the input: no feedback
        for n in range(1, len(self.interactions)):
            old = self.interactions[n]
            new: AsymmetricInteraction
            if isinstance(old, ConvInteraction):
                new = AsymmetricConvInteraction(old.pre_shape, old.spec, index=n)  # type: ignore[arg-type]
            else:
                new = AsymmetricDenseInteraction(old.pre_shape, old.post_shape[0])
            with torch.no_grad():
                # Keep the parent's W and b (already scaled), so W matches a symmetric net.
                new.forward_weight.copy_(_weight_of(old))
                _bias_of(new).copy_(_bias_of(old))
                if feedback_init == "forward":
                    new.feedback.copy_(new.forward_weight)
                else:
                    new.feedback.mul_(scales[n])
            layers.append(new)
        self.interactions = nn.ModuleList(layers)

    # ----------------------------------------------------------------- structure

    def feedback_layers(self) -> list[AsymmetricInteraction]:
        """The interactions that hold a feedback weight: 1..N−1 (index n−1 in this list)."""
        return list(self.interactions)[1:]  # type: ignore[return-value]

    @torch.no_grad()
    def weight_angles(self) -> dict[str, float]:
        """Angle in degrees between each feedback weight and its forward weight, flattened.

        Keyed ``"layer{n}"`` for interaction n (the spec's B_{n−1} against W_n): about 90 for
        independent random draws, 0 when B = W.
        """
        angles: dict[str, float] = {}
        for n, layer in enumerate(self.feedback_layers(), start=1):
            w = layer.forward_weight.flatten()
            b = layer.feedback.flatten()
            uw, ub = w / w.norm(), b / b.norm()
            # 2·atan2(|u−v|, |u+v|) is exact near 0° and 180°, where acos of a dot product is not.
            rad = 2.0 * torch.atan2((uw - ub).norm(), (uw + ub).norm())
            angles[f"layer{n}"] = math.degrees(float(rad))
        return angles

    # ----------------------------------------------------------------- "energy" and EP

    def phi(self, x: Tensor, state: Sequence[Tensor]) -> Tensor:
        """Not defined: an asymmetric network has no scalar Φ (only per-layer φ_n).

        Raises:
            TypeError: always; use :meth:`ep_surrogate` for the update.
        """
        raise TypeError(
            "AsymmetricNetwork has no scalar primitive function Φ (its forward and feedback "
            "weights differ); each layer has its own φ_n, see eqprop.core.asymmetric"
        )

    def ep_surrogate(
        self,
        x: Tensor,
        y: Tensor,
        free_state: Sequence[Tensor],
        nudged: Sequence[Sequence[Tensor]],
        betas: Sequence[float],
        coefs: Sequence[float],
        c_free: float,
        input_ctx: Any = None,
    ) -> Tensor:
        """Scalar whose θ-gradient is the asymmetric EP update (spec §4), batch mean.

        ``"different"``: [Σ_k c_k Σ_n φ̃_n(s*, s_k) + c_free Σ_n φ_n(s*)] / B with the mixed
        φ̃_n(s*, s) = ⟨s_n, P_n(W_n s*_{n−1} + b_n)⟩ + ⟨s*_{n+1}, P_{n+1}(B_{n+1} s_n)⟩
        (s*_{−1} = x). ``"same"``: [Σ_k c_k Σ_n φ_n(s_k) + c_free Σ_n φ_n(s*)] / B. Each pool
        argmax is taken at the arguments of its term. With a readout, the mean CE over the
        nudged states is added, as for symmetric networks. States are treated as constants.
        """
        states = [list(s) for s in nudged]
        weights = list(coefs)
        if c_free != 0.0:
            states.append(list(free_state))
            weights.append(c_free)
        if self.update_rule == "same":
            surrogate = self._same_surrogate(x, states, weights)
        else:
            surrogate = self._different_surrogate(x, free_state, states, weights)
        if self.readout is not None:
            surrogate = surrogate + self.loss(cat_states(nudged), y.repeat(len(nudged))).mean()
        return surrogate

    def _same_surrogate(
        self, x: Tensor, states: list[list[Tensor]], weights: list[float]
    ) -> Tensor:
        # All compared states in one evaluation, stacked along the batch.
        b = x.shape[0]
        s = cat_states(states)
        xs = x.repeat(len(states), *([1] * (x.dim() - 1)))
        w = torch.tensor(weights, dtype=x.dtype, device=x.device).repeat_interleave(b) / b
        layers = self.interactions
        total = layers[0].phi(xs, s[0])
        for n in range(1, len(layers)):
            total = total + layers[n].phi_forward(s[n - 1], s[n])
            total = total + layers[n].phi_feedback(s[n - 1], s[n])
        return (w * total).sum()

    def _different_surrogate(
        self,
        x: Tensor,
        free_state: Sequence[Tensor],
        states: list[list[Tensor]],
        weights: list[float],
    ) -> Tensor:
        b = x.shape[0]
        free = [t.detach() for t in free_state]
        layers = self.interactions
        surrogate = x.new_zeros(())
        for n, layer in enumerate(layers):
            # Forward term: the presynaptic state is s* in every phase and φ is linear in the
            # postsynaptic state, so the phases combine into one state before a single conv.
            post = states[0][n].detach() * (weights[0] / b)
            for c, s in zip(weights[1:], states[1:], strict=True):
                post = post + s[n].detach() * (c / b)
            pre = x if n == 0 else free[n - 1]
            surrogate = surrogate + layer.phi(pre, post).sum()
        w = torch.tensor(weights, dtype=x.dtype, device=x.device).repeat_interleave(b) / b
        k = len(states)
        for n in range(1, len(layers)):
            # Feedback term: the presynaptic state varies per phase and may pass a max pool
            # (argmax at that state), so the phases are stacked along the batch instead.
            pre = torch.cat([s[n - 1].detach() for s in states], 0)
            post = free[n].repeat(k, *([1] * (free[n].dim() - 1)))
            surrogate = surrogate + (w * layers[n].phi_feedback(pre, post)).sum()
        return surrogate

    def postprocess_grads(self) -> None:
        """``"same"`` rule: give W_n and its feedback weight the average of their gradients.

        Averaging is linear, so accumulating several estimates before or after it gives the
        same result as long as nothing else writes those gradients unevenly.
        """
        if self.update_rule != "same":
            return
        with torch.no_grad():
            for layer in self.feedback_layers():
                pair = (layer.forward_weight, layer.feedback)
                grads = [p.grad for p in pair if p.grad is not None]
                if not grads:
                    continue
                mean = (grads[0] + grads[1] if len(grads) == 2 else grads[0]).mul(0.5)
                for p in pair:
                    if p.grad is None:
                        p.grad = mean.clone()
                    else:
                        p.grad.copy_(mean)

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


def _weight_of(layer: nn.Module) -> Tensor:
    return layer.conv.weight if isinstance(layer, ConvInteraction) else layer.linear.weight  # type: ignore[union-attr,return-value]


def _bias_of(layer: nn.Module) -> Tensor:
    return layer.conv.bias if isinstance(layer, ConvInteraction) else layer.linear.bias  # type: ignore[union-attr,return-value]
