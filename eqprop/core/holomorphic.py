"""Chain networks on planar complex batches: the dynamics and EP update of holomorphic EP.

``holomorphic-ep.md`` §2–3. :class:`PlanarNetwork` is a view of a chain network (sharing its
parameters) that relaxes a planar batch (:class:`~eqprop.core.planar.Rows`: real examples, then
the real and the imaginary parts of complex examples) with the ordinary schedules and solver:

- its interactions run the same convolutions and matrix products on every row (the weights
  are real), add the bias to the real rows and parts only, and replace the pool and its transpose by
  their holomorphic continuations (softmax pool; average pool and identity are linear);
- its activation applies the real σ to the real rows and the complex σ to each complex example;
- its nudge at a per-row planar β is −β ∂L/∂s with the complex softmax of the readout (or the
  squared error), the targets being real.

:meth:`PlanarNetwork.weight_contrast` gives Re Σ_rows c ∂Φ/∂θ(s) for planar per-row complex
coefficients c, in closed form: Φ is bilinear in (θ, states) once the pool's transpose is
fixed, and for a product of two complex factors Re(a ⊗ b) = Re a ⊗ Re b − Im a ⊗ Im b, i.e. the
real closed form on the planar rows with the imaginary rows of one factor negated (no
conjugation anywhere). :meth:`PlanarNetwork.readout_grads` does the same for the readout.

A network whose pieces are not holomorphic (a clamp activation, max pooling) cannot be
continued off the real axis: :func:`check_holomorphic` names the piece (on energy graphs, the
node or the edge; their planar view is :mod:`eqprop.core.planar_graph`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqprop.core.activations import Activation
from eqprop.core.chain import ChainNetwork, Interactions, State, WeightGrads
from eqprop.core.holomorphic_check import check_holomorphic
from eqprop.core.interactions import ConvInteraction, DenseInteraction, Interaction
from eqprop.core.kernels import conv_param_grads, fast_layout
from eqprop.core.planar import (
    PlanarScale,
    Rows,
    complex_identity_,
    planar_softmax_,
    planar_softmax_pool,
    planar_softmax_unpool,
)
from eqprop.core.validation import SettingError

__all__ = [
    "PlanarNetwork",
    "check_holomorphic",
    "from_planar",
    "planar_activation",
    "planar_activation_",
    "planar_activation_of",
    "planar_states",
    "to_planar",
]


def to_planar(parts: Sequence[Tensor], complex_parts: Sequence[Tensor] = ()) -> Tensor:
    """A planar batch from its real rows and its complex examples' real parts (imaginary
    parts zero): ``cat([*parts, *complex_parts, zeros like complex_parts])``."""
    zeros = [torch.zeros_like(t) for t in complex_parts]
    return fast_layout(torch.cat([*parts, *complex_parts, *zeros], 0))


def from_planar(t: Tensor, rows: Rows) -> tuple[Tensor, Tensor]:
    """The real rows of a planar batch and its complex examples as one complex tensor."""
    real, re, im = rows.split(t)
    return real, torch.complex(re, im)


@functools.cache
def compiled(fn: Callable[[Tensor, Tensor], None]) -> Callable[[Tensor, Tensor], None]:
    """``torch.compile`` of a complex activation (one fused loop instead of some fifteen
    elementwise operations; cached per function, a graph per shape)."""
    return torch.compile(fn, dynamic=False)


def planar_activation_(t: Tensor, act: Activation, rows: Rows) -> Tensor:
    """σ applied in place to a planar batch: real σ on the real rows, complex σ on the rest."""
    real, re, im = rows.split(t)
    if rows.real:
        out = act.fn_(real)
        if out is not real:
            real.copy_(out)
    if rows.complex:
        assert act.complex_fn_ is not None  # check_holomorphic
        act.complex_fn_(re, im)
    return t


def planar_activation(t: Tensor, act: Activation, rows: Rows) -> Tensor:
    """Out-of-place :func:`planar_activation_`."""
    return planar_activation_(t.clone(), act, rows)


def planar_activation_of(act: Activation, rows: Rows, compile: bool = False) -> Activation:
    """``act`` on planar batches laid out as ``rows`` (its complex form ``complex_fn_``,
    through :func:`compiled` when ``compile``)."""
    fn = act.complex_fn_
    if compile and fn is not None and fn is not complex_identity_:
        fn = compiled(fn)
    act = dataclasses.replace(act, complex_fn_=fn)
    return Activation(
        act.name,
        functools.partial(planar_activation, act=act, rows=rows),
        functools.partial(planar_activation_, act=act, rows=rows),
        act.description,
        fn,
    )


def _same(a: object, b: object) -> bool:
    """The same tensor object, or equal plain values (a cache key's parts)."""
    return a is b if isinstance(a, Tensor) or isinstance(b, Tensor) else a == b


class _PlanarInteraction(Interaction):
    """An interaction on planar batches, wrapping a real one (parameters shared)."""

    def __init__(self, inner: Interaction, rows: Rows) -> None:
        nn.Module.__init__(self)  # not super(): a subclass may mix in a real interaction class
        self.inner = inner
        self.rows = rows
        self.pre_shape = inner.pre_shape
        self.post_shape = inner.post_shape

    def weights(self) -> list[nn.Parameter]:
        return self.inner.weights()

    def _bias(self) -> Tensor | None:
        """The bias, shaped to broadcast over a drive; None for a bias-free interaction."""
        raise NotImplementedError

    def _add_real_bias(self, drive: Tensor) -> Tensor:
        """Add the bias to the real rows and real parts only (in place). Added to every row
        and taken off the imaginary ones instead, it would cancel catastrophically there
        (b + ε − b)."""
        bias = self._bias()
        if bias is not None:
            drive[: self.rows.with_bias].add_(bias)  # in place; no copy back
        return drive

    def _with_bias_grad(self, g_w: Tensor, u: Tensor, dims: tuple[int, ...]) -> list[Tensor]:
        """[g_w, Σ of ``u`` over the rows the bias acts on and ``dims``], or [g_w] without a
        bias: aligned with :meth:`weights`."""
        if self._bias() is None:
            return [g_w]
        return [g_w, u[: self.rows.with_bias].sum(dims)]


class PlanarDense(_PlanarInteraction):
    """:class:`DenseInteraction` (or its asymmetric kind) on planar batches."""

    inner: DenseInteraction

    def _bias(self) -> Tensor | None:
        return cast("Tensor | None", self.inner.linear.bias)

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, None]:
        return self._add_real_bias(F.linear(pre.flatten(1), self.inner.linear.weight)), None

    def backward_drive(self, post: Tensor, ctx: None) -> Tensor:
        return self.inner.backward_drive(post, ctx)

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        """Re of Σ_rows ∂φ/∂θ for complex (coefficient-weighted) ``post``: the real rows and
        real parts' product minus the imaginary parts' (``post`` is left as it is)."""
        w = self.rows.with_bias
        with torch.no_grad():
            pre = pre.flatten(1)
            g_w = torch.mm(post[:w].t(), pre[:w]).sub_(torch.mm(post[w:].t(), pre[w:]))
            return self._with_bias_grad(g_w, post, (0,))


