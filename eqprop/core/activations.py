"""Neuron activations σ of the dynamics s ← σ(∂Φ/∂s) (spec §1).

Each activation has an out-of-place form (used by the autograd references) and an in-place
form (used in the relaxation loop, where the drive tensor is a fresh buffer that may be
overwritten). Both are registered under the lower_snake name used in configs and the CLI.

The holomorphic activations (``mysig``, ``sigmoid``, ``tanh`` and ``dsilu``, the smooth hard
sigmoid of holomorphic EP) also carry their complex form on planar batches
(:mod:`eqprop.core.planar`), which nudging at complex β needs; the clamps have none (they are
not complex-differentiable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from eqprop.core.kernels import scalar
from eqprop.core.planar import COMPLEX_ACTIVATIONS
from eqprop.core.validation import check_choice

__all__ = ["ACTIVATIONS", "Activation", "get_activation"]


@dataclass(frozen=True)
class Activation:
    """A named activation with an out-of-place and an in-place implementation.

    ``complex_fn_(re, im)``: the holomorphic continuation on the real and imaginary parts of a
    planar batch, in place; None for an activation that is not holomorphic.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    fn_: Callable[[Tensor], Tensor]
    description: str
    complex_fn_: Callable[[Tensor, Tensor], None] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    @property
    def holomorphic(self) -> bool:
        """Whether the activation has a complex form (holomorphic EP with more than 2 points)."""
        return self.complex_fn_ is not None


# Module-level functions, not lambdas: networks hold their activation, and a network must
# pickle (torch.save(net), copy.deepcopy, spawn-based multiprocessing).


def _hard_sigmoid(x: Tensor) -> Tensor:
    return x.clamp(0.0, 1.0)


def _hard_sigmoid_(x: Tensor) -> Tensor:
    return x.clamp_(0.0, 1.0)


def _my_hard_sig(x: Tensor) -> Tensor:
    return (0.5 * x).clamp(0.0, 1.0)


def _my_hard_sig_(x: Tensor) -> Tensor:
    return x.mul_(0.5).clamp_(0.0, 1.0)


def _ctrd_hard_sig(x: Tensor) -> Tensor:
    return x.clamp(-0.5, 0.5)


def _ctrd_hard_sig_(x: Tensor) -> Tensor:
    return x.clamp_(-0.5, 0.5)


def _mysig(x: Tensor) -> Tensor:
    return torch.sigmoid(4.0 * x - 2.0)


def _mysig_(x: Tensor) -> Tensor:
    return x.mul_(scalar(4.0, x)).sub_(scalar(2.0, x)).sigmoid_()


def _sigmoid_(x: Tensor) -> Tensor:
    return x.sigmoid_()


def _tanh_(x: Tensor) -> Tensor:
    return x.tanh_()


def _dsilu(x: Tensor) -> Tensor:
    # ½x·ς(x) + (1 − ½x)·ς(x − 2) = ς(x − 2) + ½x(ς(x) − ς(x − 2))
    b = torch.sigmoid(x - 2.0)
    return b + 0.5 * x * (torch.sigmoid(x) - b)


def _dsilu_(x: Tensor) -> Tensor:
    # The same, written into x; differentiable (BPTT steps run it under autograd).
    b = torch.sub(x, 2.0).sigmoid_()
    d = torch.sigmoid(x) - b
    return x.mul_(0.5).mul_(d).add_(b)


#: Activations by the name used in configs and the CLI.
ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("hard_sigmoid", _hard_sigmoid, _hard_sigmoid_, "clamp(x, 0, 1)"),
        Activation(
            "my_hard_sig", _my_hard_sig, _my_hard_sig_, "clamp(x/2, 0, 1) (all paper CIFAR-10 runs)"
        ),
        Activation("ctrd_hard_sig", _ctrd_hard_sig, _ctrd_hard_sig_, "clamp(x, -0.5, 0.5)"),
        Activation("mysig", _mysig, _mysig_, "sigmoid(4x - 2)", COMPLEX_ACTIVATIONS["mysig"]),
        Activation(
            "sigmoid", torch.sigmoid, _sigmoid_, "logistic sigmoid", COMPLEX_ACTIVATIONS["sigmoid"]
        ),
        Activation("tanh", torch.tanh, _tanh_, "hyperbolic tangent", COMPLEX_ACTIVATIONS["tanh"]),
        Activation(
            "dsilu",
            _dsilu,
            _dsilu_,
            "x/2 sigmoid(x) + (1 - x/2) sigmoid(x - 2), a smooth clamp(x/2, 0, 1)",
            COMPLEX_ACTIVATIONS["dsilu"],
        ),
    )
}


def get_activation(name: str) -> Activation:
    """Return the activation registered as ``name``.

    Raises:
        SettingError: naming the unknown value and listing the accepted names.
    """
    check_choice(name, ACTIVATIONS, "activation")
    return ACTIVATIONS[name]
