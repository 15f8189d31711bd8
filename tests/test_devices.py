"""Parameters are ordinary modules: state_dict, dtypes, devices and init scaling work as usual."""

from __future__ import annotations

import pytest
import torch
from nets import make_batch, make_net

from eqprop import ConvLayer, EnergyNetwork, Solver, SymmetricEP
from eqprop.core.chain import repeat_batch
from eqprop.core.kernels import fast_layout
from eqprop.dynamics import synchronous_step
from eqprop.reference import reference_step

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def channels_last_strides(t: torch.Tensor) -> bool:
    return t.stride() == torch.empty_like(t, memory_format=torch.channels_last).stride()


@pytest.mark.parametrize("channels", [1, 3])
def test_image_inputs_weights_and_states_are_channels_last_even_with_one_channel(channels):
    """One-channel NCHW tensors also count as channels-last for PyTorch; convolutions of them
    then return NCHW maps (slow pooling on CPU). Everything must carry true channels-last
    strides instead."""
    net = EnergyNetwork((channels, 8, 8), conv=[ConvLayer(4, 3, 1, 1, "m"), ConvLayer(1, 3, 1, 1)])
    x = torch.rand(2, channels, 8, 8)
    convs = net.interactions[:2]  # then the dense output layer
    assert all(channels_last_strides(layer.conv.weight) for layer in convs)
    assert channels_last_strides(net.input_drive(x))
    assert all(channels_last_strides(s) for s in net.zero_state(2)[:2])


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_phases_keep_channels_last(channels):
    """The ±β phases relaxed as one batch start from the free state repeated along the batch;
    Tensor.repeat would hand them NCHW strides, and every conv and pool of the phases would
    convert its operands back."""
    t = fast_layout(torch.rand(2, channels, 4, 4))
    doubled = repeat_batch(t, 2)
    assert channels_last_strides(doubled)
    torch.testing.assert_close(doubled, t.repeat(2, 1, 1, 1), rtol=0, atol=0)
    net = EnergyNetwork((channels, 8, 8), conv=[ConvLayer(4, 3, 1, 1, "m")], output="ce")
    x, y = torch.rand(3, channels, 8, 8), torch.tensor([0, 1, 2])
    est = SymmetricEP(0.5, free_steps=2, nudged_steps=2, solver=Solver("even_odd"))
    drive = net.input_drive(x)
    free = est.solver.relax(net, drive, None, 2).state
    phases, _ = est.relax_nudged(net, drive, free, y, [0.5, -0.5])
    assert all(channels_last_strides(s) for phase in phases for s in phase if s.dim() == 4)


def test_state_dict_round_trip_and_init_scale():
    torch.manual_seed(0)
    plain = EnergyNetwork((6,), dense=[5], num_classes=3)
    torch.manual_seed(0)
    scaled = EnergyNetwork((6,), dense=[5], num_classes=3, init_scale=[0.5, 2.0])
    w0, w1 = plain.interactions[0].linear.weight, scaled.interactions[0].linear.weight
    torch.testing.assert_close(w1, 0.5 * w0)
    torch.testing.assert_close(
        scaled.interactions[1].linear.bias, 2.0 * plain.interactions[1].linear.bias
    )
    copy = EnergyNetwork((6,), dense=[5], num_classes=3)
    copy.load_state_dict(scaled.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(copy.parameters(), scaled.parameters(), strict=True)
    )


def test_float32_input_runs_in_a_float64_net():
    net = make_net("conv_max", dtype=torch.float64)
    x, y = make_batch(net)
    net.zero_grad()
    SymmetricEP(0.2, 4, 2).estimate(net, x.float(), y)
    assert all(p.grad.dtype == torch.float64 for p in net.parameters())


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("output", ["mse", "ce"])
def test_cuda_matches_cpu(dtype, output):
    net = make_net("mixed", output=output, dtype=dtype)
    x, y = make_batch(net, batch=5)
    gpu = make_net("mixed", output=output, dtype=dtype).cuda()
    gpu.load_state_dict(net.state_dict())
    est = SymmetricEP(0.3, 10, 4)
    net.zero_grad()
    gpu.zero_grad()
    est.estimate(net, x, y)
    est.estimate(gpu, x.cuda(), y.cuda())
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for p, q in zip(net.parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=tol, atol=tol)
    state = [s.cuda() for s in net.zero_state(5)]
    with torch.no_grad():
        fast = synchronous_step(gpu, gpu.input_drive(x.cuda()), state)
    ref = reference_step(gpu, x.cuda().to(dtype), state)
    assert max(float((a - b).abs().max()) for a, b in zip(fast, ref, strict=True)) <= tol
