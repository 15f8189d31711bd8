"""Complex arithmetic on planar batches, and the holomorphic pieces written in it.

Holomorphic EP (``holomorphic-ep.md`` §3) relaxes nudged phases at complex β with real weights.
Here a batch of complex states is held *planar*: one real tensor whose batch rows are, in order
(:class:`Rows`),

    [ real examples (``real``) | real parts (``complex``) | imaginary parts (``complex``) ]

so that row ``real + i`` and row ``real + complex + i`` are the two parts of complex example i.
A linear map with real weights acts on every row on its own, so a convolution of the planar
batch *is* the two real convolutions of the real and imaginary parts, in one call, with no copy
in or out; only a bias must stay off the imaginary rows. The elementwise maps pair the two rows
of each complex example, in real arithmetic:

- σ(x + iy) for the logistic from u = ς(x) and the half-angle tangent t = tan(y/2), with
  v = u(1 − u), g = u − ½ and q = tg: σ = [u(½ + tq) + i tv] / (½ + 2q²). With cos y and sin y
  written in t, this is [(u − d) + i v sin y] / (1 − 2d) for d = v(1 − cos y); one
  transcendental pass instead of two. ``tanh``, ``mysig`` and ``dsilu`` follow from it.
- softmax pooling over 2×2 windows, P(v)_w = Σ vᵢ e^{vᵢ/τ} / Σ e^{vᵢ/τ}, and its transpose
  (∂P_w/∂vᵢ = pᵢ(1 + (vᵢ − P_w)/τ), p the window softmax), for real and planar batches;
- the softmax over classes of the cross-entropy readout.

Every shift inside an exponential (the window or class maximum of the real part) cancels in the
ratio it sits in, as the holomorphic continuation requires. Why not ``torch.complex64``: on CPU
PyTorch's complex elementwise kernels are 3–4× slower than the real operations that replace
them, and every conversion between the interleaved and the stacked layout is a full copy.

Example:
    >>> rows = Rows(real=1, complex=1)
    >>> t = torch.tensor([[2.0], [0.5], [0.0]])  # 2 (real), then 0.5 + 0i
    >>> rows.split(t)[1].item(), rows.total
    (0.5, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from eqprop.core.kernels import fast_layout, scalar

__all__ = [
    "COMPLEX_ACTIVATIONS",
    "PlanarScale",
    "Rows",
    "complex_dsilu_",
    "complex_identity_",
    "complex_mysig_",
    "complex_sigmoid_",
    "complex_softmax_",
    "complex_tanh_",
    "planar_scale_",
    "planar_softmax_pool",
    "planar_softmax_unpool",
    "softmax_pool",
    "softmax_unpool",
]


@dataclass(frozen=True)
class Rows:
    """The row layout of a planar batch (see the module docstring).

    Attributes:
        real: rows of real examples (imaginary part exactly zero, not stored).
        complex: complex examples; each takes two rows, its real and its imaginary part.
    """

    real: int = 0
    complex: int = 0

    @property
    def total(self) -> int:
        """Number of rows of the planar batch."""
        return self.real + 2 * self.complex

    @property
    def with_bias(self) -> int:
        """Rows a real bias (or a real target) applies to: the real rows and the real parts."""
        return self.real + self.complex

    def split(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Views of ``t``'s real rows, real parts and imaginary parts."""
        r, m = self.real, self.complex
        return t[:r], t[r : r + m], t[r + m :]

    def imag(self, t: Tensor) -> Tensor:
        """View of the imaginary rows of ``t``."""
        return t[self.with_bias :]


def _column(c: Tensor, like: Tensor) -> Tensor:
    """A per-row vector shaped to broadcast over ``like``'s non-batch dimensions."""
    return c.view(-1, *([1] * (like.dim() - 1)))


