"""Chain networks: the states, inputs, losses, nudging and readout shared by every kind.

A chain network has states s_1..s_N driven by a clamped input x, one interaction per layer
(interaction n couples s_{n−1} to s_n, s_0 = x). Two output kinds (spec §3):

- ``"mse"``: the last state is a dynamical output layer of ``num_classes`` units and
  L = ½‖s_N − onehot(y)‖²;
- ``"ce"``: the states are hidden layers only and a linear readout outside the dynamics gives
  L = CE(W_out s_N + b_out, y).

Subclasses say how the weights enter the EP update (:meth:`ChainNetwork.weight_contrast`):
:class:`~eqprop.core.network.EnergyNetwork` (symmetric weights, a scalar Φ) and
:class:`~eqprop.core.asymmetric.AsymmetricNetwork` (feedback weights, update rules).

``net(x)`` returns the logits at the free equilibrium, relaxed by ``net.relaxation`` (any object
with a ``free_state(net, x)`` method; :mod:`eqprop.dynamics` installs a default on import, since
this layer may not import it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any, ClassVar, Protocol, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqprop.core.activations import Activation, get_activation
from eqprop.core.interactions import ConvInteraction, DenseInteraction, Interaction
from eqprop.core.kernels import fast_layout
from eqprop.core.settings import NetworkSettings
from eqprop.core.validation import SettingError, invalid

__all__ = [
    "ChainNetwork",
    "Interactions",
    "Phase",
    "Relaxation",
    "State",
    "WeightGrads",
    "repeat_batch",
    "stack_states",
]

State = list[Tensor]
#: A compared state and its coefficient c_k in the EP update Σ_k c_k ∂Φ/∂θ(s_k).
Phase = tuple[float, Sequence[Tensor]]
#: (parameter, gradient) pairs, the form in which closed-form updates are handed out.
WeightGrads = list[tuple[nn.Parameter, Tensor]]


def stack_states(states: Sequence[Sequence[Tensor]]) -> State:
    """Concatenate several states layer by layer along the batch dimension (detached)."""
    return [torch.cat([s.detach() for s in layer], 0) for layer in zip(*states, strict=True)]


def repeat_batch(t: Tensor, k: int) -> Tensor:
    """``t`` repeated ``k`` times along the batch dimension (phases relaxed as one batch).

    ``torch.cat``, not ``Tensor.repeat``: repeat returns NCHW strides even for a channels-last
    input, and every convolution and pooling of the batched phases then converted its operands
    back (about a tenth of a CIFAR training iteration on CPU).
    """
    return torch.cat([t] * k, 0)


def _zeros(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Zeros of ``like``'s dtype and device, channels-last when 4-D (as :func:`fast_layout`
    would make them, without the copy)."""
    fmt = torch.channels_last if len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt).zero_()


class Interactions(nn.ModuleList):
    """A ``ModuleList`` of :class:`~eqprop.core.interactions.Interaction` (typed access)."""

    # Overloads in ModuleList's order (slice first), as mypy requires of an override.
    @overload
    def __getitem__(self, idx: slice) -> Interactions: ...

    @overload
    def __getitem__(self, idx: int) -> Interaction: ...

    def __getitem__(self, idx: int | slice) -> Interaction | Interactions:
        return super().__getitem__(idx)  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Interaction]:
        return super().__iter__()  # type: ignore[return-value]


class Relaxation(Protocol):
    """What ``net(x)`` relaxes with: the free equilibrium of a batch."""

    def free_state(self, net: ChainNetwork, x: Tensor) -> State: ...


#: Installed by :mod:`eqprop.dynamics` on import; used by ``net(x)`` when ``net.relaxation`` is
#: None.
default_relaxation: list[Relaxation] = []


