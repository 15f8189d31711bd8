"""EP estimators: the weight update, the theorem (EP → true gradient as β → 0), reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import ARCHITECTURES, make_batch, make_net, random_state

from eqprop import OneSidedEP, RandomSignEP, Solver, SymmetricEP, make_estimator, predict, relax
from eqprop.reference import bptt_gradients, reference_loss, reference_phi

CONVERGED = Solver(tol=1e-15)


def grads(net) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in d.values()])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_closed_form_weight_gradients_equal_autograd_of_phi(arch):
    """Each interaction's closed-form Hebbian product equals the θ-gradient of Σ_b φ at fixed
    states (autograd), with and without the forward drive's context supplied."""
    net = make_net(arch)
    x, _ = make_batch(net, batch=4)
    state = random_state(net, batch=4)
    pres = [x, *state[:-1]]
    for layer, pre, post in zip(net.interactions, pres, state, strict=True):
        params = layer.weights()
        assert {id(p) for p in params} == {id(p) for p in layer.parameters()}
        want = torch.autograd.grad(layer.phi(pre, post).sum(), params)
        got = layer.weight_grads(pre, post)
        assert max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)) <= 1e-12
        # the same with the forward drive's context supplied (the input drive's, in training)
        reused = layer.weight_grads(pre, post, layer.forward_drive(pre)[1])
        assert max(float((g - w).abs().max()) for g, w in zip(reused, want, strict=True)) <= 1e-12


@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("arch", ["dense", "conv_max", "mixed"])
def test_symmetric_update_is_the_contrast_of_autograd_phi(arch, output):
    """g = −(1/2β)[∂Φ/∂θ(s+) − ∂Φ/∂θ(s−)], batch mean; the readout gets the mean CE gradient."""
    net = make_net(arch, output=output)
    x, y = make_batch(net, batch=5)
    est = SymmetricEP(beta=0.3, free_steps=15, nudged_steps=6)
    net.zero_grad()
    out = est.estimate(net, x, y)
    got = grads(net)

    s_plus, s_minus = out.nudged_states
    params = list(net.parameters())
    contrast = (reference_phi(net, x, s_plus) - reference_phi(net, x, s_minus)).mean()
    expected = torch.autograd.grad(-contrast / (2 * 0.3), params, allow_unused=True)
    if output == "ce":
        ce = 0.5 * (reference_loss(net, s_plus, y) + reference_loss(net, s_minus, y)).mean()
        readout = torch.autograd.grad(ce, params, allow_unused=True)
        expected = [r if e is None else e for e, r in zip(expected, readout, strict=True)]
    for (name, g), e in zip(got.items(), expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


def test_one_sided_update_contrasts_nudged_and_free_states():
    net = make_net("conv_max")
    x, y = make_batch(net)
    net.zero_grad()
    out = OneSidedEP(beta=0.2, free_steps=10, nudged_steps=5).estimate(net, x, y)
    params = list(net.parameters())
    (s_beta,) = out.nudged_states
    contrast = (reference_phi(net, x, s_beta) - reference_phi(net, x, out.free_state)).mean()
    expected = torch.autograd.grad(-contrast / 0.2, params)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("arch", "output", "activation"),
    [("dense", "mse", "sigmoid"), ("dense", "ce", "mysig"), ("conv_max", "mse", "hard_sigmoid"),
     ("conv_max", "ce", "mysig")],
)  # fmt: skip
def test_ep_theorem_bias_shrinks_like_beta_and_beta_squared(arch, output, activation):
    """Converged float64: symmetric EP ≈ true gradient; error slopes ≈ 1 (one-sided), 2 (sym)."""
    net = make_net(arch, output=output, activation=activation)
    x, y = make_batch(net, batch=4)
    free = relax(net, x, 3000, solver=CONVERGED)
    assert free.residual < 1e-14
    true = flat(bptt_gradients(net, x, y, free.state, 400))  # implicit gradient at s*

    betas = [1e-3, 2e-3, 5e-3, 1e-2]
    errors: dict[str, list[float]] = {"one_sided": [], "symmetric": []}
    for kind in errors:
        for beta in betas:
            net.zero_grad()
            make_estimator(
                kind, beta=beta, free_steps=3000, nudged_steps=3000, solver=CONVERGED
            ).estimate(net, x, y)
            errors[kind].append(rel_err(flat(grads(net)), true))
    assert errors["symmetric"][0] <= 1e-3
    slope_one = np.polyfit(np.log(betas), np.log(errors["one_sided"]), 1)[0]
    slope_sym = np.polyfit(np.log(betas), np.log(errors["symmetric"]), 1)[0]
    assert slope_one == pytest.approx(1.0, abs=0.15)
    assert slope_sym == pytest.approx(2.0, abs=0.2)


def test_batched_phases_equal_separate_phases():
    net = make_net("mixed", output="ce")
    x, y = make_batch(net, batch=4)
    results = []
    for batch_phases in (True, False):
        net.zero_grad()
        SymmetricEP(0.4, 12, 5, batch_phases=batch_phases).estimate(net, x, y)
        results.append(flat(grads(net)))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-14)


def test_random_sign_is_reproducible_with_a_seed_and_uses_both_signs():
    net = make_net("dense")
    x, y = make_batch(net)

    def run(seed: int) -> tuple[list[float], list[torch.Tensor]]:
        est = RandomSignEP(beta=0.5, free_steps=8, nudged_steps=4, seed=seed)
        signs, updates = [], []
        for _ in range(12):
            net.zero_grad()
            out = est.estimate(net, x, y)
            signs.append(out.betas[0])
            updates.append(flat(grads(net)))
        return signs, updates

    signs_a, upd_a = run(7)
    signs_b, upd_b = run(7)
    assert signs_a == signs_b and set(signs_a) == {0.5, -0.5}
    for a, b in zip(upd_a, upd_b, strict=True):
        assert torch.equal(a, b)
    assert run(8)[0] != signs_a


def test_random_sign_state_dict_resumes_the_sign_sequence():
    est = RandomSignEP(beta=1.0, free_steps=1, nudged_steps=1, seed=3)
    est.phase_betas()
    saved = est.state_dict()
    tail = [est.phase_betas() for _ in range(6)]
    est.load_state_dict(saved)
    assert [est.phase_betas() for _ in range(6)] == tail


def test_estimate_accumulates_like_backward_and_steps_no_optimizer():
    net = make_net("dense")
    x, y = make_batch(net)
    before = [p.detach().clone() for p in net.parameters()]
    est = SymmetricEP(0.1, 5, 3)
    net.zero_grad()
    est.estimate(net, x, y)
    once = flat(grads(net))
    est.estimate(net, x, y)
    torch.testing.assert_close(flat(grads(net)), 2 * once)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_predict_uses_the_free_equilibrium():
    net = make_net("conv_max", output="ce")
    x, _ = make_batch(net, batch=6)
    classes, logits = predict(net, x, steps=20)
    free = relax(net, x, 20)
    torch.testing.assert_close(logits, net.logits(free.state))
    assert torch.equal(classes, logits.argmax(1))
