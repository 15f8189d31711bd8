"""Estimators under data parallelism: gradients averaged across the ranks of a process group.

``estimate(ddp_net, x, y)`` with a network wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` computes the local estimate on the wrapped
module and then averages every gradient across the wrapper's process group (one flat
all-reduce), so each rank ends with the gradient of the global batch. Passing the bare module
while several processes are running keeps gradients local, which makes replicas diverge: that
case warns once. Trainers that own the backward pass use :class:`SurrogateLoss` instead, a module
whose forward is the estimator's surrogate: wrapped in DDP, its backward all-reduces as usual.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

if TYPE_CHECKING:
    from eqprop.core.chain import ChainNetwork
    from eqprop.estimators.base import Estimate, GradientEstimator

__all__ = ["SurrogateLoss", "all_reduce_mean_", "unwrap"]

_warned = False


def unwrap(net: nn.Module) -> tuple[ChainNetwork, Any]:
    """``(network, process group)`` of a DDP-wrapped network, ``(net, None)`` otherwise.

    Warns once when several processes run but ``net`` is not wrapped (gradients stay local).
    """
    global _warned
    if isinstance(net, nn.parallel.DistributedDataParallel):
        return net.module, net.process_group
    if not _warned and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        _warned = True
        warnings.warn(
            f"torch.distributed runs {dist.get_world_size()} processes but the network passed to "
            "estimate() is not wrapped in DistributedDataParallel: its gradients stay local to "
            "each rank and the replicas will diverge; pass the DDP-wrapped network, or wrap "
            "eqprop.estimators.SurrogateLoss(net, estimator) in DDP",
            RuntimeWarning,
            stacklevel=3,
        )
    return net, None  # type: ignore[return-value]


def all_reduce_mean_(tensors: list[Tensor], group: Any = None) -> None:
    """Average ``tensors`` in place across the ranks of ``group``: one flat all-reduce."""
    if not tensors:
        return
    world = dist.get_world_size(group)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat.div_(world)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


class SurrogateLoss(nn.Module):
    """A module whose ``forward(x, y)`` is the estimator's surrogate scalar.

    Wrap it in :class:`~torch.nn.parallel.DistributedDataParallel` (or return its value from a
    Lightning ``training_step``): ``loss.backward()`` then leaves the averaged estimate in every
    ``.grad``; call ``estimator.after_backward(net)`` before the optimiser step. The last
    :class:`~eqprop.estimators.base.Estimate` is kept in :attr:`last`.
    """

    def __init__(self, net: ChainNetwork, estimator: GradientEstimator) -> None:
        super().__init__()
        self.net = net
        self.estimator = estimator
        self.last: Estimate | None = None

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        value, self.last = self.estimator.surrogate(self.net, x, y)
        return value
