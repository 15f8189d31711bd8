"""Update schedules: how one relaxation step updates the layers, and the scratch it keeps.

Every schedule has the signature
``step(net, input_drive, state, nudge=None, work=None, reverse=False) -> new state``:

- ``synchronous`` (the paper's): every layer from the previous state, s_{t+1} = σ(∂Φ/∂s(s_t)).
- ``even_odd`` (red-black block coordinate): layers 0, 2, 4, … from their neighbours, then
  layers 1, 3, 5, … from the freshly updated ones (nudged sweeps start with the target
  layer's parity). Same fixed points, usually fewer steps, and the same cost per step: each
  interaction runs one conv and one transposed conv per sweep, because the max-pool argmax
  computed by a forward drive is kept in the :class:`Workspace` and reused by the backward drive
  of the next half-sweep.
- ``forward_backward`` (Gauss–Seidel): one layer at a time, upwards, then downwards on the next
  step (``reverse``); each layer sees its neighbours' newest values. Same fixed points; upward
  sweeps through max-pooled conv layers cost one extra conv per interaction.

Per-step facts (``reverse``) are plain arguments, so a compiled step specialises on them instead
of mutating state it does not own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from eqprop.core.chain import ChainNetwork, State

__all__ = [
    "SCHEDULES",
    "Nudge",
    "Schedule",
    "Workspace",
    "add_term",
    "even_odd_step",
    "feedforward_state",
    "forward_backward_step",
    "owned",
    "synchronous_step",
]

#: ``state -> −β ∂L/∂s_target`` for a nudged phase, None for the free phase.
Nudge = Callable[[State], Tensor] | None


@dataclass
class Workspace:
    """Scratch kept across the steps of one relaxation.

    Attributes:
        zero: starting states known to be all zero (:meth:`Solver.start`): their backward
            drives are exactly zero, so the first step skips those transposed convolutions and
            the argmax convolutions they would need. Recognised by identity, never scanned.
        contexts: per interaction k, the presynaptic tensor its forward drive last saw and the
            context (pool argmax) it produced, reused by a backward drive while that
            presynaptic state is unchanged.
    """

    zero: tuple[Tensor, ...] = ()
    contexts: dict[int, tuple[Tensor, Any]] = field(default_factory=dict)

    def known_zero(self, t: Tensor) -> bool:
        """Whether ``t`` is one of the all-zero starting states."""
        return any(t is z for z in self.zero)

    def context(self, net: ChainNetwork, k: int, pre: Tensor) -> Any:
        """Interaction k's forward context at the presynaptic state ``pre`` (cached)."""
        cached = self.contexts.get(k)
        if cached is None or cached[0] is not pre:
            cached = self.contexts[k] = (pre, net.interactions[k].backward_context(pre))
        return cached[1]


class Schedule(Protocol):
    """One relaxation step (see the module docstring)."""

    def __call__(
        self,
        net: ChainNetwork,
        input_drive: Tensor,
        state: Sequence[Tensor],
        nudge: Nudge = None,
        work: Workspace | None = None,
        reverse: bool = False,
    ) -> State: ...


def add_term(drive: Tensor, term: Tensor, shared: Tensor | None) -> Tensor:
    """``drive + term``: in place on a step's own tensor, into a fresh one when ``drive`` is
    still the ``shared`` constant (copied by its first write, never written in place)."""
    return drive + term if drive is shared else drive.add_(term)


def owned(drive: Tensor, shared: Tensor | None) -> Tensor:
    """``drive``, copied if nothing was added to the ``shared`` constant (σ works in place)."""
    return drive.clone() if drive is shared else drive


