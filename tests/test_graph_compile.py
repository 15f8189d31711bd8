"""The fast paths on energy graphs: a compiled sweep and a captured CUDA graph replay the eager
relaxation of a residual graph, for every graph schedule (the CUDA cases skip without a GPU)."""

from __future__ import annotations

import pytest
import torch
from nets import max_diff

from eqprop import Solver, SymmetricEP
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_builders import residual_graph

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SCHEDULES = ["synchronous", "coloured", "parity_jacobi", "forward_backward"]


def small_residual(device: str = "cpu") -> tuple[GraphNetwork, torch.Tensor, torch.Tensor]:
    """A two-block residual graph (relu6 nodes with biases, 1x1 skips, an output node)."""
    torch.manual_seed(0)
    net = GraphNetwork((2, 8, 8), residual_graph((2, 8, 8), 4, widths=(3, 4)), 4).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 2, 8, 8, generator=g).to(device)
    y = torch.randint(0, 4, (6,), generator=g).to(device)
    return net, x, y


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_compiled_sweeps_equal_eager_sweeps_on_a_residual_graph(schedule):
    net, x, y = small_residual()
    drive = net.input_drive(x)
    eager = Solver(schedule=schedule)
    fast = Solver(schedule=schedule, compile=True)
    free = eager.relax(net, drive, None, 6).state
    assert max_diff(fast.relax(net, drive, None, 6).state, free) <= 1e-5
    beta = torch.tensor([0.2, -0.2] * 3)[:, None]  # a per-example β, as batched phases use
    want = eager.relax(net, drive, free, 4, y, beta).state
    assert max_diff(fast.relax(net, drive, free, 4, y, beta).state, want) <= 1e-5


def test_cuda_graph_option_falls_back_to_the_ordinary_loop_on_a_cpu_graph():
    net, x, y = small_residual()
    drive = net.input_drive(x)
    plain = Solver(schedule="coloured").relax(net, drive, None, 5, y, 0.2)
    res = Solver(schedule="coloured", cuda_graph=True).relax(net, drive, None, 5, y, 0.2)
    assert max_diff(res.state, plain.state) == 0.0 and res.steps == plain.steps


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_captured_graph_relaxation_equals_eager_on_cuda(schedule):
    net, x, y = small_residual("cuda")
    drive = net.input_drive(x)
    eager = Solver(schedule=schedule, precision="float32")
    graphed = Solver(schedule=schedule, precision="float32", cuda_graph=True)
    beta = torch.tensor([0.2, -0.2] * 3, device="cuda")[:, None]
    free = eager.relax(net, drive, None, 6).state
    for start, yy, b in ((None, None, 0.0), (free, y, beta)):
        want = eager.relax(net, drive, start, 6, yy, b).state
        for _ in range(2):  # capture, then replay
            got = graphed.relax(net, drive, start, 6, yy, b).state
            assert max_diff(got, want) <= 1e-6
    est = SymmetricEP(0.2, 6, 3, solver=graphed)  # an update in place: the replay sees it
    est.estimate(net, x, y)
    with torch.no_grad():
        for p in net.parameters():
            p.sub_(0.1 * p.grad)
    want = eager.relax(net, drive, None, 6).state
    assert max_diff(graphed.relax(net, drive, None, 6).state, want) <= 1e-5
