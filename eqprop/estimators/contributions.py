"""BPTT's gradient split by step, for the GDU check (spec §2, last bullet).

Started at a free equilibrium s* and unrolled for T steps s_0 = s* → s_1 → … → s_T, entry t
(t = 1..T) holds the contribution of step k = T − t + 1 (s_{k−1} → s_k), so that it pairs with
EP's t-th nudged step ("the t-th step back in time"). Entry 0 holds what the loss reaches
without going through any step (the CE readout's gradient at s_T).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from eqprop.core.activations import Activation
from eqprop.core.chain import ChainNetwork, State
from eqprop.core.graph import GraphNetwork
from eqprop.dynamics.solver import Solver
from eqprop.estimators.bptt import graph_input_drive

__all__ = ["bptt_step_contributions", "iter_step_contributions"]


def _tapped(net: ChainNetwork, records: list[tuple[Tensor, Tensor]]) -> ChainNetwork:
    """A shallow copy of ``net`` whose activation keeps every (pre-activation, state) pair.

    The schedules apply ``net.activation.fn_`` to each layer's fresh drive; applying σ out of
    place instead leaves that drive a node of the graph, so autograd can return ∂L/∂drive. The
    copy shares all modules and parameters; ``net`` itself is not modified.
    """

    def recording(act: Activation) -> Activation:
        def record(drive: Tensor) -> Tensor:
            out = act.fn(drive)
            records.append((drive, out))
            return out

        return Activation(act.name, record, record, act.description)

    tapped = copy.copy(net)
    tapped.activation = recording(net.activation)
    if isinstance(tapped, GraphNetwork):  # a graph's schedules apply each node's own box
        tapped.node_activations = [recording(a) for a in tapped.node_activations]
    return tapped


def _grads(scalar: Tensor, params: Sequence[Tensor], retain_graph: bool = False) -> list[Tensor]:
    """∂scalar/∂θ for each parameter, zeros where the scalar does not reach it."""
    out = [torch.zeros_like(p) for p in params]
    live = [i for i, p in enumerate(params) if p.requires_grad]  # frozen parameters get zeros
    if scalar.requires_grad and live:
        grads = torch.autograd.grad(
            scalar, [params[i] for i in live], allow_unused=True, retain_graph=retain_graph
        )
        for i, g in zip(live, grads, strict=True):
            if g is not None:
                out[i] = g
    return out


def _adjoints(loss: Tensor, targets: list[Tensor]) -> list[Tensor | None]:
    """∂loss/∂target for each target; None for those the loss does not reach."""
    live = [i for i, t in enumerate(targets) if t.requires_grad]
    out: list[Tensor | None] = [None] * len(targets)
    if loss.requires_grad and live:
        grads = torch.autograd.grad(loss, [targets[i] for i in live], allow_unused=True)
        for i, g in zip(live, grads, strict=True):
            out[i] = g
    return out


Adjoints = list[list[Tensor | None]]


def _unroll_adjoints(
    net: ChainNetwork, x: Tensor, y: Tensor, free_state: Sequence[Tensor], steps: int,
    solver: Solver,
) -> tuple[list[State], Adjoints, Adjoints]:  # fmt: skip
    """One unroll from s* with a graph and one backward pass: the states s_0..s_T, and for
    every step k = 1..T the adjoints ∂L/∂s_k (total, through all later steps) and ∂L/∂a_k of
    each layer's pre-activation (None for a layer the step did not update)."""
    records: list[tuple[Tensor, Tensor]] = []
    tapped = _tapped(net, records)
    # Leaves that require grad at the start (states and input drive) put every later state in
    # the graph, even one that reaches no parameter (the only layer of a one-layer net).
    drive = net.input_drive(x).detach().requires_grad_()
    states: list[State] = [[s.detach().requires_grad_() for s in free_state]]
    pre: list[list[Tensor | None]] = []
    with torch.enable_grad():
        for new in solver.trajectory(tapped, drive, states[0], steps):
            by_output = {id(out): d for d, out in records}
            pre.append([by_output.get(id(s)) for s in new])  # None: layer not updated
            records.clear()
            states.append(new)
        kept = [d for ds in pre for d in ds if d is not None]
        loss = net.loss(states[-1], y).mean()
        grads = iter(_adjoints(loss, [s for st in states[1:] for s in st] + kept))
    n_layers = len(states[0])
    adjoints = [[next(grads) for _ in range(n_layers)] for _ in range(steps)]
    drive_adjoints = [[next(grads) if d is not None else None for d in ds] for ds in pre]
    return [[s.detach() for s in st] for st in states], adjoints, drive_adjoints


