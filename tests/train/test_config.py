"""Tests of eqprop.train.config: schema, strict loading, overrides, presets and error messages."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from eqprop.core.activations import ACTIVATIONS
from eqprop.train.config import (
    ConfigError,
    ConvLayerConfig,
    DataConfig,
    DynamicsConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    SchedulerConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    preset_path,
    save_config,
)

PRESETS = [name for name, _ in list_presets()]
PAPER_PRESETS = [
    "cifar10-mse-one-sided",
    "cifar10-mse-random-sign",
    "cifar10-mse-symmetric",
    "cifar10-ce-symmetric",
]
MLP = {"model": {"dense": [8]}}  # the smallest valid config


def _with(**sections: Any) -> dict[str, Any]:
    return {**MLP, **sections}


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Presets


def test_expected_presets_are_bundled() -> None:
    expected = {
        *PAPER_PRESETS,
        "mnist-mlp",
        "mnist-conv",
        "digits-quickstart",
        "mnist-mlp-fast",
        "fashion-conv-small",
        "cifar10-conv-small",
    }
    assert expected <= set(PRESETS)
    assert sorted(PRESETS) == PRESETS
    assert all(description for _, description in list_presets())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_round_trips(name: str, tmp_path: Path) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    assert load_config(preset_path(name)) == cfg
    plain = config_to_dict(cfg)
    assert config_from_dict(plain) == cfg
    # Plain data only: safe_dump refuses tuples and dataclasses.
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(plain))) == cfg
    save_config(cfg, tmp_path / "sub" / "saved.yaml")
    assert load_config(tmp_path / "sub" / "saved.yaml") == cfg


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_follow_spec_section_6(name: str) -> None:
    cfg = load_config(name)
    conv = [(c.channels, c.kernel, c.stride, c.padding, c.pool) for c in cfg.model.conv]
    assert conv == [
        (128, 3, 1, 1, "m"),
        (256, 3, 1, 1, "m"),
        (512, 3, 1, 1, "m"),
        (512, 3, 1, 0, "m"),
    ]
    assert cfg.model.dense == () and cfg.model.activation == "my_hard_sig"
    assert cfg.optim.kind == "sgd" and cfg.optim.momentum == 0.9
    assert cfg.optim.layer_lrs(cfg.model.n_layers) == (0.25, 0.15, 0.10, 0.08, 0.05)
    assert cfg.optim.layer_weight_decays(cfg.model.n_layers) == (3e-4,) * 5
    assert cfg.optim.scheduler == SchedulerConfig(kind="cosine", t_max=100, eta_min=1e-5)
    assert (cfg.train.batch_size, cfg.train.epochs) == (128, 120)
    assert cfg.data == DataConfig(dataset="cifar10", val_size=5000, augment=True, normalize="paper")
    assert cfg.dynamics.free_steps == 250 and not cfg.dynamics.batch_phases
    assert cfg.dynamics.resolved_eval_steps == 250
    ce = cfg.model.output == "ce"
    assert (cfg.dynamics.nudged_steps, cfg.estimator.beta) == ((25, 1.0) if ce else (30, 0.5))
    assert cfg.estimator.kind == name.removeprefix("cifar10-mse-").removeprefix(
        "cifar10-ce-"
    ).replace("-", "_")


def test_mnist_conv_preset_shrinks_28_to_4() -> None:
    side = 28
    for layer in load_config("mnist-conv").model.conv:
        side = layer.output_side(side)
    assert side == 4


# --------------------------------------------------------------------------------------------
# Loading, defaults and normalisation


def test_missing_sections_take_defaults() -> None:
    cfg = config_from_dict(MLP)
    assert cfg == ExperimentConfig(model=ModelConfig(dense=(8,)))
    assert cfg.optim == OptimConfig() and cfg.train == TrainConfig()
    assert cfg.train.resolved_eval_batch_size == 256
    assert cfg.optim.scheduler.resolved_t_max(cfg.train.epochs) == cfg.train.epochs
    assert cfg.data.resolved_val_size(1000) == 150
    assert DataConfig(dataset="npz", root="x.npz").resolved_val_size(1000) == 100


def test_load_yaml_file_normalises_types(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
name: mine
model:
  conv:
    - {channels: 4, kernel: 3, padding: 1}
  dense: [16]
  init_scale: [1, 0.5, 2]
optim:
  kind: adamw
  lr: 1e-3          # YAML 1.1 would read this as a string
  weight_decay: [0, 1, 2]
  betas: [0.5, 0.9]
""",
    )
    cfg = load_config(path)
    assert cfg.model.conv == (ConvLayerConfig(channels=4, padding=1),)
    assert cfg.model.dense == (16,) and cfg.model.n_layers == 3
    assert cfg.model.init_scale == (1.0, 0.5, 2.0)
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == (0.0, 1.0, 2.0)
    assert all(isinstance(v, float) for v in cfg.optim.weight_decay)
    assert cfg.optim.betas == (0.5, 0.9)
    assert cfg.optim.layer_lrs(3) == (1e-3,) * 3


