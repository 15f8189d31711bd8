"""BPTT through the closed-form dynamics equals autograd through the reference steps (spec §5)."""

from __future__ import annotations

import pytest
import torch
from nets import make_batch, make_net

from eqprop import EnergyNetwork, Solver, relax
from eqprop.estimators import BPTT, bptt_step_contributions
from eqprop.reference import bptt_gradients, reference_loss, reference_step

CONVERGED = Solver(tol=1e-15)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 tensors: one intra-op thread is faster, and far faster on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grads(net) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() if p.grad is not None else None for n, p in net.named_parameters()}


def reference_bptt(net, x, y, state, steps: int) -> dict[str, torch.Tensor | None]:
    """Autograd through ``steps`` reference steps from a detached state, mean loss at the end."""
    params = dict(net.named_parameters())
    s = [t.detach() for t in state]
    with torch.enable_grad():
        for _ in range(steps):
            s = reference_step(net, x, s, create_graph=True)
        loss = reference_loss(net, s, y).mean()
        out = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return dict(zip(params, out, strict=True))


def assert_grads_equal(got: dict, expected: dict) -> None:
    for name, e in expected.items():
        g = got[name]
        if e is None:  # not reached by the loss within these steps
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("arch", ["dense", "conv_max", "mixed"])
def test_truncated_bptt_is_autograd_through_the_last_steps(arch, output):
    """T1 − T2 steps without a graph, then T2 reference steps with one: the same gradient."""
    net = make_net(arch, output=output, activation="my_hard_sig", init_scale=1.5)
    x, y = make_batch(net, batch=4)
    net.zero_grad()
    out = BPTT(free_steps=12, nudged_steps=5).estimate(net, x, y)

    start = relax(net, x, 7).state  # the steps without a graph
    assert_grads_equal(grads(net), reference_bptt(net, x, y, start, 5))
    end = start
    for _ in range(5):
        end = reference_step(net, x, end)
    torch.testing.assert_close(out.loss, reference_loss(net, end, y), rtol=1e-10, atol=1e-12)
    assert torch.equal(out.predictions, net.logits(end).argmax(1))
    assert (out.free_steps, out.nudged_steps, out.nudged_states, out.betas) == (12, 5, [], [])
    assert all(not s.requires_grad for s in out.free_state)


@pytest.mark.parametrize("output", ["mse", "ce"])
def test_full_bptt_goes_through_every_step_from_the_start(output):
    net = make_net("conv_max", output=output)
    x, y = make_batch(net)
    net.zero_grad()
    BPTT(free_steps=6, nudged_steps=2, full=True).estimate(net, x, y)
    assert_grads_equal(grads(net), reference_bptt(net, x, y, net.zero_state(3), 6))


@pytest.mark.parametrize(("arch", "activation"), [("dense", "sigmoid"), ("conv_max", "mysig")])
def test_bptt_from_a_converged_state_matches_the_reference_gradient(arch, activation):
    net = make_net(arch, activation=activation)
    x, y = make_batch(net)
    free = relax(net, x, 3000, solver=CONVERGED)
    net.zero_grad()
    BPTT(free_steps=25, nudged_steps=25).estimate(net, x, y, state=free.state)
    expected = bptt_gradients(net, x, y, free.state, 25)
    for name, g in grads(net).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-10, atol=1e-12, msg=name)


