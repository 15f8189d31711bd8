"""Optimisers and learning-rate schedules by the name used in configs.

Each registry entry builds the PyTorch object from parameter groups (one per weight layer, with
that layer's learning rate and weight decay) and the ``optim`` config section.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OPTIMIZERS", "SCHEDULERS", "Cosine"]

Groups = list[dict[str, Any]]


def _sgd(groups: Groups, o: Any) -> torch.optim.Optimizer:
    # Fused kernels: one pass over all parameters instead of a few small ops per tensor, which
    # matters for small nets where the optimizer step rivals the relaxation.
    return torch.optim.SGD(
        groups, lr=groups[0]["lr"], momentum=o.momentum, nesterov=o.nesterov, fused=True
    )


def _adam(groups: Groups, o: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=groups[0]["lr"], betas=o.betas, fused=True)


def _adamw(groups: Groups, o: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=o.betas, fused=True)


#: name -> build(param_groups, optim_config)
OPTIMIZERS: dict[str, Callable[[Groups, Any], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
}


@dataclass
class Cosine:
    """lr(e) = eta_min + (lr0 − eta_min)(1 + cos(π min(e, T)/T))/2 as a factor of lr0.

    Unlike ``CosineAnnealingLR`` it stays at the floor after T epochs, as the paper's run did.
    """

    base: float
    eta_min: float
    t_max: int

    def __call__(self, epoch: int) -> float:
        e = min(epoch, self.t_max)
        lr = self.eta_min + (self.base - self.eta_min) * 0.5 * (
            1 + math.cos(math.pi * e / self.t_max)
        )
        return lr / self.base


def _cosine(
    optimizer: torch.optim.Optimizer, s: Any, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    t_max = s.resolved_t_max(epochs)
    lambdas: list[Callable[[int], float]] = [
        Cosine(g["lr"], s.eta_min, t_max) for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


#: name -> build(optimizer, scheduler_config, epochs), or None for a constant learning rate.
SCHEDULERS: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler] | None] = {
    "none": None,
    "cosine": _cosine,
}
