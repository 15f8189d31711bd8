"""Fast relaxation (spec §7): even/odd schedule, warm starts, tolerance, compile, bf16.

Every fast path is checked against the slow reference (autograd of Φ, float64) or against the
exact synchronous solver.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from nets import ARCHITECTURES, make_batch, make_net, max_diff, random_state

from eqprop import Solver, SymmetricEP, relax
from eqprop.dynamics import (
    SCHEDULES,
    Workspace,
    even_odd_step,
    feedforward_state,
    forward_backward_step,
    synchronous_step,
)
from eqprop.reference import reference_phi, reference_step


def reference_even_odd(net, x, state, y=None, beta=0.0):
    """Block-coordinate sweep from the autograd reference: even layers, then odd layers; a
    nudged sweep starts with the target layer's parity."""
    p = net.target_layer % 2 if beta else 0
    first = reference_step(net, x, state, y, beta)
    mid = [first[n] if n % 2 == p else s for n, s in enumerate(state)]
    second = reference_step(net, x, mid, y, beta)
    return [mid[n] if n % 2 == p else second[n] for n in range(len(state))]


def reference_forward_backward(net, x, state, y, beta, downward):
    """Gauss–Seidel sweep from the autograd reference: one layer at a time."""
    s = list(state)
    order = range(len(s) - 1, -1, -1) if downward else range(len(s))
    for n in order:
        s[n] = reference_step(net, x, s, y, beta)[n]
    return s


#: schedule -> (step, reference sweep number t). Forward/backward goes up first in free phases,
#: down first in nudged ones, and alternates from step to step.
SWEEPS = {
    "even_odd": (
        even_odd_step,
        lambda net, x, s, y, beta, t: reference_even_odd(net, x, s, y, beta),
    ),
    "forward_backward": (
        forward_backward_step,
        lambda net, x, s, y, beta, t: reference_forward_backward(
            net, x, s, y, beta, downward=(t % 2 == 0) == bool(beta)
        ),
    ),
}


@pytest.mark.parametrize("schedule", list(SWEEPS))
@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_sweeps_equal_their_block_coordinate_reference(arch, output, schedule):
    step, reference = SWEEPS[schedule]
    net = make_net(arch, output=output, init_scale=1.5)
    x, y = make_batch(net)
    drive = net.input_drive(x)
    for beta in (0.0, 0.4):
        nudge = (lambda s, b=beta: net.nudge_drive(s, y, b)) if beta else None
        state, work = net.zero_state(x.shape[0]), Workspace()
        for t in range(6):
            reverse = t % 2 == 1  # the direction of forward/backward sweeps alternates
            with torch.no_grad():
                fast = step(net, drive, state, nudge, work, reverse)  # argmax reused via work
                fresh = step(net, drive, state, nudge, None, reverse)  # everything recomputed
            assert max_diff(fast, reference(net, x, state, y, beta, t)) <= 1e-10
            assert max_diff(fast, fresh) == 0.0
            state = fast


@pytest.mark.parametrize("arch", ["dense", "conv_avg"])
def test_energy_never_rises_under_even_odd_sweeps(arch):
    """hard_sigmoid, no max pool: each block update exactly minimises E = ½‖s‖² − Φ."""
    net = make_net(arch, activation="hard_sigmoid", init_scale=2.0)
    x, _ = make_batch(net, batch=5)

    @torch.no_grad()
    def energy(s):
        return 0.5 * sum(float((t**2).sum()) for t in s) - float(reference_phi(net, x, s).sum())

    drive = net.input_drive(x)
    state, work = net.zero_state(5), Workspace()
    energies = [energy(state)]
    for _ in range(30):
        with torch.no_grad():
            state = even_odd_step(net, drive, state, work=work)
        energies.append(energy(state))
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(energies))
    assert energies[-1] < energies[0]


@pytest.mark.parametrize("schedule", ["even_odd", "forward_backward"])
@pytest.mark.parametrize(
    ("arch", "output"), [("dense", "mse"), ("conv_max", "ce"), ("mixed", "mse")]
)
def test_fast_solver_reaches_the_same_fixed_point_and_gradient(arch, output, schedule):
    """A contracting net has one fixed point: a fast schedule + tolerance + warm start must
    find it."""
    net = make_net(arch, output=output, activation="sigmoid", init_scale=0.5)
    x, y = make_batch(net, batch=4)
    exact = Solver()
    fast = Solver(schedule=schedule, tol=1e-13, init="feedforward")
    s_exact = relax(net, x, 400, solver=exact).state
    res_fast = relax(net, x, 400, solver=fast)
    assert res_fast.steps < 400
    assert max_diff(res_fast.state, s_exact) <= 1e-11

    grads = []
    for solver in (exact, fast):
        net.zero_grad()
        SymmetricEP(0.05, 400, 400, solver=solver).estimate(net, x, y)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) <= 1e-5


