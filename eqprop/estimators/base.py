"""The gradient-estimator protocol that EP, BPTT and future estimators implement.

An estimator turns one batch into a descent direction for every parameter, in one of two
forms that leave the same gradients:

- :meth:`GradientEstimator.estimate` adds the batch-mean gradient to every ``.grad`` (like
  ``loss.backward()``) and returns an :class:`Estimate` (states, logits, loss, steps);
- :meth:`GradientEstimator.surrogate` returns a scalar whose ``.backward()`` leaves exactly that
  gradient, followed by :meth:`GradientEstimator.after_backward` (a post-processing step an
  update rule may need; none of today's do). Trainers that own the backward pass (DDP,
  Lightning) use this form.

Estimators with randomness of their own keep it in :meth:`state_dict` for exact resumption.
Every estimator is registered in :data:`ESTIMATORS` under its config name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from eqprop.core.chain import ChainNetwork, State, WeightGrads
from eqprop.core.validation import check_choice
from eqprop.dynamics.solver import Solver
from eqprop.estimators.distributed import all_reduce_mean_, unwrap

__all__ = [
    "ESTIMATORS",
    "Estimate",
    "GradientEstimator",
    "add_to_grads",
    "make_estimator",
    "predict",
    "register",
    "surrogate_of",
]


@dataclass
class Estimate:
    """What one estimate computed besides the gradients.

    Attributes:
        free_state: the free equilibrium s* (BPTT: the last state s_T).
        nudged_states: one state per nudged phase, in the order of ``betas``.
        betas: the signed nudging strength of each phase.
        logits: class scores at s*, shape (B, K).
        loss: per-example loss at s*, shape (B,).
        free_steps: steps taken by the free phase.
        nudged_steps: steps taken by the nudged phase(s) (the largest, when separate).
        stats: per-batch counts an estimator reports for the run log (e.g. holomorphic EP's
            convergence guard: ``guard_dropped``, ``guard_fallback``); empty by default.
    """

    free_state: State
    nudged_states: list[State]
    betas: list[float]
    logits: Tensor
    loss: Tensor
    free_steps: int
    nudged_steps: int
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def predictions(self) -> Tensor:
        """Predicted classes at the free equilibrium, shape (B,)."""
        return self.logits.argmax(1)


class GradientEstimator(ABC):
    """Base of every estimator (see the module docstring).

    Subclasses are dataclasses with at least ``free_steps`` and ``solver`` fields and define
    :meth:`surrogate`; closed-form estimators also override :meth:`estimate` to write the
    gradients without a backward pass.
    """

    name: ClassVar[str] = ""
    solver: Solver
    free_steps: int

    @abstractmethod
    def surrogate(
        self, net: ChainNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Estimate]:
        """A scalar whose ``.backward()`` leaves the batch-mean gradient, and the estimate.

        Args:
            net: the network.
            x: inputs, shape (B, *net.input_shape).
            y: integer labels, shape (B,).
            state: optional starting state of the free phase (default: the solver's init).
        """

    def after_backward(self, net: ChainNetwork) -> None:  # noqa: B027 (optional hook)
        """Run after ``surrogate(...).backward()`` (and after any gradient all-reduce)."""

    def estimate(
        self, net: nn.Module, x: Tensor, y: Tensor, state: Sequence[Tensor] | None = None
    ) -> Estimate:
        """Add the batch-mean gradient to every ``.grad`` and return the estimate.

        Gradients accumulate like ``loss.backward()``: call ``optimizer.zero_grad()`` first.
        No optimiser is stepped. With a network wrapped in ``DistributedDataParallel`` the
        gradients are then averaged across its process group (see
        :mod:`eqprop.estimators.distributed`).
        """
        module, group = unwrap(net)
        est = self.accumulate(module, x, y, state)
        if group is not None:
            all_reduce_mean_([p.grad for p in module.parameters() if p.grad is not None], group)
        self.after_backward(module)
        return est

    def accumulate(
        self, net: ChainNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor] | None
    ) -> Estimate:
        """This process's estimate added to ``.grad`` (default: the surrogate's backward)."""
        value, est = self.surrogate(net, x, y, state)
        with torch.enable_grad():
            value.backward()
        return est

    def state_dict(self) -> dict[str, Any]:
        """The estimator's own random state, for exact resumption (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`state_dict`."""


def add_to_grads(grads: WeightGrads) -> None:
    """Add each gradient to its parameter's ``.grad``, as ``backward()`` would."""
    for p, g in grads:
        if not p.requires_grad:
            continue  # frozen parameters get nothing, as under backward()
        if p.grad is None:
            # Own storage in the parameter's layout, as autograd's gradient layout contract.
            fresh = g._base is None and g.stride() == p.stride()
            p.grad = g.detach() if fresh else torch.empty_like(p).copy_(g)
        else:
            p.grad.add_(g)


def surrogate_of(grads: WeightGrads) -> Tensor:
    """Σ_p ⟨p, g_p⟩ with g_p constant: a scalar whose gradient is exactly ``grads``."""
    terms = [(p * g.detach()).sum() for p, g in grads]
    return torch.stack(terms).sum() if terms else torch.zeros(())


E = TypeVar("E", bound=type[GradientEstimator])

#: Estimators by the name used in configs, the CLI and logs.
ESTIMATORS: dict[str, type[GradientEstimator]] = {}


def register(cls: E) -> E:
    """Class decorator: add an estimator to :data:`ESTIMATORS` under ``cls.name``."""
    ESTIMATORS[cls.name] = cls
    return cls


def make_estimator(kind: str, **kwargs: Any) -> GradientEstimator:
    """Build the estimator registered as ``kind``, ignoring keyword arguments it lacks.

    Raises:
        SettingError: for an unknown ``kind`` (the message lists the registered ones).
    """
    check_choice(kind, ESTIMATORS, "estimator")
    cls = ESTIMATORS[kind]
    accepted = getattr(cls, "__dataclass_fields__", {})
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


def predict(
    net: ChainNetwork, x: Tensor, steps: int, solver: Solver | None = None
) -> tuple[Tensor, Tensor]:
    """Relax freely for ``steps`` and return (predicted classes (B,), logits (B, K))."""
    x, _ = net.check_input(x)
    res = (solver or Solver()).relax(net, net.input_drive(x), None, steps)
    with torch.no_grad():
        logits = net.logits(res.state)
    return logits.argmax(1), logits
