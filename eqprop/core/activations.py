"""Neuron activations σ of the dynamics s ← σ(∂Φ/∂s) (spec §1).

Each activation has an out-of-place form (used by the autograd references) and an in-place
form (used in the relaxation loop, where the drive tensor is a fresh buffer that may be
overwritten). Both are registered under the lower_snake name used in configs and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ACTIVATIONS", "Activation", "get_activation"]


@dataclass(frozen=True)
class Activation:
    """A named activation with an out-of-place and an in-place implementation."""

    name: str
    fn: Callable[[Tensor], Tensor]
    fn_: Callable[[Tensor], Tensor]
    description: str

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _sigmoid_(x: Tensor) -> Tensor:
    return x.sigmoid_()


def _mysig_(x: Tensor) -> Tensor:
    return x.mul_(4.0).sub_(2.0).sigmoid_()


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation(
            "hard_sigmoid",
            lambda x: x.clamp(0.0, 1.0),
            lambda x: x.clamp_(0.0, 1.0),
            "clamp(x, 0, 1)",
        ),
        Activation(
            "my_hard_sig",
            lambda x: (0.5 * x).clamp(0.0, 1.0),
            lambda x: x.mul_(0.5).clamp_(0.0, 1.0),
            "clamp(x/2, 0, 1) (all paper CIFAR-10 runs)",
        ),
        Activation(
            "ctrd_hard_sig",
            lambda x: x.clamp(-0.5, 0.5),
            lambda x: x.clamp_(-0.5, 0.5),
            "clamp(x, -0.5, 0.5)",
        ),
        Activation(
            "mysig",
            lambda x: torch.sigmoid(4.0 * x - 2.0),
            _mysig_,
            "sigmoid(4x - 2)",
        ),
        Activation("sigmoid", torch.sigmoid, _sigmoid_, "logistic sigmoid"),
        Activation("tanh", torch.tanh, lambda x: x.tanh_(), "hyperbolic tangent"),
    )
}


def get_activation(name: str) -> Activation:
    """Return the activation registered as ``name``.

    Raises:
        ValueError: naming the unknown value and listing the accepted names.
    """
    try:
        return ACTIVATIONS[name]
    except KeyError:
        choices = ", ".join(ACTIVATIONS)
        raise ValueError(f"activation: unknown name {name!r}; choose one of {choices}") from None