class ChainNetwork(nn.Module):
    """What every chain network shares: layers, inputs, the loss, the nudge and the readout.

    Subclasses add how weights enter the dynamics and the EP update
    (:meth:`weight_contrast`). See :class:`EnergyNetwork` for the arguments.
    """

    settings_class: ClassVar[type[NetworkSettings]] = NetworkSettings

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        settings: NetworkSettings,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise invalid(num_classes, "an int >= 2", "num_classes")
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d < 1 for d in input_shape):
            raise invalid(input_shape, "a shape of positive sizes", "input_shape")
        if settings.conv and len(input_shape) != 3:
            raise SettingError(
                f"conv layers need an image input (C, H, W), got {input_shape}", "input_shape"
            )
        self.settings = settings
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.output = settings.output
        self.activation: Activation = get_activation(settings.activation)
        self.relaxation: Relaxation | None = None
        layers: list[Interaction] = []
        shape: tuple[int, ...] = input_shape
        for i, spec in enumerate(settings.conv):
            # (C, H, W): the image input (checked above) or the previous conv layer's output.
            image = cast("tuple[int, int, int]", shape)
            layers.append(ConvInteraction(image, spec, index=i))
            shape = layers[-1].post_shape
        sizes = [*settings.dense, num_classes] if self.output == "mse" else list(settings.dense)
        for size in sizes:
            layers.append(DenseInteraction(shape, size))
            shape = (size,)
        self.interactions = Interactions(layers)
        self.readout = nn.Linear(math.prod(shape), num_classes) if self.output == "ce" else None
        scales = settings.layer_scales()
        if scales is not None:
            with torch.no_grad():
                for layer, factor in zip(self.weight_layers(), scales, strict=True):
                    for p in layer.parameters():
                        p.mul_(factor)

    @classmethod
    def from_settings(
        cls, input_shape: Sequence[int], num_classes: int, settings: NetworkSettings
    ) -> ChainNetwork:
        """Build from any settings object with at least this class's settings fields."""
        names = [f.name for f in fields(cls.settings_class)]
        kwargs = {name: getattr(settings, name) for name in names}
        return cls(input_shape, num_classes=num_classes, **kwargs)

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

    # ----------------------------------------------------------------- inputs and states

    @overload
    def check_input(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]: ...

    @overload
    def check_input(self, x: Tensor, y: None = None) -> tuple[Tensor, None]: ...

    def check_input(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Validate a batch and move it to the parameters' device and dtype.

        Dense-only networks accept image batches and flatten them when sizes agree.

        Raises:
            ValueError: wrong input shape (the message gives the expected one) or bad labels.
        """
        ref = next(self.parameters())
        expected = self.input_shape
        want = f"(B, {', '.join(map(str, expected))})"
        if not isinstance(x, Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
        shape = tuple(x.shape[1:])
        if x.dim() < 2 or x.shape[0] < 1:
            raise ValueError(f"input: expected a batch of shape {want}, got {tuple(x.shape)}")
        if shape != expected:
            if len(expected) == 1 and math.prod(shape) == expected[0]:
                x = x.flatten(1)
            elif len(expected) == 3 and len(shape) == 3 and shape[0] != expected[0]:
                raise ValueError(
                    f"input: expected {expected[0]} channels, got {shape[0]} "
                    f"(input shape {tuple(x.shape)}, expected {want})"
                )
            else:
                raise ValueError(f"input: expected shape {want}, got {tuple(x.shape)}")
        x = x.to(device=ref.device, dtype=ref.dtype)
        return x, (None if y is None else self._check_labels(y, x.shape[0], ref.device))

    def _check_labels(self, y: Tensor, batch: int, device: torch.device) -> Tensor:
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != batch:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"labels: expected shape ({batch},), got {got}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"labels: expected integer class indices, got dtype {y.dtype}")
        y = y.to(device=device, dtype=torch.long)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"labels: value {bad} is out of range; expected 0..{self.num_classes - 1}"
            )
        return y

    def input_drive(self, x: Tensor) -> Tensor:
        """The constant drive of the first layer, P(conv_1(x) + b_1): computed once per batch."""
        return self.input_drive_with_context(x)[0]

    def input_drive_with_context(self, x: Tensor) -> tuple[Tensor, Any]:
        """:meth:`input_drive` and the first layer's context (pool argmax), which the EP
        update reuses instead of convolving the input again."""
        with torch.no_grad():
            drive, ctx = self.interactions[0].forward_drive(fast_layout(x))
            return fast_layout(drive), ctx

    def zero_state(self, batch: int) -> State:
        """All-zero states for a batch (the paper's starting point).

        Image-shaped states are channels-last: convolutions and pooling run several times
        faster in that layout on CPU and GPU, and it propagates through the dynamics.
        """
        ref = next(self.parameters())
        return [_zeros((batch, *shape), ref) for shape in self.state_shapes]

    # ----------------------------------------------------------------- loss and readout

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

    def readout_grads(self, nudged: Sequence[Sequence[Tensor]], y: Tensor) -> WeightGrads:
        """Gradient of the mean CE over the nudged states (the readout's update, spec §3).

        The readout is an ordinary linear layer on fixed states, so autograd of the loss is
        its plain gradient (a closed form would round differently in float32 and change
        training runs in the last digit). Empty without a readout.
        """
        if self.readout is None:
            return []
        # nn.Linear annotates its weight as a plain Tensor; it is a Parameter.
        params = [cast(nn.Parameter, self.readout.weight), self.readout.bias]
        with torch.enable_grad():
            loss = self.loss(stack_states(nudged), y.repeat(len(nudged))).mean()
            grads = torch.autograd.grad(loss, params)
        return list(zip(params, grads, strict=True))

    def weight_contrast(
        self, x: Tensor, free_state: Sequence[Tensor], phases: Sequence[Phase], input_ctx: Any
    ) -> WeightGrads:
        """Σ_k c_k ∂Φ/∂θ(x, s_k) / B for the phases (c_k, s_k): the EP update of the weights of
        the dynamics, at fixed states (``free_state``: s*, which some update rules pair with)."""
        raise NotImplementedError

    def predict_from_state(self, state: Sequence[Tensor]) -> Tensor:
        """Predicted classes, shape (B,)."""
        return self.logits(state).argmax(1)

    # ----------------------------------------------------------------- as a PyTorch module

    def forward(self, x: Tensor) -> Tensor:
        """Logits at the free equilibrium of ``x`` (relaxed by :attr:`relaxation`), (B, K)."""
        relaxation = self.relaxation
        if relaxation is None:
            if not default_relaxation:
                raise RuntimeError("net(x): set net.relaxation (import eqprop.dynamics)")
            relaxation = default_relaxation[0]
        x, _ = self.check_input(x)
        with torch.no_grad():
            return self.logits(relaxation.free_state(self, x))

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