class PlanarConv(_PlanarInteraction):
    """:class:`ConvInteraction` (or its asymmetric kind) on planar batches."""

    inner: ConvInteraction

    def _bias(self) -> Tensor | None:
        bias = self.inner.conv.bias
        return None if bias is None else bias.view(-1, 1, 1)

    def _planar_pool(self, z: Tensor) -> tuple[Tensor, Any]:
        spec = self.inner.spec
        if spec.pool == "s":
            return planar_softmax_pool(z, spec.temperature, self.rows)
        if spec.pool == "a":
            return F.avg_pool2d(z, 2, 2), None
        if spec.pool == "m":
            raise SettingError("max pooling has no complex form", "pool")
        return z, None

    def _pre_pool(self, pre: Tensor) -> Tensor:
        """conv(pre) + b, the bias on the real rows and parts only."""
        s = self.inner.spec
        z = F.conv2d(pre, self.inner.conv.weight, None, s.stride, s.padding)
        return self._add_real_bias(z)

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, Any]:
        pooled, ctx = self._planar_pool(self._pre_pool(pre))
        feedback = self.inner.feedback_map(pre) if ctx is not None else None
        if feedback is not None:  # asymmetric: the backward weighs by the feedback map's pool
            ctx = self._planar_pool(feedback)[1]
        return fast_layout(pooled), ctx

    def _unpool(self, post: Tensor, ctx: Any) -> Tensor:
        """The pool's transpose on a planar batch (a fresh tensor)."""
        spec = self.inner.spec
        if spec.pool == "s":
            return planar_softmax_unpool(post, ctx, self.inner.conv_hw, self.rows)
        up = self.inner._unpool(post, None)  # linear pools: the same map on every row
        return up.clone() if up is post else up

    def backward_drive(self, post: Tensor, ctx: Any) -> Tensor:
        inner = self.inner
        return inner._transposed_conv(self._unpool(post, ctx), inner.backward_weight)

    def weight_grads(self, pre: Tensor, post: Tensor, ctx: Any = None) -> list[Tensor]:
        """Re of Σ_rows ∂φ/∂θ for complex (coefficient-weighted) ``post``, the pool's
        transpose taken at the complex pre-pool map conv(pre) + b."""
        inner = self.inner
        with torch.no_grad():
            if ctx is None:
                ctx = self._planar_pool(self._pre_pool(pre))[1]
            u = self._unpool(post, ctx)
            self.rows.imag(u).neg_()
            s = inner.spec
            g_w, _ = conv_param_grads(u, pre, inner.conv.weight, s.stride, s.padding, False)
        return self._with_bias_grad(g_w, u, (0, 2, 3))


