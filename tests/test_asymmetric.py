"""Asymmetric ("VF") networks (spec §4): dynamics, update rules, identities with B = W, angles.

Indexing: ``interactions[n].feedback`` (n ≥ 1) is the feedback weight that carries s_n back to
s_{n−1}; it has W_n's shape. The spec calls it B_{n−1}; below it is written B_n.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nets import ARCHITECTURES, make_batch, make_net, max_diff, random_state

from eqprop import AsymmetricNetwork, OneSidedEP, RandomSignEP, Solver, SymmetricEP, relax
from eqprop.core import AsymmetricConvInteraction, AsymmetricDenseInteraction
from eqprop.dynamics import synchronous_step
from eqprop.reference import reference_asymmetric_phi, reference_asymmetric_step, reference_loss

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def make_asym(
    arch: str, update_rule: str = "different", feedback_init: str = "random", **kwargs
) -> AsymmetricNetwork:
    """The asymmetric twin of ``nets.make_net``: same seed, same forward weights."""
    return make_net(  # type: ignore[return-value]
        arch, cls=AsymmetricNetwork, update_rule=update_rule, feedback_init=feedback_init, **kwargs
    )


def grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def assert_grads(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, g in got.items():
        torch.testing.assert_close(g, expected[name], rtol=1e-10, atol=1e-12, msg=name)


def reference_update(net: AsymmetricNetwork, x, y, est, out) -> dict[str, torch.Tensor]:
    """The spec-§4 update from :func:`reference_asymmetric_phi` and autograd (batch mean).

    different: −∂/∂θ [Σ_k c_k Σ_n φ̃_n(s*, s_k) + c_free Σ_n φ_n(s*)];
    same: the plain per-layer φ_n at each compared state, then W_n and B_n share the average.
    """
    coefs, c_free = est.coefficients(out.betas)
    phases = [*zip(coefs, out.nudged_states, strict=True), (c_free, out.free_state)]
    n_layers = len(net.interactions)
    total = x.new_zeros(())
    for c, s in phases:
        for n in range(n_layers):
            if net.update_rule == "different":
                phi = reference_asymmetric_phi(net, x, n, out.free_state, nudged=s)
            else:
                phi = reference_asymmetric_phi(net, x, n, s)
            total = total + c * phi.mean()
    if net.readout is not None:
        ce = torch.stack([reference_loss(net, s, y).mean() for s in out.nudged_states])
        total = total + ce.mean()
    params = dict(net.named_parameters())
    g = dict(zip(params, torch.autograd.grad(total, list(params.values())), strict=True))
    if net.update_rule == "same":
        for n in range(1, n_layers):
            w = next(k for k in g if k.startswith(f"interactions.{n}.") and k.endswith(".weight"))
            b = f"interactions.{n}.feedback"
            g[w] = g[b] = 0.5 * (g[w] + g[b])
    return g


# ----------------------------------------------------------------- construction


def test_feedback_weights_where_expected_and_default_init():
    net = make_asym("mixed", output="ce", dtype=torch.float32)
    layers = list(net.interactions)
    assert not hasattr(layers[0], "feedback")  # from the clamped input: no feedback
    assert isinstance(layers[1], AsymmetricConvInteraction)
    assert isinstance(layers[-1], AsymmetricDenseInteraction)
    for layer in layers[1:]:
        assert layer.feedback.shape == layer.forward_weight.shape
        if layer.feedback.dim() == 4:
            assert layer.feedback.is_contiguous(memory_format=torch.channels_last)
        # PyTorch's default init: U(−1/√fan_in, 1/√fan_in) (kaiming_uniform with a = √5).
        fan_in = math.prod(layer.feedback.shape[1:])
        assert float(layer.feedback.detach().abs().max()) <= 1 / math.sqrt(fan_in)
    names = {n for n, _ in net.named_parameters() if n.endswith("feedback")}
    assert names == {f"interactions.{n}.feedback" for n in (1, 2, 3)}


def test_same_seed_gives_the_symmetric_forward_weights_and_init_scale_scales_feedback():
    sym = make_net("conv_max", init_scale=2.0)
    asym = make_asym("conv_max", init_scale=2.0)
    sym_params = dict(sym.named_parameters())
    for name, p in asym.named_parameters():
        if not name.endswith("feedback"):
            assert torch.equal(p, sym_params[name]), name
    plain = make_asym("conv_max")
    torch.testing.assert_close(asym.interactions[1].feedback, 2.0 * plain.interactions[1].feedback)


def test_weight_layers_carry_the_feedback_weights():
    """Per-layer lr/wd groups are built from weight_layers(): B_n must sit in W_n's group."""
    net = make_asym("mixed", output="ce")
    layers = net.weight_layers()
    assert len(layers) == net.n_layers
    for n in range(1, len(net.interactions)):
        assert any(p is net.interactions[n].feedback for p in layers[n].parameters())
    grouped = [id(p) for layer in layers for p in layer.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters())  # each exactly once


