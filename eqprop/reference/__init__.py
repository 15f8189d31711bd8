"""Slow, obviously correct references: Φ written out plainly and differentiated by autograd.

Used by the tests and by checks, never by training. Nothing here shares code with the closed
forms of :mod:`eqprop.core.interactions`: the convolutions, pools and losses are written again
from the network's parameters, so the two implementations check each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from eqprop.core.chain import ChainNetwork
from eqprop.core.interactions import ConvInteraction, DenseInteraction
from eqprop.core.network import EnergyNetwork

if TYPE_CHECKING:
    from eqprop.core.asymmetric import AsymmetricInteraction

__all__ = [
    "bptt_gradients",
    "reference_holomorphic_gradients",
    "reference_loss",
    "reference_phi",
    "reference_pool",
    "reference_relax",
    "reference_step",
]


def reference_loss(net: ChainNetwork, state: Sequence[Tensor], y: Tensor) -> Tensor:
    """Per-example loss L(s, y), written out from the spec (§3).

    Complex states give the holomorphic continuation (no conjugation, no modulus).
    """
    if net.readout is None:
        target = torch.zeros_like(state[-1])
        target[torch.arange(len(y)), y] = 1.0
        return 0.5 * ((state[-1] - target) ** 2).sum(1)
    dtype = state[-1].dtype
    weight, bias = net.readout.weight.to(dtype), net.readout.bias.to(dtype)
    logits = state[-1].flatten(1) @ weight.T + bias
    return torch.logsumexp(logits, 1) - logits.gather(1, y[:, None])[:, 0]


def reference_pool(z: Tensor, pool: str, temperature: float = 1.0) -> Tensor:
    """A 2×2 stride-2 pool (``m`` max, ``a`` average, ``s`` softmax, ``i`` none) written plainly.

    Softmax pooling: P_w = Σ zᵢ e^{zᵢ/τ} / Σ e^{zᵢ/τ} over each window, the four window entries
    taken by strided slicing; complex ``z`` gives its holomorphic continuation (average pool
    and softmax pool only).
    """
    if pool == "m":
        return F.max_pool2d(z, 2)
    if pool == "i":
        return z
    h, w = z.shape[2] // 2 * 2, z.shape[3] // 2 * 2
    v = torch.stack([z[:, :, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1)])
    if pool == "a":
        return v.mean(0)
    # The shift cancels in the ratio; it only keeps the exponentials finite.
    e = torch.exp((v - v.real.amax(0, keepdim=True).detach()) / temperature)
    return (v * e).sum(0) / e.sum(0)


def reference_phi(
    net: EnergyNetwork,
    x: Tensor,
    state: Sequence[Tensor],
    y: Tensor | None = None,
    beta: complex | Tensor = 0.0,
) -> Tensor:
    """Φ_β(x, s, θ) = Σ_n ⟨s_n, P_n(W_n s_{n−1} + b_n)⟩ − β L(s, y), per example (B,)."""
    total = x.new_zeros(x.shape[0], dtype=state[0].dtype)
    prev = x
    for layer, s in zip(net.interactions, state, strict=True):
        dtype = prev.dtype  # complex states: the real weights are cast, as a complex net would
        if isinstance(layer, ConvInteraction):
            spec = layer.spec
            weight, bias = layer.conv.weight.to(dtype), cast(Tensor, layer.conv.bias).to(dtype)
            z = F.conv2d(prev, weight, bias, spec.stride, spec.padding)
            z = reference_pool(z, spec.pool, spec.temperature)
        else:
            dense = cast(DenseInteraction, layer)  # every other interaction is dense
            z = prev.flatten(1) @ dense.linear.weight.to(dtype).T + dense.linear.bias.to(dtype)
        total = total + (s * z).flatten(1).sum(1)
        prev = s
    if isinstance(beta, Tensor) or beta != 0.0:
        assert y is not None
        b = beta.flatten() if isinstance(beta, Tensor) else beta
        total = total - b * reference_loss(net, state, y)
    return total


def reference_step(
    net: EnergyNetwork,
    x: Tensor,
    state: Sequence[Tensor],
    y: Tensor | None = None,
    beta: complex | Tensor = 0.0,
    create_graph: bool = False,
) -> list[Tensor]:
    """One synchronous step s ← σ(∂Φ_β/∂s) with ∂Φ_β/∂s from autograd.

    With ``create_graph`` the step stays differentiable (for BPTT through the dynamics).
    Complex states (and β) give the holomorphic step: PyTorch's reverse mode returns the
    conjugate of a holomorphic derivative, which is conjugated back.
    """
    with torch.enable_grad():
        s = [
            t if (create_graph and t.requires_grad) else t.detach().requires_grad_() for t in state
        ]
        phi = reference_phi(net, x, s, y, beta).sum()
        if phi.is_complex():
            grads = tuple(
                g.conj() for g in torch.autograd.grad(phi, s, grad_outputs=torch.ones_like(phi))
            )
        else:
            grads = torch.autograd.grad(phi, s, create_graph=create_graph)
    act = net.activation.fn
    return [act(g) if create_graph else act(g).detach() for g in grads]


def reference_relax(
    net: EnergyNetwork,
    x: Tensor,
    steps: int,
    y: Tensor | None = None,
    beta: float | Tensor = 0.0,
    state: Sequence[Tensor] | None = None,
) -> list[list[Tensor]]:
    """Relax with :func:`reference_step`; returns the whole trajectory [s_0, ..., s_steps]."""
    s = list(state) if state is not None else net.zero_state(x.shape[0])
    trajectory = [s]
    for _ in range(steps):
        s = reference_step(net, x, s, y, beta)
        trajectory.append(s)
    return trajectory


def bptt_gradients(
    net: EnergyNetwork, x: Tensor, y: Tensor, state: Sequence[Tensor], steps: int
) -> dict[str, Tensor]:
    """Gradient of the mean loss after ``steps`` reference steps from a detached ``state``.

    Started at a converged free state s*, this is truncated BPTT; as ``steps`` grows it tends to
    the gradient of L(s*(θ)) itself (implicit differentiation), for contracting dynamics.

    Returns:
        Parameter name → gradient (zeros for parameters the loss does not reach).
    """
    params = dict(net.named_parameters())
    with torch.enable_grad():
        s = [t.detach() for t in state]
        for _ in range(steps):
            s = reference_step(net, x, s, create_graph=True)
        loss = reference_loss(net, s, y).mean()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {
        name: (g if g is not None else torch.zeros_like(p))
        for (name, p), g in zip(params.items(), grads, strict=True)
    }


def reference_holomorphic_gradients(
    net: EnergyNetwork,
    x: Tensor,
    y: Tensor,
    free_state: Sequence[Tensor],
    points: int,
    beta: float,
    steps: int,
) -> dict[str, Tensor]:
    """Holomorphic EP's N-point estimate (``holomorphic-ep.md`` §2), the slow way.

    Every point β_k = r e^{2πik/N} of the full circle runs ``steps`` complex reference steps
    (:func:`reference_step`, complex128 states) from s*; the estimate is the gradient of the
    real scalar Σ_k Re[(−1/(N β_k)) mean_b Φ_{β_k}(x, s^{β_k}, θ)] with the states held fixed,
    i.e. Re (1/N) Σ_k (−1/β_k) ∂Φ_{β_k}/∂θ, readout included through the −β L term.
    """
    cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    total = x.new_zeros(())
    for k in range(points):
        b = beta * complex(math.cos(2 * math.pi * k / points), math.sin(2 * math.pi * k / points))
        s = [t.detach().to(cdtype) for t in free_state]
        for _ in range(steps):
            s = reference_step(net, x, s, y, b)
        with torch.enable_grad():
            phi = reference_phi(net, x, [t.detach() for t in s], y, b).mean()
            total = total + (phi * (-1.0 / (points * b))).real
    params = dict(net.named_parameters())
    with torch.enable_grad():
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return {
        name: (g if g is not None else torch.zeros_like(p))
        for (name, p), g in zip(params.items(), grads, strict=True)
    }


# ----------------------------------------------------------------- asymmetric networks (§4)

__all__ += ["reference_asymmetric_phi", "reference_asymmetric_step"]


def _reference_term(
    layer: torch.nn.Module, weight: Tensor, bias: Tensor | None, pre: Tensor, post: Tensor
) -> Tensor:
    """⟨post, P(weight ⋆ pre + bias)⟩ per example, with ``layer``'s conv geometry and pool."""
    if isinstance(layer, ConvInteraction):
        spec = layer.spec
        z = F.conv2d(pre, weight, bias, spec.stride, spec.padding)
        z = reference_pool(z, spec.pool, spec.temperature)
    else:
        z = pre.flatten(1) @ weight.T
        if bias is not None:
            z = z + bias
    return (post * z).flatten(1).sum(1)


