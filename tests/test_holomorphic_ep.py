"""Holomorphic EP (holomorphic-ep.md §2, §4, §6): the N-point estimator against one-sided and
symmetric EP, a slow complex reference and the true gradient; conjugate symmetry, the |β|^N
rate, drift cancellation, the convergence guard, the online variant, refusals and config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eqprop import AsymmetricNetwork, ConvLayer, EnergyNetwork, OneSidedEP, Solver, SymmetricEP
from eqprop.core.planar import Rows
from eqprop.core.validation import SettingError
from eqprop.estimators import HolomorphicEP, circle_points, make_estimator
from eqprop.estimators.circle import Points, guard_masks, relax_points
from eqprop.reference import bptt_gradients, reference_holomorphic_gradients

DT = torch.float64
CONVERGED = Solver(tol=1e-15)


def dense_net(output: str = "ce", act: str = "tanh", seed: int = 0) -> EnergyNetwork:
    """A contracting dense net (init scale 0.5): relaxations converge to round-off."""
    torch.manual_seed(seed)
    net = EnergyNetwork((7,), dense=[6, 5], num_classes=3, output=output, activation=act,
                        init_scale=0.5)  # fmt: skip
    return net.double()


def conv_net(output: str = "ce", seed: int = 0) -> EnergyNetwork:
    """Softmax pools (τ = 1 and 2, odd sizes), an average pool and a dense layer, dsilu."""
    torch.manual_seed(seed)
    conv = [ConvLayer(2, 3, 1, 1, "s", temperature=2.0), ConvLayer(3, 2, 1, 1, "s"),
            ConvLayer(2, 1, 1, 0, "a")]  # fmt: skip
    net = EnergyNetwork((1, 7, 7), conv=conv, dense=[4], num_classes=3, output=output,
                        activation="dsilu", init_scale=0.5)  # fmt: skip
    return net.double()


def batch(net: EnergyNetwork, b: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((b, *net.input_shape), generator=g, dtype=DT)
    return x, torch.randint(0, net.num_classes, (b,), generator=g)


def grads(net, est, x, y, state=None) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    est.estimate(net, x, y, state)
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def flat(d) -> torch.Tensor:
    if isinstance(d, dict):
        return torch.cat([v.flatten() for v in d.values()])
    return torch.cat([g.flatten() for _, g in d])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def true_gradient(net, x, y, free) -> torch.Tensor:
    """Implicit differentiation at s*: BPTT over 300 steps of a contracting net from s*."""
    return flat(bptt_gradients(net, x, y, free, 300))


# ----------------------------------------------------------------- N = 1 and N = 2


@pytest.mark.parametrize("net_kind", ["dense_mse", "conv_max", "asymmetric"])
@pytest.mark.parametrize(("points", "twin"), [(1, OneSidedEP), (2, SymmetricEP)])
def test_one_and_two_points_are_one_sided_and_symmetric_ep_exactly(points, twin, net_kind):
    """Any network (clamps and max pools too): the same code path, the same gradient."""
    torch.manual_seed(0)
    if net_kind == "dense_mse":
        net = dense_net("mse", "mysig")
    elif net_kind == "conv_max":
        conv = [ConvLayer(2, 3, 1, 1, "m")]
        net = EnergyNetwork((1, 6, 6), conv=conv, dense=[4], num_classes=3, output="ce",
                            activation="my_hard_sig").double()  # fmt: skip
    else:
        net = AsymmetricNetwork((7,), dense=[6, 5], num_classes=3, output="ce",
                                activation="hard_sigmoid").double()  # fmt: skip
    x, y = batch(net)
    for batch_phases in (True, False):
        kw = dict(beta=0.3, free_steps=12, nudged_steps=5, batch_phases=batch_phases)
        got = flat(grads(net, HolomorphicEP(points=points, **kw), x, y))
        want = flat(grads(net, twin(**kw), x, y))
        assert rel(got, want) <= 1e-12


# ----------------------------------------------------------------- N > 2 against references


@pytest.mark.parametrize("output", ["ce", "mse"])
@pytest.mark.parametrize("points", [3, 4])
def test_planar_estimate_equals_the_slow_complex_reference(points, output):
    """Relaxation of the points (softmax pools, dsilu, complex CE), coefficients and the closed
    form, against complex128 reference steps and autograd of Re Σ_k c_k Φ_{β_k} (every point
    of the circle relaxed on its own)."""
    net = conv_net(output)
    x, y = batch(net, 2)
    free = Solver().relax(net, net.input_drive(x), None, 20).state
    est = HolomorphicEP(beta=0.4, free_steps=20, nudged_steps=4, points=points)
    got = flat(est.grads_at(net, x, y, free))
    want = flat(reference_holomorphic_gradients(net, x, y, free, points, 0.4, 4))
    assert rel(got, want) <= 1e-10


@pytest.mark.parametrize("points", [3, 4, 5, 6])
def test_half_circle_equals_full_circle(points):
    """Conjugate symmetry: the ⌊N/2⌋+1 points give the estimate of all N."""
    net = conv_net()
    x, y = batch(net)
    half = HolomorphicEP(0.5, 30, 15, points=points)
    full = HolomorphicEP(0.5, 30, 15, points=points, half_circle=False)
    assert rel(flat(grads(net, half, x, y)), flat(grads(net, full, x, y))) <= 1e-12


def test_circle_points_and_their_weights():
    pts = circle_points(6, 2.0)
    assert [w for _, w in pts] == [1.0, 2.0, 2.0, 1.0]
    assert pts[0][0] == 2 and pts[-1][0] == -2
    assert abs(pts[1][0] - 2 * complex(math.cos(math.pi / 3), math.sin(math.pi / 3))) < 1e-15
    assert len(circle_points(5, 1.0)) == 3 and sum(w for _, w in circle_points(5, 1.0)) == 5
    assert len(circle_points(7, 1.0, half=False)) == 7


def test_error_falls_like_beta_to_the_n():
    """Fitted log-log slopes of the error against the true gradient within ±0.3 of N."""
    net = dense_net()
    x, y = batch(net, 4)
    free = CONVERGED.relax(net, net.input_drive(x), None, 400).state
    truth = true_gradient(net, x, y, free)
    betas = [0.05, 0.1, 0.2, 0.4]
    for n in (1, 2, 3, 4):
        est = HolomorphicEP(1.0, 1, 400, CONVERGED, points=n)
        errors = []
        for beta in betas:
            est.beta = beta
            errors.append(rel(flat(est.grads_at(net, x, y, free)), truth))
        slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
        assert abs(slope - n) <= 0.3, (n, slope, errors)


def test_eight_points_at_finite_beta_give_the_true_gradient():
    """N = 8 at |β| = 0.2 on a contracting net: ≤ 1e-6 from implicit differentiation (the
    symmetric estimate at the same |β| is about 1e-3 off)."""
    net = dense_net()
    x, y = batch(net, 4)
    free = CONVERGED.relax(net, net.input_drive(x), None, 400).state
    truth = true_gradient(net, x, y, free)
    got = flat(HolomorphicEP(0.2, 1, 400, CONVERGED, points=8).grads_at(net, x, y, free))
    sym = flat(HolomorphicEP(0.2, 1, 400, CONVERGED, points=2).grads_at(net, x, y, free))
    assert rel(got, truth) <= 1e-6 < rel(sym, truth)


# ----------------------------------------------------------------- drift cancellation


def _bias_grads(net, est_grads) -> torch.Tensor:
    biases = {id(p) for n, p in net.named_parameters() if n.endswith("bias")}
    return torch.cat([g.flatten() for p, g in est_grads if id(p) in biases])


def test_a_common_offset_of_the_nudged_states_cancels_for_n_of_two_or_more():
    """∂Φ/∂b is the state itself: the same offset on every nudged end state leaves the bias
    updates of N >= 2 exactly unchanged (Σ_k c_k = 0) and moves N = 1 by offset/β."""
    net = dense_net()
    x, y = batch(net)
    x, y = net.check_input(x, y)
    drive, ctx = net.input_drive_with_context(x)
    free = Solver().relax(net, drive, None, 30).state
    offset = [0.01 * torch.randn(s.shape, generator=torch.Generator().manual_seed(5), dtype=DT)
              for s in free]  # fmt: skip
    readout = {id(p) for p in net.readout.parameters()}

    def shifted(states):
        return [[s + o for s, o in zip(st, offset, strict=True)] for st in states]

    one = OneSidedEP(0.1, 30, 10)
    nudged, _ = one.relax_nudged(net, drive, free, y, [0.1])
    base = one.weight_grads(net, x, y, free, nudged, [0.1], ctx)
    moved = one.weight_grads(net, x, y, free, shifted(nudged), [0.1], ctx)
    moved = [(p, g) for p, g in moved if id(p) not in readout]
    base = [(p, g) for p, g in base if id(p) not in readout]
    want = torch.cat([-o.mean(0) / 0.1 for o in offset])
    assert float((_bias_grads(net, moved) - _bias_grads(net, base) - want).abs().max()) < 1e-12
    for n in (2, 3, 4):
        est = HolomorphicEP(0.3, 30, 10, points=n)
        circle = circle_points(n, 0.3)
        pts = relax_points(est.solver, net, drive, free, y, circle, 10, track=False)
        if n == 2:
            g0 = est.weight_grads(net, x, y, free, _split(pts, 3), [0.3, -0.3], ctx)
            g1 = est.weight_grads(net, x, y, free, shifted(_split(pts, 3)), [0.3, -0.3], ctx)
        else:
            g0 = est.point_grads(net, x, y, pts, ctx)
            for s, o in zip(pts.state, offset, strict=True):
                s[: pts.rows.with_bias] += o.repeat(pts.rows.with_bias // 3, 1)
            g1 = est.point_grads(net, x, y, pts, ctx)
        g0 = [(p, g) for p, g in g0 if id(p) not in readout]
        g1 = [(p, g) for p, g in g1 if id(p) not in readout]
        assert float((_bias_grads(net, g1) - _bias_grads(net, g0)).abs().max()) < 1e-14


def _split(pts: Points, b: int) -> list[list[torch.Tensor]]:
    return [[s[i * b : (i + 1) * b] for s in pts.state] for i in range(len(pts.betas))]


# ----------------------------------------------------------------- the convergence guard


def test_guard_masks_fall_back_or_drop():
    rows = Rows(real=2 * 2, complex=1 * 2)  # B = 2: points +r, −r and one complex point
    pts = Points([1 + 0j, -1 + 0j, 1j], [1.0, 1.0, 2.0], rows, None, [], 0, None)  # type: ignore[arg-type]
    # rows: +r (2), −r (2), Re (2), Im (2); example 1's complex point has ρ = 10.
    pts.residual = torch.tensor([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 8.0, 1e-3, 6.0], dtype=DT)
    free_ok = torch.tensor([1e-3, 1e-3], dtype=DT)
    keep, fallback = guard_masks(pts, free_ok, 2, even=True)
    assert keep.tolist() == [True, False] and fallback.tolist() == [False, True]
    keep, fallback = guard_masks(pts, free_ok, 2, even=False)
    assert keep.tolist() == [True, False] and fallback.tolist() == [False, False]
    keep, fallback = guard_masks(pts, torch.tensor([1e3, math.nan], dtype=DT), 2, even=True)
    assert keep.tolist() == [False, False] and fallback.tolist() == [False, False]


def test_guard_falls_back_to_two_points_where_the_complex_points_diverge():
    """Far outside the radius (|β| = 10 on a logistic squared-error output, R ≈ 0.44) the
    complex points of some examples do not converge: those examples get symmetric EP's update,
    the others the 4-point one (relaxations and guard are per example)."""
    torch.manual_seed(0)
    net = EnergyNetwork((7,), dense=[6], num_classes=3, output="mse", activation="mysig")
    net = net.double()
    x, y = batch(net, 4)
    out = HolomorphicEP(10.0, 60, 40, points=4).estimate(net, x, y)
    assert out.stats["guard_dropped"] == 0 and 0 < out.stats["guard_fallback"] < 4
    got = flat(grads(net, HolomorphicEP(10.0, 60, 40, points=4), x, y))
    parts = []
    for b in range(4):
        xb, yb = x[b : b + 1], y[b : b + 1]
        fell = HolomorphicEP(10.0, 60, 40, points=4).estimate(net, xb, yb).stats["guard_fallback"]
        est = SymmetricEP(10.0, 60, 40) if fell else HolomorphicEP(10.0, 60, 40, points=4)
        parts.append(flat(grads(net, est, xb, yb)))
    assert rel(got, torch.stack(parts).mean(0)) <= 1e-10
    assert HolomorphicEP(0.05, 60, 40, points=4).estimate(net, x, y).stats["guard_fallback"] == 0


# ----------------------------------------------------------------- online variant


def test_online_estimate_matches_the_phased_one():
    """β turning round the circle with T2 = 40 steps per point (first period discarded)."""
    net = dense_net()
    x, y = batch(net, 4)
    free = CONVERGED.relax(net, net.input_drive(x), None, 300).state
    phased = flat(HolomorphicEP(0.3, 1, 200, CONVERGED, points=4).grads_at(net, x, y, free))
    online = HolomorphicEP(0.3, 1, 40, points=4, online=True, online_periods=3)
    got = flat(online.grads_at(net, x, y, free))
    assert rel(got, phased) <= 1e-6
    short = HolomorphicEP(0.3, 1, 3, points=4, online=True, online_periods=3)
    assert rel(flat(short.grads_at(net, x, y, free)), phased) > 1e-3  # tracking lag


def test_online_runs_through_estimate_and_surrogate():
    net = conv_net()
    x, y = batch(net)
    est = HolomorphicEP(0.3, 20, 6, points=3, online=True, online_periods=2)
    direct = flat(grads(net, est, x, y))
    net.zero_grad(set_to_none=True)
    value, out = est.surrogate(net, x, y)
    value.backward()
    assert rel(flat({n: p.grad for n, p in net.named_parameters()}), direct) <= 1e-14
    assert out.nudged_steps == 6 * 3 * 2 and out.nudged_states == []


# ----------------------------------------------------------------- protocol, refusals, config


def test_surrogate_equals_estimate_and_estimate_reports_the_real_points():
    net = conv_net()
    x, y = batch(net)
    est = HolomorphicEP(0.5, 20, 6, points=4)
    direct = flat(grads(net, est, x, y))
    net.zero_grad(set_to_none=True)
    value, out = est.surrogate(net, x, y)
    value.backward()
    assert rel(flat({n: p.grad for n, p in net.named_parameters()}), direct) <= 1e-14
    assert out.betas == [0.5, -0.5] and len(out.nudged_states) == 2
    assert out.stats == {"guard_dropped": 0.0, "guard_fallback": 0.0}


def test_more_than_two_points_refuse_non_holomorphic_pieces_and_asymmetric_nets():
    x = torch.rand(2, 7, dtype=DT)
    y = torch.tensor([0, 1])
    clamp = EnergyNetwork((7,), dense=[5], num_classes=3, output="ce").double()  # my_hard_sig
    with pytest.raises(SettingError, match=r"^model\.activation: 'my_hard_sig' is not holo"):
        HolomorphicEP(0.5, 5, 3, points=3).estimate(clamp, x, y)
    HolomorphicEP(0.5, 5, 3, points=2).estimate(clamp, x, y)  # N = 2: accepted
    maxpool = EnergyNetwork((1, 6, 6), conv=[ConvLayer(2, 3, 1, 1, "m")], num_classes=3,
                            output="ce", activation="dsilu").double()  # fmt: skip
    with pytest.raises(SettingError, match=r"^model\.conv\[0\]\.pool: 'm' \(max pool\)"):
        HolomorphicEP(0.5, 5, 3, points=4).estimate(maxpool, torch.rand(2, 1, 6, 6, dtype=DT), y)
    asym = AsymmetricNetwork((7,), dense=[5], num_classes=3, output="ce", activation="tanh")
    with pytest.raises(SettingError, match=r"^estimator\.kind: .*use estimator\.kind: generalized"):
        HolomorphicEP(0.5, 5, 3, points=4).estimate(asym.double(), x, y)
    with pytest.raises(SettingError, match=r"^points: 0 is not valid"):
        HolomorphicEP(0.5, 5, 3, points=0)
    with pytest.raises(SettingError, match=r"^points: 1 is not valid; expected at least 2"):
        HolomorphicEP(0.5, 5, 3, points=1, online=True)


def test_config_builds_the_estimator_and_trains(tmp_path):
    from eqprop.train.builders import build_estimator
    from eqprop.train.config import load_config
    from eqprop.train.trainer import Trainer

    overrides = [
        "model.activation=dsilu", "estimator.kind=holomorphic", "estimator.points=4",
        "train.epochs=1", "log.tensorboard=false", "log.plots=false", "data.train_size=200",
    ]  # fmt: skip
    cfg = load_config("digits-quickstart", overrides)
    est = build_estimator(cfg)
    assert isinstance(est, HolomorphicEP) and est.points == 4 and est.beta == cfg.estimator.beta
    summary = Trainer(cfg, tmp_path / "run", quiet=True).fit()
    assert summary["test_accuracy"] > 0.3
    assert make_estimator("holomorphic", beta=0.1, free_steps=2, nudged_steps=2).points == 4


def test_check_command_reports_errors_and_slopes_by_points(tmp_path, capsys):
    from eqprop.cli import main

    out = tmp_path / "check"
    args = [
        "check", "digits-quickstart", "--hep", "--random-data", "--float64", "--batch", "3",
        "--set", "model.activation=dsilu", "--free-steps", "40", "--nudged-steps", "30",
        "--points", "1", "2", "4", "--beta", "0.5", "--sweep", "0.1", "0.4", "3", "--out",
        str(out),
    ]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "error at |β| = 0.5" in text and (out / "hep_errors.png").is_file()
    import json

    report = json.loads((out / "hep.json").read_text())
    assert set(report["errors"]) == {"1", "2", "4"}
    assert report["errors"]["4"] < report["errors"]["2"] < report["errors"]["1"]
    assert abs(report["slopes"]["2"] - 2) < 0.3
    assert main([*args[:2], "--hep", "--random-data", "--points", "3", "--out", str(out)]) == 2
    assert "model.activation: 'my_hard_sig' is not holomorphic" in capsys.readouterr().err


def test_single_precision_states_follow_the_double_precision_estimate():
    """float32 nets relax their complex points as float32 planar rows (complex64 values)."""
    net = conv_net()
    x, y = batch(net)
    want = flat(grads(net, HolomorphicEP(0.5, 30, 15, points=4), x, y))
    net32 = net.float()
    got = flat(grads(net32, HolomorphicEP(0.5, 30, 15, points=4), x.float(), y))
    assert got.dtype == torch.float32 and rel(got.double(), want) <= 1e-4


@pytest.mark.slow
def test_compiled_complex_activation_gives_the_eager_estimate():
    """dynamics.compile: the planar relaxation keeps eager steps and compiles its complex
    activation (one fused loop); the estimate is the eager one to round-off."""
    torch.manual_seed(0)
    net = EnergyNetwork((7,), dense=[6], num_classes=3, output="ce", activation="dsilu").double()
    x, y = batch(net)  # one state layer: one shape to compile
    eager = flat(grads(net, HolomorphicEP(0.4, 20, 8, points=4), x, y))
    fast = HolomorphicEP(0.4, 20, 8, Solver(compile=True), points=4)
    assert rel(flat(grads(net, fast, x, y)), eager) <= 1e-12


def test_warm_start_and_clipping_follow_the_ep_estimators():
    """N <= 2 runs EPEstimator's own code (its warm start included); N > 2 keeps the +|β|
    point's state as the next free phase's start, and resumes it from state_dict."""
    net = dense_net()
    x, y = batch(net)
    for n in (2, 4):
        est = HolomorphicEP(0.3, 10, 4, points=n, warm_start=True, clip_grad_norm=1e-3)
        out = est.estimate(net, x, y)
        assert torch.equal(est.state_dict()["warm"][0], out.nudged_states[0][0])
        norm = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
        assert float(norm) <= 1e-3 * (1 + 1e-12)
        again = HolomorphicEP(0.3, 10, 4, points=n, warm_start=True)
        again.load_state_dict(est.state_dict())
        net.zero_grad(set_to_none=True)
        warm = again.estimate(net, x, y)
        cold = HolomorphicEP(0.3, 10, 4, points=n).estimate(net, x, y, est.state_dict()["warm"])
        pairs = zip(warm.free_state, cold.free_state, strict=True)
        assert max(float((a - b).abs().max()) for a, b in pairs) == 0
