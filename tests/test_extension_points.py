"""The extension points: one estimator protocol, registries as the only source of choices,
networks that behave like PyTorch modules."""

from __future__ import annotations

import copy
import io
import multiprocessing as mp

import pytest
import torch
from nets import make_batch, make_net

import eqprop
from eqprop import (
    BPTT,
    ESTIMATORS,
    AsymmetricNetwork,
    FreeRelaxation,
    GradientEstimator,
    OneSidedEP,
    RandomSignEP,
    Solver,
    SymmetricEP,
    predict,
)
from eqprop.core import ACTIVATIONS, NETWORKS, POOLS, AsymmetricSettings, ConvLayer
from eqprop.dynamics import SCHEDULES
from eqprop.train.config import (
    ConfigError,
    ConvLayerConfig,
    DynamicsConfig,
    ModelConfig,
    config_from_dict,
)
from eqprop.train.datasets import DATASETS


def test_star_import_exports_every_estimator():
    namespace: dict = {}
    exec("from eqprop import *", namespace)
    assert {"BPTT", "SymmetricEP", "OneSidedEP", "RandomSignEP", "GradientEstimator"} <= set(
        namespace
    )
    assert set(eqprop.__all__) <= set(dir(eqprop))
    assert ESTIMATORS["bptt"] is BPTT
    assert all(issubclass(cls, GradientEstimator) for cls in ESTIMATORS.values())


ESTIMATOR_CASES = {
    "one_sided": (lambda: OneSidedEP(0.2, 12, 5), {}),
    "random_sign": (lambda: RandomSignEP(0.2, 12, 5, seed=3), {}),
    "symmetric": (lambda: SymmetricEP(0.2, 12, 5, solver=Solver(schedule="even_odd")), {}),
    "bptt": (lambda: BPTT(12, 5), {}),
    "vf_different": (lambda: SymmetricEP(0.2, 12, 5), {"update_rule": "different"}),
    "vf_same": (lambda: SymmetricEP(0.2, 12, 5), {"update_rule": "same"}),
}


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("case", list(ESTIMATOR_CASES))
def test_surrogate_backward_leaves_exactly_the_estimate_gradient(case, output):
    """The form for trainers that own backward (DDP, Lightning) equals estimate()."""
    make, asym = ESTIMATOR_CASES[case]
    kwargs = {"cls": AsymmetricNetwork, **asym} if asym else {}
    net = make_net("conv_max", output=output, **kwargs)
    x, y = make_batch(net, batch=4)
    direct = make()
    direct.estimate(net, x, y)
    expected = _grads(net)
    net.zero_grad(set_to_none=True)
    est = make()
    value, out = est.surrogate(net, x, y)
    assert value.dim() == 0 and value.requires_grad
    value.backward()
    est.after_backward(net)
    got = _grads(net)
    assert got.keys() == expected.keys() == {n for n, _ in net.named_parameters()}
    for name, g in got.items():
        torch.testing.assert_close(g, expected[name], rtol=1e-12, atol=1e-14, msg=name)
    assert out.logits.shape == (4, net.num_classes)


def test_random_sign_state_round_trips():
    est = RandomSignEP(0.1, 2, 2, seed=5)
    est.phase_betas()
    state = est.state_dict()
    first = [est.phase_betas() for _ in range(5)]
    est.load_state_dict(state)
    assert [est.phase_betas() for _ in range(5)] == first
    assert SymmetricEP(0.1, 2, 2).state_dict() == {}


# ----------------------------------------------------------------- networks as modules


def test_calling_a_network_gives_the_logits_at_the_free_equilibrium():
    net = make_net("conv_max", output="ce")
    x, _ = make_batch(net, batch=3)
    solver = Solver(schedule="even_odd")
    net.relaxation = FreeRelaxation(solver, steps=7)
    _, logits = predict(net, x, 7, solver)
    assert torch.equal(net(x), logits)
    net.relaxation = None  # the default installed by eqprop.dynamics
    assert torch.equal(net(x), predict(net, x, FreeRelaxation().steps)[1])


def _logits_in_child(buffer: bytes, x: torch.Tensor) -> torch.Tensor:
    net = torch.load(io.BytesIO(buffer), weights_only=False)
    return net(x)


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_networks_pickle_deepcopy_and_cross_process_boundaries(kind):
    kwargs = {"cls": AsymmetricNetwork} if kind == "asymmetric" else {}
    net = make_net("mixed", output="ce", **kwargs)
    x, _ = make_batch(net, batch=2)
    expected = net(x)
    assert torch.equal(copy.deepcopy(net)(x), expected)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    assert torch.equal(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)(x), expected)
    if kind == "symmetric":  # one spawn-based child is enough (it costs an interpreter start)
        with mp.get_context("spawn").Pool(1) as pool:
            got = pool.apply(_logits_in_child, (buffer.getvalue(), x))
        assert torch.equal(got, expected)


# ----------------------------------------------------------------- one source of truth


def test_core_settings_are_the_config_sections():
    """Each default is written once: the config sections are the core's own dataclasses."""
    assert ConvLayerConfig is ConvLayer
    assert issubclass(DynamicsConfig, Solver)
    assert issubclass(ModelConfig, AsymmetricSettings)
    assert DynamicsConfig().solver == Solver()
    assert ModelConfig(dense=(4,)).output == AsymmetricSettings(dense=(4,)).output


@pytest.mark.parametrize(
    ("registry", "config"),
    [
        (SCHEDULES, lambda v: {"dynamics": {"schedule": v}}),
        (ACTIVATIONS, lambda v: {"model": {"activation": v}}),
        (POOLS, lambda v: {"model": {"conv": [{"channels": 2, "pool": v}]}}),
        (ESTIMATORS, lambda v: {"estimator": {"kind": v}}),
        (NETWORKS, lambda v: {"model": {"kind": v}}),
        (DATASETS, lambda v: {"data": {"dataset": v}}),
    ],
)
def test_config_choices_come_from_the_registries(registry, config, monkeypatch):
    """A config accepts exactly the registry's keys: registering a name is all it takes."""
    base = {"model": {"dense": [4]}}

    def build(value: str) -> object:
        raw = config(value)
        section = next(iter(raw))
        return config_from_dict({**base, section: {**base.get(section, {}), **raw[section]}})

    with pytest.raises(ConfigError, match=r"is not one of " + ", ".join(registry)):
        build("no-such-choice")
    monkeypatch.setitem(registry, "no-such-choice", next(iter(registry.values())))
    build("no-such-choice")