def reference_asymmetric_phi(
    net: ChainNetwork,
    x: Tensor,
    n: int,
    state: Sequence[Tensor],
    nudged: Sequence[Tensor] | None = None,
) -> Tensor:
    """Per-layer function of an asymmetric network (spec §4), per example (B,).

    φ_n(s) = ⟨s_n, P_n(W_n s_{n−1} + b_n)⟩ + ⟨s_{n+1}, P_{n+1}(B_{n+1} s_n)⟩ with s_{−1} = x and
    B_{n+1} = ``net.interactions[n + 1].feedback`` (the spec's B_n). With ``nudged`` = s^β it is
    the mixed φ̃_n(s, s^β) = ⟨s^β_n, P_n(W_n s_{n−1} + b_n)⟩ + ⟨s_{n+1}, P_{n+1}(B_{n+1} s^β_n)⟩.
    No loss term.
    """
    post = state if nudged is None else nudged
    layer = net.interactions[n]
    pre = x if n == 0 else state[n - 1]
    if isinstance(layer, ConvInteraction):
        weight, bias = layer.conv.weight, layer.conv.bias
    else:
        dense = cast(DenseInteraction, layer)  # every other interaction is dense
        weight, bias = dense.linear.weight, dense.linear.bias
    total = _reference_term(layer, weight, bias, pre, post[n])
    if n + 1 < len(net.interactions):
        up = cast("AsymmetricInteraction", net.interactions[n + 1])  # holds feedback B_{n+1}
        total = total + _reference_term(up, up.feedback, None, post[n], state[n + 1])
    return total


def reference_asymmetric_step(
    net: ChainNetwork,
    x: Tensor,
    state: Sequence[Tensor],
    y: Tensor | None = None,
    beta: float | Tensor = 0.0,
) -> list[Tensor]:
    """One synchronous step of an asymmetric network: s_n ← σ(∂(φ_n − β L [n = target])/∂s_n).

    Each layer's own φ_n (:func:`reference_asymmetric_phi`) is differentiated by autograd with
    respect to that layer's state only; ``beta`` is a float or a per-example (B, 1) tensor.
    """
    nudging = isinstance(beta, Tensor) or beta != 0.0
    act = net.activation.fn
    new: list[Tensor] = []
    with torch.enable_grad():
        s = [t.detach().requires_grad_() for t in state]
        for n in range(len(s)):
            phi = reference_asymmetric_phi(net, x, n, s)
            if nudging and n == net.target_layer:
                assert y is not None
                b = beta.flatten() if isinstance(beta, Tensor) else beta
                phi = phi - b * reference_loss(net, s, y)
            (grad,) = torch.autograd.grad(phi.sum(), s[n])
            new.append(act(grad).detach())
    return new
