"""The GPU hot loop: captured CUDA graphs replay exactly the eager relaxation; precision names
mean what they say. On a CPU-only machine the fallbacks are checked and the CUDA cases skip."""

from __future__ import annotations

import pytest
import torch
from nets import make_batch, make_net, max_diff

from eqprop import HolomorphicEP, Solver, SymmetricEP
from eqprop.dynamics import precision_context, set_precision

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_graph_option_falls_back_to_the_ordinary_loop_on_cpu_and_with_a_tolerance():
    net = make_net("conv_max", output="ce")
    x, y = make_batch(net, batch=4)
    drive = net.input_drive(x)
    for tol in (None, 1e-6):
        plain = Solver(schedule="even_odd", tol=tol).relax(net, drive, None, 12, y, 0.3)
        graphed = Solver(schedule="even_odd", tol=tol, cuda_graph=True)
        res = graphed.relax(net, drive, None, 12, y, 0.3)
        assert max_diff(res.state, plain.state) == 0.0 and res.steps == plain.steps


def test_precision_flags_on_cpu_are_left_alone_inside_a_relaxation():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with precision_context("tf32", torch.device("cpu")):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == saved


def test_set_precision_makes_float32_true_float32_and_tf32_tf32_everywhere():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        set_precision("float32", torch.device("cpu"))
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        set_precision("tf32", torch.device("cpu"))
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(ValueError, match="precision: 'fp8' is not one of"):
            set_precision("fp8", torch.device("cpu"))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("schedule", ["synchronous", "even_odd", "forward_backward"])
@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_captured_relaxation_equals_eager_on_cuda(schedule, precision):
    net = make_net("mixed", output="ce", dtype=torch.float32).cuda()
    x, y = make_batch(net, batch=6)
    x, y = x.cuda(), y.cuda()
    drive = net.input_drive(x)
    eager = Solver(schedule=schedule, precision=precision)
    graphed = Solver(schedule=schedule, precision=precision, cuda_graph=True)
    beta = torch.tensor([0.3, -0.3] * 3, device="cuda")[:, None]
    for start, yy, b in ((None, None, 0.0), (eager.relax(net, drive, None, 8).state, y, beta)):
        want = eager.relax(net, drive, start, 8, yy, b).state
        for _ in range(2):  # capture, then replay
            got = graphed.relax(net, drive, start, 8, yy, b).state
            assert max_diff(got, want) <= (1e-6 if precision == "float32" else 1e-2)
    # an optimiser step changes the weights in place: the replay must see them
    est = SymmetricEP(0.3, 8, 4, solver=graphed)
    est.estimate(net, x, y)
    with torch.no_grad():
        for p in net.parameters():
            p.sub_(0.1 * p.grad)
    want = eager.relax(net, drive, None, 8).state
    assert max_diff(graphed.relax(net, drive, None, 8).state, want) <= 1e-2


@cuda
@pytest.mark.cuda
def test_float32_precision_turns_tf32_off_inside_the_relaxation_on_cuda():
    with precision_context("float32", torch.device("cuda")):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    with precision_context("tf32", torch.device("cuda")):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


@cuda
@pytest.mark.cuda
def test_captured_complex_relaxations_equal_eager_ones_on_cuda():
    """Holomorphic EP's planar points under CUDA graphs: the capture's warm-up sees zero β and
    targets in its buffers, so the graph must read the values copied in before each replay."""
    net = make_net("dense", output="mse", activation="mysig", dtype=torch.float32).cuda()
    x, y = make_batch(net, batch=6)
    x, y = x.cuda(), y.cuda()
    grads = []
    for solver in (Solver(), Solver(cuda_graph=True)):
        est = HolomorphicEP(points=4, beta=0.5, free_steps=10, nudged_steps=6, solver=solver)
        for _ in range(2):  # capture, then replay
            net.zero_grad()
            est.estimate(net, x, y)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-5 * float(grads[0].abs().max())