def test_even_odd_bptt_matches_a_finite_difference():
    """Any schedule runs with a graph: check the directional derivative for even/odd."""
    net = make_net("conv_max", activation="mysig")
    x, y = make_batch(net)
    solver = Solver(schedule="even_odd")
    est = BPTT(free_steps=9, nudged_steps=9, solver=solver)
    net.zero_grad()
    est.estimate(net, x, y)
    params = list(net.parameters())
    g = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction, strict=True))

    def loss_at(eps: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(eps * d)
            # The same 9 steps from zero, without a graph.
            value = float(net.loss(relax(net, x, 9, solver=solver).state, y).mean())
            for p, d in zip(params, direction, strict=True):
                p.sub_(eps * d)
        return value

    eps = 1e-6
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert numeric == pytest.approx(analytic, rel=1e-6)


def test_estimate_accumulates_like_backward_and_steps_no_optimizer():
    net = make_net("dense")
    x, y = make_batch(net)
    before = [p.detach().clone() for p in net.parameters()]
    est = BPTT(8, 3)
    net.zero_grad()
    est.estimate(net, x, y)
    once = [p.grad.clone() for p in net.parameters()]
    est.estimate(net, x, y)
    for p, g in zip(net.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize(
    ("arch", "output"), [("dense", "ce"), ("conv_max", "ce"), ("mixed", "mse")]
)
def test_step_contributions_sum_to_the_bptt_gradient(arch, output):
    net = make_net(arch, output=output, activation="mysig")
    x, y = make_batch(net)
    state = relax(net, x, 9).state  # not converged: the split holds anywhere
    entries = bptt_step_contributions(net, x, y, state, 5)
    assert len(entries) == 6
    expected = bptt_gradients(net, x, y, state, 5)
    for name, e in expected.items():
        total = sum(entry[name] for entry in entries)
        torch.testing.assert_close(total, e, rtol=1e-10, atol=1e-12, msg=name)
    # Entry 0 is the loss's direct dependence: the readout only.
    for name, g in entries[0].items():
        if not name.startswith("readout."):
            assert not g.any(), name


def test_one_layer_net_gets_only_its_readout_gradient():
    """One CE hidden layer: its state is σ(input drive) after any step, so only the readout
    (entry 0) and the first layer (through the input drive, per step) are reached."""
    torch.manual_seed(0)
    net = EnergyNetwork((7,), dense=[5], num_classes=4, output="ce", activation="sigmoid")
    net = net.double()
    x, y = make_batch(net)
    entries = bptt_step_contributions(net, x, y, net.zero_state(3), 3)
    expected = bptt_gradients(net, x, y, net.zero_state(3), 3)
    for name, e in expected.items():
        torch.testing.assert_close(sum(entry[name] for entry in entries), e, msg=name)
    assert all(not entry[name].any() for entry in entries[2:] for name in entry)
    net.zero_grad()
    BPTT(3, 3).estimate(net, x, y)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)


def test_step_contributions_are_time_reversed():
    """Entry 1 is the last step alone: ∂L(step(s_{T−1}; θ))/∂θ with s_{T−1} held fixed."""
    net = make_net("conv_max", output="ce", activation="mysig")
    x, y = make_batch(net)
    state = relax(net, x, 9).state
    steps = 4
    entries = bptt_step_contributions(net, x, y, state, steps)
    before_last = relax(net, x, steps - 1, state=state).state
    expected = reference_bptt(net, x, y, before_last, 1)
    for name, e in expected.items():
        want = e if e is not None else torch.zeros_like(entries[1][name])
        if name.startswith("readout."):
            continue  # the readout's gradient is entry 0's, not a step's
        torch.testing.assert_close(entries[1][name], want, rtol=1e-10, atol=1e-12, msg=name)


def test_neuron_entries_are_pre_activation_gradients_per_example():
    """Last step, MSE output, σ = sigmoid: ∂L_b/∂a_T = (s_T − onehot)·σ'(a_T), σ' = s(1 − s)."""
    net = make_net("dense", activation="sigmoid")
    x, y = make_batch(net, batch=5)
    state = relax(net, x, 20).state
    entries = bptt_step_contributions(net, x, y, state, 3)
    s_t = relax(net, x, 3, state=state).state[-1]
    onehot = torch.nn.functional.one_hot(y, net.num_classes).to(s_t.dtype)
    torch.testing.assert_close(
        entries[1]["neurons.2"], (s_t - onehot) * s_t * (1 - s_t), rtol=1e-10, atol=1e-14
    )
    assert not entries[1]["neurons.0"].any() and not entries[1]["neurons.1"].any()
    assert all(not entries[0][f"neurons.{n}"].any() for n in range(3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"free_steps": 0, "nudged_steps": 1}, "free_steps: 0"),
        ({"free_steps": 5, "nudged_steps": 0}, "nudged_steps: 0"),
        ({"free_steps": 5, "nudged_steps": 6}, "nudged_steps: 6 .*at most free_steps"),
        ({"free_steps": 5.0, "nudged_steps": 2}, "free_steps: 5.0"),
        ({"free_steps": True, "nudged_steps": 1}, "free_steps: True"),
        ({"free_steps": 5, "nudged_steps": 2, "full": "yes"}, "full: 'yes'"),
        ({"free_steps": 5, "nudged_steps": 2, "solver": "fast"}, "solver: expected a Solver"),
    ],
)
def test_bad_fields_raise_and_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BPTT(**kwargs)


def test_step_contributions_reject_bad_steps():
    net = make_net("dense")
    x, y = make_batch(net)
    with pytest.raises(ValueError, match="steps: 0"):
        bptt_step_contributions(net, x, y, net.zero_state(3), 0)


def test_registered_name():
    assert BPTT.name == "bptt"
    assert BPTT(10, 4).graph_steps == 4 and BPTT(10, 4, full=True).graph_steps == 10