def iter_step_contributions(
    net: ChainNetwork,
    x: Tensor,
    y: Tensor,
    free_state: Sequence[Tensor],
    steps: int,
    *,
    solver: Solver | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Yield the per-step BPTT contributions one at a time (see :func:`bptt_step_contributions`).

    One unroll and one backward pass give every step's adjoints; each step's parameter
    contribution is then one vector-Jacobian product through that step alone, computed when it
    is asked for, so memory holds O(steps) states but only one step's parameter gradients.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: {steps!r} is not valid; expected an int >= 1")
    x, y = net.check_input(x, y)
    solver = dataclasses.replace(solver or Solver(), compile=False)  # steps with a graph
    names, params = zip(*net.named_parameters(), strict=True)
    states, adjoints, drive_adjoints = _unroll_adjoints(net, x, y, free_state, steps, solver)

    # t = 0: what the loss reaches without a step (the CE readout), states held fixed.
    with torch.enable_grad():
        direct = _grads(net.loss(states[-1], y).mean(), params)
    first: dict[str, Tensor] = dict(zip(names, direct, strict=True))
    for n, s in enumerate(states[0]):
        first[f"neurons.{n}"] = torch.zeros_like(s)
    yield first

    with torch.enable_grad():
        g_drive = graph_input_drive(net, x)
        for t in range(1, steps + 1):
            k = steps - t + 1  # EP's t-th nudged step pairs with BPTT's step k (time reversed)
            (new,) = solver.trajectory(net, g_drive, states[k - 1], 1, first_step=k - 1)
            pairs = zip(adjoints[k - 1], new, strict=True)
            dot = sum(((lam * s).sum() for lam, s in pairs if lam is not None), x.new_zeros(()))
            out = dict(zip(names, _grads(dot, params, retain_graph=True), strict=True))
            for n, (mu, s) in enumerate(zip(drive_adjoints[k - 1], states[k], strict=True)):
                # Per example: the loss is a batch mean, each example's own loss is B times it.
                out[f"neurons.{n}"] = mu * x.shape[0] if mu is not None else torch.zeros_like(s)
            yield out


def bptt_step_contributions(
    net: ChainNetwork,
    x: Tensor,
    y: Tensor,
    free_state: Sequence[Tensor],
    steps: int,
    *,
    solver: Solver | None = None,
) -> list[dict[str, Tensor]]:
    """Per-step BPTT gradients from ``free_state``, time-reversed to pair with EP's steps.

    Unrolls ``steps`` closed-form free steps s_0 = ``free_state`` (detached) → … → s_T with a
    graph and takes L = mean loss at s_T. Entry t = 1..T is the contribution of step
    k = T − t + 1 (s_{k−1} → s_k); entry 0 is the loss's direct dependence on θ at s_T (the CE
    readout; zero for a dynamical output layer). Each entry maps

    - every parameter name of ``net.named_parameters()`` to its share of ∂L/∂θ, so that
      ``sum(entry[name] for entry in result)`` is the BPTT gradient of L;
    - ``"neurons.n"`` (state index n) to ∂L_b/∂a_k, the gradient of each example's own loss
      with respect to the pre-activation a_k = ∂Φ/∂s(s_{k−1}) of s_k = σ(a_k), shape
      (B, *state_shapes[n]); zeros in entry 0.

    Why the pre-activation and not ∂L/∂s_k: with σ outside Φ the step's Jacobian at s* is DH
    (D = diag σ'(a*), H = ∂²Φ/∂s² symmetric). To first order in β, EP's neuron increment
    −(s_t − s_{t−1})/β is D(HD)^{t−1}∇L, while ∂L/∂s_{T−t+1} = (HD)^{t−1}∇L: the increment is
    σ'(a) ⊙ ∂L/∂s_{T−t+1} = ∂L/∂a_{T−t+1}. The two adjoints coincide where σ' = 1 (Ernoult et
    al. 2019's identity-σ setting, or unsaturated hard-sigmoid units). Parameters need no such
    care: θ enters only through a_k, so their contributions match EP's either way.

    Args:
        net: the network.
        x: inputs, shape (B, *net.input_shape).
        y: labels, shape (B,).
        free_state: the starting state (usually a free equilibrium s*).
        steps: T, >= 1.
        solver: its schedule and precision are used (default: synchronous).

    Returns:
        ``steps + 1`` dicts, entry t pairing with EP's t-th nudged step.
    """
    return list(iter_step_contributions(net, x, y, free_state, steps, solver=solver))
