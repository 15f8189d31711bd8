"""Evaluation of a network at its free equilibrium, batch by batch, stoppable between batches."""

from __future__ import annotations

import torch

from eqprop.core import ChainNetwork
from eqprop.dynamics import FreeRelaxation
from eqprop.train.distributed import Ranks
from eqprop.train.interrupt import Interrupt
from eqprop.train.loader import EpochLoader
from eqprop.train.reporting import progress_bar

__all__ = ["Stopped", "evaluate"]


class Stopped(Exception):
    """A stop was requested (Ctrl-C, SIGTERM) while evaluating; the result is discarded."""


@torch.no_grad()
def evaluate(
    net: ChainNetwork,
    loader: EpochLoader,
    *,
    interrupt: Interrupt | None = None,
    progress: bool = False,
    desc: str = "evaluating",
    ranks: Ranks | None = None,
) -> tuple[float, float]:
    """(error rate, mean loss) of the free equilibrium after the evaluation steps.

    Under ``torchrun`` (``ranks``) each rank relaxes every world-th batch and the sums are
    reduced across ranks.

    Raises:
        Stopped: ``interrupt`` was requested (checked before every batch).
    """
    relaxation = net.relaxation
    assert isinstance(relaxation, FreeRelaxation)  # set by build_network
    device = next(net.parameters()).device
    errors = torch.zeros((), dtype=torch.long, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    with progress_bar(len(loader), desc, progress) as bar:
        for i, (x, y) in enumerate(loader.epoch(0)):
            if interrupt is not None and interrupt.requested:
                raise Stopped
            if ranks is not None and i % ranks.world != ranks.rank:
                bar.update(1)
                continue
            x, y = net.check_input(x, y)
            state = relaxation.free_state(net, x)
            errors += (net.predict_from_state(state) != y).sum()
            loss += net.loss(state, y).sum().double()
            bar.update(1)
    n = loader.num_samples
    if ranks is not None and ranks.distributed:
        n_err, total = ranks.agree([float(errors), float(loss)])
        return int(n_err) / n, total / n
    return int(errors) / n, float(loss) / n