def synchronous_step(
    net: ChainNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    work: Workspace | None = None,
    reverse: bool = False,
) -> State:
    """One synchronous step s_{t+1} = σ(∂Φ/∂s(s_t) − β ∂L/∂s(s_t)) of every layer (the paper's).

    Args:
        net: the network.
        input_drive: the first layer's constant drive, shape (B, *state_shapes[0]).
        state: current states, one (B, ...) tensor per layer; not modified.
        nudge: ``state -> −β ∂L/∂s_target``, or None for the free phase.
        work: the relaxation's workspace; only its known zeros are read.
        reverse: unused (the step has no direction).

    Returns:
        The new states (fresh tensors).
    """
    layers = net.interactions
    dtype = input_drive.dtype  # states stay in this dtype even when convs run in bf16
    drives: list[Tensor] = [input_drive]  # shared: see add_term
    contexts: list[object] = [None]
    for n in range(1, len(layers)):
        drive, ctx = layers[n].forward_drive(state[n - 1])  # (B, *post_shape), pool argmax
        drives.append(drive.to(dtype))
        contexts.append(ctx)
    for n in range(len(layers) - 1):
        if work is None or not work.known_zero(state[n + 1]):
            back = layers[n + 1].backward_drive(state[n + 1], contexts[n + 1])
            drives[n] = add_term(drives[n], back, input_drive)
    drives[0] = owned(drives[0], input_drive)
    if nudge is not None:
        drives[net.target_layer].add_(nudge(list(state)))
    act_ = net.activation.fn_
    return [act_(d) for d in drives]


def _update_layer(
    net: ChainNetwork,
    n: int,
    new: list[Tensor],
    input_drive: Tensor,
    nudge: Nudge,
    work: Workspace,
) -> None:
    """Replace ``new[n]`` by σ(∂Φ/∂s_n − β ∂L/∂s_n) at the current ``new`` (block update)."""
    layers = net.interactions
    if n == 0:
        drive = input_drive  # shared: see add_term
    else:
        drive, c = layers[n].forward_drive(new[n - 1])
        drive = drive.to(input_drive.dtype)  # states keep their dtype when convs run in bf16
        work.contexts[n] = (new[n - 1], c)
    if n + 1 < len(layers) and not work.known_zero(new[n + 1]):
        ctx = work.context(net, n + 1, new[n])  # argmax at the *current* s_n
        drive = add_term(drive, layers[n + 1].backward_drive(new[n + 1], ctx), input_drive)
    drive = owned(drive, input_drive)
    if nudge is not None and n == net.target_layer:
        drive.add_(nudge(new))
    new[n] = net.activation.fn_(drive)


def even_odd_step(
    net: ChainNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    work: Workspace | None = None,
    reverse: bool = False,
) -> State:
    """One red-black sweep: update the even layers, then the odd layers from the new ones.

    A nudged sweep starts with the layers of the target layer's parity instead. Nudged phases
    start from the free state, where the other half-sweep would change nothing before the nudge
    has moved the target layer: starting there makes every half-sweep count. The fixed points
    are the same either way. ``reverse`` is unused.
    """
    work = work if work is not None else Workspace()
    new = list(state)
    first = net.target_layer % 2 if nudge is not None else 0
    for parity in (first, 1 - first):
        for n in range(parity, len(net.interactions), 2):
            _update_layer(net, n, new, input_drive, nudge, work)
    return new


def forward_backward_step(
    net: ChainNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    work: Workspace | None = None,
    reverse: bool = False,
) -> State:
    """One Gauss–Seidel sweep, one layer at a time.

    Free phases go upwards (layer 0 first, the one the input drives), nudged phases downwards
    (the target layer first, for the reason given in :func:`even_odd_step`); ``reverse`` flips
    that, and the solver sets it on every other step so the direction alternates. Upward sweeps
    through max-pooled conv layers cost one extra convolution per interaction (the argmax of the
    layer above must be taken at the state just updated), downward sweeps reuse it.
    """
    work = work if work is not None else Workspace()
    downward = (nudge is not None) != reverse
    new = list(state)
    n_layers = len(net.interactions)
    for n in range(n_layers - 1, -1, -1) if downward else range(n_layers):
        _update_layer(net, n, new, input_drive, nudge, work)
    return new


#: Update schedules by the name used in configs.
SCHEDULES: dict[str, Schedule] = {
    "synchronous": synchronous_step,
    "even_odd": even_odd_step,
    "forward_backward": forward_backward_step,
    # Graph schedules (eqprop.dynamics.graph_schedules); on a chain, whose proper colouring
    # and parity split are both its even/odd split, they are the red-black sweep.
    "coloured": even_odd_step,
    "parity_jacobi": even_odd_step,
}


def feedforward_state(net: ChainNetwork, input_drive: Tensor) -> State:
    """One feedforward sweep s_n = σ(forward drive of s_{n−1}), no feedback: a cheap guess."""
    act = net.activation.fn
    with torch.no_grad():
        state = [act(input_drive)]
        for layer in list(net.interactions)[1:]:
            state.append(act(layer.forward_drive(state[-1])[0].to(input_drive.dtype)))
    return state