def planar_scale_(t: Tensor, coef: Tensor, rows: Rows) -> Tensor:
    """``t ← c·t`` row by row in place, for a planar per-row coefficient ``c`` (complex product).

    The plain form, kept as the reference :class:`PlanarScale` is tested against.

    Args:
        t: a planar batch (rows.total, ...), overwritten.
        coef: (rows.total,) or (rows.total, 1): c on the real rows, Re c on the real parts and
            Im c on the imaginary parts.
        rows: the layout.

    Returns:
        ``t``.
    """
    c = _column(coef, t)
    real, re, im = rows.split(t)
    c_real, c_re, c_im = rows.split(c)
    if rows.real:
        real.mul_(c_real)
    if rows.complex:
        tmp = im * c_im  # (a + ib)(c + id) = (ac − bd) + i(ad + bc)
        im.mul_(c_re).addcmul_(re, c_im)
        re.mul_(c_re).sub_(tmp)
    return t


class PlanarScale:
    """``t ↦ c·t`` row by row for a fixed planar coefficient ``c``, precomputed.

    :func:`planar_scale_` costs some ten small operations per call. A relaxation scales its
    nudge by the same β at every step, so this keeps two factor columns and the row order that
    swaps each complex example's two parts: c·t = a ⊙ t + b ⊙ swap(t), with a = (c, Re c, Re c)
    and b = (0, −Im c, Im c) on (real rows, real parts, imaginary parts): three operations.

    Args:
        coef: (rows.total,) or (rows.total, 1), as for :func:`planar_scale_`.
        rows: the layout.
        sign: a real factor folded into c (−1 for a nudge −β·e).
    """

    def __init__(self, coef: Tensor, rows: Rows, sign: float = 1.0) -> None:
        real, re, im = rows.split(coef.reshape(-1) * sign)
        self.a = torch.cat([real, re, re])
        self.b = torch.cat([torch.zeros_like(real), -im, im]) if rows.complex else None
        r, m = rows.real, rows.complex
        idx = torch.arange(rows.total, device=coef.device)
        self.swap = torch.cat([idx[:r], idx[r + m :], idx[r : r + m]])
        self._columns: dict[int, tuple[Tensor, Tensor | None]] = {}

    def __call__(self, t: Tensor) -> Tensor:
        """c·t as a fresh tensor (``t`` is left as it is)."""
        cols = self._columns.get(t.dim())
        if cols is None:
            b = None if self.b is None else _column(self.b, t)
            cols = self._columns[t.dim()] = (_column(self.a, t), b)
        a, b = cols
        out = torch.mul(t, a)
        return out if b is None else out.addcmul_(t.index_select(0, self.swap), b)


# ----------------------------------------------------------------- activations


