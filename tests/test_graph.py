"""Energy graphs: chain networks as graphs, closed forms against autograd of Φ, colourings."""

from __future__ import annotations

import pytest
import torch
from nets import ARCHITECTURES, make_net

from eqprop import Solver, SymmetricEP
from eqprop.core.colouring import greedy_colouring, parity_blocks, validate_blocks
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_builders import chain_graph, residual_graph
from eqprop.core.graph_spec import EdgeSpec, GraphSpec, NodeSpec
from eqprop.core.validation import SettingError
from eqprop.dynamics.graph_schedules import graph_drives
from eqprop.reference.graphs import reference_graph_drives, reference_graph_weight_grads


def graph_of(net) -> GraphNetwork:
    """The chain network ``net`` built as a graph, with its parameters."""
    spec = chain_graph(net.input_shape, net.num_classes, net.settings)
    g = GraphNetwork(net.input_shape, spec, net.num_classes).to(next(net.parameters()).dtype)
    g.load_state_dict(net.state_dict())
    return g


def small_residual(side: int = 16, widths=(4, 6, 8, 8), output: str = "mse", **kw) -> GraphNetwork:
    """The HR13 graph at reduced widths (spec §4), float64."""
    torch.manual_seed(0)
    spec = residual_graph((3, side, side), 5, widths, output=output, **kw)
    return GraphNetwork((3, side, side), spec, 5).double()


def random_states(net: GraphNetwork, batch: int, spread: float = 2.0) -> list[torch.Tensor]:
    """States inside and outside the boxes."""
    return [torch.randn(batch, *s, dtype=torch.float64) * spread for s in net.state_shapes]


@pytest.mark.parametrize("schedule", ["synchronous", "even_odd", "forward_backward"])
@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_chain_built_as_a_graph_has_the_chains_numerics(arch, output, schedule):
    """Same free state (bit for bit) and symmetric EP gradients within 1e-12 (float64); they are
    bit-identical except where the chain's batched phases run in another memory layout."""
    net = make_net(arch, output=output)
    g = graph_of(net)
    torch.manual_seed(1)
    x = torch.rand(4, *net.input_shape, dtype=torch.float64)
    y = torch.randint(0, net.num_classes, (4,))
    solver = Solver(schedule=schedule)
    free_chain = solver.relax(net, net.input_drive(x), None, 7).state
    free_graph = solver.relax(g, g.input_drive(x), None, 7).state
    assert all(torch.equal(a, b) for a, b in zip(free_chain, free_graph, strict=True))
    est = SymmetricEP(beta=0.3, free_steps=12, nudged_steps=5, solver=solver)
    for m in (net, g):
        m.zero_grad()
        est.estimate(m, x, y)
    for (name, p), q in zip(net.named_parameters(), g.parameters(), strict=True):
        assert float((p.grad - q.grad).abs().max()) <= 1e-12, name


@pytest.mark.parametrize("side", [16, 14])
@pytest.mark.parametrize("output", ["mse", "node_ce"])
def test_residual_drives_and_weight_gradients_equal_autograd_of_phi(side, output):
    """h_n of every node and ∂Φ/∂θ of every edge and node bias, float64, ≤ 1e-10; a 14×14
    input gives transposed convs with output padding 0 and 1."""
    net = small_residual(side, output=output)
    x = torch.rand(3, 3, side, side, dtype=torch.float64)
    state = random_states(net, 3)
    with torch.no_grad():
        got = graph_drives(net, net.input_drive(x), state, range(len(state)))
    want = reference_graph_drives(net, x, state)
    assert max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True)) <= 1e-10
    _, ctx = net.input_drive_with_context(x)
    contrast = dict((id(p), g) for p, g in net.weight_contrast(x, state, [(1.0, state)], ctx))
    for name, w in reference_graph_weight_grads(net, x, state).items():
        p = dict(net.named_parameters())[name]
        assert float((contrast[id(p)] - w).abs().max()) <= 1e-10, name


def test_pooled_and_dense_edges_with_biases_equal_autograd_of_phi():
    """A graph mixing max-pooled convs, a pooled skip and dense edges with their own biases."""
    torch.manual_seed(2)
    nodes = (
        NodeSpec("a", (3, 8, 8), "hard_sigmoid", bias=True),
        NodeSpec("b", (4, 4, 4)),
        NodeSpec("c", (5,), bias=True),
        NodeSpec("y", (3,), "identity"),
    )
    edges = (
        EdgeSpec("x", "a", "conv", 3, 1, 1, bias=True),
        EdgeSpec("a", "b", "conv", 3, 1, 1, "m", bias=True),
        EdgeSpec("x", "b", "conv", 1, 2, 0),
        EdgeSpec("b", "c", "dense", bias=True),
        EdgeSpec("a", "c", "dense"),
        EdgeSpec("c", "y", "dense"),
    )
    net = GraphNetwork((2, 8, 8), GraphSpec(nodes, edges, "node_ce"), 3).double()
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    state = random_states(net, 3)
    with torch.no_grad():
        got = graph_drives(net, net.input_drive(x), state, range(4))
    want = reference_graph_drives(net, x, state)
    assert max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True)) <= 1e-10
    _, ctx = net.input_drive_with_context(x)
    contrast = {id(p): g for p, g in net.weight_contrast(x, state, [(1.0, state)], ctx)}
    for name, w in reference_graph_weight_grads(net, x, state).items():
        p = dict(net.named_parameters())[name]
        assert float((contrast[id(p)] - w).abs().max()) <= 1e-10, name


def test_hr13_has_every_shape_and_parameter_count_of_the_spec():
    spec = residual_graph((3, 32, 32), 10)
    net = GraphNetwork((3, 32, 32), spec, 10)
    assert net.state_shapes == [
        (128, 32, 32), (128, 16, 16), (256, 16, 16), (256, 8, 8), (512, 8, 8), (512, 4, 4),
        (512, 4, 4), (512, 2, 2), (10,),
    ]  # fmt: skip
    assert sum(p.numel() for p in net.parameters()) == 9_742_858
    assert len(net.interactions) == 13


def test_hr13_colouring_has_the_three_blocks_and_parity_split_is_rejected():
    net = GraphNetwork((3, 32, 32), residual_graph((3, 32, 32), 10, (2, 2, 2, 2)), 10)
    assert net.colouring == [[0, 2, 4, 6, 8], [1, 5], [3, 7]]
    edges = list(zip(net.edge_src, net.edge_dst, strict=True))
    with pytest.raises(SettingError, match="edge s2->s4 lies inside block 1"):
        validate_blocks(parity_blocks(9), 9, edges, net.node_names)
    with pytest.raises(SettingError, match="no block"):
        validate_blocks([[0, 2], [1]], 4, [(0, 1)])
    chain = [(i - 1, i) for i in range(5)]
    assert greedy_colouring(5, chain) == [[0, 2, 4], [1, 3]]


def test_an_edge_between_incompatible_shapes_names_both_states():
    nodes = (NodeSpec("h", (4, 8, 8)), NodeSpec("o", (4, 5, 5)), NodeSpec("y", (3,)))
    edges = (EdgeSpec("x", "h"), EdgeSpec("h", "o", stride=2), EdgeSpec("o", "y", "dense"))
    with pytest.raises(SettingError, match=r"edge h->o: maps h \(4, 8, 8\) to \(4, 4, 4\), not "
                       r"to o \(4, 5, 5\)"):  # fmt: skip
        GraphNetwork((1, 8, 8), GraphSpec(nodes, edges), 3)
