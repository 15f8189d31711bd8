"""Energy graphs with feedback ("VF") weights (spec §4 on residual spec §1), float64.

Each edge e = (p→q) between two free nodes holds a forward weight W_e (K_W: its conv or dense
map, its pool, its bias if any) and a feedback weight B_e of W_e's shape (no bias). Node n has
its own function

    φ_n(s) = ⟨b_n, s_n⟩ + Σ_{e: q=n} ⟨s_n, K_W(s_p)⟩ + Σ_{e: p=n} ⟨s_q, K_B(s_n)⟩

and relaxes to s_n = σ_n(∂φ_n/∂s_n), the pool argmax of a feedback term that of K_B(s_n).
The references below are written with F.conv2d / F.max_pool2d / F.linear and autograd.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from nets import make_batch, make_net

from eqprop import BPTT, AsymmetricNetwork, Solver, SymmetricEP
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_builders import chain_graph, residual_graph
from eqprop.core.graph_spec import EdgeSpec, GraphSpec, NodeSpec
from eqprop.core.interactions import ConvInteraction
from eqprop.core.validation import SettingError
from eqprop.dynamics.graph_schedules import graph_drives
from eqprop.train.builders import build_network
from eqprop.train.config import config_from_dict
from eqprop.train.convert import ConfigError
from eqprop.train.epochs import model_fields

# ----------------------------------------------------------------- nets and references


def graph_of(net: AsymmetricNetwork) -> GraphNetwork:
    """The asymmetric chain ``net`` built as a graph with feedback, with its parameters."""
    spec = chain_graph(net.input_shape, net.num_classes, net.settings)
    g = GraphNetwork(net.input_shape, spec, net.num_classes).double()
    g.load_state_dict(net.state_dict())  # same parameter names: strict load
    return g


def small_residual(feedback: bool = True, seed: int = 0, **kw) -> GraphNetwork:
    """The Hopfield-ResNet graph with two blocks of 3 and 4 channels on 2×8×8 inputs."""
    spec = dataclasses.replace(residual_graph((2, 8, 8), 4, widths=(3, 4)), feedback=feedback, **kw)
    torch.manual_seed(seed)
    return GraphNetwork((2, 8, 8), spec, 4).double()


def pooled_graph(rule: str = "different") -> GraphNetwork:
    """Max-pooled, average-pooled and dense edges between free nodes, edge and node biases."""
    nodes = (
        NodeSpec("a", (3, 8, 8), "hard_sigmoid", bias=True),
        NodeSpec("b", (4, 4, 4)),
        NodeSpec("c", (5,), bias=True),
        NodeSpec("d", (2, 2, 2)),
        NodeSpec("y", (3,), "identity"),
    )
    edges = (
        EdgeSpec("x", "a", "conv", 3, 1, 1, bias=True),
        EdgeSpec("a", "b", "conv", 3, 1, 1, "m", bias=True),
        EdgeSpec("x", "b", "conv", 1, 2, 0),
        EdgeSpec("b", "c", "dense", bias=True),
        EdgeSpec("a", "c", "dense"),
        EdgeSpec("b", "d", "conv", 3, 1, 1, "m"),
        EdgeSpec("a", "d", "conv", 1, 2, 0, "a"),
        EdgeSpec("c", "y", "dense"),
        EdgeSpec("d", "y", "dense", gain=0.5),
    )
    spec = GraphSpec(nodes, edges, "node_ce", feedback=True, update_rule=rule)
    torch.manual_seed(2)
    return GraphNetwork((2, 8, 8), spec, 3).double()


def generic_state(net: GraphNetwork, batch: int, seed: int) -> list[torch.Tensor]:
    """States in [0, 1): away from pool ties."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((batch, *s), generator=g, dtype=torch.float64) for s in net.state_shapes]