class PlanarNetwork(ChainNetwork):
    """A view of ``net`` that relaxes planar complex batches laid out as ``rows``.

    It shares ``net``'s parameters and is built per relaxation (cheap); schedules, the solver
    and its tolerance run on it unchanged. Beyond the dynamics it offers the closed-form EP
    update of complex phases (:meth:`weight_contrast`, :meth:`readout_grads`).

    Args:
        net: a chain network whose pieces are holomorphic (:func:`check_holomorphic`).
        rows: the layout of the batches it will relax.
        compile: run the complex activation through ``torch.compile`` (:func:`compiled`).
    """

    def __init__(self, net: ChainNetwork, rows: Rows, compile: bool = False) -> None:
        nn.Module.__init__(self)  # a view: none of ChainNetwork's construction
        self.settings = net.settings
        self.input_shape = net.input_shape
        self.num_classes = net.num_classes
        self.output = net.output
        self.relaxation = None
        self.rows = rows
        self.activation = planar_activation_of(net.activation, rows, compile)
        layers: list[Interaction] = []
        for layer in net.interactions:
            if isinstance(layer, ConvInteraction):
                layers.append(PlanarConv(layer, rows))
            else:
                layers.append(PlanarDense(cast(DenseInteraction, layer), rows))
        self.interactions = Interactions(layers)
        self.readout = net.readout
        self._nudge_cache: tuple[tuple[Any, ...], Tensor, PlanarScale] | None = None

    def _probabilities(self, last: Tensor) -> Tensor:
        """Planar softmax of the readout's logits at the planar last state, (rows, K)."""
        assert self.readout is not None
        logits = F.linear(last.flatten(1), self.readout.weight)
        logits[: self.rows.with_bias].add_(self.readout.bias)
        return planar_softmax_(logits, self.rows)

    def _output(self, state: Sequence[Tensor]) -> Tensor:
        """The output state inside the energy (no readout): a chain's last layer."""
        return state[-1]

    def _error(self, state: Sequence[Tensor], target: Tensor) -> Tensor:
        """∂L/∂(output or logits) on the planar batch, a fresh tensor: s − y (mse),
        softmax(s) − y (a graph's node_ce) or softmax(z) − y (ce); ``target``: y on the real
        rows and real parts, 0 on the imaginary parts (:meth:`_nudge_terms`)."""
        if self.readout is not None:
            return self._probabilities(state[self.target_layer]).sub_(target)
        if self.output == "node_ce":
            return planar_softmax_(self._output(state).clone(), self.rows).sub_(target)
        return torch.sub(self._output(state), target)

    def _target(self, onehot: Tensor) -> Tensor:
        """The planar target of :meth:`_error`: ``onehot`` with its imaginary rows zeroed."""
        target = onehot.clone()
        self.rows.imag(target).zero_()
        return target

    def _nudge_terms(self, y: Tensor, beta: Tensor | float) -> tuple[Tensor, PlanarScale]:
        """The planar target and the scale by −β of :meth:`nudge_drive`, computed once per
        relaxation: the solver passes the same ``y`` and ``beta`` at every step.

        Not while a CUDA graph is captured: its replays copy new values into the same ``y``
        and ``beta`` buffers, so the graph must compute the terms from them at every step.
        """
        capturing = y.is_cuda and torch.cuda.is_current_stream_capturing()
        key = (y, y._version, beta, beta._version if isinstance(beta, Tensor) else None)
        cached = self._nudge_cache
        if not capturing and cached is not None and all(map(_same, cached[0], key)):
            return cached[1], cached[2]
        if not isinstance(beta, Tensor):
            beta = y.new_full((y.shape[0],), float(beta))
        target = self._target(y)
        scale = PlanarScale(beta, self.rows, sign=-1.0)
        if not capturing:
            self._nudge_cache = (key, target, scale)
        return target, scale

    def nudge_drive(self, state: Sequence[Tensor], y: Tensor, beta: Tensor | float) -> Tensor:
        """−β ∂L/∂s of the target layer for a planar per-row β (``beta``: (rows, 1), β on the
        real rows, Re β and Im β on the parts); ``y``: one-hot targets (rows, K), whose
        imaginary-part rows are not read."""
        target, scale = self._nudge_terms(y, beta)
        err = scale(self._error(state, target))
        if self.readout is None:
            return err
        last = state[self.target_layer]
        return torch.mm(err, self.readout.weight).view_as(last)

    def weight_contrast_planar(
        self, x: Tensor, state: Sequence[Tensor], coef: Tensor, input_ctx: Any
    ) -> WeightGrads:
        """Re Σ_rows c ∂Φ/∂θ(x, s) over the weights of the dynamics, in closed form.

        Args:
            x: the real inputs (B, ...); the planar rows hold whole batches of them, in order.
            state: planar states, one (rows.total, ...) tensor per layer.
            coef: planar per-row coefficients (rows.total,), batch mean included.
            input_ctx: the first layer's context of ``input_drive_with_context(x)``.
        """
        rows, b = self.rows, x.shape[0]
        layers = self.interactions
        scale = PlanarScale(coef, rows)
        with torch.no_grad():
            # The input term is linear in s_1 with x shared and real: its real parts, summed
            # over the stacked batches, meet x once.
            post = scale(state[0].detach())[: rows.with_bias]
            first = post.unflatten(0, (-1, b)).sum(0)
            inner = cast(_PlanarInteraction, layers[0]).inner
            out = inner.paired_weight_grads(fast_layout(x), fast_layout(first), input_ctx)
            for n in range(1, len(layers)):
                post = scale(state[n].detach())
                out += layers[n].paired_weight_grads(state[n - 1].detach(), post)
        return out

    def readout_grads_planar(
        self, state: Sequence[Tensor], onehot: Tensor, weight: Tensor
    ) -> WeightGrads:
        """Re Σ_rows a ∂L/∂θ_out(s) (CE readout) for real per-row weights ``weight``
        (rows.total,), in closed form; empty without a readout."""
        if self.readout is None:
            return []
        last = state[self.target_layer].detach().flatten(1)
        with torch.no_grad():
            err = self._error(state, self._target(onehot)).mul_(weight.view(-1, 1))
            self.rows.imag(err).neg_()
            params = [cast(nn.Parameter, self.readout.weight), self.readout.bias]
            grads = [torch.mm(err.t(), last), err[: self.rows.with_bias].sum(0)]
        return list(zip(params, grads, strict=True))

    def weight_contrast(
        self, x: Tensor, free_state: Sequence[Tensor], phases: Any, input_ctx: Any
    ) -> WeightGrads:
        raise NotImplementedError("a planar view: use weight_contrast_planar")


def planar_states(free_state: State, real: int, complex_: int) -> State:
    """Planar starting states: ``real`` copies of each real state, then ``complex_`` copies as
    the real parts of complex examples (imaginary parts zero)."""
    return [to_planar([s.detach()] * real, [s.detach()] * complex_) for s in free_state]
