"""Autograd oracles for energy graphs: drives, weight gradients and the energy F_β."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from eqprop.core.graph import GraphNetwork

__all__ = ["graph_energy", "reference_graph_drives", "reference_graph_weight_grads"]


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
