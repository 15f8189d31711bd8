"""Dynamics on energy graphs: energy descent of block schedules, fixed points, EP vs BPTT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqprop import BPTT, Solver, make_estimator
from eqprop.analysis import check_gdu
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_builders import residual_graph
from eqprop.dynamics.graph_schedules import _block_sweep, graph_drives
from eqprop.dynamics.schedules import Workspace
from eqprop.reference.graphs import graph_energy


def residual_net(
    seed: int,
    widths=(3, 4, 4),
    side: int = 8,
    output: str = "mse",
    activation: str = "hard_sigmoid",
    skip_scale: float = 1.0,
) -> GraphNetwork:
    """A small residual graph at trained scale (weights ×2), skips scaled by ``skip_scale``."""
    torch.manual_seed(seed)
    spec = residual_graph((2, side, side), 4, widths, activation, output)
    net = GraphNetwork((2, side, side), spec, 4).double()
    with torch.no_grad():
        for layer in net.interactions:
            w = layer.weights()[0]
            w.mul_(2.0 * (skip_scale if w.shape[-1] == 1 and w.dim() == 4 else 1.0))
    return net


def energy_rises(net, blocks_of, beta, output, start, sweeps=8) -> tuple[int, int]:
    """(rises beyond 1e-10 relative, block updates) of F_β along ``sweeps`` sweeps."""
    torch.manual_seed(7)
    x = torch.rand(3, *net.input_shape, dtype=torch.float64)
    y = torch.randint(0, 4, (3,))
    drive = net.input_drive(x)
    state = [net.node_activations[n].fn(s) for n, s in enumerate(start(net))]
    nudge = None
    if beta != 0.0:
        onehot = torch.nn.functional.one_hot(y, 4).double()

        def nudge(s):
            return net.nudge_drive(s, onehot, beta)

    rises = count = 0
    work = Workspace()
    with torch.no_grad():
        f = graph_energy(net, x, state, y, beta).sum()
        for _ in range(sweeps):
            for block in blocks_of(net, nudge):
                state = _block_sweep(net, drive, state, [block], nudge, work)
                new = graph_energy(net, x, state, y, beta).sum()
                rises += int(new > f + 1e-10 * abs(f))
                count += 1
                f = new
    return rises, count


def coloured(net, nudge):
    return net.colouring


def parity(net, nudge):
    n = len(net.state_shapes)
    return [list(range(0, n, 2)), list(range(1, n, 2))]


def zeros(net):
    return net.zero_state(3)


def random_start(net):
    return [torch.rand(3, *s, dtype=torch.float64) * 3 for s in net.state_shapes]


@pytest.mark.parametrize("output", ["mse", "node_ce"])
@pytest.mark.parametrize("beta", [-0.5, 0.0, 0.5])
def test_energy_never_rises_under_the_coloured_schedule(beta, output):
    """Random residual graphs (skips, trained-scale weights, relu6 and hard-sigmoid boxes),
    from zero and from random states in the boxes: F_β never rises by more than 1e-10."""
    total = 0
    for seed, activation, start in [(0, "relu6", zeros), (1, "hard_sigmoid", random_start),
                                    (2, "relu6", random_start)]:  # fmt: skip
        net = residual_net(seed, output=output, activation=activation)
        rises, count = energy_rises(net, coloured, beta, output, start)
        assert rises == 0
        total += count
    assert total == 3 * 8 * 3  # 3 blocks per sweep


def test_parity_jacobi_raises_the_energy_with_strong_skips():
    """The documented negative case: the reference code's split is not an exact block update
    once same-parity states interact; with skip weights ×3 it raises F (the colouring does not)."""
    rises = 0
    for seed in range(4):
        net = residual_net(seed, widths=(4, 6, 8, 8), side=16, activation="relu6", skip_scale=3.0)
        rises += energy_rises(net, parity, 0.0, "mse", random_start)[0]
        assert energy_rises(net, coloured, 0.0, "mse", random_start)[0] == 0
    assert rises > 0


@pytest.mark.parametrize(
    "schedule", ["synchronous", "coloured", "parity_jacobi", "forward_backward"]
)
def test_every_schedule_reaches_the_same_fixed_point(schedule):
    """On a well-conditioned instance (init-scale weights) every schedule converges to
    s = Π(h − β∂L/∂s) within 1e-10 and all agree to 1e-8; each sweep updates every node once."""
    torch.manual_seed(3)
    net = GraphNetwork((2, 8, 8), residual_graph((2, 8, 8), 4, (3, 4, 4), "hard_sigmoid"), 4)
    net = net.double()
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    drive = net.input_drive(x)
    free = Solver(schedule=schedule, tol=1e-13).relax(net, drive, None, 2000)
    ref = Solver(tol=1e-13).relax(net, drive, None, 2000).state
    with torch.no_grad():
        h = graph_drives(net, drive, free.state, range(len(free.state)))
    residual = max(
        float((s - net.node_activations[n].fn(d)).abs().max())
        for n, (s, d) in enumerate(zip(free.state, h, strict=True))
    )
    assert residual < 1e-10
    assert max(float((a - b).abs().max()) for a, b in zip(free.state, ref, strict=True)) < 1e-8


def flat_grads(net) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters()])


@pytest.mark.parametrize(
    ("activation", "betas", "schedule"),
    [("sigmoid", [1e-3, 2e-3, 5e-3, 1e-2], "synchronous"),
     ("hard_sigmoid", [5e-5, 1e-4, 2e-4, 4e-4], "coloured")],
)  # fmt: skip
def test_symmetric_ep_matches_bptt_on_a_residual_net_with_slopes_one_and_two(
    activation, betas, schedule
):
    """Converged float64 EP against BPTT through 400 synchronous sweeps from s* (the implicit
    gradient). With clamp boxes β is kept small enough that no unit changes region (spec §4.7).
    Slopes ≈ 1 (one-sided), ≈ 2 (symmetric); block schedules are compared in total only."""
    net = residual_net(5, widths=(3, 4), side=8, activation=activation)
    with torch.no_grad():
        for w in net.parameters():
            w.mul_(0.5)
    torch.manual_seed(8)
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (3,))
    solver = Solver(schedule=schedule, tol=1e-15)
    free = solver.relax(net, net.input_drive(x), None, 3000)
    assert free.residual is not None and free.residual < 1e-14
    net.zero_grad()
    BPTT(free_steps=400, nudged_steps=400).estimate(net, x, y, state=free.state)
    true = flat_grads(net)
    errors: dict[str, list[float]] = {"one_sided": [], "symmetric": []}
    for kind, errs in errors.items():
        for beta in betas:
            net.zero_grad()
            est = make_estimator(kind, beta=beta, free_steps=3000, nudged_steps=3000, solver=solver)
            est.estimate(net, x, y)
            errs.append(float((flat_grads(net) - true).norm() / true.norm()))
    assert errors["symmetric"][0] <= 1e-3
    slope_one = np.polyfit(np.log(betas), np.log(errors["one_sided"]), 1)[0]
    slope_sym = np.polyfit(np.log(betas), np.log(errors["symmetric"]), 1)[0]
    assert slope_one == pytest.approx(1.0, abs=0.15)
    assert slope_sym == pytest.approx(2.0, abs=0.2)


def test_gdu_holds_step_by_step_on_a_residual_graph():
    """EP's per-step increments equal BPTT's per-step gradients (synchronous schedule) for
    every edge, node bias and node of a converged float64 residual net."""
    net = residual_net(5, widths=(3, 4), side=8, activation="sigmoid")
    torch.manual_seed(8)
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (3,))
    report = check_gdu(net, x, y, free_steps=3000, nudged_steps=8, betas=(1e-4,),
                       sweep_betas=None, solver=Solver(tol=1e-15))  # fmt: skip
    c = report.comparisons[0]
    assert len(c.tensors) == len(list(net.parameters())) + len(net.state_shapes)
    for name, t in c.tensors.items():
        assert t.rmse["sym"] < 1e-2 and t.sign_error["sym"] == 0.0, name
    assert c.totals["sym"]["final_error"] < 1e-5


def test_batched_phases_tolerance_stopping_and_feedforward_start_on_a_graph():
    """Nudged phases relaxed as one batch give the separate phases' gradient; the tolerance
    stops the relaxation early; a feedforward start reaches the zero start's fixed point."""
    net = residual_net(4, activation="relu6")
    torch.manual_seed(9)
    x, y = torch.rand(3, 2, 8, 8, dtype=torch.float64), torch.randint(0, 4, (3,))
    grads = []
    for batched in (True, False):
        net.zero_grad()
        solver = Solver(schedule="coloured")
        est = make_estimator("symmetric", beta=0.2, free_steps=20, nudged_steps=6,
                             solver=solver, batch_phases=batched)  # fmt: skip
        est.estimate(net, x, y)
        grads.append(flat_grads(net))
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-12
    drive = net.input_drive(x)
    cold = Solver(schedule="coloured", tol=1e-12).relax(net, drive, None, 5000)
    warm = Solver(schedule="coloured", tol=1e-12, init="feedforward").relax(net, drive, None, 5000)
    assert cold.steps < 5000 and cold.residual is not None and cold.residual < 1e-12
    assert (
        max(float((a - b).abs().max()) for a, b in zip(cold.state, warm.state, strict=True)) < 1e-9
    )