def test_even_odd_and_forward_backward_need_fewer_steps_than_synchronous():
    net = make_net("mixed", activation="sigmoid", init_scale=0.8)
    x, _ = make_batch(net, batch=4)
    steps = {
        schedule: relax(net, x, 1000, solver=Solver(schedule=schedule, tol=1e-10)).steps
        for schedule in ("synchronous", "even_odd", "forward_backward")
    }
    assert steps["even_odd"] < steps["synchronous"]
    assert steps["forward_backward"] < steps["synchronous"]


def test_feedforward_init_is_one_sweep_without_feedback():
    net = make_net("dense", activation="sigmoid")
    x, _ = make_batch(net)
    s = feedforward_state(net, net.input_drive(x))
    w0, w1 = net.interactions[0].linear, net.interactions[1].linear
    h = torch.sigmoid(x @ w0.weight.T + w0.bias)
    torch.testing.assert_close(s[0], h)
    torch.testing.assert_close(s[1], torch.sigmoid(h @ w1.weight.T + w1.bias))


@pytest.mark.parametrize("arch", ["dense", "conv_max"])
def test_one_node_sweep_from_zero_is_the_feedforward_pass(arch):
    # Why a 1 + 2x1 forward_backward budget trains a feedforward net: the one free sweep goes
    # upwards, and each layer's neighbour above is still zero when it is updated.
    net = make_net(arch, dtype=torch.float64)
    x, _ = make_batch(net)
    one = relax(net, x, 1, solver=Solver(schedule="forward_backward")).state
    expected = feedforward_state(net, net.input_drive(x))
    assert max_diff(one, expected) < 1e-12


def test_tolerance_checked_every_k_steps_stops_on_a_multiple_of_k():
    net = make_net("dense", init_scale=0.5)
    x, _ = make_batch(net)
    res = relax(net, x, 500, solver=Solver(tol=1e-9, check_every=7))
    assert res.steps % 7 == 0 and res.residual < 1e-9


def test_bf16_keeps_float32_states_and_stays_close():
    net = make_net("conv_max", output="ce", dtype=torch.float32, activation="sigmoid")
    x, y = make_batch(net, batch=4)
    ref = relax(net, x, 30, y=y, beta=0.5).state
    low = relax(net, x, 30, y=y, beta=0.5, solver=Solver(precision="bf16")).state
    assert all(s.dtype == torch.float32 for s in low)
    assert 0 < max_diff(low, ref) < 5e-2


def test_unknown_solver_options_are_rejected():
    with pytest.raises(ValueError, match=r"init: 'ones' is not one of zeros, feedforward"):
        Solver(init="ones")
    with pytest.raises(ValueError, match=r"precision: 'fp8' is not one of"):
        Solver(precision="fp8")


@pytest.mark.slow
def test_compiled_step_equals_eager_step():
    net = make_net("conv_max", output="ce", dtype=torch.float32)
    x, y = make_batch(net, batch=4)
    for schedule in ("synchronous", "even_odd", "forward_backward"):
        eager = relax(net, x, 6, y=y, beta=0.3, solver=Solver(schedule=schedule))
        compiled = relax(net, x, 6, y=y, beta=0.3, solver=Solver(schedule=schedule, compile=True))
        assert max_diff(compiled.state, eager.state) <= 1e-5


def test_synchronous_step_signature_accepts_a_workspace():
    net = make_net("dense")
    x, _ = make_batch(net)
    drive = net.input_drive(x)
    state = net.zero_state(3)
    with torch.no_grad():
        with_work = synchronous_step(net, drive, state, None, Workspace())
        assert max_diff(with_work, synchronous_step(net, drive, state)) == 0


@pytest.mark.parametrize("schedule", ["synchronous", "even_odd", "forward_backward"])
def test_first_step_from_zeros_skips_only_exactly_zero_work(schedule):
    """The solver knows its all-zero starting states and skips their (zero) backward drives:
    the result must equal stepping without that knowledge, bit for bit."""
    net = make_net("mixed", output="ce", init_scale=1.5)
    x, y = make_batch(net)
    drive = net.input_drive(x)
    nudge = lambda s: net.nudge_drive(s, y, 0.3)  # noqa: E731
    solver = Solver(schedule=schedule)
    for start, kwargs in ((None, {}), (random_state(net, 3), {"y": y, "beta": 0.3})):
        got = solver.relax(net, drive, start, 4, **kwargs).state
        state = net.zero_state(3) if start is None else list(start)
        with torch.no_grad():
            for t in range(4):
                state = SCHEDULES[schedule](
                    net, drive, state, nudge if kwargs else None, Workspace(), t % 2 == 1
                )
        assert max_diff(got, state) == 0.0


def test_no_backward_drive_is_computed_from_the_zero_start(monkeypatch):
    net = make_net("mixed")
    x, _ = make_batch(net)
    calls = []
    for layer in net.interactions:
        original = layer.backward_drive
        monkeypatch.setattr(
            layer, "backward_drive", lambda post, ctx, f=original: calls.append(1) or f(post, ctx)
        )
    relax(net, x, 1)  # from Solver().initial_state: zeros
    assert calls == []
    relax(net, x, 2)
    assert len(calls) == len(net.interactions) - 1  # the second step needs them all
