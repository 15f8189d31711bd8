"""Autograd oracles for energy graphs: drives, weight gradients and the energy F_β; and holomorphic
EP's N-point estimate on a graph, the slow way (Φ_β written out again, complex states)."""

from __future__ import annotations

import cmath
import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from eqprop.core.graph import GraphNetwork
from eqprop.core.interactions import ConvInteraction, DenseInteraction
from eqprop.reference import reference_pool

__all__ = [
    "graph_energy",
    "reference_graph_drives",
    "reference_graph_holomorphic_gradients",
    "reference_graph_loss",
    "reference_graph_phi",
    "reference_graph_step",
    "reference_graph_weight_grads",
]


def reference_graph_drives(net: GraphNetwork, x: Tensor, state: Sequence[Tensor]) -> list[Tensor]:
    """h_n = ∂Φ/∂s_n for every node, by autograd of Φ summed over the batch."""
    with torch.enable_grad():
        s = [t.detach().requires_grad_() for t in state]
        return list(torch.autograd.grad(net.phi(x, s).sum(), s))


def reference_graph_weight_grads(
    net: GraphNetwork, x: Tensor, state: Sequence[Tensor]
) -> dict[str, Tensor]:
    """∂Φ/∂θ at fixed states, batch mean, by autograd (readout parameters left out)."""
    params = {n: p for n, p in net.named_parameters() if not n.startswith("readout")}
    with torch.enable_grad():
        grads = torch.autograd.grad(
            net.phi(x, [t.detach() for t in state]).mean(), list(params.values())
        )
    return dict(zip(params, grads, strict=True))


def graph_energy(
    net: GraphNetwork,
    x: Tensor,
    state: Sequence[Tensor],
    y: Tensor | None = None,
    beta: float = 0.0,
) -> Tensor:
    """F_β(s) = Σ_n ½‖s_n‖² − Φ(x, s) + β L(s, y), per example (B,); states inside their boxes."""
    total = sum(0.5 * s.pow(2).flatten(1).sum(1) for s in state) - net.phi(x, state)
    if beta != 0.0:
        assert y is not None
        total = total + beta * net.loss(state, y)
    return total


# ----------------------------------------------------------------- holomorphic EP (complex states)


def reference_graph_loss(net: GraphNetwork, state: Sequence[Tensor], y: Tensor) -> Tensor:
    """L(s, y) per example (B,), written out; complex states give its holomorphic continuation:
    ½‖s − y‖² (mse), CE of the target node (node_ce) or of the readout's logits (ce)."""
    out = state[net.target_layer]
    if net.output == "mse":
        target = F.one_hot(y, net.num_classes).to(out.dtype)
        return 0.5 * ((out - target) ** 2).sum(1)
    logits = out
    if net.readout is not None:
        weight, bias = net.readout.weight.to(out.dtype), net.readout.bias.to(out.dtype)
        logits = out.flatten(1) @ weight.T + bias
    return torch.logsumexp(logits, 1) - logits.gather(1, y[:, None])[:, 0]


def reference_graph_phi(
    net: GraphNetwork,
    x: Tensor,
    state: Sequence[Tensor],
    y: Tensor | None = None,
    beta: complex = 0.0,
) -> Tensor:
    """Φ_β = Σ_e ⟨s_q, P_e(K_e s_p + b_e)⟩ + Σ_n ⟨b_n, s_n⟩ − β L per example (B,), from the
    parameters (real weights cast to the states' dtype; complex states allowed)."""
    dtype = state[0].dtype
    total = x.new_zeros(x.shape[0], dtype=dtype)
    for e, layer in enumerate(net.interactions):
        p, q = net.edge_src[e], net.edge_dst[e]
        pre = (x if p < 0 else state[p]).to(dtype)
        if isinstance(layer, ConvInteraction):
            spec, conv = layer.spec, layer.conv
            bias = None if conv.bias is None else conv.bias.to(dtype)
            z = F.conv2d(pre, conv.weight.to(dtype), bias, spec.stride, spec.padding)
            z = reference_pool(z, spec.pool, spec.temperature)
        else:
            linear = cast(DenseInteraction, layer).linear
            z = pre.flatten(1) @ linear.weight.to(dtype).T
            if linear.bias is not None:
                z = z + linear.bias.to(dtype)
        total = total + (state[q] * z).flatten(1).sum(1)
    for n, s in enumerate(state):
        b = net.node_bias(n)
        if b is not None:
            total = total + (s * b.to(dtype).view(1, -1, *([1] * (s.dim() - 2)))).flatten(1).sum(1)
    if beta != 0.0:
        assert y is not None
        total = total - beta * reference_graph_loss(net, state, y)
    return total


def reference_graph_step(
    net: GraphNetwork,
    x: Tensor,
    state: Sequence[Tensor],
    y: Tensor | None = None,
    beta: complex = 0.0,
    schedule: str = "synchronous",
) -> list[Tensor]:
    """One step s_n ← σ_n(∂Φ_β/∂s_n) with the drives from autograd: every node at once
    (``synchronous``) or block by block over ``net.colouring`` (``coloured``; nudged sweeps start
    with the target's block). Complex states: PyTorch's reverse mode returns the conjugate of a
    holomorphic derivative, which is conjugated back."""
    s = [t.detach() for t in state]
    blocks = [list(range(len(s)))]
    if schedule == "coloured":
        blocks = [list(b) for b in net.colouring]
        if beta != 0.0:
            blocks.sort(key=lambda b: net.target_layer not in b)  # stable: the target's first
    for block in blocks:
        with torch.enable_grad():
            leaves = [t.requires_grad_() for t in (u.detach() for u in s)]
            phi = reference_graph_phi(net, x, leaves, y, beta).sum()
            wrt = [leaves[n] for n in block]
            if phi.is_complex():
                grads = [g.conj() for g in torch.autograd.grad(phi, wrt, torch.ones_like(phi))]
            else:
                grads = list(torch.autograd.grad(phi, wrt))
        for n, g in zip(block, grads, strict=True):
            s[n] = net.node_activations[n].fn(g).detach()
    return s


def reference_graph_holomorphic_gradients(
    net: GraphNetwork,
    x: Tensor,
    y: Tensor,
    free_state: Sequence[Tensor],
    points: int,
    beta: float,
    steps: int,
    schedule: str = "synchronous",
) -> dict[str, Tensor]:
    """Holomorphic EP's N-point estimate on a graph (``holomorphic-ep.md`` §2), the slow way.

    Every point β_k = r e^{2πik/N} of the full circle runs ``steps`` reference steps on complex
    states from s*; the estimate is the gradient of Σ_k Re[(−1/(N β_k)) mean_b Φ_{β_k}] at fixed
    states (the readout's through the −β L term). Parameter name → gradient.
    """
    cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    total = x.new_zeros(())
    for k in range(points):
        b = beta * cmath.exp(2j * math.pi * k / points)
        s = [t.detach().to(cdtype) for t in free_state]
        for _ in range(steps):
            s = reference_graph_step(net, x, s, y, b, schedule)
        with torch.enable_grad():
            phi = reference_graph_phi(net, x, s, y, b).mean()
            total = total + (phi * (-1.0 / (points * b))).real
    params = dict(net.named_parameters())
    with torch.enable_grad():
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return {
        name: (g if g is not None else torch.zeros_like(p))
        for (name, p), g in zip(params.items(), grads, strict=True)
    }