def test_direct_construction_is_validated_and_normalised() -> None:
    model = ModelConfig(dense=[8, 4], init_scale=2)  # type: ignore[arg-type]
    assert model.dense == (8, 4) and model.init_scale == 2.0
    with pytest.raises(ConfigError, match=r"^lr: -1 is not valid; expected a number > 0$"):
        OptimConfig(lr=-1)
    cfg = config_from_dict(MLP)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"^free_steps: 0 "):
        dataclasses.replace(DynamicsConfig(), free_steps=0)


def test_config_error_is_a_value_error_and_pickles() -> None:
    err = ConfigError("bad", "optim.lr")
    assert isinstance(err, ValueError) and str(err) == "optim.lr: bad"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


# --------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize(
    ("override", "get", "expected"),
    [
        ("optim.lr=0.1", lambda c: c.optim.lr, 0.1),
        ("optim.lr=1e-4", lambda c: c.optim.lr, 1e-4),
        ("optim.lr=[0.1, 0.2]", lambda c: c.optim.lr, (0.1, 0.2)),
        ("model.dense=[512,512]", lambda c: c.model.dense, (512, 512)),
        ("data.root=null", lambda c: c.data.root, None),
        ("data.root=/tmp/data", lambda c: c.data.root, "/tmp/data"),
        ("estimator.kind=one_sided", lambda c: c.estimator.kind, "one_sided"),
        ("train.epochs=3", lambda c: c.train.epochs, 3),
        ("log.plots=false", lambda c: c.log.plots, False),
        ("optim.scheduler.kind=cosine", lambda c: c.optim.scheduler.kind, "cosine"),
        ("name=42", lambda c: c.name, "42"),  # a str field keeps the text
        ("description=", lambda c: c.description, ""),
        ("model.activation=tanh", lambda c: c.model.activation, "tanh"),
    ],
)
def test_override_values(
    override: str, get: Callable[[ExperimentConfig], Any], expected: Any
) -> None:
    assert get(load_config("digits-quickstart", [override])) == expected


def test_overrides_into_conv_layers_apply_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  conv:\n    - {channels: 4}\n    - {channels: 8, pool: i}\n")
    raw_before = path.read_text()
    cfg = load_config(
        path,
        ["model.conv[1].channels=16", "model.conv.0.pool=a", "train.epochs=2", "train.epochs=5"],
    )
    assert [c.channels for c in cfg.model.conv] == [4, 16]
    assert cfg.model.conv[0].pool == "a" and cfg.train.epochs == 5
    assert path.read_text() == raw_before
    cfg = load_config(path, ["model.conv=[{channels: 2, kernel: 1, pool: i}]"])
    assert cfg.model.conv == (ConvLayerConfig(channels=2, kernel=1, pool="i"),)


def test_overrides_reach_into_optional_sections() -> None:
    cfg = load_config(
        "fashion-residual-small",
        ["model.graph.residual.widths=[4, 6]", "model.graph.output=node_ce"],
    )
    assert cfg.model.graph is not None and cfg.model.graph.output == "node_ce"
    assert cfg.model.graph.residual is not None and cfg.model.graph.residual.widths == (4, 6)
    assert cfg.model.graph.residual.gains == (0.6, 0.7, 0.8)  # the rest of the preset stays
    with pytest.raises(ConfigError, match=r"model\.graph\.residual\.width"):
        load_config("fashion-residual-small", ["model.graph.residual.width=[4]"])


# --------------------------------------------------------------------------------------------
# Bad inputs: one-line ConfigError naming the field path and the bad value


def _from(d: Any) -> Callable[[Path], object]:
    return lambda tmp_path: config_from_dict(d)


def _override(*overrides: str) -> Callable[[Path], object]:
    return lambda tmp_path: load_config("digits-quickstart", overrides)


def _file(text: str) -> Callable[[Path], object]:
    return lambda tmp_path: load_config(_write(tmp_path, text, "bad.yaml"))