def term(layer, weight, bias, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """⟨post, P(weight ⋆ pre + bias)⟩ per example, with ``layer``'s geometry and pool."""
    if isinstance(layer, ConvInteraction):
        s = layer.spec
        z = F.conv2d(pre, weight, bias, s.stride, s.padding)
        z = {"m": F.max_pool2d, "a": F.avg_pool2d}[s.pool](z, 2) if s.pool != "i" else z
    else:
        z = F.linear(pre.flatten(1), weight, bias)
    return (post * z).flatten(1).sum(1)


def forward_term(layer, pre, post):
    """⟨post, K_W(pre)⟩ (with the edge's bias, if any)."""
    if isinstance(layer, ConvInteraction):
        return term(layer, layer.conv.weight, layer.conv.bias, pre, post)
    return term(layer, layer.linear.weight, layer.linear.bias, pre, post)


def feedback_term(layer, pre, post):
    """⟨post, K_B(pre)⟩ (no bias)."""
    return term(layer, layer.feedback, None, pre, post)


def bias_term(net: GraphNetwork, n: int, s: torch.Tensor) -> torch.Tensor:
    b = net.node_bias(n)
    if b is None:
        return s.new_zeros(s.shape[0])
    return (s.flatten(2).sum(2) if s.dim() == 4 else s) @ b


def reference_drives(net: GraphNetwork, x, state) -> list[torch.Tensor]:
    """∂φ_n/∂s_n for every node n, by autograd of φ_n (module docstring)."""
    out = []
    for n in range(len(state)):
        s = [t.detach().requires_grad_(m == n) for m, t in enumerate(state)]
        phi = bias_term(net, n, s[n])
        for e, layer in enumerate(net.interactions):
            p, q = net.edge_src[e], net.edge_dst[e]
            if q == n:
                phi = phi + forward_term(layer, x if p < 0 else s[p], s[n])
            if p == n:
                phi = phi + feedback_term(layer, s[n], s[q])
        out.append(torch.autograd.grad(phi.sum(), s[n])[0])
    return out


def reference_contrast(net: GraphNetwork, x, free, phases) -> dict[str, torch.Tensor]:
    """The update of every parameter by autograd of the rule's per-edge terms (batch mean).

    different: Σ_k c_k [⟨s_{k,q}, K_W(s*_p)⟩ + ⟨s*_q, K_B(s_{k,p})⟩] per free edge,
    Σ_k c_k ⟨s_{k,q}, K_W(x)⟩ per input edge, Σ_k c_k ⟨b_n, s_{k,n}⟩ per node;
    same: Σ_k c_k [⟨s_{k,q}, K_W(s_{k,p})⟩ + ⟨s_{k,q}, K_B(s_{k,p})⟩] per free edge, then W and
    B share the average of their two gradients; input edges and biases as for different.
    """
    rule = net.update_rule
    total = x.new_zeros(())
    for c, s in phases:
        t = sum(bias_term(net, n, s[n]) for n in range(len(s)))
        for e, layer in enumerate(net.interactions):
            p, q = net.edge_src[e], net.edge_dst[e]
            if p < 0:
                t = t + forward_term(layer, x, s[q])
            elif rule == "different":
                t = t + forward_term(layer, free[p], s[q]) + feedback_term(layer, s[p], free[q])
            else:
                t = t + forward_term(layer, s[p], s[q]) + feedback_term(layer, s[p], s[q])
        total = total + c * t.mean()
    params = {n: p for n, p in net.named_parameters() if not n.startswith("readout")}
    g = dict(zip(params, torch.autograd.grad(total, list(params.values())), strict=True))
    if rule == "same":
        for e in net.feedback_edges():
            w = next(k for k in g if k.startswith(f"interactions.{e}.") and k.endswith(".weight"))
            g[w] = g[f"interactions.{e}.feedback"] = 0.5 * (g[w] + g[f"interactions.{e}.feedback"])
    return g


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def grads(net) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters()}


# ----------------------------------------------------------------- construction


def test_free_edges_get_feedback_weights_with_the_forward_init_and_named_like_a_chain():
    sym, net = small_residual(feedback=False), small_residual()
    for e, layer in enumerate(net.interactions):
        assert hasattr(layer, "feedback") == (net.edge_src[e] >= 0), e  # none from the input
    # Same seed: W and the node biases are the symmetric graph's draws, B comes after them.
    sym_params = dict(sym.named_parameters())
    for name, p in net.named_parameters():
        if not name.endswith("feedback"):
            assert torch.equal(p, sym_params[name]), name
    for e, layer in net.feedback_edges().items():
        gain = net.graph.edges[e].gain
        bound = gain / math.sqrt(layer.feedback[0].numel())  # U(±gain/√fan_in), as W
        assert layer.feedback.shape == layer.forward_weight.shape
        assert 0.5 * bound < float(layer.feedback.detach().abs().max()) <= bound
    angles = net.weight_angles()
    assert set(angles) == {"s1->s2", "s2->s3", "s2->s4", "s3->s4", "s4->s5"}
    assert all(40.0 < a < 140.0 for a in angles.values()), angles
    same = small_residual(feedback_init="forward")
    assert set(same.weight_angles().values()) == {0.0}
    grouped = sorted(id(p) for layer in net.weight_layers() for p in layer.parameters())
    assert grouped == sorted(id(p) for p in net.parameters())  # B in W's lr/wd group, once


