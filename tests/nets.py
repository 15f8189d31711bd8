"""Small networks shared by the tests: every layer kind, both output kinds."""

from __future__ import annotations

import torch

from eqprop import ConvLayer, EnergyNetwork

#: name -> (input shape, EnergyNetwork kwargs). Images are 1–2 channels, 6–8 pixels a side.
ARCHITECTURES: dict[str, tuple[tuple[int, ...], dict]] = {
    "dense": ((7,), {"dense": [6, 5]}),
    "conv_max": ((2, 8, 8), {"conv": [ConvLayer(3, 3, 1, 1, "m"), ConvLayer(4, 3, 1, 1, "m")]}),
    "conv_avg": ((1, 8, 8), {"conv": [ConvLayer(3, 3, 1, 1, "a"), ConvLayer(4, 3, 1, 1, "a")]}),
    "mixed": (
        (2, 9, 9),  # odd sizes: both pools drop a row and a column
        {
            "conv": [
                ConvLayer(3, 3, 1, 1, "m"),
                ConvLayer(4, 2, 1, 0, "i"),
                ConvLayer(3, 1, 1, 0, "a"),
            ],
            "dense": [5],
        },
    ),
    "strided": (
        (1, 10, 10),  # the first conv never reaches the last input row: needs output_padding
        {"conv": [ConvLayer(3, 3, 2, 0, "i"), ConvLayer(2, 3, 2, 1, "m")]},
    ),
}


def make_net(
    arch: str,
    output: str = "mse",
    activation: str = "hard_sigmoid",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    num_classes: int = 4,
    init_scale: float | None = None,
    cls: type[EnergyNetwork] = EnergyNetwork,
    **extra: object,
) -> EnergyNetwork:
    """A seeded small network from :data:`ARCHITECTURES` (``cls`` and ``extra``: other kinds)."""
    shape, kwargs = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    net = cls(
        shape, num_classes=num_classes, output=output, activation=activation,
        init_scale=init_scale, **kwargs, **extra,
    )  # fmt: skip
    return net.to(dtype)


def make_batch(
    net: EnergyNetwork, batch: int = 3, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs in [0, 1) and labels for ``net``."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(net.parameters()).dtype
    x = torch.rand((batch, *net.input_shape), generator=g, dtype=dtype)
    y = torch.randint(0, net.num_classes, (batch,), generator=g)
    return x, y


def random_state(net: EnergyNetwork, batch: int, seed: int = 2) -> list[torch.Tensor]:
    """States in [0, 1): away from ties, for comparing drives at generic points."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(net.parameters()).dtype
    return [torch.rand((batch, *s), generator=g, dtype=dtype) for s in net.state_shapes]


def max_diff(a, b) -> float:
    """Largest absolute difference between two lists of states."""
    return max(float((u - v).abs().max()) for u, v in zip(a, b, strict=True))
