"""Backpropagation through time (BPTT) through the closed-form dynamics (spec §5).

The paper's baseline: relax T1 − T2 steps without a graph, then T2 steps with one, take the mean
loss at the last state and back-propagate through those T2 steps (``full=True``: through all T1
steps). The steps with a graph are the solver's own closed-form step
(:data:`eqprop.dynamics.SCHEDULES`) run under ``torch.enable_grad()``: convolutions, transposed
convolutions, max-pool's backward at the argmax and the in-place activation on fresh buffers
are all differentiable, so BPTT differentiates exactly the dynamics that EP relaxes.

:func:`bptt_step_contributions` splits that gradient by step, for the GDU check (spec §2, last
bullet): started at a free equilibrium s* and unrolled for T steps s_0 = s* → s_1 → … → s_T,
entry t (t = 1..T) holds the contribution of step k = T − t + 1 (s_{k−1} → s_k), so that it
pairs with EP's t-th nudged step ("the t-th step back in time"). Entry 0 holds what the loss
reaches without going through any step (the CE readout's gradient at s_T).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from eqprop.core.activations import Activation
from eqprop.core.interactions import fast_layout
from eqprop.core.network import EnergyNetwork
from eqprop.dynamics.relax import SCHEDULES, Solver, precision_context
from eqprop.estimators.ep import Estimate

__all__ = ["BPTT", "bptt_step_contributions", "graph_input_drive", "iter_step_contributions"]

State = list[Tensor]


def graph_input_drive(net: EnergyNetwork, x: Tensor) -> Tensor:
    """``net.input_drive(x)`` with a graph to the first layer's parameters.

    ``input_drive`` runs under ``no_grad`` (it is the relaxation's constant), but the first
    layer's weights act on every step through it, so BPTT needs it differentiable.
    """
    # The same channels-last layout as input_drive, for the same conv kernels.
    return fast_layout(net.interactions[0].forward_drive(fast_layout(x))[0])


def _unroll(
    net: EnergyNetwork, drive: Tensor, state: Sequence[Tensor], steps: int, schedule: str
) -> State:
    """Run ``steps`` steps of ``schedule`` from ``state`` in the current grad mode."""
    step = SCHEDULES[schedule]
    cache: dict = {}  # the even/odd schedule's argmax cache, kept across one unroll as in relax
    current = list(state)
    for _ in range(steps):
        current = step(net, drive, current, None, cache)
    return current


@dataclass
class BPTT:
    """Truncated (or full) backpropagation through time, the paper's baseline (spec §5).

    ``estimate`` has the contract of :meth:`eqprop.estimators.EPEstimator.estimate`: it adds the
    batch-mean gradient to every ``.grad`` and returns the predictions and loss at the last
    state. Memory grows linearly with the steps kept in the graph (``nudged_steps``, or
    ``free_steps`` when ``full``): every kept step stores its activations for the backward pass.

    Args:
        free_steps: total steps T1, >= 1.
        nudged_steps: steps T2 kept in the graph (the last ones), 1 <= T2 <= T1.
        full: keep all T1 steps in the graph (``nudged_steps`` is then unused).
        solver: schedule, tolerance, init and precision. The tolerance only applies to the
            T1 − T2 steps without a graph; the graph always holds exactly T2 (or T1) steps, run
            without ``torch.compile``.
    """

    name: ClassVar[str] = "bptt"

    free_steps: int
    nudged_steps: int
    full: bool = False
    solver: Solver = field(default_factory=Solver)

    def __post_init__(self) -> None:
        for name in ("free_steps", "nudged_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not valid; expected an int >= 1")
        if self.nudged_steps > self.free_steps:
            raise ValueError(
                f"nudged_steps: {self.nudged_steps} is not valid; expected at most "
                f"free_steps ({self.free_steps}), the steps it is taken from"
            )
        if not isinstance(self.full, bool):
            raise ValueError(f"full: {self.full!r} is not valid; expected True or False")
        if not isinstance(self.solver, Solver):
            raise ValueError(f"solver: expected a Solver, got {type(self.solver).__name__}")

    @property
    def graph_steps(self) -> int:
        """Steps back-propagated through: T1 when ``full``, else T2."""
        return self.free_steps if self.full else self.nudged_steps

    def estimate(
        self,
        net: EnergyNetwork,
        x: Tensor,
        y: Tensor,
        state: Sequence[Tensor] | None = None,
    ) -> Estimate:
        """Add the BPTT gradient of the mean loss at the last state to every ``.grad``.

        Gradients accumulate like ``loss.backward()`` (call ``optimizer.zero_grad()`` first);
        no optimizer is stepped.

        Args:
            net: the network.
            x: inputs, shape (B, *net.input_shape).
            y: integer labels, shape (B,).
            state: optional starting state (default: the solver's init); treated as a constant.

        Returns:
            An :class:`Estimate` whose ``free_state`` is the last state s_T (where the loss and
            predictions are taken), with no nudged states; ``free_steps`` counts all steps
            taken and ``nudged_steps`` the steps in the graph.
        """
        x, y = net.check_input(x, y)
        assert y is not None
        drive = net.input_drive(x)
        start = list(state) if state is not None else self.solver.initial_state(net, drive)
        start = [s.detach() for s in start]
        taken = 0
        if not self.full and self.free_steps > self.nudged_steps:
            res = self.solver.relax(net, drive, start, self.free_steps - self.nudged_steps)
            start, taken = res.state, res.steps
        with torch.enable_grad():
            with precision_context(self.solver.precision, x.device):
                final = _unroll(
                    net, graph_input_drive(net, x), start, self.graph_steps, self.solver.schedule
                )
            net.loss(final, y).mean().backward()
        final = [s.detach() for s in final]
        with torch.no_grad():
            logits = net.logits(final)
            loss = net.loss(final, y)
        return Estimate(final, [], [], logits, loss, taken + self.graph_steps, self.graph_steps)


# ----------------------------------------------------------------- per-step contributions


def _tapped(net: EnergyNetwork, records: list[tuple[Tensor, Tensor]]) -> EnergyNetwork:
    """A shallow copy of ``net`` whose activation keeps every (pre-activation, state) pair.

    The schedules apply ``net.activation.fn_`` to each layer's fresh drive; applying σ out of
    place instead leaves that drive a node of the graph, so autograd can return ∂L/∂drive. The
    copy shares all modules and parameters; ``net`` itself is not modified.
    """
    act = net.activation

    def record(drive: Tensor) -> Tensor:
        out = act.fn(drive)
        records.append((drive, out))
        return out

    tapped = copy.copy(net)
    tapped.activation = Activation(act.name, record, record, act.description)
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


def iter_step_contributions(
    net: EnergyNetwork,
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
    assert y is not None
    solver = solver or Solver()
    step = SCHEDULES[solver.schedule]
    names, params = zip(*net.named_parameters(), strict=True)
    batch = x.shape[0]
    drive = net.input_drive(x)
    records: list[tuple[Tensor, Tensor]] = []
    tapped = _tapped(net, records)

    # One unroll from s* with a graph through the states; the tap exposes each pre-activation.
    # Leaves that require grad at the start (states and input drive) put every later state in
    # the graph, even one that reaches no parameter (the only layer of a one-layer net).
    drive = drive.detach().requires_grad_()
    states: list[State] = [[s.detach().requires_grad_() for s in free_state]]
    pre: list[list[Tensor | None]] = []
    with torch.enable_grad(), precision_context(solver.precision, x.device):
        cache: dict = {}
        for _ in range(steps):
            records.clear()
            new = step(tapped, drive, states[-1], None, cache)
            by_output = {id(out): d for d, out in records}
            pre.append([by_output.get(id(s)) for s in new])  # None: layer not updated
            states.append(new)
    n_layers = len(states[0])
    kept = [d for ds in pre for d in ds if d is not None]
    with torch.enable_grad():
        loss = net.loss(states[-1], y).mean()
        targets = [s for st in states[1:] for s in st] + kept
        grads = iter(_adjoints(loss, targets))
    # ∂L/∂s_k (total, through all later steps) and ∂L/∂a_k for every step k = 1..T.
    adjoints = [[next(grads) for _ in range(n_layers)] for _ in range(steps)]
    drive_adjoints = [[next(grads) if d is not None else None for d in ds] for ds in pre]
    states = [[s.detach() for s in st] for st in states]
    del loss, targets, kept, pre
    records.clear()

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
            with precision_context(solver.precision, x.device):
                new = step(net, g_drive, states[k - 1], None, {})
            pairs = zip(adjoints[k - 1], new, strict=True)
            dot = sum(((lam * s).sum() for lam, s in pairs if lam is not None), x.new_zeros(()))
            out: dict[str, Tensor] = dict(
                zip(names, _grads(dot, params, retain_graph=True), strict=True)
            )
            for n, (mu, s) in enumerate(zip(drive_adjoints[k - 1], states[k], strict=True)):
                # Per example: the loss is a batch mean, each example's own loss is B times it.
                out[f"neurons.{n}"] = mu * batch if mu is not None else torch.zeros_like(s)
            yield out


def bptt_step_contributions(
    net: EnergyNetwork,
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
