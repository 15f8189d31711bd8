"""Bad input fails fast with a message naming the field, the value and what is accepted."""

from __future__ import annotations

import pytest
import torch
from nets import make_batch, make_net

from eqprop import ConvLayer, EnergyNetwork, Solver, SymmetricEP, make_estimator, relax


def paper_cifar_net(**kw) -> EnergyNetwork:
    conv = [ConvLayer(128, 3, 1, 1), ConvLayer(256, 3, 1, 1), ConvLayer(512, 3, 1, 1),
            ConvLayer(512, 3, 1, 0)]  # fmt: skip
    return EnergyNetwork((3, 32, 32), conv=conv, **kw)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 1, 8, 8), r"expected 2 channels, got 1"),
        ((2, 2, 9, 8), r"expected shape \(B, 2, 8, 8\), got \(2, 2, 9, 8\)"),
        ((2, 128), r"expected shape \(B, 2, 8, 8\)"),
        ((8,), r"expected a batch of shape \(B, 2, 8, 8\)"),
    ],
)
def test_wrong_input_shape_names_the_expected_shape(shape, message):
    net = make_net("conv_max")
    with pytest.raises(ValueError, match=message):
        relax(net, torch.zeros(shape, dtype=torch.float64), steps=2)


def test_dense_net_flattens_images_of_the_right_size():
    net = EnergyNetwork((16,), dense=[4], num_classes=3)
    assert relax(net, torch.rand(2, 1, 4, 4), steps=2).state[0].shape == (2, 4)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0, 1, 4]), r"labels: value 4 is out of range; expected 0\.\.3"),
        (torch.tensor([0, -1, 2]), r"labels: value -1 is out of range"),
        (torch.tensor([0, 1]), r"labels: expected shape \(3,\), got \(2,\)"),
        (torch.tensor([0.0, 1.0, 2.0]), r"expected integer class indices"),
    ],
)
def test_bad_labels(labels, message):
    net = make_net("dense")
    x, _ = make_batch(net, batch=3)
    with pytest.raises(ValueError, match=message):
        SymmetricEP(0.1, 2, 2).estimate(net, x, labels)


def test_unknown_activation_lists_the_choices():
    with pytest.raises(
        ValueError,
        match=r"activation: 'relu' is not one of hard_sigmoid, my_hard_sig",
    ):
        EnergyNetwork((4,), dense=[3], activation="relu")


def test_unknown_pooling_lists_the_choices():
    with pytest.raises(ValueError, match=r"pool: 'x' is not one of m, a, i"):
        ConvLayer(4, pool="x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.0}, r"beta: 0\.0 is not valid; expected a number > 0"),
        ({"beta": -0.5}, r"beta: -0\.5 is not valid"),
        ({"free_steps": 0}, r"free_steps: 0 is not valid; expected an integer >= 1"),
        ({"nudged_steps": -3}, r"nudged_steps: -3 is not valid"),
        ({"free_steps": 2.5}, r"free_steps: 2\.5 is not valid"),
    ],
)
def test_non_positive_beta_or_steps(kwargs, message):
    args = {"beta": 0.5, "free_steps": 5, "nudged_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_estimator("symmetric", **args)


def test_unknown_estimator_and_schedule_and_bad_steps():
    with pytest.raises(
        ValueError,
        match=r"estimator: 'symetric' is not one of .*did you mean 'symmetric'",
    ):
        make_estimator("symetric", beta=0.1, free_steps=1, nudged_steps=1)
    with pytest.raises(ValueError, match=r"schedule: 'async' is not one of"):
        Solver(schedule="async")
    with pytest.raises(ValueError, match=r"tol: -1\.0 is not valid"):
        Solver(tol=-1.0)
    with pytest.raises(ValueError, match=r"steps: 0 is not valid"):
        relax(make_net("dense"), torch.rand(2, 7, dtype=torch.float64), steps=0)


def test_conv_stack_that_shrinks_to_nothing_says_at_which_layer():
    conv = [ConvLayer(4, 3, 1, 1), ConvLayer(4, 3, 1, 1), ConvLayer(4, 3, 1, 0)]
    with pytest.raises(ValueError, match=r"conv layer 2: input 2x2 with kernel 3.*empty 0x0"):
        EnergyNetwork((1, 8, 8), conv=conv)
    with pytest.raises(
        ValueError, match=r"conv layer 1: the 1x1 conv output is too small for 2x2 pooling"
    ):
        EnergyNetwork((1, 4, 4), conv=[ConvLayer(2, 3, 1, 1), ConvLayer(2, 2, 1, 0)])


def test_other_inconsistent_specs():
    with pytest.raises(ValueError, match=r"conv layers need an image input"):
        EnergyNetwork((64,), conv=[ConvLayer(4)])
    with pytest.raises(ValueError, match=r"at least one hidden layer"):
        EnergyNetwork((4,))
    with pytest.raises(
        ValueError, match=r"init_scale: \[1\.0, 2\.0\] is not valid; expected a number or 5"
    ):
        paper_cifar_net(init_scale=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"output: 'l2' is not one of mse, ce"):
        EnergyNetwork((4,), dense=[3], output="l2")
    with pytest.raises(ValueError, match=r"dense\[0\]: 0 is not valid"):
        EnergyNetwork((4,), dense=[0])


def test_paper_nets_are_expressible():
    for output in ("mse", "ce"):
        net = paper_cifar_net(output=output)
        assert sum(p.numel() for p in net.parameters()) == 3_843_850
        assert net.state_shapes[:4] == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 1, 1)]
    mnist = EnergyNetwork((1, 28, 28), conv=[ConvLayer(32, 5), ConvLayer(64, 5)])
    assert mnist.state_shapes == [(32, 12, 12), (64, 4, 4), (10,)]
    mlp = EnergyNetwork((784,), dense=[512, 512])
    assert mlp.state_shapes == [(512,), (512,), (10,)]