def test_describe_model_fields_and_phi_of_a_feedback_graph():
    net = small_residual(update_rule="same")
    info = net.describe()
    assert (info["feedback"], info["update_rule"], info["feedback_init"]) == (
        True, "same", "random",
    )  # fmt: skip
    assert small_residual(feedback=False).describe()["feedback"] is False
    fields = model_fields(net, torch.optim.SGD(net.parameters(), lr=0.1))
    assert fields["angle_s3->s4"] == net.weight_angles()["s3->s4"]
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="no scalar energy"):
        net.phi(x, net.zero_state(2))


# ----------------------------------------------------------------- dynamics and updates


@pytest.mark.parametrize("output", ["mse", "ce"])
@pytest.mark.parametrize("rule", ["different", "same"])
@pytest.mark.parametrize("arch", ["conv_max", "mixed"])
def test_chain_built_as_a_graph_has_the_asymmetric_chains_numerics(arch, rule, output):
    """Free state and SymmetricEP gradients of every parameter equal the AsymmetricNetwork's,
    ≤ 1e-12 relative (measured: both bit-identical here)."""
    net = make_net(arch, output=output, cls=AsymmetricNetwork, update_rule=rule, init_scale=1.5)
    g = graph_of(net)
    assert g.graph.feedback and g.update_rule == rule
    x, y = make_batch(net, batch=4)
    solver = Solver(schedule="even_odd")
    free_chain = solver.relax(net, net.input_drive(x), None, 9).state
    free_graph = solver.relax(g, g.input_drive(x), None, 9).state
    assert all(torch.equal(a, b) for a, b in zip(free_chain, free_graph, strict=True))
    est = SymmetricEP(beta=0.3, free_steps=12, nudged_steps=5, solver=solver)
    for m in (net, g):
        m.zero_grad()
        est.estimate(m, x, y)
    got = grads(g)
    for name, p in net.named_parameters():
        assert relative(got[name], p.grad) <= 1e-12, name


def test_drives_are_the_per_node_functions_gradients_with_the_feedback_argmax():
    """Each node alone (its backward contexts computed afresh from conv_B) and all at once
    (contexts taken over from the forward drives) equal autograd of φ_n, ≤ 1e-12."""
    net = pooled_graph()
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    state = generic_state(net, 3, seed=4)
    want = reference_drives(net, x, state)
    drive = net.input_drive(x)
    with torch.no_grad():
        together = graph_drives(net, drive, state, range(len(state)))
        alone = [graph_drives(net, drive, state, [n])[0] for n in range(len(state))]
    for n, w in enumerate(want):
        assert float((together[n] - w).abs().max()) <= 1e-12, n
        assert float((alone[n] - w).abs().max()) <= 1e-12, n


@pytest.mark.parametrize("rule", ["different", "same"])
def test_update_rules_equal_autograd_of_their_per_edge_terms(rule):
    """weight_contrast at generic phases (three coefficients, not summing to zero) against
    :func:`reference_contrast`, ≤ 1e-12 relative for every parameter."""
    net = pooled_graph(rule)
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    free = generic_state(net, 3, seed=5)
    phases = [(2.0, generic_state(net, 3, seed=6)), (-1.5, generic_state(net, 3, seed=7)),
              (0.5, free)]  # fmt: skip
    _, ctx = net.input_drive_with_context(x)
    got = {id(p): g for p, g in net.weight_contrast(x, free, phases, ctx)}
    want = reference_contrast(net, x, free, phases)
    params = dict(net.named_parameters())
    assert set(want) == {n for n, p in params.items() if id(p) in got}  # every one, once
    for name, w in want.items():
        assert relative(got[id(params[name])], w) <= 1e-12, name


