"""Schedules on energy graphs (residual spec §2), by the names of the chain's schedules.

Every step has the chain schedules' signature; ``input_drive`` is the graph's packed constant
drive (:meth:`GraphNetwork.constants` unpacks it). The drive of node n is built in one order:
its constant (bias and input edges), its incoming edges' forward terms, its outgoing edges'
transposed terms, then the nudge; on a chain this is the chain schedules' order, so a chain
built as a graph relaxes to the same bits. With feedback weights (spec §4) the transposed terms
apply Bᵀ at the pool context of the feedback map (what the edge's ``forward_drive`` returns),
so the same schedules relax asymmetric graphs.

- ``synchronous``: every node from the previous state.
- ``coloured`` (and ``even_odd``): block coordinate over the network's proper colouring
  (:mod:`eqprop.core.colouring`); without feedback weights each block update is an exact
  minimisation, so F_β never rises. Nudged sweeps start with the target node's block.
- ``parity_jacobi``: the reference code's split by node position (odd-numbered states, then
  even-numbered ones), each group updated from its pre-group state; not an exact block update
  once same-parity states interact (skips).
- ``forward_backward``: one node at a time in depth order, upwards, downwards when nudged
  (flipped by ``reverse``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from eqprop.core.chain import ChainNetwork, State
from eqprop.core.colouring import parity_blocks
from eqprop.core.graph import GraphNetwork
from eqprop.core.interactions import NONLINEAR_POOLS, ConvInteraction
from eqprop.dynamics.schedules import SCHEDULES, Nudge, Schedule, Workspace, add_term, owned

__all__ = ["GRAPH_SCHEDULES", "graph_drives", "graph_feedforward_state", "schedule_for"]


def _context(net: GraphNetwork, e: int, pre: Tensor, work: Workspace) -> Any:
    """The context edge e's backward term needs at ``pre`` (None for a linear pool), cached in
    the workspace while ``pre`` is unchanged: that of ``forward_drive(pre)``, which with
    feedback weights is the pool context of the feedback map conv_B(pre)."""
    layer = net.interactions[e]
    if not (isinstance(layer, ConvInteraction) and layer.spec.pool in NONLINEAR_POOLS):
        return None
    cached = work.contexts.get(e)
    if cached is None or cached[0] is not pre:
        cached = work.contexts[e] = (pre, layer.backward_context(pre))
    return cached[1]


def _accumulate(
    drive: Tensor | None, term: Tensor, dtype: torch.dtype, const: Tensor | None
) -> Tensor:
    """``drive + term`` (:func:`add_term`), or ``term`` in ``dtype`` when nothing came first."""
    return term.to(dtype) if drive is None else add_term(drive, term, const)


def graph_drives(
    net: GraphNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nodes: Sequence[int],
    nudge: Nudge = None,
    work: Workspace | None = None,
) -> list[Tensor]:
    """∂Φ_β/∂s_n at ``state`` for each node n of ``nodes`` (fresh tensors, before σ).

    The forward terms of the nodes' incoming edges come first: their contexts (max-pool argmax)
    are then at hand for the transposed terms of the same edges.
    """
    work = work if work is not None else Workspace()
    consts = net.constants(input_drive)
    dtype = input_drive.dtype  # states keep their dtype when convs run in bf16
    layers = net.interactions
    forward: dict[int, Tensor] = {}
    for n in nodes:
        for e in net.in_edges[n]:
            pre = state[net.edge_src[e]]
            forward[e], ctx = layers[e].forward_drive(pre)
            work.contexts[e] = (pre, ctx)
    out = []
    for n in nodes:
        # The node's constant term is shared between steps: the first term added to it makes
        # the copy (one pass over memory, not a clone and then an add).
        drive = consts[n]
        for e in net.in_edges[n]:
            drive = _accumulate(drive, forward[e], dtype, consts[n])
        for e in net.out_edges[n]:
            post = state[net.edge_dst[e]]
            if not work.known_zero(post):
                back = layers[e].backward_drive(post, _context(net, e, state[n], work))
                drive = _accumulate(drive, back, dtype, consts[n])
        drive = torch.zeros_like(state[n]) if drive is None else owned(drive, consts[n])
        if nudge is not None and n == net.target_layer:
            drive.add_(nudge(list(state)))
        out.append(drive)
    return out


def _block_sweep(
    net: GraphNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    blocks: Sequence[Sequence[int]],
    nudge: Nudge,
    work: Workspace | None,
) -> State:
    """Update the blocks in turn, each from the state left by the previous ones (Jacobi inside
    a block: every drive from the pre-block state, then all assigned)."""
    work = work if work is not None else Workspace()
    new = list(state)
    for block in blocks:
        drives = graph_drives(net, input_drive, new, block, nudge, work)
        for n, d in zip(block, drives, strict=True):
            new[n] = net.node_activations[n].fn_(d)
    return new


def graph_synchronous_step(
    net: GraphNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    work: Workspace | None = None,
    reverse: bool = False,
) -> State:
    """Every node from the previous state; ``reverse`` is unused."""
    return _block_sweep(net, input_drive, state, [range(len(state))], nudge, work)


def graph_coloured_step(
    net: GraphNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    work: Workspace | None = None,
    reverse: bool = False,
) -> State:
    """One sweep over the proper colouring; nudged sweeps start with the target's block."""
    blocks = net.colouring
    if nudge is not None:
        first = next(i for i, b in enumerate(blocks) if net.target_layer in b)
        blocks = [blocks[first], *blocks[:first], *blocks[first + 1 :]]
    return _block_sweep(net, input_drive, state, blocks, nudge, work)


