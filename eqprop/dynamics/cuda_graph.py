"""Fixed-step relaxations captured once in a CUDA graph and replayed (the GPU hot loop).

A relaxation of T steps launches a few kernels per layer and step; at small batches the GPU
then waits on Python and kernel launches. Captured once per (network, shapes, steps, phase
kind), the whole loop replays as one graph: the inputs are copied into static buffers, the graph
runs, the outputs are cloned. Parameters are read in place, so optimiser steps need no
re-capture; a network whose parameters are re-allocated (``.to()``, ``load_state_dict(...,
assign=True)``) is captured again (the key holds their addresses).

Capture needs a CUDA device, a fixed step count (tolerance stopping syncs with the host to
decide when to stop) and no graph for autograd; elsewhere :class:`~eqprop.dynamics.Solver`
falls back to its ordinary loop, with the same results.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from eqprop.core.chain import ChainNetwork, State
from eqprop.dynamics.graph_schedules import schedule_for
from eqprop.dynamics.precision import precision_context
from eqprop.dynamics.schedules import Workspace

__all__ = ["can_capture", "graphed_relax"]

Key = tuple[object, ...]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    drive: Tensor
    state: State
    target: Tensor | None
    beta: Tensor | None
    out: State


#: Per network: its captured relaxations by key (dropped with the network).
_GRAPHS: weakref.WeakKeyDictionary[ChainNetwork, dict[Key, _Captured]] = weakref.WeakKeyDictionary()


def can_capture(input_drive: Tensor, tol: float | None) -> bool:
    """Whether a relaxation can run as a captured graph (see the module docstring)."""
    return input_drive.is_cuda and tol is None and not torch.is_grad_enabled()


def _loop(
    net: ChainNetwork, schedule: str, precision: str, steps: int, c: _Captured
) -> Callable[[], State]:
    step = schedule_for(net, schedule)
    nudge = None
    if c.target is not None:
        target, beta = c.target, c.beta

        def nudge(s: State) -> Tensor:
            return net.nudge_drive(s, target, beta)  # type: ignore[arg-type]

    def run() -> State:
        current, work = list(c.state), Workspace()
        for t in range(steps):
            with precision_context(precision, c.drive.device):
                current = step(net, c.drive, current, nudge, work, t % 2 == 1)
        return current

    return run


def _capture(
    net: ChainNetwork, schedule: str, precision: str, steps: int, drive: Tensor,
    state: Sequence[Tensor], nudged: bool,
) -> _Captured:  # fmt: skip
    b = drive.shape[0]
    c = _Captured(
        torch.cuda.CUDAGraph(), drive.clone(), [s.clone() for s in state],
        drive.new_zeros((b, net.num_classes)) if nudged else None,
        drive.new_zeros((b, 1)) if nudged else None, [],
    )  # fmt: skip
    run = _loop(net, schedule, precision, steps, c)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN autotuning, allocator)
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(c.graph):
        c.out = run()
    return c


def graphed_relax(
    net: ChainNetwork,
    schedule: str,
    precision: str,
    input_drive: Tensor,
    state: Sequence[Tensor],
    steps: int,
    y: Tensor | None,
    beta: float | Tensor,
) -> State:
    """``steps`` steps of ``schedule`` from ``state`` by replaying a captured graph."""
    nudged = isinstance(beta, Tensor) or beta != 0.0
    key: Key = (
        schedule, precision, steps, nudged, tuple(input_drive.shape), input_drive.dtype,
        tuple(tuple(s.shape) for s in state), tuple(p.data_ptr() for p in net.parameters()),
    )  # fmt: skip
    graphs = _GRAPHS.setdefault(net, {})
    c = graphs.get(key)
    if c is None:
        c = graphs[key] = _capture(net, schedule, precision, steps, input_drive, state, nudged)
    c.drive.copy_(input_drive)
    for buf, s in zip(c.state, state, strict=True):
        buf.copy_(s)
    if nudged:
        assert c.target is not None and c.beta is not None and y is not None
        c.target.copy_(F.one_hot(y, net.num_classes))
        c.beta.copy_(beta if isinstance(beta, Tensor) else torch.full_like(c.beta, beta))
    c.graph.replay()
    return [o.clone() for o in c.out]
