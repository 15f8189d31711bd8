"""The closed-form dynamics equal autograd of Φ, step by step (spec §1)."""

from __future__ import annotations

import pytest
import torch
from nets import ARCHITECTURES, make_batch, make_net, max_diff, random_state

from eqprop import Solver, relax
from eqprop.dynamics import synchronous_step
from eqprop.reference import reference_step

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_closed_form_step_equals_autograd_at_every_step(arch, output, dtype):
    net = make_net(arch, output=output, dtype=dtype, init_scale=1.5)
    x, y = make_batch(net)
    drive = net.input_drive(x)
    beta = torch.tensor([[0.7], [-0.3], [0.0]], dtype=dtype)  # per-example β, both signs
    for nudge_beta in (0.0, 0.5, beta):
        state = net.zero_state(x.shape[0])
        for _ in range(12):
            nudge = None
            if isinstance(nudge_beta, torch.Tensor) or nudge_beta != 0.0:
                nudge = lambda s, b=nudge_beta: net.nudge_drive(s, y, b)  # noqa: E731
            with torch.no_grad():
                fast = synchronous_step(net, drive, state, nudge)
            ref = reference_step(net, x, state, y, nudge_beta)
            assert max_diff(fast, ref) <= TOL[dtype]
            state = ref


@pytest.mark.parametrize(
    "activation", ["hard_sigmoid", "my_hard_sig", "ctrd_hard_sig", "mysig", "sigmoid", "tanh"]
)
def test_every_activation_matches_reference_at_generic_states(activation):
    net = make_net("mixed", output="ce", activation=activation)
    x, y = make_batch(net, batch=4)
    state = random_state(net, 4)
    with torch.no_grad():
        fast = synchronous_step(
            net, net.input_drive(x), state, lambda s: net.nudge_drive(s, y, 0.3)
        )
    assert max_diff(fast, reference_step(net, x, state, y, 0.3)) <= 1e-10


def test_relaxation_builds_no_graph_and_keeps_states_detached():
    net = make_net("conv_max", dtype=torch.float32)
    x, y = make_batch(net)
    res = relax(net, x, steps=5, y=y, beta=0.5)
    assert res.steps == 5
    assert all(not s.requires_grad and s.grad_fn is None for s in res.state)


def test_tolerance_stops_early_and_reports_residual():
    net = make_net("dense", init_scale=0.5)
    x, _ = make_batch(net)
    res = relax(net, x, steps=500, solver=Solver(tol=1e-12))
    assert res.steps < 500
    assert res.residual is not None and res.residual < 1e-12
    again = relax(net, x, steps=res.steps)
    assert max_diff(again.state, res.state) == 0.0


@pytest.mark.parametrize("batch", [1, 2])
def test_batch_of_one_works(batch):
    net = make_net("conv_max", output="ce", dtype=torch.float32)
    x, y = make_batch(net, batch=batch)
    res = relax(net, x, steps=3, y=y, beta=0.1)
    assert [tuple(s.shape) for s in res.state] == [(batch, *s) for s in net.state_shapes]
