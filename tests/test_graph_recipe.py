"""The Hopfield-ResNet recipe's estimator options: warm-started free phase, gradient clipping."""

from __future__ import annotations

import torch

from eqprop import Solver, SymmetricEP
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_builders import residual_graph


def tiny() -> GraphNetwork:
    torch.manual_seed(0)
    return GraphNetwork((2, 8, 8), residual_graph((2, 8, 8), 3, (3, 4)), 3)


def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(b, 2, 8, 8), torch.randint(0, 3, (b,))


def test_warm_start_continues_from_the_previous_plus_beta_state_and_resets_on_a_new_size():
    net = tiny()
    est = SymmetricEP(beta=0.1, free_steps=3, nudged_steps=2, warm_start=True,
                      solver=Solver(schedule="coloured"))  # fmt: skip
    x, y = batch(4)
    first = est.estimate(net, x, y)
    plus = first.nudged_states[first.betas.index(0.1)]
    cold = SymmetricEP(beta=0.1, free_steps=3, nudged_steps=2, solver=Solver(schedule="coloured"))
    x2, y2 = batch(4)
    warm = est.estimate(net, x2, y2)
    want = Solver(schedule="coloured").relax(net, net.input_drive(x2), plus, 3).state
    assert all(torch.equal(a, b) for a, b in zip(warm.free_state, want, strict=True))
    assert not torch.equal(warm.free_state[0], cold.estimate(net, x2, y2).free_state[0])
    saved = est.state_dict()
    x3, y3 = batch(3)  # a partial batch: from zero again
    three = est.estimate(net, x3, y3)
    zero = Solver(schedule="coloured").relax(net, net.input_drive(x3), None, 3).state
    assert all(torch.equal(a, b) for a, b in zip(three.free_state, zero, strict=True))
    est.load_state_dict(saved)  # resuming restores the warm state
    assert est.estimate(net, x2, y2).free_state[0].shape[0] == 4


def test_gradient_clipping_bounds_the_global_norm():
    net = tiny()
    x, y = batch(4)
    est = SymmetricEP(beta=0.1, free_steps=3, nudged_steps=2, clip_grad_norm=1e-3)
    net.zero_grad()
    est.estimate(net, x, y)
    norm = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
    assert float(norm) <= 1e-3 * (1 + 1e-5)
