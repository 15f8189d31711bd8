"""Energy networks with symmetric weights (spec §1 and §3).

A network is a chain of states s_1..s_N driven by a clamped input x. Its primitive function is

    Φ(x, s, θ) = Σ_n φ_n(s_{n−1}, s_n),  s_0 = x,

one bilinear interaction per layer, and the dynamics are s ← σ(∂Φ/∂s − β ∂L/∂s).

Two output kinds (spec §3):

- ``"mse"``: the last state is a dynamical output layer of ``num_classes`` units and
  L = ½‖s_N − onehot(y)‖²;
- ``"ce"``: the states are hidden layers only and a linear readout outside Φ gives
  L = CE(W_out s_N + b_out, y).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqprop.core.activations import Activation, get_activation
from eqprop.core.interactions import (
    ConvInteraction,
    ConvLayer,
    DenseInteraction,
    Interaction,
)
from eqprop.core.interactions import fast_layout as _fast_layout

__all__ = ["OUTPUTS", "EnergyNetwork"]

OUTPUTS: dict[str, str] = {
    "mse": "dynamical output layer, squared error",
    "ce": "linear readout outside the energy, cross-entropy",
}

State = list[Tensor]


def cat_states(states: Sequence[Sequence[Tensor]]) -> State:
    """Concatenate several states layer by layer along the batch dimension."""
    return [torch.cat([s.detach() for s in layer], 0) for layer in zip(*states, strict=True)]


class EnergyNetwork(nn.Module):
    """A convergent recurrent network with symmetric weights: conv layers, then dense layers.

    Args:
        input_shape: shape of one input, ``(C, H, W)`` or ``(D,)`` for dense-only nets.
        conv: conv layers, applied first (requires an image input).
        dense: sizes of the hidden dense layers after the conv stack.
        num_classes: number of classes.
        output: ``"mse"`` or ``"ce"`` (see module docstring).
        activation: name of σ (see :data:`eqprop.core.activations.ACTIVATIONS`).
        init_scale: factor applied to PyTorch's default initialisation, one float for all
            weight layers or one per layer (``n_layers`` entries).

    Example:
        >>> net = EnergyNetwork((784,), dense=[512], num_classes=10)
        >>> [tuple(s) for s in net.state_shapes]
        [(512,), (10,)]
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
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output: unknown kind {output!r}; choose one of {', '.join(OUTPUTS)}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: {num_classes!r} is not valid; expected an int >= 2")
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d < 1 for d in input_shape):
            raise ValueError(f"input_shape: {input_shape!r} is not a valid shape")
        if conv and len(input_shape) != 3:
            raise ValueError(
                f"input_shape: conv layers need an image input (C, H, W), got {input_shape}"
            )
        if not conv and not dense:
            raise ValueError("network: needs at least one hidden layer (conv or dense)")
        for i, size in enumerate(dense):
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"dense[{i}]: {size!r} is not valid; expected an int >= 1")
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.output = output
        self.activation: Activation = get_activation(activation)

        layers: list[Interaction] = []
        shape: tuple[int, ...] = input_shape
        for i, spec in enumerate(conv):
            if isinstance(spec, dict):
                spec = ConvLayer(**spec)
            layer = ConvInteraction(shape, spec, index=i)  # type: ignore[arg-type]
            layers.append(layer)
            shape = layer.post_shape
        sizes = [*dense, num_classes] if output == "mse" else list(dense)
        for size in sizes:
            layers.append(DenseInteraction(shape, size))
            shape = (size,)
        self.interactions = nn.ModuleList(layers)
        self.readout = nn.Linear(math.prod(shape), num_classes) if output == "ce" else None

        if init_scale is not None:
            scales = (
                [float(init_scale)] * self.n_layers
                if isinstance(init_scale, (int, float))
                else [float(s) for s in init_scale]
            )
            if len(scales) != self.n_layers:
                raise ValueError(
                    f"init_scale: got {len(scales)} factors, expected 1 or {self.n_layers} "
                    "(one per weight layer)"
                )
            for layer, factor in zip(self.weight_layers(), scales, strict=True):
                with torch.no_grad():
                    for p in layer.parameters():
                        p.mul_(factor)

    # ----------------------------------------------------------------- structure

    @property
    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-example shape of each state s_1..s_N."""
        return [layer.post_shape for layer in self.interactions]

    @property
    def n_layers(self) -> int:
        """Number of weight layers: interactions plus the readout when present."""
        return len(self.interactions) + (self.readout is not None)

    @property
    def target_layer(self) -> int:
        """Index of the state that feels the nudge: the output layer or the last hidden layer."""
        return len(self.interactions) - 1

    def weight_layers(self) -> list[nn.Module]:
        """The weight layers in order (for per-layer learning rates and weight decay)."""
        layers: list[nn.Module] = list(self.interactions)
        if self.readout is not None:
            layers.append(self.readout)
        return layers

    # ----------------------------------------------------------------- inputs

    def check_input(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Validate a batch and move it to the parameters' device and dtype.

        Dense-only networks accept image batches and flatten them when sizes agree.

        Raises:
            ValueError: wrong input shape (the message gives the expected one) or bad labels.
        """
        ref = next(self.parameters())
        expected = self.input_shape
        if not isinstance(x, Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
        shape = tuple(x.shape[1:])
        if x.dim() < 2 or x.shape[0] < 1:
            raise ValueError(
                f"input: expected a batch of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )
        if shape != expected:
            if len(expected) == 1 and math.prod(shape) == expected[0]:
                x = x.flatten(1)
            elif len(expected) == 3 and len(shape) == 3 and shape[0] != expected[0]:
                raise ValueError(
                    f"input: expected {expected[0]} channels, got {shape[0]} "
                    f"(input shape {tuple(x.shape)}, expected (B, {', '.join(map(str, expected))}))"
                )
            else:
                raise ValueError(
                    f"input: expected shape (B, {', '.join(map(str, expected))}), "
                    f"got {tuple(x.shape)}"
                )
        x = x.to(device=ref.device, dtype=ref.dtype)
        if y is not None:
            if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
                got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise ValueError(f"labels: expected shape ({x.shape[0]},), got {got}")
            if y.dtype.is_floating_point or y.dtype == torch.bool:
                raise ValueError(f"labels: expected integer class indices, got dtype {y.dtype}")
            y = y.to(device=ref.device, dtype=torch.long)
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"labels: value {bad} is out of range; expected 0..{self.num_classes - 1}"
                )
        return x, y

    def input_drive(self, x: Tensor) -> Tensor:
        """The constant drive of the first layer, P(conv_1(x) + b_1): computed once per batch."""
        return self.input_drive_with_context(x)[0]

    def input_drive_with_context(self, x: Tensor) -> tuple[Tensor, Any]:
        """:meth:`input_drive` and the first layer's context (pool argmax), for
        :meth:`ep_surrogate`, which then need not convolve the input again."""
        with torch.no_grad():
            drive, ctx = self.interactions[0].forward_drive(_fast_layout(x))
            return _fast_layout(drive), ctx

    def zero_state(self, batch: int) -> State:
        """All-zero states for a batch (the paper's starting point).

        Image-shaped states are channels-last: convolutions and pooling run several times
        faster in that layout on CPU and GPU, and it propagates through the dynamics.
        """
        ref = next(self.parameters())
        return [_fast_layout(ref.new_zeros((batch, *shape))) for shape in self.state_shapes]

    # ----------------------------------------------------------------- energy and loss

    def phi(self, x: Tensor, state: Sequence[Tensor]) -> Tensor:
        """Differentiable Φ(x, s, θ) per example, shape (B,); the loss term is not included."""
        total = self.interactions[0].phi(x, state[0])
        for n in range(1, len(self.interactions)):
            total = total + self.interactions[n].phi(state[n - 1], state[n])
        return total

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
        """Scalar whose θ-gradient is the EP update: [Σ_k c_k Φ(s_k) + c_free Φ(s*)] / B.

        Φ is bilinear, so its θ-gradient at fixed states is the local Hebbian contrast
        post ⊗ pre (:meth:`Interaction.hebbian`). The compared states go through one
        evaluation, stacked along the batch (each example's weight c_k / B folded into its
        postsynaptic state, Φ being linear in it), except the input term, evaluated once on the
        combined s_1 (with ``input_ctx``, from :meth:`input_drive_with_context`, reused).
        With a readout, the mean CE over the nudged states is added: its gradient is the
        readout's update (spec §3). States are treated as constants.
        """
        states = [list(s) for s in nudged]
        weights = list(coefs)
        if c_free != 0.0:
            states.append(list(free_state))
            weights.append(c_free)
        b = x.shape[0]
        # φ_1 = ⟨s_1, P(conv(x))⟩ is linear in s_1 and x is shared: combine the states first.
        first = sum(c * s[0].detach() for c, s in zip(weights, states, strict=True)) / b
        surrogate = self.interactions[0].hebbian(_fast_layout(x), first, input_ctx)
        if len(self.interactions) > 1:
            stacked = cat_states(states)
            w = torch.tensor(weights, dtype=x.dtype, device=x.device).repeat_interleave(b) / b
            for n in range(1, len(self.interactions)):
                post = stacked[n] * w.view(-1, *([1] * (stacked[n].dim() - 1)))
                surrogate = surrogate + self.interactions[n].hebbian(stacked[n - 1], post)
        if self.readout is not None:
            surrogate = surrogate + self.loss(cat_states(nudged), y.repeat(len(nudged))).mean()
        return surrogate

    def postprocess_grads(self) -> None:
        """Hook run after the EP gradients are accumulated (nothing for symmetric nets)."""

    def logits(self, state: Sequence[Tensor]) -> Tensor:
        """Class scores of a state: the output layer (mse) or the readout (ce), shape (B, K)."""
        last = state[self.target_layer]
        if self.readout is None:
            return last
        return self.readout(last.flatten(1))

    def loss(self, state: Sequence[Tensor], y: Tensor) -> Tensor:
        """Per-example loss L(s, y), shape (B,)."""
        if self.readout is None:
            target = F.one_hot(y, self.num_classes).to(state[-1].dtype)
            return 0.5 * (state[-1] - target).pow(2).sum(1)
        return F.cross_entropy(self.logits(state), y, reduction="none")

    def nudge_drive(self, state: Sequence[Tensor], y: Tensor, beta: Tensor | float) -> Tensor:
        """−β ∂L/∂s of the target layer (closed form), shape of that state.

        ``beta`` is a float or a per-example tensor of shape (B, 1); ``y`` holds class indices
        (B,) or, to spare the relaxation loop an allocation per step, the one-hot targets (B, K)
        as floats.
        """
        onehot = y if y.is_floating_point() else F.one_hot(y, self.num_classes).to(state[0].dtype)
        if self.readout is None:
            return (onehot - state[-1]).mul_(beta)
        last = state[self.target_layer]
        err = torch.softmax(self.readout(last.flatten(1)), dim=1).sub_(onehot)
        return torch.mm(err, self.readout.weight).mul_(beta).neg_().view_as(last)

    def predict_from_state(self, state: Sequence[Tensor]) -> Tensor:
        """Predicted classes, shape (B,)."""
        return self.logits(state).argmax(1)

    def extra_repr(self) -> str:
        return (
            f"input_shape={self.input_shape}, output={self.output!r}, "
            f"activation={self.activation.name!r}"
        )

    def describe(self) -> dict[str, Any]:
        """A plain summary (shapes and parameter count) for logs."""
        return {
            "input_shape": list(self.input_shape),
            "state_shapes": [list(s) for s in self.state_shapes],
            "output": self.output,
            "activation": self.activation.name,
            "parameters": sum(p.numel() for p in self.parameters()),
        }