def test_state_dict_round_trip():
    net = make_asym("conv_max", output="ce", seed=3)
    other = make_asym("conv_max", output="ce", seed=4)
    other.load_state_dict(net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), other.parameters(), strict=True))


def test_bad_options_raise_clear_errors_and_there_is_no_phi():
    with pytest.raises(ValueError, match=r"update_rule.*'kp'.*different, same"):
        make_asym("dense", update_rule="kp")
    with pytest.raises(ValueError, match=r"feedback_init.*random, forward"):
        make_asym("dense", feedback_init="zeros")
    # No scalar Φ: the network does not inherit one it would have to break.
    assert not hasattr(make_asym("dense"), "phi")


# ----------------------------------------------------------------- dynamics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_closed_form_step_equals_per_layer_autograd_at_every_step(arch, output, dtype):
    net = make_asym(arch, output=output, dtype=dtype, init_scale=1.5)
    x, y = make_batch(net)
    drive = net.input_drive(x)
    beta = torch.tensor([[0.7], [-0.3], [0.0]], dtype=dtype)  # per-example β, both signs
    for nudge_beta in (0.0, 0.5, beta):
        state = net.zero_state(x.shape[0])
        for _ in range(10):
            nudge = None
            if isinstance(nudge_beta, torch.Tensor) or nudge_beta != 0.0:
                nudge = lambda s, b=nudge_beta: net.nudge_drive(s, y, b)  # noqa: E731
            with torch.no_grad():
                fast = synchronous_step(net, drive, state, nudge)
            ref = reference_asymmetric_step(net, x, state, y, nudge_beta)
            assert max_diff(fast, ref) <= TOL[dtype]
            state = ref


@pytest.mark.parametrize("arch", ["conv_max", "mixed", "strided"])
def test_feedback_max_pool_routes_through_the_feedback_argmax(arch):
    """At generic states, the top-down drive scatters to the argmax of conv_B(s_n), not conv_W."""
    net = make_asym(arch, output="ce")
    x, y = make_batch(net, batch=4)
    state = random_state(net, 4)
    with torch.no_grad():
        fast = synchronous_step(
            net, net.input_drive(x), state, lambda s: net.nudge_drive(s, y, 0.3)
        )
    assert max_diff(fast, reference_asymmetric_step(net, x, state, y, 0.3)) <= 1e-10


@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_with_feedback_equal_to_forward_the_states_are_the_symmetric_ones(arch, output):
    """B = W: φ_n's feedback term is the symmetric Φ's term (the bias does not move a pool
    argmax), so free and nudged relaxations give exactly the symmetric network's states."""
    sym = make_net(arch, output=output, init_scale=1.5)
    asym = make_asym(arch, output=output, init_scale=1.5, feedback_init="forward")
    assert all(v == 0.0 for v in asym.weight_angles().values())
    x, y = make_batch(sym, batch=4)
    beta = torch.tensor([[0.5], [-0.5], [0.2], [0.0]], dtype=torch.float64)
    for kwargs in ({}, {"y": y, "beta": 0.4}, {"y": y, "beta": beta}):
        a = relax(asym, x, 25, **kwargs).state
        s = relax(sym, x, 25, **kwargs).state
        assert all(torch.equal(u, v) for u, v in zip(a, s, strict=True))


@pytest.mark.parametrize("arch", ["conv_max", "mixed"])
def test_even_odd_schedule_reaches_the_synchronous_fixed_point(arch):
    """The red-black schedule reuses forward_drive contexts: they must be the feedback argmax."""
    net = make_asym(arch, output="ce", init_scale=0.8)
    x, y = make_batch(net, batch=4)
    free = relax(net, x, 2000, solver=Solver(tol=1e-14)).state
    for kwargs in ({}, {"y": y, "beta": 0.3, "state": free}):  # nudged from s*, as EP does
        sync = relax(net, x, 2000, solver=Solver(tol=1e-14), **kwargs)
        red_black = relax(net, x, 2000, solver=Solver(schedule="even_odd", tol=1e-14), **kwargs)
        assert sync.residual < 1e-14 and red_black.residual < 1e-14
        assert max_diff(sync.state, red_black.state) <= 1e-12