def graph_parity_step(
    net: GraphNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    work: Workspace | None = None,
    reverse: bool = False,
) -> State:
    """The reference code's sweep: nodes at even positions, then odd ones (Jacobi)."""
    return _block_sweep(net, input_drive, state, parity_blocks(len(state)), nudge, work)


def graph_forward_backward_step(
    net: GraphNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    work: Workspace | None = None,
    reverse: bool = False,
) -> State:
    """One node at a time in depth order: upwards, downwards when nudged (flipped by
    ``reverse``)."""
    order = list(net.depth_order)
    if (nudge is not None) != reverse:
        order.reverse()
    return _block_sweep(net, input_drive, state, [[n] for n in order], nudge, work)


#: Graph schedules by the names of :data:`~eqprop.dynamics.schedules.SCHEDULES`.
GRAPH_SCHEDULES: dict[str, Schedule] = {
    "synchronous": graph_synchronous_step,  # type: ignore[dict-item]
    "even_odd": graph_coloured_step,  # type: ignore[dict-item]
    "coloured": graph_coloured_step,  # type: ignore[dict-item]
    "parity_jacobi": graph_parity_step,  # type: ignore[dict-item]
    "forward_backward": graph_forward_backward_step,  # type: ignore[dict-item]
}


def schedule_for(net: ChainNetwork, name: str) -> Schedule:
    """The step function ``name`` for this network: the graph form on a graph network."""
    return GRAPH_SCHEDULES[name] if isinstance(net, GraphNetwork) else SCHEDULES[name]


def graph_feedforward_state(net: GraphNetwork, input_drive: Tensor) -> State:
    """One sweep in depth order from zero without feedback: a cheap starting guess."""
    state = net.zero_state(input_drive.shape[0])
    consts = net.constants(input_drive)
    with torch.no_grad():
        for n in net.depth_order:
            c = consts[n]
            drive = torch.zeros_like(state[n]) if c is None else c.clone()
            for e in net.in_edges[n]:
                drive.add_(net.interactions[e].forward_drive(state[net.edge_src[e]])[0])
            state[n] = net.node_activations[n].fn(drive)
    return state