BAD = {
    "unknown top-level key": (_from({**MLP, "naem": "x"}), ["naem", "did you mean 'name'"]),
    "unknown nested key": (
        _from(_with(data={"datset": "mnist"})),
        ["data.datset: unknown key (did you mean 'dataset'?); valid keys: dataset, root"],
    ),
    "unknown conv key": (
        _from({"model": {"conv": [{"chanels": 8}]}}),
        ["model.conv[0].chanels", "did you mean 'channels'"],
    ),
    "missing conv channels": (_from({"model": {"conv": [{}]}}), ["model.conv[0].channels"]),
    "conv entry not a mapping": (_from({"model": {"conv": [8]}}), ["model.conv[0]", "8"]),
    "section not a mapping": (_from(_with(optim=5)), ["optim: 5", "mapping"]),
    "top level not a mapping": (_from([1, 2]), ["[1, 2]", "mapping"]),
    "wrong type": (_from(_with(train={"epochs": "ten"})), ["train.epochs", "'ten'", "integer"]),
    "bool for int": (_from(_with(train={"batch_size": True})), ["train.batch_size", "True"]),
    "float for int": (_from(_with(train={"epochs": 2.5})), ["train.epochs", "2.5"]),
    "string for float": (_from(_with(optim={"lr": "fast"})), ["optim.lr", "'fast'"]),
    "bool for float": (_from(_with(estimator={"beta": False})), ["estimator.beta", "False"]),
    "nan": (_from(_with(optim={"lr": float("nan")})), ["optim.lr", "nan", "finite"]),
    "negative beta": (
        _from(_with(estimator={"beta": -0.5})),
        ["estimator.beta: -0.5 is not valid; expected a number > 0"],
    ),
    "zero epochs": (_from(_with(train={"epochs": 0})), ["train.epochs", "0", ">= 1"]),
    "misspelt estimator": (
        _from(_with(estimator={"kind": "symetric"})),
        [
            "estimator.kind: 'symetric' is not one of bptt, one_sided, random_sign, symmetric",
            "(did you mean 'symmetric'?)",
        ],
    ),
    "lr tuple of wrong length": (
        _from(_with(optim={"lr": [0.1, 0.2, 0.3]})),
        ["optim.lr", "[0.1, 0.2, 0.3]", "2 numbers"],
    ),
    "negative lr entry": (_from(_with(optim={"lr": [0.1, -0.2]})), ["optim.lr[1]", "-0.2"]),
    "weight decay tuple of wrong length": (
        _from(_with(optim={"weight_decay": [0.1]})),
        ["optim.weight_decay", "[0.1]"],
    ),
    "init_scale of wrong length": (
        _from({"model": {"dense": [8], "init_scale": [1.0]}}),
        ["model.init_scale", "[1.0]"],
    ),
    "unknown activation": (
        _from({"model": {"dense": [8], "activation": "relu"}}),
        ["model.activation", "'relu'", ", ".join(ACTIVATIONS)],
    ),
    "bad pool letter": (
        _from({"model": {"conv": [{"channels": 4, "pool": "x"}]}}),
        ["model.conv[0].pool", "'x'", "m, a, i"],
    ),
    "zero dense width": (_from({"model": {"dense": [8, 0]}}), ["model.dense[1]", "0"]),
    "no hidden layer": (_from({"model": {"output": "ce"}}), ["model", "conv and dense"]),
    "conv stack too deep for the input": (
        _from({"model": {"conv": [{"channels": 4, "kernel": 5}, {"channels": 4}]}}),
        ["model.conv[1]", "'channels': 4", "digits"],
    ),
    "npz without root": (_from(_with(data={"dataset": "npz"})), ["data.root", "None", ".npz"]),
    "bad device": (_from(_with(train={"device": "gpu"})), ["train.device", "'gpu'", "cuda:N"]),
    "betas of wrong length": (_from(_with(optim={"betas": [0.9]})), ["optim.betas", "[0.9]"]),
    "momentum of 1": (_from(_with(optim={"momentum": 1})), ["optim.momentum", "1", "[0, 1)"]),
    "nesterov without momentum": (_from(_with(optim={"nesterov": True})), ["optim.nesterov"]),
    "name with a slash": (_from({**MLP, "name": "a/b"}), ["name", "'a/b'"]),
    "override without =": (_override("optim.lr"), ["override", "'optim.lr'", "KEY=VALUE"]),
    "override with empty key": (_override("=3"), ["override", "'=3'"]),
    "override of unknown key": (
        _override("optim.lrr=0.1"),
        ["optim.lrr: unknown key (did you mean 'lr'?)"],
    ),
    "override of unknown section": (_override("optm.lr=0.1"), ["optm", "did you mean 'optim'"]),
    "override below a value": (_override("optim.lr.x=1"), ["optim.lr.x", "not a section"]),
    "update rule of a symmetric net": (
        _override("model.update_rule=same"),
        ["model.update_rule: 'same' applies to model.kind asymmetric only"],
    ),
    "override of missing conv index": (_override("model.conv[2].channels=3"), ["model.conv[2]"]),
    "override with invalid YAML": (_override("model.dense=[1,"), ["model.dense", "'[1,'"]),
    "override with wrong type": (_override("train.epochs=abc"), ["train.epochs", "'abc'"]),
    "override with bad value": (_override("estimator.beta=-1"), ["estimator.beta", "-1"]),
    "unknown preset": (
        lambda tmp_path: load_config("digits-quickstrat"),
        [
            "preset",
            "'digits-quickstrat'",
            "did you mean 'digits-quickstart'",
            "cifar10-ce-symmetric",
        ],
    ),
    "missing file": (lambda tmp_path: load_config(tmp_path / "nope.yaml"), ["nope.yaml"]),
    "YAML syntax error": (_file("model:\n  dense: [8\n"), ["bad.yaml", "invalid YAML", "line"]),
    "YAML top level not a mapping": (_file("- 1\n- 2\n"), ["bad.yaml", "list", "mapping"]),
    "YAML duplicate key": (_file("seed: 1\nseed: 2\n"), ["bad.yaml", "duplicate key 'seed'"]),
}


