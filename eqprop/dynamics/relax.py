"""Relaxation of an energy network to its fixed point (spec §1–2 and §7).

The hot path of EP. Every step uses the closed-form drives of :mod:`eqprop.core`, runs under
``torch.no_grad()`` (no autograd graph, memory independent of the number of steps) and takes
the constant input drive P(conv_1(x) + b_1) computed once per relaxation.

Schedules are step functions registered by name in :data:`SCHEDULES`, all with the signature
``step(net, input_drive, state, nudge=None, cache=None) -> new state``:

- ``synchronous`` (the paper's): every layer from the previous state, s_{t+1} = σ(∂Φ/∂s(s_t)).
- ``even_odd`` (red-black block coordinate): layers 0, 2, 4, … from their neighbours, then
  layers 1, 3, 5, … from the freshly updated ones (nudged sweeps start with the target
  layer's parity). Same fixed points, usually fewer steps, and the same cost per step: each
  interaction runs one conv and one transposed conv per sweep, because the max-pool argmax
  computed by a forward drive is cached and reused by the backward drive of the next
  half-sweep.
- ``forward_backward`` (Gauss–Seidel): one layer at a time, upwards, then downwards on the next
  step; each layer sees its neighbours' newest values. Same fixed points; upward sweeps through
  max-pooled conv layers cost one extra conv per interaction.

:class:`Solver` picks a schedule and adds stopping on a tolerance, a warm start, compilation
and reduced precision.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from eqprop.core.network import EnergyNetwork

__all__ = [
    "INITS",
    "PRECISIONS",
    "SCHEDULES",
    "RelaxResult",
    "Solver",
    "even_odd_step",
    "feedforward_state",
    "forward_backward_step",
    "relax",
    "synchronous_step",
]

State = list[Tensor]
Nudge = Callable[[State], Tensor] | None


def synchronous_step(
    net: EnergyNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    cache: dict | None = None,
) -> State:
    """One synchronous step s_{t+1} = σ(∂Φ/∂s(s_t) − β ∂L/∂s(s_t)) of every layer (the paper's).

    Args:
        net: the network.
        input_drive: the first layer's constant drive, shape (B, *state_shapes[0]).
        state: current states, one (B, ...) tensor per layer; not modified.
        nudge: ``state -> −β ∂L/∂s_target``, or None for the free phase.
        cache: the relaxation's scratch dict; only its ``"zero"`` entry is read (see
            :meth:`Solver.relax`).

    Returns:
        The new states (fresh tensors).
    """
    layers = net.interactions
    n_layers = len(layers)
    dtype = input_drive.dtype  # states stay in this dtype even when convs run in bf16
    drives: list[Tensor] = [input_drive.clone()]
    contexts: list[object] = [None]
    for n in range(1, n_layers):
        drive, ctx = layers[n].forward_drive(state[n - 1])  # (B, *post_shape), pool argmax
        drives.append(drive.to(dtype))
        contexts.append(ctx)
    for n in range(n_layers - 1):
        if not _known_zero(state[n + 1], cache):
            drives[n].add_(layers[n + 1].backward_drive(state[n + 1], contexts[n + 1]))
    if nudge is not None:
        drives[net.target_layer].add_(nudge(list(state)))
    act_ = net.activation.fn_
    return [act_(d) for d in drives]


#: The all-zero states handed out by Solver.initial_state, by id, while they are alive.
_ZERO_STARTS: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()


def _known_zero(t: Tensor, cache: dict | None) -> bool:
    """Whether ``t`` is an all-zero starting state from :meth:`Solver.initial_state`.

    Their backward drives are exactly zero, so the first step from zeros skips those
    transposed convolutions (and the argmax convolutions they would need).
    :meth:`Solver.relax` lists them in ``cache["zero"]``.
    """
    return cache is not None and any(t is z for z in cache.get("zero", ()))


def _update_layer(
    net: EnergyNetwork,
    n: int,
    new: list[Tensor],
    input_drive: Tensor,
    nudge: Nudge,
    ctx: dict,
) -> None:
    """Replace ``new[n]`` by σ(∂Φ/∂s_n − β ∂L/∂s_n) at the current ``new`` (block update).

    ``ctx`` holds, per interaction k, the presynaptic tensor and the context (pool argmax) its
    forward drive produced, so that a backward drive reuses it while that state is unchanged.
    """
    layers = net.interactions
    if n == 0:
        drive = input_drive.clone()
    else:
        drive, c = layers[n].forward_drive(new[n - 1])
        drive = drive.to(input_drive.dtype)  # states keep their dtype when convs run in bf16
        ctx[n] = (new[n - 1], c)
    if n + 1 < len(layers) and not _known_zero(new[n + 1], ctx):
        cached = ctx.get(n + 1)
        if cached is None or cached[0] is not new[n]:  # argmax at the *current* s_n
            cached = ctx[n + 1] = (new[n], layers[n + 1].forward_drive(new[n])[1])
        drive.add_(layers[n + 1].backward_drive(new[n + 1], cached[1]))
    if nudge is not None and n == net.target_layer:
        drive.add_(nudge(new))
    new[n] = net.activation.fn_(drive)


def even_odd_step(
    net: EnergyNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    cache: dict | None = None,
) -> State:
    """One red-black sweep: update the even layers, then the odd layers from the new ones.

    A nudged sweep starts with the layers of the target layer's parity instead. Nudged phases
    start from the free state, where the other half-sweep would change nothing before the nudge
    has moved the target layer: starting there makes every half-sweep count. The fixed points
    are the same either way.

    Args:
        net, input_drive, state, nudge: as for :func:`synchronous_step`.
        cache: a dict kept across the steps of one relaxation; it holds, per interaction, the
            presynaptic tensor and the context (pool argmax) its forward drive produced, so that
            the backward drive reuses it while that presynaptic state is unchanged.
    """
    ctx = cache if cache is not None else {}
    new = list(state)
    first = net.target_layer % 2 if nudge is not None else 0
    for parity in (first, 1 - first):
        for n in range(parity, len(net.interactions), 2):
            _update_layer(net, n, new, input_drive, nudge, ctx)
    return new


def forward_backward_step(
    net: EnergyNetwork,
    input_drive: Tensor,
    state: Sequence[Tensor],
    nudge: Nudge = None,
    cache: dict | None = None,
) -> State:
    """One Gauss–Seidel sweep, one layer at a time, alternating direction from step to step.

    Free phases start upwards (layer 0 first, the one the input drives), nudged phases
    downwards (the target layer first, for the reason given in :func:`even_odd_step`); each
    layer sees its neighbours' newest values. The direction is kept in ``cache``; without one,
    every step goes in the starting direction. Upward sweeps through max-pooled conv layers
    cost one extra convolution per interaction (the argmax of the layer above must be taken
    at the state just updated), downward sweeps reuse it.
    """
    ctx = cache if cache is not None else {}
    sweep = ctx.get("sweep", 0)
    ctx["sweep"] = sweep + 1
    n_layers = len(net.interactions)
    downward = (sweep % 2 == 0) == (nudge is not None)
    new = list(state)
    for n in range(n_layers - 1, -1, -1) if downward else range(n_layers):
        _update_layer(net, n, new, input_drive, nudge, ctx)
    return new


Step = Callable[..., State]

#: Update schedules by name; each maps (net, input_drive, state, nudge, cache) to the next state.
SCHEDULES: dict[str, Step] = {
    "synchronous": synchronous_step,
    "even_odd": even_odd_step,
    "forward_backward": forward_backward_step,
}


def feedforward_state(net: EnergyNetwork, input_drive: Tensor) -> State:
    """One feedforward sweep s_n = σ(forward drive of s_{n−1}), no feedback: a cheap guess."""
    act = net.activation.fn
    with torch.no_grad():
        state = [act(input_drive)]
        for layer in list(net.interactions)[1:]:
            state.append(act(layer.forward_drive(state[-1])[0].to(input_drive.dtype)))
    return state


#: Starting points of the free phase by name.
INITS: dict[str, str] = {
    "zeros": "all-zero states (the paper's)",
    "feedforward": "one feedforward sweep without feedback",
}

#: Arithmetic of the relaxation by name. States always stay in the network's dtype.
PRECISIONS: dict[str, str] = {
    "float32": "the network's dtype throughout",
    "tf32": "TF32 tensor-core matmuls and convolutions on CUDA (no effect on CPU)",
    "bf16": "convolutions and matmuls autocast to bfloat16; states accumulated in float32",
}


@dataclass
class RelaxResult:
    """Outcome of a relaxation.

    Attributes:
        state: final states, one (B, ...) tensor per layer.
        steps: number of steps taken.
        residual: largest absolute state change of the last checked step (a float), or None
            when no tolerance was requested.
    """

    state: State
    steps: int
    residual: float | None = None


def _max_change(new: Sequence[Tensor], old: Sequence[Tensor]) -> Tensor:
    return torch.stack([(a - b).abs().amax() for a, b in zip(new, old, strict=True)]).amax()


_COMPILED: dict[str, Step] = {}


def _compiled(schedule: str) -> Step:
    if schedule not in _COMPILED:
        _COMPILED[schedule] = torch.compile(SCHEDULES[schedule], dynamic=None)
    return _COMPILED[schedule]


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Context in which the relaxation runs at ``precision`` (see :data:`PRECISIONS`)."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and device.type == "cuda":
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    else:
        yield


@dataclass(frozen=True)
class Solver:
    """How to relax: the schedule, an optional stopping tolerance and the arithmetic.

    Args:
        schedule: a key of :data:`SCHEDULES`.
        tol: stop once the largest state change of a step (over all layers, units and examples)
            falls below ``tol``; None runs the fixed number of steps (exact reproduction).
        check_every: test the tolerance every this many steps (each test syncs with the device).
        init: free-phase starting point, a key of :data:`INITS` (nudged phases always start from
            the free state).
        compile: run the step through ``torch.compile``.
        precision: a key of :data:`PRECISIONS`.
    """

    schedule: str = "synchronous"
    tol: float | None = None
    check_every: int = 1
    init: str = "zeros"
    compile: bool = False
    precision: str = "float32"

    def __post_init__(self) -> None:
        for name, choices in (
            ("schedule", SCHEDULES),
            ("init", INITS),
            ("precision", PRECISIONS),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(
                    f"{name}: unknown name {value!r}; choose one of {', '.join(choices)}"
                )
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol: {self.tol!r} is not valid; expected a number > 0 or None")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(
                f"check_every: {self.check_every!r} is not valid; expected an int >= 1"
            )

    def initial_state(self, net: EnergyNetwork, input_drive: Tensor) -> State:
        """The free phase's starting point for a batch."""
        if self.init == "feedforward":
            return feedforward_state(net, input_drive)
        zeros = net.zero_state(input_drive.shape[0])
        for t in zeros:  # known zero without looking at it again (see _known_zero)
            _ZERO_STARTS[id(t)] = t
        return zeros

    def relax(
        self,
        net: EnergyNetwork,
        input_drive: Tensor,
        state: Sequence[Tensor],
        steps: int,
        y: Tensor | None = None,
        beta: float | Tensor = 0.0,
    ) -> RelaxResult:
        """Run at most ``steps`` steps from ``state``; nudged towards ``y`` when ``beta`` ≠ 0.

        Args:
            net: the network.
            input_drive: ``net.input_drive(x)``.
            state: initial states (not modified).
            steps: step budget, >= 1.
            y: labels, shape (B,); needed when nudging.
            beta: nudging strength, a float or a per-example tensor of shape (B, 1).
        """
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps: {steps!r} is not valid; expected an int >= 1")
        nudging = isinstance(beta, Tensor) or beta != 0.0
        if nudging and y is None:
            raise ValueError("relax: labels y are required when beta is non-zero")
        nudge: Nudge = None
        if nudging:
            target = F.one_hot(y, net.num_classes).to(input_drive.dtype)  # once per relaxation
            nudge = lambda s: net.nudge_drive(s, target, beta)  # noqa: E731
        step = _compiled(self.schedule) if self.compile else SCHEDULES[self.schedule]
        cache: dict = {}
        current = list(state)
        if not self.compile:  # (identity tests on tensors would only add guards to a graph)
            cache["zero"] = tuple(s for s in current if _ZERO_STARTS.get(id(s)) is s)
        residual: float | None = None
        with torch.no_grad(), precision_context(self.precision, input_drive.device):
            for t in range(1, steps + 1):
                new = step(net, input_drive, current, nudge, cache)
                if self.tol is not None and (t % self.check_every == 0 or t == steps):
                    residual = float(_max_change(new, current))  # the one device sync per check
                    current = new
                    if residual < self.tol:
                        return RelaxResult(current, t, residual)
                else:
                    current = new
        return RelaxResult(current, steps, residual)


def relax(
    net: EnergyNetwork,
    x: Tensor,
    steps: int,
    y: Tensor | None = None,
    beta: float | Tensor = 0.0,
    state: Sequence[Tensor] | None = None,
    solver: Solver | None = None,
) -> RelaxResult:
    """Convenience wrapper: validate ``x``, start from ``state`` (default: the solver's init).

    Example:
        >>> net = EnergyNetwork((4,), dense=[3], num_classes=2)
        >>> relax(net, torch.rand(5, 4), steps=10).state[1].shape
        torch.Size([5, 2])
    """
    x, y = net.check_input(x, y)
    solver = solver or Solver()
    drive = net.input_drive(x)
    if state is None:
        state = solver.initial_state(net, drive)
    return solver.relax(net, drive, state, steps, y, beta)
