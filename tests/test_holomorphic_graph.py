"""Holomorphic EP on energy graphs (holomorphic-ep.md §2, §6 on the graphs of residual spec §1):
the planar graph view against a slow complex reference, N <= 2 against the real estimators, the
|β|^N rate against BPTT, conjugate symmetry, the online variant and the refusals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from eqprop import BPTT, OneSidedEP, Solver, SymmetricEP
from eqprop.core.chain import WeightGrads
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_builders import residual_graph
from eqprop.core.graph_spec import NODE_ACTIVATIONS, EdgeSpec, GraphSpec, NodeSpec
from eqprop.core.holomorphic import check_holomorphic, to_planar
from eqprop.core.planar import Rows, complex_identity_
from eqprop.core.planar_graph import PlanarGraphNetwork, planar_view
from eqprop.core.validation import SettingError
from eqprop.estimators import GeneralizedHolomorphicEP, HolomorphicEP
from eqprop.reference.graphs import reference_graph_holomorphic_gradients

DT = torch.float64
CONVERGED = Solver(tol=1e-15)


def residual(act: str = "mysig", output: str = "mse") -> GraphNetwork:
    """Two residual blocks (3×3 convs, a 1×1 stride-2 skip), an identity output node inside
    the energy; small gains make it contract (about 30 steps to round-off)."""
    torch.manual_seed(0)
    spec = residual_graph((1, 6, 6), 3, widths=(2, 3), activation=act, output=output,
                          gains=(0.4, 0.4, 0.5))  # fmt: skip
    return GraphNetwork((1, 6, 6), spec, 3).double()


def custom(output: str = "node_ce", pool: str = "s", target_second: bool = False) -> GraphNetwork:
    """A softmax-pooled conv with its own bias, a bias-free 1×1 skip from the input, a dense
    skip with a bias, three holomorphic activations and an identity output node (node_ce; the
    last node, or the second with ``target_second``) or a readout outside the energy (ce)."""
    torch.manual_seed(0)
    nodes = [
        NodeSpec("a", (2, 6, 6), "tanh", bias=True),
        NodeSpec("b", (3, 3, 3), "dsilu"),
        NodeSpec("c", (4,), "mysig", bias=True),
    ]
    edges = [
        EdgeSpec("x", "a", "conv", 3, 1, 1, bias=True, gain=0.5),
        EdgeSpec("a", "b", "conv", 3, 1, 1, pool, bias=True, gain=0.5),
        EdgeSpec("x", "b", "conv", 1, 2, 0, gain=0.5),
        EdgeSpec("b", "c", "dense", gain=0.5),
        EdgeSpec("a", "c", "dense", bias=True, gain=0.3),
    ]
    if output == "node_ce":
        head = NodeSpec("y", (3,), "identity", bias=True, bias_init=0.1)
        nodes.insert(1 if target_second else len(nodes), head)
        edges.append(EdgeSpec("c", "y", "dense", gain=0.5))
    spec = GraphSpec(tuple(nodes), tuple(edges), output, "y" if output == "node_ce" else None)
    return GraphNetwork((1, 6, 6), spec, 3).double()


NETS: dict[str, Callable[[], GraphNetwork]] = {
    "residual_mysig_mse": residual,
    "residual_tanh_mse": lambda: residual("tanh"),
    "custom_node_ce": custom,
    "custom_ce": lambda: custom("ce"),
    "custom_node_ce_target_second": lambda: custom(target_second=True),
}


def batch(b: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 6, 6, generator=g, dtype=DT), torch.randint(0, 3, (b,), generator=g)


def flat(net: GraphNetwork, grads: WeightGrads | dict[str, torch.Tensor]) -> torch.Tensor:
    """Gradients in the order of ``net.named_parameters()`` (every parameter present)."""
    if isinstance(grads, dict):
        return torch.cat([grads[n].flatten() for n, _ in net.named_parameters()])
    by_id = {id(p): g for p, g in grads}
    assert len(by_id) == len(list(net.parameters()))
    return torch.cat([by_id[id(p)].flatten() for p in net.parameters()])


def estimate(net: GraphNetwork, est, x, y, state=None) -> torch.Tensor:
    net.zero_grad(set_to_none=True)
    est.estimate(net, x, y, state)
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def free_state(net: GraphNetwork, x: torch.Tensor, solver: Solver = CONVERGED, steps: int = 60):
    return solver.relax(net, net.input_drive(x), None, steps).state


# ----------------------------------------------------------------- N <= 2: real arithmetic


@pytest.mark.parametrize("name", ["residual_mysig_mse", "custom_node_ce", "custom_ce"])
def test_one_and_two_points_are_one_sided_and_symmetric_ep_exactly(name):
    net = NETS[name]()
    x, y = batch()
    for points, twin in ((1, OneSidedEP), (2, SymmetricEP)):
        kw = dict(beta=0.3, free_steps=30, nudged_steps=10, solver=Solver(schedule="coloured"))
        got = estimate(net, HolomorphicEP(points=points, **kw), x, y)
        assert rel(got, estimate(net, twin(**kw), x, y)) <= 1e-12


# ----------------------------------------------------------------- N > 2 against the reference


@pytest.mark.parametrize(
    ("name", "schedule"),
    [
        ("residual_mysig_mse", "synchronous"),
        ("residual_tanh_mse", "coloured"),
        ("custom_node_ce", "synchronous"),
        ("custom_node_ce", "coloured"),
        ("custom_ce", "synchronous"),
        ("custom_node_ce_target_second", "coloured"),
    ],
)
@pytest.mark.parametrize("points", [3, 4])
def test_planar_graph_estimate_equals_the_slow_complex_reference(name, schedule, points):
    """The planar view relaxed by the graph schedules (softmax pool, skips, edge and node
    biases, identity node, complex softmax nudge or readout) and its closed-form update, against
    every point of the full circle relaxed on complex128 states with autograd steps of Φ_β and
    autograd of Re Σ_k c_k Φ_{β_k}."""
    net = NETS[name]()
    x, y = batch()
    solver = Solver(schedule=schedule)
    free = free_state(net, x, solver)
    est = HolomorphicEP(0.4, 60, 40, solver, points=points)
    got = flat(net, est.grads_at(net, x, y, free))
    want = flat(net, reference_graph_holomorphic_gradients(net, x, y, free, points, 0.4, 40,
                                                           schedule))  # fmt: skip
    assert rel(got, want) <= 1e-10


def test_half_circle_equals_the_full_circle_reference():
    """Conjugate symmetry: N = 6 relaxes 4 points (2 real, 2 complex) and gives the estimate of
    all 6, reference and estimator relaxing the full circle alike."""
    net = custom()
    x, y = batch()
    free = free_state(net, x)
    half = HolomorphicEP(0.4, 60, 40, points=6)
    got = flat(net, half.grads_at(net, x, y, free))
    want = flat(net, reference_graph_holomorphic_gradients(net, x, y, free, 6, 0.4, 40))
    assert rel(got, want) <= 1e-10
    full = HolomorphicEP(0.4, 60, 40, points=6, half_circle=False)
    assert rel(flat(net, full.grads_at(net, x, y, free)), got) <= 1e-12


@pytest.mark.parametrize("output", ["mse", "node_ce"])
def test_error_falls_like_beta_to_the_n(output):
    """Against the true gradient (BPTT through 300 steps from the converged s*), fitted log-log
    slopes of the relative error within ±0.3 of N for N = 1..4, |β| from 0.05 to 0.4."""
    net = residual(output=output)
    x, y = batch(4)
    free = free_state(net, x, steps=400)
    net.zero_grad(set_to_none=True)
    BPTT(300, 300, full=True).surrogate(net, x, y, free)[0].backward()
    truth = torch.cat([p.grad.flatten() for p in net.parameters()])
    betas = [0.05, 0.1, 0.2, 0.4]
    for n in (1, 2, 3, 4):
        est = HolomorphicEP(1.0, 1, 400, CONVERGED, points=n)
        errors = []
        for beta in betas:
            est.beta = beta
            errors.append(rel(flat(net, est.grads_at(net, x, y, free)), truth))
        slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
        assert abs(slope - n) <= 0.3, (n, slope, errors)


# ----------------------------------------------------------------- the view and the protocol


def test_planar_view_of_a_graph_shares_its_structure_and_a_real_drive():
    """The view is a GraphNetwork to the schedules, with the graph's parameters and structure;
    the packed constant drive in planar form is real: zero on the imaginary parts."""
    net = custom()
    x, _ = batch()
    rows = Rows(real=2, complex=2)
    view = planar_view(net, rows)
    assert isinstance(view, PlanarGraphNetwork) and isinstance(view, GraphNetwork)
    assert {id(p) for p in view.parameters()} == {id(p) for p in net.parameters()}
    assert view.colouring == net.colouring and view.in_edges == net.in_edges
    drive = net.input_drive(x)
    for c, ref in zip(view.constants(to_planar([drive], [drive])), net.constants(drive),
                      strict=True):  # fmt: skip
        if ref is None:
            assert c is None
            continue
        real, re, im = rows.split(c)
        assert torch.equal(real, ref) and torch.equal(re, ref) and not im.any()


def test_estimate_surrogate_and_online_variant_run_on_graphs():
    """Through estimate (convergence guard), surrogate, and β turning round the circle (T2 = 40
    per point): the online estimate follows the phased one."""
    net = custom("ce")
    x, y = batch(3)
    est = HolomorphicEP(0.4, 60, 40, points=4)
    out = est.estimate(net, x, y)
    assert out.stats == {"guard_dropped": 0.0, "guard_fallback": 0.0}
    direct = estimate(net, est, x, y)
    net.zero_grad(set_to_none=True)
    value, _ = est.surrogate(net, x, y)
    value.backward()
    assert rel(torch.cat([p.grad.flatten() for p in net.parameters()]), direct) <= 1e-14
    free = free_state(net, x, steps=200)
    phased = flat(net, HolomorphicEP(0.3, 1, 200, CONVERGED, points=4).grads_at(net, x, y, free))
    online = HolomorphicEP(0.3, 1, 40, points=4, online=True, online_periods=3)
    assert rel(flat(net, online.grads_at(net, x, y, free)), phased) <= 1e-6


# ----------------------------------------------------------------- refusals


def test_non_holomorphic_graph_pieces_are_refused_by_config_path():
    x, y = batch()
    relu6 = GraphNetwork((1, 6, 6), residual_graph((1, 6, 6), 3, widths=(2, 3)), 3).double()
    with pytest.raises(SettingError, match=r"^model\.graph\.nodes\[0\]\.activation: node s1: "
                       r"'relu6' is not holomorphic.*points: 4.* or identity") as err:  # fmt: skip
        HolomorphicEP(0.3, 5, 3, points=4).estimate(relu6, x, y)
    assert "\n" not in str(err.value)
    HolomorphicEP(0.3, 5, 3, points=2).estimate(relu6, x, y)  # N = 2: real, accepted
    with pytest.raises(SettingError, match=r"^model\.graph\.edges\[1\]\.pool: edge a->b: 'm' "
                       r"\(max pool\) is not holomorphic") as err:  # fmt: skip
        HolomorphicEP(0.3, 5, 3, points=3, online=True).estimate(custom(pool="m"), x, y)
    assert "\n" not in str(err.value)
    check_holomorphic(residual())  # mysig hidden nodes, an identity output node
    assert NODE_ACTIVATIONS["identity"].complex_fn_ is complex_identity_
    assert NODE_ACTIVATIONS["relu6"].complex_fn_ is None


def test_generalized_holomorphic_ep_refuses_graphs_in_one_line():
    x, y = batch()
    with pytest.raises(SettingError, match=r"^estimator\.kind: generalized holomorphic EP needs "
                       r"a chain network.*not a graph") as err:  # fmt: skip
        GeneralizedHolomorphicEP(0.3, 5, 3, points=4).estimate(custom(), x, y)
    assert "\n" not in str(err.value)