@pytest.mark.parametrize(("make", "fragments"), BAD.values(), ids=BAD.keys())
def test_bad_input_raises_one_line_config_error(
    make: Callable[[Path], object], fragments: list[str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # The path comes first: "<path>: <problem>" (no path only for a non-mapping top level).
    assert message.startswith(info.value.path + ": ") or not info.value.path


def test_unknown_preset_from_preset_path_lists_presets() -> None:
    with pytest.raises(ConfigError, match=r"available: .*digits-quickstart"):
        preset_path("nope")


def test_extends_merges_sections_and_replaces_lists(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(
        "name: child\nextends: cifar10-ce-symmetric\n"
        "dynamics: {schedule: even_odd, free_steps: 10}\noptim: {lr: [1, 2, 3, 4, 5]}\n"
    )
    cfg = load_config(child)
    base = load_config("cifar10-ce-symmetric")
    assert cfg.name == "child"
    assert (cfg.dynamics.schedule, cfg.dynamics.free_steps) == ("even_odd", 10)
    assert cfg.dynamics.nudged_steps == base.dynamics.nudged_steps  # merged, not replaced
    assert cfg.optim.lr == (1.0, 2.0, 3.0, 4.0, 5.0) and cfg.optim.momentum == 0.9
    grandchild = tmp_path / "grandchild.yaml"
    grandchild.write_text("name: g\nextends: child.yaml\ntrain: {epochs: 2}\n")
    assert load_config(grandchild, ["train.batch_size=7"]).dynamics.free_steps == 10


def test_extends_cycle_and_bad_parent_are_config_errors(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    a.write_text("extends: 3\n")
    with pytest.raises(ConfigError, match=r"extends: 3 is not valid"):
        load_config(a)


@pytest.mark.parametrize("name", [n for n in PRESETS if n.endswith("-fast")])
def test_fast_presets_change_only_the_relaxation(name: str) -> None:
    fast, exact = (
        config_to_dict(load_config(name)),
        config_to_dict(load_config(name[: -len("-fast")])),
    )
    for section in ("data", "model", "estimator", "optim", "train", "seed"):
        assert fast[section] == exact[section], section
    assert fast["dynamics"]["schedule"] == "even_odd"
    steps = lambda d: d["free_steps"] + 2 * d["nudged_steps"]  # noqa: E731
    assert steps(fast["dynamics"]) <= steps(exact["dynamics"]) / 2


def test_sweep_preset_is_the_fast_net_with_the_budget_studys_node_sweeps() -> None:
    sweep = config_to_dict(load_config("cifar10-conv-small-sweep"))
    fast = config_to_dict(load_config("cifar10-conv-small-fast"))
    for section in ("data", "model", "estimator", "optim", "train", "seed"):
        assert sweep[section] == fast[section], section
    d = sweep["dynamics"]
    assert d["schedule"] == "forward_backward"
    # An odd count ends the free phase on an upward sweep; more than one gives it feedback.
    assert d["free_steps"] % 2 == 1 and d["free_steps"] > 1
    assert d["nudged_steps"] == 1 and d["eval_steps"] == d["free_steps"]


def test_a_preset_name_wins_over_a_directory_of_the_same_name(tmp_path: Path, monkeypatch) -> None:
    """A run directory named like a preset (e.g. ``--out fashion-conv-small-fast``) must not
    hide that preset, for its own name or for a preset that ``extends`` it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion-conv-small").mkdir()
    (tmp_path / "fashion-conv-small-fast").mkdir()
    assert load_config("fashion-conv-small").name == "fashion-conv-small"
    assert load_config("fashion-conv-small-fast").name == "fashion-conv-small-fast"