def test_residual_graph_with_feedback_equal_to_forward_is_the_symmetric_graph():
    """B = W (no pools in the residual graph): the drives are the symmetric ones bit for bit,
    so every phase is the symmetric graph's. With the same rule, W's raw gradient and B's
    are then both the symmetric ∂Φ/∂W contrast (Σ_k c_k ∂_W⟨s_{k,q}, K_W s_{k,p}⟩), and so is
    their average: W and B get the symmetric graph's gradient of W; the node biases and the
    input edges (no feedback) the symmetric ones. Measured: equal to the last bit except the
    input edges (the same rule sums per phase, the symmetric graph first; ≤ ~1e-13 relative
    after the cancellation in (s^{+β} − s^{−β}) / 2β)."""
    sym = small_residual(feedback=False)
    net = small_residual(feedback_init="forward", update_rule="same")
    x, y = make_batch(net, batch=4)
    solver = Solver(schedule="coloured")
    free_sym = solver.relax(sym, sym.input_drive(x), None, 15).state
    free_net = solver.relax(net, net.input_drive(x), None, 15).state
    assert all(torch.equal(a, b) for a, b in zip(free_sym, free_net, strict=True))
    est = SymmetricEP(beta=0.3, free_steps=15, nudged_steps=6, solver=solver)
    for m in (sym, net):
        m.zero_grad()
        est.estimate(m, x, y)
    want, got = grads(sym), grads(net)
    for e in net.feedback_edges():
        w = next(k for k in want if k.startswith(f"interactions.{e}.") and k.endswith("weight"))
        want[f"interactions.{e}.feedback"] = want[w]
    assert got.keys() == want.keys()
    for name, w in want.items():
        assert relative(got[name], w) <= 1e-12, name
    random_b = small_residual()
    free_random = solver.relax(random_b, random_b.input_drive(x), None, 15).state
    assert (
        max(float((a - b).abs().max()) for a, b in zip(free_random, free_sym, strict=True)) > 1e-3
    )


def test_bptt_runs_on_a_feedback_graph_and_with_b_equal_w_splits_the_symmetric_gradient():
    """BPTT differentiates the unrolled dynamics. With B = W the dynamics are the symmetric
    graph's, in which W acts both forward and backward, so ∂L/∂W_sym = ∂L/∂W + ∂L/∂B."""
    net = small_residual()
    x, y = make_batch(net, batch=3)
    net.zero_grad()
    BPTT(free_steps=8, nudged_steps=4).estimate(net, x, y)
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(layer.feedback.grad.abs().max() > 0 for layer in net.feedback_edges().values())

    sym, tied = small_residual(feedback=False), small_residual(feedback_init="forward")
    for m in (sym, tied):
        m.zero_grad()
        BPTT(free_steps=8, nudged_steps=4).estimate(m, x, y)
    got = grads(tied)
    for e in tied.feedback_edges():
        w = next(k for k in got if k.startswith(f"interactions.{e}.") and k.endswith("weight"))
        got[w] = got[w] + got.pop(f"interactions.{e}.feedback")
    for name, p in sym.named_parameters():
        assert relative(got[name], p.grad) <= 1e-12, name


# ----------------------------------------------------------------- configs


def config(**graph):
    residual = {"residual": {"widths": [3, 4]}}
    return config_from_dict({"model": {"kind": "graph", "graph": {**residual, **graph}}})


def test_a_config_declares_a_feedback_graph():
    net = build_network(config(feedback=True, update_rule="same"), (1, 8, 8), 10)
    assert isinstance(net, GraphNetwork)
    assert (net.graph.feedback, net.update_rule, net.feedback_init) == (True, "same", "random")
    assert sorted(net.feedback_edges()) == [1, 3, 4, 5, 6]  # every edge not from x
    assert not build_network(config(), (1, 8, 8), 10).feedback_edges()


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ({"feedback": True, "update_rule": "bogus"},
         "model.graph.update_rule: 'bogus' is not one of different, same"),
        ({"feedback_init": "zeros"}, "model.graph.feedback_init: 'zeros' is not one of random, "
         "forward"),
        ({"feedback": "yes"}, "model.graph.feedback"),
    ],
)  # fmt: skip
def test_bad_feedback_settings_are_one_line_errors_naming_the_field(graph, message):
    with pytest.raises((ConfigError, SettingError)) as err:
        build_network(config(**graph), (1, 8, 8), 10)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(SettingError, match=r"^update_rule: 'kp' is not one of different, same"):
        dataclasses.replace(small_residual().graph, update_rule="kp")
