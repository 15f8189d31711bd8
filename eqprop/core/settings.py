"""The architecture of a chain network as a frozen dataclass (also the ``model`` config base)."""

from __future__ import annotations

from dataclasses import dataclass, field

from eqprop.core.activations import ACTIVATIONS
from eqprop.core.interactions import ConvLayer
from eqprop.core.validation import SettingError, check_choice, check_int, invalid

__all__ = ["OUTPUTS", "NetworkSettings"]

#: Output kinds by the name used in configs.
OUTPUTS: dict[str, str] = {
    "mse": "dynamical output layer, squared error",
    "ce": "linear readout outside the energy, cross-entropy",
}


@dataclass(frozen=True)
class NetworkSettings:
    """The architecture of a chain network; also the ``model`` config section's base.

    Args:
        conv: conv layers, input side first (requires an image input).
        dense: sizes of the hidden dense layers after the conv stack.
        output: a key of :data:`OUTPUTS`.
        activation: a key of :data:`~eqprop.core.activations.ACTIVATIONS`.
        init_scale: factor on PyTorch's default initialisation, one for all weight layers or
            one per weight layer; None keeps the default.
    """

    conv: tuple[ConvLayer, ...] = ()
    dense: tuple[int, ...] = ()
    output: str = field(default="mse", metadata={"choices": OUTPUTS})
    activation: str = field(default="my_hard_sig", metadata={"choices": ACTIVATIONS})
    init_scale: float | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Lists are accepted from Python callers; the stored form is hashable tuples.
        object.__setattr__(self, "conv", tuple(self.conv))
        object.__setattr__(self, "dense", tuple(self.dense))
        if isinstance(self.init_scale, list):
            object.__setattr__(self, "init_scale", tuple(self.init_scale))
        for i, size in enumerate(self.dense):
            check_int(size, f"dense[{i}]", 1)
        for i, layer in enumerate(self.conv):
            if not isinstance(layer, ConvLayer):
                raise invalid(layer, "a ConvLayer", f"conv[{i}]")
        # A graph network (model.graph) declares its layers there instead.
        if not self.conv and not self.dense and getattr(self, "graph", None) is None:
            raise SettingError(
                "conv and dense are both empty; expected at least one hidden layer in either"
            )
        check_choice(self.output, OUTPUTS, "output")
        check_choice(self.activation, ACTIVATIONS, "activation")
        self.layer_scales()

    @property
    def n_layers(self) -> int:
        """Number of weight layers: conv, dense and the final map (output layer or readout)."""
        return len(self.conv) + len(self.dense) + 1

    def layer_scales(self) -> list[float] | None:
        """One init factor per weight layer, or None for PyTorch's default init."""
        scale, n = self.init_scale, self.n_layers
        if scale is None:
            return None
        scales = list(scale) if isinstance(scale, tuple) else [scale] * n
        if len(scales) != n:
            raise invalid(scale, f"a number or {n} numbers, one per weight layer", "init_scale")
        for i, s in enumerate(scales):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
                where = f"init_scale[{i}]" if isinstance(scale, tuple) else "init_scale"
                raise invalid(s, "a number > 0", where)
        return [float(s) for s in scales]