# ----------------------------------------------------------------- update rules


@pytest.mark.parametrize("rule", ["different", "same"])
@pytest.mark.parametrize("est_cls", [SymmetricEP, OneSidedEP, RandomSignEP])
@pytest.mark.parametrize(
    ("arch", "output"), [("dense", "ce"), ("conv_max", "mse"), ("mixed", "ce")]
)
def test_update_equals_the_reference_contrast(arch, output, est_cls, rule):
    net = make_asym(arch, output=output, update_rule=rule, init_scale=1.5)
    x, y = make_batch(net, batch=5)
    est = est_cls(beta=0.3, free_steps=15, nudged_steps=6)
    for _ in range(2):  # RandomSignEP: exercise both signs (seed 0 draws −, then +)
        net.zero_grad()
        out = est.estimate(net, x, y)
        assert_grads(grads(net), reference_update(net, x, y, est, out))


@pytest.mark.parametrize(
    ("est", "output"),
    [(SymmetricEP(0.25, 20, 8), "mse"), (OneSidedEP(0.25, 20, 8), "ce")],
    ids=["symmetric-mse", "one_sided-ce"],
)
def test_different_rule_is_the_hand_written_hebbian_product(est, output):
    """Dense net, spec §4, written with matrices (mean over the batch b):

    symmetric: ∇W_n = −(1/2β) mean_b[(s⁺_n − s⁻_n) ⊗ s*_{n−1}],  ∇b_n = −(1/2β) mean_b(s⁺_n − s⁻_n),
               ∇B_n = −(1/2β) mean_b[s*_n ⊗ (s⁺_{n−1} − s⁻_{n−1})]   (s*_{−1} = x);
    one-sided: the same with (s^β − s*)/β; readout: mean_b[(softmax − onehot) ⊗ s^β_last].
    """
    net = make_asym("dense", output=output, init_scale=1.5)
    x, y = make_batch(net, batch=6)
    net.zero_grad()
    out = est.estimate(net, x, y)
    free = out.free_state
    if isinstance(est, SymmetricEP):
        delta = [(p - m) / (2 * est.beta) for p, m in zip(*out.nudged_states, strict=True)]
    else:
        delta = [(p - f) / est.beta for p, f in zip(out.nudged_states[0], free, strict=True)]
    b = x.shape[0]
    pre = [x, *free[:-1]]
    for n, layer in enumerate(net.interactions):
        torch.testing.assert_close(layer.linear.weight.grad, -delta[n].T @ pre[n] / b)
        torch.testing.assert_close(layer.linear.bias.grad, -delta[n].mean(0))
        if n > 0:
            torch.testing.assert_close(layer.feedback.grad, -free[n].T @ delta[n - 1] / b)
    if output == "ce":
        last = out.nudged_states[0][-1]  # s^β of the last hidden layer
        with torch.no_grad():
            err = torch.softmax(net.readout(last), 1) - F.one_hot(y, net.num_classes)
        torch.testing.assert_close(net.readout.weight.grad, err.T @ last / b)
        torch.testing.assert_close(net.readout.bias.grad, err.mean(0))


@pytest.mark.parametrize("est_cls", [SymmetricEP, OneSidedEP])
@pytest.mark.parametrize(
    ("arch", "output"), [("dense", "ce"), ("conv_max", "mse"), ("mixed", "ce")]
)
def test_same_rule_with_feedback_equal_to_forward_is_symmetric_ep(arch, output, est_cls):
    """B = W, "same" rule, any β: both φ terms of a weight are the symmetric Φ's term for it, so
    ∇W_n (raw) = ∇B_n (raw) = symmetric ∇W_n, and so is their average; every other parameter's
    update is the symmetric one too (states are equal, see above)."""
    sym = make_net(arch, output=output, init_scale=1.5)
    asym = make_asym(
        arch, output=output, init_scale=1.5, update_rule="same", feedback_init="forward"
    )
    x, y = make_batch(sym, batch=5)
    for net in (sym, asym):
        net.zero_grad()
        est_cls(beta=0.3, free_steps=15, nudged_steps=6).estimate(net, x, y)
    sym_grads, got = grads(sym), grads(asym)
    expected = dict(sym_grads)
    for n in range(1, len(asym.interactions)):
        w = "conv" if isinstance(asym.interactions[n], AsymmetricConvInteraction) else "linear"
        expected[f"interactions.{n}.feedback"] = sym_grads[f"interactions.{n}.{w}.weight"]
    assert_grads(got, expected)


