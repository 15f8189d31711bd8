"""Data-parallel training under ``torchrun``: ranks, shards of the global batch, reductions.

``torchrun`` starts one process per device and sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; :func:`init_ranks` joins the process group (NCCL with ``cuda:LOCAL_RANK`` on
GPUs, gloo on CPUs). Every rank draws the same global batch (a pure function of seed, epoch and
batch index, augmentation included) and relaxes its contiguous shard of it; the gradients are
then averaged with weights shard size / global batch (one flat all-reduce), which is exactly the
single-process gradient of the global batch for every estimator, whatever the world size.
Metrics are summed across ranks. Only rank 0 writes the run directory.

Without ``torchrun`` (or with ``WORLD_SIZE=1``) everything here is a no-op on one rank.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["NullLog", "Ranks", "init_ranks", "is_main_process"]

#: How long a collective waits for a rank that died or hangs before the others give up.
TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("EQPROP_DIST_TIMEOUT", "120")))


@dataclass(frozen=True)
class Ranks:
    """This process's place in the data-parallel group (one rank when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this rank writes the run directory, logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of ``n`` examples."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def average_gradients(self, params: Iterable[Tensor], local: int, total: int) -> None:
        """Replace every ``.grad`` (a mean over ``local`` examples) by the mean over all
        ``total`` examples of the global batch: Σ_r (n_r / total) g_r, one flat all-reduce."""
        if not self.distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(local / total)
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed across ranks (in place; returned for chaining)."""
        if self.distributed:
            dist.all_reduce(values)
        return values

    def barrier(self) -> None:
        """Wait for every rank (around checkpoint writes)."""
        if self.distributed:
            dist.barrier()

    def agree(self, values: list[float]) -> list[float]:
        """Sum per-batch numbers across ranks in one small all-reduce (float64)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def agree_batch(
        self, ok: bool, errors: int, loss_sum: float, steps: tuple[int, int], stop: bool,
        counts: dict[str, float] | None = None,
    ) -> tuple[bool, int, float, tuple[int, int], bool, dict[str, float]]:  # fmt: skip
        """A training batch's figures summed over ranks (steps: the mean over ranks), whether
        all gradients are finite, whether any rank was asked to stop, and the estimator's
        per-batch counts (``Estimate.stats``) summed over ranks."""
        counts = counts or {}
        keys = sorted(counts)  # the same estimator on every rank: the same keys
        bad, n_err, loss, free, nudged, stops, *summed = self.agree(
            [float(not ok), errors, loss_sum, *steps, float(stop), *(counts[k] for k in keys)]
        )
        w = self.world
        agreed = (round(free / w), round(nudged / w))
        return bad == 0, int(n_err), loss, agreed, stops > 0, dict(zip(keys, summed, strict=True))

    def close(self, clean: bool = True) -> None:
        """Leave the process group; after a clean run, only once every rank is done (gloo can
        abort a process whose peer tears its connections down while the last collective's
        messages are still in flight)."""
        if self.distributed and dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()


def init_ranks(device: str) -> tuple[Ranks, str]:
    """Join the process group that ``torchrun`` describes in the environment.

    Args:
        device: the configured device (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    Returns:
        This rank and the device to use: ``cuda:LOCAL_RANK`` on GPUs (one process per GPU),
        the configured device otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Ranks(rank, world, local, backend), device


def is_main_process() -> bool:
    """Whether this process is rank 0 (or not distributed), from ``torchrun``'s environment,
    before any process group exists (the CLI claims the run directory on rank 0 only)."""
    return os.environ.get("RANK", "0") == "0"


class NullLog:
    """The run logger of ranks other than 0: the same calls, nothing written."""

    tensorboard_active = True
    tensorboard_error: str | None = None

    def __init__(self, *args: object) -> None:
        del args  # RunLogger's arguments

    def __enter__(self) -> NullLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Nothing to restore."""

    def write_json(self, name: str, obj: Any) -> None:
        """Nothing written."""

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Nothing logged."""
