"""Graphs in configs: states and edges in YAML, the compact residual form, one-line errors,
and the Hopfield-ResNet presets."""

from __future__ import annotations

import re

import pytest
import torch

from eqprop.core.graph import GraphNetwork
from eqprop.core.validation import SettingError
from eqprop.train.builders import build_estimator, build_network
from eqprop.train.config import config_from_dict, load_config
from eqprop.train.convert import ConfigError

GRAPH = {
    "nodes": [
        {"name": "h", "shape": [4, 4, 4], "activation": "relu6", "bias": True},
        {"name": "o", "shape": [6, 2, 2], "activation": "relu6", "bias": True},
        {"name": "y", "shape": [10], "activation": "identity"},
    ],
    "edges": [
        {"src": "x", "dst": "h", "stride": 2},
        {"src": "h", "dst": "o", "stride": 2},
        {"src": "x", "dst": "o", "kernel": 1, "stride": 4, "padding": 0},
        {"src": "o", "dst": "y", "kind": "dense"},
    ],
}


def config(graph=GRAPH, **model):
    return config_from_dict({"model": {"kind": "graph", "graph": graph, **model}})


def test_a_yaml_graph_builds_with_its_states_and_colouring():
    cfg = config()
    net = build_network(cfg, (1, 8, 8), 10)
    assert isinstance(net, GraphNetwork) and net.n_layers == cfg.model.n_layers == 4 + 2
    assert net.state_shapes == [(4, 4, 4), (6, 2, 2), (10,)]
    assert net.colouring == [[0, 2], [1]]


def test_an_edge_between_incompatible_shapes_is_one_line_naming_both_states():
    bad = {**GRAPH, "edges": [*GRAPH["edges"][:2], {"src": "x", "dst": "o", "kernel": 1},
                              GRAPH["edges"][3]]}  # fmt: skip
    with pytest.raises(SettingError) as err:
        build_network(config(bad), (1, 8, 8), 10)
    assert str(err.value) == "edge x->o: maps x (1, 8, 8) to (6, 10, 10), not to o (6, 2, 2)"


@pytest.mark.parametrize(
    ("graph", "model", "message"),
    [
        ({**GRAPH, "edges": [{"src": "x", "dst": "z"}]}, {}, "model.graph.edges[0]: 'z'"),
        ({**GRAPH, "nodes": [{"name": "h", "shape": [4, 4]}]}, {}, "h.shape"),
        ({**GRAPH, "residual": {"widths": [4]}}, {}, "either nodes and edges or residual"),
        ({"residual": {"widths": [4]}, "output": "softmax"}, {}, "output"),
        ({"residual": {"activation": "relu7"}}, {}, "activation"),
        ({"residual": {"stem_stride": 3}}, {}, "stem_stride: 3 is not valid; expected 1 or 2"),
    ],
)
def test_bad_graphs_are_refused_naming_the_field(graph, model, message):
    with pytest.raises((ConfigError, SettingError), match=re.escape(message)):
        build_network(config(graph, **model), (1, 8, 8), 10)


def test_a_residual_graph_with_a_readout_has_no_output_node():
    net = build_network(config({"residual": {"widths": [4, 6]}, "output": "ce"}), (1, 8, 8), 10)
    assert net.node_names == ["s1", "s2", "s3", "s4"] and net.target_layer == 3
    assert net.readout is not None and net.readout.in_features == 6 * 2 * 2
    assert net.n_layers == len(net.weight_layers()) == 3 * 2 + 2 * 2 + 1


def test_graph_kind_and_graph_section_go_together():
    with pytest.raises(ConfigError, match=r"model\.graph exactly when model\.kind is graph"):
        config_from_dict({"model": {"kind": "symmetric", "dense": [4], "graph": GRAPH}})


def test_hr13_presets_follow_the_recipe():
    cfg = load_config("cifar10-hr13")
    net = build_network(cfg, (3, 32, 32), 10)
    assert sum(p.numel() for p in net.parameters()) == 9_742_858
    assert isinstance(net, GraphNetwork) and net.n_layers == cfg.model.n_layers == 13 + 9
    assert (cfg.dynamics.free_steps, cfg.dynamics.nudged_steps) == (120, 50)
    assert cfg.dynamics.schedule == "parity_jacobi"
    assert (cfg.estimator.kind, cfg.estimator.beta, cfg.estimator.warm_start) == (
        "symmetric", 0.1, True,
    )  # fmt: skip
    o = cfg.optim
    assert (o.kind, o.lr, o.momentum, o.nesterov, o.weight_decay, o.clip_grad_norm) == (
        "sgd", 0.03, 0.9, True, 2.5e-4, 1.0,
    )  # fmt: skip
    assert (o.scheduler.kind, o.scheduler.eta_min) == ("cosine", 2e-6)
    assert (cfg.data.randaugment, cfg.data.randaugment_magnitude) == (3, 9)
    hundred = load_config("cifar100-hr13")
    assert (hundred.data.randaugment, hundred.estimator.beta) == (4, 0.15)
    assert load_config("cifar10-hr13-fast").dynamics.schedule == "even_odd"


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("fashion-residual-small", (1, 28, 28)),
        ("cifar10-residual-small", (3, 32, 32)),
        ("cifar10-residual-stem", (3, 32, 32)),
    ],
)
def test_small_residual_presets_train_a_batch(name, shape):
    cfg = load_config(name)
    net = build_network(cfg, shape, 10)
    x, y = torch.rand(8, *shape), torch.randint(0, 10, (8,))
    est = build_estimator(cfg).estimate(net, x, y)
    assert est.logits.shape == (8, 10)
    # Its one nudged sweep reaches every node: no weight is left with a zero gradient (a
    # sweep over the colouring would leave the first three nodes' weights at exactly zero).
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    coloured = load_config(name, ["dynamics.schedule=coloured"])
    net = build_network(coloured, shape, 10)
    build_estimator(coloured).estimate(net, x, y)
    assert any(p.grad is None or p.grad.abs().sum() == 0 for p in net.parameters())


def test_a_stem_stride_of_2_halves_every_state_and_skips_by_4():
    net = build_network(config({"residual": {"widths": [4, 6], "stem_stride": 2}}), (1, 28, 28), 10)
    assert net.state_shapes == [(4, 14, 14), (4, 7, 7), (6, 7, 7), (6, 4, 4), (10,)]
    skip = net.interactions[2]
    assert skip.conv.kernel_size == (1, 1) and skip.conv.stride == (4, 4)