@pytest.mark.parametrize("est_cls", [SymmetricEP, OneSidedEP])
@pytest.mark.parametrize(
    ("arch", "output"), [("dense", "mse"), ("conv_avg", "ce"), ("mixed", "mse")]
)
def test_different_rule_with_feedback_equal_to_forward_splits_the_symmetric_update(
    arch, output, est_cls
):
    """B = W, "different" rule, linearly pooled interactions n ≥ 1 (dense, avg pool, identity).

    With δ_k = s_k − s* and Σ_k c_k + c_free = 0, bilinearity of f_n(post, pre) =
    ⟨post, P_n(W_n pre)⟩ gives, exactly and at any β,

        Σ_k c_k f(s_k,n, s_k,n−1) = Σ_k c_k f(δ_k,n, s*_{n−1}) + Σ_k c_k f(s*_n, δ_k,n−1)
                                    + Σ_k c_k f(δ_k,n, δ_k,n−1),

    i.e. symmetric ∇W_n = different ∇W_n + different ∇B_n + ∇_W Σ_k c_k mean_b f(δ_k,n, δ_k,n−1)
    (the last term is O(β) one-sided, O(β²) symmetric). The input layer's W_0, the biases and the
    readout get exactly the symmetric update. Max-pooled interactions ≥ 1 have no such identity.
    """
    sym = make_net(arch, output=output, init_scale=1.5)
    asym = make_asym(arch, output=output, init_scale=1.5, feedback_init="forward")
    x, y = make_batch(sym, batch=5)
    est = est_cls(beta=0.3, free_steps=15, nudged_steps=6)
    for net in (sym, asym):
        net.zero_grad()
        out = est.estimate(net, x, y)
    coefs, _ = est.coefficients(out.betas)
    sym_grads, got = grads(sym), grads(asym)
    expected = dict(sym_grads)
    for n in range(1, len(asym.interactions)):
        layer = asym.interactions[n]
        w = "conv" if isinstance(layer, AsymmetricConvInteraction) else "linear"
        free = out.free_state
        second = sum(
            c * layer.phi_feedback(s[n - 1] - free[n - 1], s[n] - free[n]).mean()
            for c, s in zip(coefs, out.nudged_states, strict=True)
        )
        (g_second,) = torch.autograd.grad(second, layer.feedback)
        fb = got.pop(f"interactions.{n}.feedback")
        got[f"interactions.{n}.{w}.weight"] = got[f"interactions.{n}.{w}.weight"] + fb + g_second
    assert_grads(got, expected)


# ----------------------------------------------------------------- angles and training


def test_weight_angles_about_90_at_random_init_and_0_when_equal():
    torch.manual_seed(0)
    net = AsymmetricNetwork((64,), dense=[64, 48], num_classes=10)
    angles = net.weight_angles()
    assert set(angles) == {"layer1", "layer2"}
    assert all(abs(a - 90.0) <= 15.0 for a in angles.values()), angles
    torch.manual_seed(0)
    same = AsymmetricNetwork((64,), dense=[64, 48], num_classes=10, feedback_init="forward")
    assert same.weight_angles() == {"layer1": 0.0, "layer2": 0.0}


def test_training_with_the_same_rule_shrinks_the_angle():
    torch.manual_seed(0)
    net = AsymmetricNetwork(
        (12,), dense=[16], num_classes=3, activation="my_hard_sig", update_rule="same"
    ).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 12, generator=g, dtype=torch.float64)
    y = (x[:, :3] + x[:, 3:6]).argmax(1)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, weight_decay=0.05)
    est = SymmetricEP(beta=0.5, free_steps=20, nudged_steps=8)
    before = net.weight_angles()["layer1"]
    for _ in range(15):
        opt.zero_grad()
        est.estimate(net, x, y)
        fb = net.interactions[1].feedback
        assert torch.equal(fb.grad, net.interactions[1].linear.weight.grad)
        opt.step()
    after = net.weight_angles()["layer1"]
    assert before > 75.0 and after < before - 10.0, (before, after)


@pytest.mark.parametrize("rule", ["different", "same"])
@pytest.mark.parametrize("est_cls", [SymmetricEP, OneSidedEP, RandomSignEP])
def test_estimators_run_unchanged_on_a_batch_of_one(est_cls, rule):
    net = make_asym("conv_max", output="ce", dtype=torch.float32, update_rule=rule)
    x, y = make_batch(net, batch=1)
    net.zero_grad()
    out = est_cls(beta=0.2, free_steps=6, nudged_steps=3).estimate(net, x, y)
    assert out.logits.shape == (1, net.num_classes)
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
