"""The GDU check: EP's per-step updates equal BPTT's per-step gradients as β → 0 (spec §2, §5)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from nets import make_batch, make_net

from eqprop import AsymmetricNetwork, EnergyNetwork, OneSidedEP, Solver, SymmetricEP, relax
from eqprop.analysis import VARIANTS, check_gdu, format_table, write_report
from eqprop.estimators import BPTT
from eqprop.reference import bptt_gradients

CONVERGED = Solver(tol=1e-15)
SMALL_BETA = 1e-3
SWEEP = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
CASES = {
    "dense-sigmoid-mse": ("dense", "sigmoid", "mse"),
    "conv_max-mysig-ce": ("conv_max", "mysig", "ce"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 tensors: one intra-op thread is faster, and far faster on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """A converged small float64 net, its batch and its report (computed once per module)."""
    arch, activation, output = CASES[request.param]
    net = make_net(arch, activation=activation, output=output)
    x, y = make_batch(net, batch=3)
    report = check_gdu(
        net, x, y, free_steps=3000, nudged_steps=8, betas=(SMALL_BETA, 0.1),
        sweep_betas=SWEEP, solver=CONVERGED,
    )  # fmt: skip
    return net, x, y, report


def test_free_phase_is_converged(case):
    *_, report = case
    assert report.free_residual < 1e-13
    assert report.free_steps_taken < report.free_steps


def test_symmetric_increments_match_bptt_step_by_step(case):
    net, _, _, report = case
    c = report.comparison(SMALL_BETA)
    names = [n for n, _ in net.named_parameters()] + [
        f"neurons.{n}" for n in range(len(net.state_shapes))
    ]
    assert list(c.tensors) == names
    for name, t in c.tensors.items():
        assert t.rmse["sym"] < 1e-2, name
        assert t.rmse["sym"] < t.rmse["plus"] and t.rmse["sym"] < t.rmse["minus"], name
        assert t.rmse["plus"] < 1e-2, name  # one-sided error is O(β)
        assert t.sign_error["sym"] == 0.0, name
    assert c.totals["sym"]["final_error"] < 1e-5


def test_symmetric_helps_in_every_layer(case):
    *_, report = case
    for c in report.comparisons:
        assert set(c.layers) == set(report.layers)
        assert all(r is not None and r < 0.2 for r in c.layers.values()), c.layers


def test_sweep_slopes_are_one_and_two(case):
    *_, report = case
    sweep = report.sweep
    assert sweep is not None and sweep.betas == list(SWEEP)
    assert sweep.slopes["plus"] == pytest.approx(1.0, abs=0.2)
    assert sweep.slopes["minus"] == pytest.approx(1.0, abs=0.2)
    assert sweep.slopes["sym"] == pytest.approx(2.0, abs=0.2)
    # The sweep's estimates (one surrogate call) and the summed increments agree.
    for beta in (SMALL_BETA, 0.1):
        c = report.comparison(beta)
        i = SWEEP.index(beta)
        for v in VARIANTS:
            assert sweep.errors[v][i] == pytest.approx(c.totals[v]["final_error"], rel=1e-6)


def test_final_updates_are_the_estimators_and_bptt_gradients(case):
    """Σ_t increments is what OneSidedEP / SymmetricEP put in .grad; Σ_t BPTT is the gradient."""
    net, x, y, report = case
    beta, steps = 0.1, report.nudged_steps
    free = relax(net, x, 3000, solver=CONVERGED)
    truth = torch.cat([g.flatten() for g in bptt_gradients(net, x, y, free.state, steps).values()])
    for variant, est in (
        ("plus", OneSidedEP(beta, 3000, steps, solver=CONVERGED)),
        ("sym", SymmetricEP(beta, 3000, steps, solver=CONVERGED)),
    ):
        net.zero_grad()
        est.estimate(net, x, y)
        got = torch.cat([p.grad.flatten() for p in net.parameters()])
        err = float((got - truth).norm() / truth.norm())
        assert report.comparison(beta).totals[variant]["final_error"] == pytest.approx(err, 1e-6)


def test_curves_hold_cumulative_sums_of_moving_elements(case):
    *_, report = case
    c = report.comparison(SMALL_BETA)
    for name, curves in c.curves.items():
        assert len(curves.elements) == 3, name
        assert set(curves.series) == {*VARIANTS, "bptt"}
        for values in curves.series.values():
            assert all(len(v) == report.nudged_steps + 1 for v in values)
        bptt_final = [v[-1] for v in curves.series["bptt"]]
        assert any(b != 0 for b in bptt_final), name


def test_write_report_and_table(case, tmp_path):
    *_, report = case
    paths = write_report(report, tmp_path / "gdu")
    assert set(paths) == {"json", "curves", "layers", "beta_sweep"}
    for key in ("curves", "layers", "beta_sweep"):
        data = paths[key].read_bytes()
        assert paths[key].name == f"gdu_{key}.png"
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    loaded = json.loads(paths["json"].read_text())
    assert loaded["nudged_steps"] == report.nudged_steps
    assert [c["beta"] for c in loaded["comparisons"]] == [SMALL_BETA, 0.1]
    assert set(loaded["sweep"]["slopes"]) == set(VARIANTS)
    table = format_table(report)
    for name in report.shapes:
        assert name in table
    assert "slope" in table and "layer ratio" in table
    for layer in report.layers:
        assert layer in table


def test_asymmetric_network_runs_through_its_update_rule():
    """No Φ: the increments come from the update rule's weight contrast; the totals still match
    the estimators."""
    torch.manual_seed(0)
    net = AsymmetricNetwork((7,), dense=[6, 5], num_classes=4, activation="sigmoid").double()
    x, y = make_batch(net, batch=3)
    report = check_gdu(
        net, x, y, free_steps=400, nudged_steps=6, betas=(0.05,), sweep_betas=None,
        solver=CONVERGED,
    )  # fmt: skip
    assert report.sweep is None
    assert any(name.endswith("feedback") for name in report.shapes)
    c = report.comparisons[0]
    net.zero_grad()
    BPTT(400, 6, solver=CONVERGED).estimate(
        net, x, y, state=relax(net, x, 400, solver=CONVERGED).state
    )
    truth = torch.cat([p.grad.flatten() for p in net.parameters()])
    net.zero_grad()
    SymmetricEP(0.05, 400, 6, solver=CONVERGED).estimate(net, x, y)
    got = torch.cat([p.grad.flatten() for p in net.parameters()])
    err = float((got - truth).norm() / truth.norm())
    assert c.totals["sym"]["final_error"] == pytest.approx(err, rel=1e-6)
    assert all(math.isfinite(v["rmse"]) for v in c.totals.values())
    assert "feedback" in format_table(report)


def test_one_layer_network_runs():
    """A single CE hidden layer (the trainer's smallest nets): nothing but the readout moves."""
    torch.manual_seed(0)
    net = EnergyNetwork((7,), dense=[5], num_classes=4, output="ce", activation="sigmoid")
    x, y = make_batch(net.double())
    report = check_gdu(net, x, y, free_steps=5, nudged_steps=3, betas=(1e-3,), sweep_betas=())
    c = report.comparisons[0]
    assert c.totals["sym"]["final_error"] < 1e-5
    assert c.tensors["neurons.0"].rmse["sym"] < 1e-2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"betas": ()}, "betas: expected at least one"),
        ({"betas": (0.1, -0.1)}, "betas: -0.1"),
        ({"sweep_betas": (0.0,)}, "sweep_betas: 0.0"),
        ({"free_steps": 0}, "free_steps: 0"),
        ({"nudged_steps": 2.5}, "nudged_steps: 2.5"),
        ({"curve_elements": 0}, "curve_elements: 0"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    net = make_net("dense")
    x, y = make_batch(net)
    args = {"free_steps": 5, "nudged_steps": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        check_gdu(net, x, y, **args)