def _sigmoid_parts(u: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(½ + tq, v, ½ + 2q²) for v = u(1 − u), g = u − ½, q = tg: σ(x + iy) = (u·a + i·t·v)/d.

    v is computed as u − u², not as ¼ − g², which would lose its relative precision where the
    unit saturates (u near 0).
    """
    g = torch.sub(u, scalar(0.5, u))
    q = torch.mul(t, g)
    half = scalar(0.5, q)
    den = torch.addcmul(half, q, q, value=2.0)
    a = torch.addcmul(half, t, q)
    v = torch.addcmul(u, u, u, value=-1.0)
    return a, v, den


def _sigmoid_from_tan_(re: Tensor, t: Tensor) -> None:
    """σ(x + iy) in place from ``re`` = x and ``t`` = tan(y/2) (both overwritten)."""
    u = re.sigmoid_()
    a, v, den = _sigmoid_parts(u, t)
    u.mul_(a).div_(den)
    t.mul_(v).div_(den)


def _sigmoid_of_tan(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """σ(x + iy) as fresh tensors from x and t = tan(y/2) (neither is changed)."""
    u = torch.sigmoid(x)
    a, v, den = _sigmoid_parts(u, t)
    return u.mul_(a).div_(den), v.mul_(t).div_(den)


def complex_sigmoid_(re: Tensor, im: Tensor) -> None:
    """Logistic σ(z) = 1/(1 + e^{−z}) of z = re + i·im, written into ``re`` and ``im``.

    One tangent instead of a cosine and a sine (the module docstring): on this CPU a pass of
    ``tan`` costs about 1.4 of ``sin``, and each costs several arithmetic passes.
    """
    im.mul_(scalar(0.5, im)).tan_()
    _sigmoid_from_tan_(re, im)


def complex_mysig_(re: Tensor, im: Tensor) -> None:
    """``mysig`` σ(4z − 2) in place (tan(4y/2) = tan 2y: one scaling of ``im``)."""
    re.mul_(scalar(4.0, re)).sub_(scalar(2.0, re))
    im.mul_(scalar(2.0, im)).tan_()
    _sigmoid_from_tan_(re, im)


def complex_tanh_(re: Tensor, im: Tensor) -> None:
    """tanh z = 2σ(2z) − 1 in place (tan(2y/2) = tan y: ``im`` is not scaled first)."""
    two = scalar(2.0, re)
    re.mul_(two)
    im.tan_()
    _sigmoid_from_tan_(re, im)
    re.mul_(two).sub_(scalar(1.0, re))
    im.mul_(two)


def complex_dsilu_(re: Tensor, im: Tensor) -> None:
    """``dsilu`` f(z) = ½z·σ(z) + (1 − ½z)·σ(z − 2) = σ(z − 2) + ½z(σ(z) − σ(z − 2)) in place.

    σ(z) and σ(z − 2) share their imaginary part, hence tan(y/2).
    """
    t = torch.mul(im, scalar(0.5, im)).tan_()
    a_re, a_im = _sigmoid_of_tan(re, t)
    b_re, b_im = _sigmoid_of_tan(torch.sub(re, scalar(2.0, re)), t)
    d_re, d_im = a_re.sub_(b_re), a_im.sub_(b_im)
    half_re = torch.mul(re, d_re).addcmul_(im, d_im, value=-1.0)  # Re(z d)
    d_im.mul_(re).addcmul_(im, d_re)  # Im(z d)
    torch.add(b_re, half_re, alpha=0.5, out=re)
    torch.add(b_im, d_im, alpha=0.5, out=im)


def complex_identity_(re: Tensor, im: Tensor) -> None:
    """The identity (a linear node) in place: nothing to do."""


#: Planar forms f(re, im) (in place) of the holomorphic activations, by activation name.
COMPLEX_ACTIVATIONS: dict[str, Callable[[Tensor, Tensor], None]] = {
    "mysig": complex_mysig_,
    "sigmoid": complex_sigmoid_,
    "tanh": complex_tanh_,
    "dsilu": complex_dsilu_,
}


# ----------------------------------------------------------------- softmax pooling


def _windows(z: Tensor) -> Tensor:
    """The 2×2 windows of ``z`` (B, C, H, W) as a (B, C, H//2, 2, W//2, 2) view.

    An odd last row or column is left out, as 2×2 stride-2 pooling leaves it.
    """
    _, _, h, w = z.shape
    z = z[:, :, : h - h % 2, : w - w % 2]
    return z.unflatten(3, (w // 2, 2)).unflatten(2, (h // 2, 2))


def _up(pooled: Tensor) -> Tensor:
    """A pooled (B, C, H2, W2) tensor broadcastable against window-shaped ones."""
    return pooled[:, :, :, None, :, None]


def _window_max(z: Tensor) -> Tensor:
    """The maximum of each 2×2 window, (B, C, H//2, W//2), without a graph."""
    return F.max_pool2d(z.detach(), 2)


def _window_sum(t: Tensor) -> Tensor:
    """The sum over each window of a window-shaped tensor, (B, C, H2, W2).

    A pooling kernel on the 4-D form: several times faster on CPU than a reduction over the
    two strided window dimensions. The 4-D form is a view when ``t`` is laid out like the
    windows of a 4-D tensor, which every elementwise result of window views is.
    """
    return F.avg_pool2d(t.flatten(4, 5).flatten(2, 3), 2, divisor_override=1)


def softmax_pool(z: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Softmax pooling of real pre-pool maps and the weights of its transpose.

    Args:
        z: pre-pool maps, (B, C, H, W).
        tau: temperature τ > 0.

    Returns:
        (P(z) of shape (B, C, H//2, W//2), J of window shape (B, C, H//2, 2, W//2, 2) with
        Jᵢ = ∂P_w/∂zᵢ = pᵢ(1 + (zᵢ − P_w)/τ)).
    """
    # Differentiable as written (BPTT and the generalised update run it under autograd): no
    # in-place operation overwrites a tensor that a backward formula keeps.
    zw = _windows(z)
    shifted = torch.sub(zw, _up(_window_max(z)))
    if tau != 1.0:
        shifted.mul_(1.0 / tau)
    e = torch.exp(shifted)
    p = e / _up(_window_sum(e))
    pooled = _window_sum(p * zw)
    w = torch.sub(zw, _up(pooled))
    if tau != 1.0:
        w.mul_(1.0 / tau)
    return pooled, torch.mul(w.add_(1.0), p)


def _scatter_shape(post: Tensor, conv_hw: tuple[int, int]) -> Tensor:
    """A zero-bordered (odd sizes) or uninitialised (even) buffer of the pre-pool size."""
    h, w = conv_hw
    out = torch.empty(
        (post.shape[0], post.shape[1], h, w), dtype=post.dtype, device=post.device,
        memory_format=torch.channels_last,
    )  # fmt: skip
    return out.zero_() if h % 2 or w % 2 else out


def softmax_unpool(post: Tensor, jac: Tensor, conv_hw: tuple[int, int]) -> Tensor:
    """The transpose of softmax pooling at the point where ``jac`` was taken: Jᵢ·post_w.

    Args:
        post: pooled-space tensor (B, C, H//2, W//2).
        jac: the J of :func:`softmax_pool`.
        conv_hw: (H, W) of the pre-pool maps.

    Returns:
        A fresh (B, C, H, W) tensor (zero in a row or column the pool left out).
    """
    up = torch.mul(jac, post[:, :, :, None, :, None])  # differentiable (no out=)
    up = up.flatten(4, 5).flatten(2, 3)  # a view: the product is laid out like jac
    h, w = conv_hw
    if up.shape[-2:] != (h, w):  # odd conv output: the left-out row/column gets zero
        up = F.pad(up, (0, w - up.shape[-1], 0, h - up.shape[-2]))
    return fast_layout(up)


def planar_softmax_pool(
    z: Tensor, tau: float, rows: Rows
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Softmax pooling of a planar batch of pre-pool maps, and its transpose's weights.

    The real rows are pooled by :func:`softmax_pool`; each complex example by the holomorphic
    continuation (shift by the window maximum of the real part).

    Returns:
        (the planar pooled batch, (J of the real rows, Re J, Im J)).
    """
    real, re, im = rows.split(z)
    out = torch.empty(
        (z.shape[0], z.shape[1], z.shape[2] // 2, z.shape[3] // 2), dtype=z.dtype,
        device=z.device, memory_format=torch.channels_last,
    )  # fmt: skip
    o_real, o_re, o_im = rows.split(out)
    j_real = real  # an empty placeholder when there are no real rows
    if rows.real:
        p_real, j_real = softmax_pool(real, tau)
        o_real.copy_(p_real)
    if not rows.complex:
        return out, (j_real, re, im)
    xr, xi = _windows(re), _windows(im)
    scale = 1.0 / tau
    er = torch.sub(xr, _up(_window_max(re)))
    if tau != 1.0:
        er.mul_(scale)
    er.exp_()
    angle = xi * scale if tau != 1.0 else xi
    ei = torch.sin(angle).mul_(er)  # e = e^{(x − max)/τ} (cos(y/τ) + i sin(y/τ))
    er.mul_(torch.cos(angle))
    s_re, s_im = _window_sum(er), _window_sum(ei)
    inv = torch.addcmul(s_re * s_re, s_im, s_im).reciprocal_()
    q_re, q_im = _up(s_re.mul_(inv)), _up(s_im.mul_(inv).neg_())  # 1/S = conj(S)/|S|²
    p_re = torch.mul(er, q_re).addcmul_(ei, q_im, value=-1.0)  # p = e/S
    p_im = ei.mul_(q_re).addcmul_(er, q_im)
    t = torch.mul(xr, p_re, out=er).addcmul_(xi, p_im, value=-1.0)
    pool_re = _window_sum(t)  # P = Σ v p
    t = torch.mul(xr, p_im, out=t).addcmul_(xi, p_re)
    pool_im = _window_sum(t)
    o_re.copy_(pool_re)
    o_im.copy_(pool_im)
    w_re = torch.sub(xr, _up(pool_re), out=t)  # w = 1 + (v − P)/τ
    w_im = torch.sub(xi, _up(pool_im))
    if tau != 1.0:
        w_re.mul_(scale)
        w_im.mul_(scale)
    w_re.add_(1.0)
    j_re = torch.mul(p_re, w_re).addcmul_(p_im, w_im, value=-1.0)  # J = p w
    j_im = w_im.mul_(p_re).addcmul_(p_im, w_re)
    return out, (j_real, j_re, j_im)


def planar_softmax_unpool(
    post: Tensor, ctx: tuple[Tensor, Tensor, Tensor], conv_hw: tuple[int, int], rows: Rows
) -> Tensor:
    """The transpose of :func:`planar_softmax_pool` (plain transpose, no conjugation).

    Returns:
        A fresh planar (rows.total, C, H, W) tensor: J_real·post on the real rows, and the
        complex product J·post_w on each complex example.
    """
    j_real, j_re, j_im = ctx
    out = _scatter_shape(post, conv_hw)
    up = post[:, :, :, None, :, None]
    u_real, u_re, u_im = (_windows(t) for t in rows.split(out))
    g_real, g_re, g_im = rows.split(up)
    if rows.real:
        torch.mul(j_real, g_real, out=u_real)
    if not rows.complex:
        return out
    torch.mul(j_re, g_re, out=u_re).addcmul_(j_im, g_im, value=-1.0)
    torch.mul(j_re, g_im, out=u_im).addcmul_(j_im, g_re)
    return out


# ----------------------------------------------------------------- the readout's softmax


def complex_softmax_(re: Tensor, im: Tensor) -> None:
    """Softmax over the last dimension of z = re + i·im (complex examples), in place."""
    er = torch.sub(re, re.amax(dim=-1, keepdim=True)).exp_()
    ei = torch.sin(im).mul_(er)
    er.mul_(torch.cos(im))
    s_re, s_im = er.sum(dim=-1, keepdim=True), ei.sum(dim=-1, keepdim=True)
    inv = torch.addcmul(s_re * s_re, s_im, s_im).reciprocal_()
    q_re, q_im = s_re.mul_(inv), s_im.mul_(inv).neg_()
    torch.mul(er, q_re, out=re).addcmul_(ei, q_im, value=-1.0)
    torch.mul(ei, q_re, out=im).addcmul_(er, q_im)


def planar_softmax_(logits: Tensor, rows: Rows) -> Tensor:
    """Softmax over classes of a planar batch of logits (rows.total, K), in place."""
    real, re, im = rows.split(logits)
    real.copy_(F.softmax(real, dim=-1))
    if rows.complex:
        complex_softmax_(re, im)
    return logits
