"""Evaluation of a network at its free equilibrium, batch by batch, stoppable between batches."""

from __future__ import annotations

import torch

from eqprop.core import ChainNetwork
from eqprop.dynamics import FreeRelaxation
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
) -> tuple[float, float]:
    """(error rate, mean loss) of the free equilibrium after the evaluation steps.

    Raises:
        Stopped: ``interrupt`` was requested (checked before every batch).
    """
    relaxation = net.relaxation
    assert isinstance(relaxation, FreeRelaxation)  # set by build_network
    device = next(net.parameters()).device
    errors = torch.zeros((), dtype=torch.long, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    with progress_bar(len(loader), desc, progress) as bar:
        for x, y in loader.epoch(0):
            if interrupt is not None and interrupt.requested:
                raise Stopped
            x, y = net.check_input(x, y)
            state = relaxation.free_state(net, x)
            errors += (net.predict_from_state(state) != y).sum()
            loss += net.loss(state, y).sum().double()
            bar.update(1)
    n = loader.num_samples
    return int(errors) / n, float(loss) / n
