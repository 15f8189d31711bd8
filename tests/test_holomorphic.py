"""The holomorphic pieces (holomorphic-ep.md §3, §6 items 1, 2, 10): complex forms of the
activations, softmax pooling and the cross-entropy nudge on planar batches, their closed-form
transposes, and the planar network view, each against a slow reference (PyTorch complex
arithmetic, autograd conjugated as PyTorch's convention requires)."""

from __future__ import annotations

import copy
import functools
import io

import pytest
import torch
import torch.nn.functional as F

from eqprop import ConvLayer, EnergyNetwork, SymmetricEP
from eqprop.core import ACTIVATIONS
from eqprop.core.holomorphic import PlanarNetwork, check_holomorphic, planar_states, to_planar
from eqprop.core.planar import (
    COMPLEX_ACTIVATIONS,
    PlanarScale,
    Rows,
    planar_scale_,
    planar_softmax_,
    planar_softmax_pool,
    planar_softmax_unpool,
    softmax_pool,
    softmax_unpool,
)
from eqprop.core.validation import SettingError
from eqprop.dynamics import even_odd_step, synchronous_step
from eqprop.reference import reference_loss, reference_pool, reference_step

# torch.func.jvp loads PyTorch's forward-mode decompositions through torch.jit.script once.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

DT = torch.float64
H = 1e-20  # complex-step size: no cancellation, so the derivative is exact to round-off

#: The holomorphic functions the planar forms continue, written with PyTorch complex ops.
TORCH_FORMS = {
    "mysig": lambda z: torch.sigmoid(4 * z - 2),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "dsilu": lambda z: 0.5 * z * torch.sigmoid(z) + (1 - 0.5 * z) * torch.sigmoid(z - 2),
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def planar(z: torch.Tensor, rows: Rows, real: torch.Tensor | None = None) -> torch.Tensor:
    """The planar batch [real rows | Re z | Im z]."""
    parts = [real] if real is not None else []
    return torch.cat([*parts, z.real, z.imag])


def complex_part(t: torch.Tensor, rows: Rows) -> torch.Tensor:
    _, re, im = rows.split(t)
    return torch.complex(re, im)


# ----------------------------------------------------------------- activations


def test_the_holomorphic_activations_are_registered_with_their_complex_forms():
    holo = {name for name, act in ACTIVATIONS.items() if act.holomorphic}
    assert holo == set(COMPLEX_ACTIVATIONS) == {"mysig", "sigmoid", "tanh", "dsilu"}
    for name in ("hard_sigmoid", "my_hard_sig", "ctrd_hard_sig"):
        assert ACTIVATIONS[name].complex_fn_ is None


@pytest.mark.parametrize("name", sorted(COMPLEX_ACTIVATIONS))
def test_complex_activation_equals_the_torch_complex_function(name):
    g = gen()
    x, y = 3 * torch.randn(40, generator=g, dtype=DT), torch.randn(40, generator=g, dtype=DT)
    re, im = x.clone(), y.clone()
    COMPLEX_ACTIVATIONS[name](re, im)
    want = TORCH_FORMS[name](torch.complex(x, y))
    err = (torch.complex(re, im) - want).abs() / want.abs().clamp(min=1.0)
    assert float(err.max()) <= 1e-13


@pytest.mark.parametrize("name", sorted(COMPLEX_ACTIVATIONS))
def test_complex_step_derivative_of_each_activation_equals_autograd(name):
    """Holomorphy: Im f(x + ih)/h = f'(x) to round-off (a clamp has no such form)."""
    act = ACTIVATIONS[name]
    x = torch.linspace(-6, 6, 121, dtype=DT)
    re, im = x.clone(), torch.full_like(x, H)
    COMPLEX_ACTIVATIONS[name](re, im)
    xg = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(act.fn(xg).sum(), xg)
    assert float((im / H - want).abs().max()) <= 1e-14
    assert float((re - act.fn(x)).abs().max()) <= 1e-15  # and the real part is f(x)


def test_dsilu_is_a_smooth_clamp_with_matching_in_place_form():
    act = ACTIVATIONS["dsilu"]
    x = torch.linspace(-8, 10, 181, dtype=DT)
    assert float((act.fn(x) - (0.5 * x).clamp(0, 1)).abs().max()) <= 0.13  # the 0.12 gap
    assert torch.equal(act.fn_(x.clone()), act.fn(x))
    xg = x[::10].clone().requires_grad_()
    torch.autograd.gradcheck(lambda t: act.fn_(t * 1.0), (xg,))  # differentiable in place


# ----------------------------------------------------------------- softmax pooling


def _maps(batch: int, h: int, w: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(batch, 3, h, w, generator=gen(seed), dtype=DT)


@pytest.mark.parametrize("tau", [1.0, 10.0])
@pytest.mark.parametrize("hw", [(4, 6), (5, 7)])
def test_real_softmax_pool_and_its_transpose_equal_autograd(tau, hw):
    z = _maps(2, *hw).contiguous(memory_format=torch.channels_last)
    pooled, jac = softmax_pool(z, tau)
    assert float((pooled - reference_pool(z, "s", tau)).abs().max()) <= 1e-14
    post = torch.randn(pooled.shape, generator=gen(1), dtype=DT)
    zg = z.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference_pool(zg, "s", tau), zg, grad_outputs=post)
    got = softmax_unpool(post, jac, hw)
    assert float((got - want).abs().max()) <= 1e-14
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("tau", [1.0, 10.0])
@pytest.mark.parametrize("hw", [(4, 6), (5, 7)])
def test_planar_softmax_pool_transpose_equals_conjugated_autograd(tau, hw):
    """The closed-form transpose Jᵀu (plain transpose) = conj(vjp(conj u)) of PyTorch."""
    rows = Rows(real=2, complex=3)
    real = _maps(2, *hw, seed=3)
    z = torch.complex(_maps(3, *hw, seed=4), _maps(3, *hw, seed=5, scale=0.3))
    pooled, ctx = planar_softmax_pool(planar(z, rows, real), tau, rows)
    assert float((pooled[:2] - reference_pool(real, "s", tau)).abs().max()) <= 1e-14
    assert float((complex_part(pooled, rows) - reference_pool(z, "s", tau)).abs().max()) <= 1e-12
    post = torch.randn(pooled.shape, generator=gen(6), dtype=DT)
    u = complex_part(post, rows)
    zg = z.clone().requires_grad_()
    (vjp,) = torch.autograd.grad(reference_pool(zg, "s", tau), zg, grad_outputs=u.conj())
    got = planar_softmax_unpool(post, ctx, hw, rows)
    assert float((complex_part(got, rows) - vjp.conj()).abs().max()) <= 1e-10
    assert float((complex_part(got, rows) - vjp).abs().max()) > 1e-3  # the pitfall
    rg = real.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference_pool(rg, "s", tau), rg, grad_outputs=post[:2])
    assert float((got[:2] - want).abs().max()) <= 1e-14


def test_complex_step_derivative_of_softmax_pool_equals_autograd():
    z = _maps(2, 4, 4)
    d = _maps(2, 4, 4, seed=1)
    rows = Rows(complex=2)
    pooled, _ = planar_softmax_pool(planar(torch.complex(z, H * d), rows), 1.0, rows)
    _, jvp = torch.func.jvp(lambda t: reference_pool(t, "s"), (z,), (d,))
    assert float((rows.split(pooled)[2] / H - jvp).abs().max()) <= 1e-14


def test_max_pool_and_clamps_are_refused_for_complex_nudging():
    net = EnergyNetwork((1, 6, 6), conv=[ConvLayer(2, 3, 1, 1, "m")], activation="dsilu")
    with pytest.raises(SettingError, match=r"^model\.conv\[0\]\.pool: 'm' \(max pool\)") as e:
        check_holomorphic(net)
    assert "\n" not in str(e.value)
    net = EnergyNetwork((5,), dense=[4], activation="my_hard_sig")
    with pytest.raises(SettingError, match=r"^model\.activation: 'my_hard_sig' is not holomorphic"):
        check_holomorphic(net)
    check_holomorphic(
        EnergyNetwork((1, 6, 6), conv=[ConvLayer(2, 3, 1, 1, "s")], activation="tanh")
    )


# ----------------------------------------------------------------- the readout's softmax and nudge


def test_planar_softmax_equals_the_complex_softmax():
    rows = Rows(real=1, complex=2)
    real = torch.randn(1, 5, generator=gen(), dtype=DT)
    z = torch.complex(torch.randn(2, 5, generator=gen(1), dtype=DT), torch.randn(2, 5, dtype=DT))
    out = planar_softmax_(planar(z, rows, real), rows)
    want = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    assert float((complex_part(out, rows) - want).abs().max()) <= 1e-14
    assert float((out[:1] - torch.softmax(real, 1)).abs().max()) <= 1e-15


def _net(output: str, act: str = "tanh") -> EnergyNetwork:
    torch.manual_seed(0)
    return EnergyNetwork((5,), dense=[4], num_classes=3, output=output, activation=act).double()


@pytest.mark.parametrize("output", ["ce", "mse"])
def test_complex_nudge_equals_conjugated_autograd_of_the_complex_loss(output):
    """−β ∂L/∂s at complex s and β: the closed form against autograd of the holomorphic loss."""
    net = _net(output)
    rows = Rows(real=1, complex=2)
    g = gen(2)
    last = torch.complex(torch.rand(2, 4, generator=g, dtype=DT), 0.3 * torch.rand(2, 4, dtype=DT))
    real_last = torch.rand(1, 4, generator=g, dtype=DT)
    if output == "mse":
        last, real_last = last[:, :3], real_last[:, :3]
    y = torch.tensor([2, 0, 1])
    beta = torch.tensor([0.7, 0.3 + 0.4j, -0.2 + 0.5j], dtype=torch.complex128)
    view = PlanarNetwork(net, rows)
    onehot = F.one_hot(torch.cat([y[:1], y[1:], y[1:]]), 3).to(DT)
    column = torch.cat([beta[:1].real, beta[1:].real, beta[1:].imag])[:, None]
    state = [planar(last, rows, real_last)]
    with torch.no_grad():  # the view runs inside relaxations, without a graph
        got = view.nudge_drive(state, onehot, column)
    lg = last.clone().requires_grad_()
    loss = reference_loss(net, [lg], y[1:])
    (vjp,) = torch.autograd.grad(loss, lg, grad_outputs=torch.ones_like(loss))
    assert float((complex_part(got, rows) - (-beta[1:, None] * vjp.conj())).abs().max()) <= 1e-12
    rg = real_last.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference_loss(net, [rg], y[:1]).sum(), rg)
    assert float((got[:1] - (-0.7 * want)).abs().max()) <= 1e-14


@pytest.mark.parametrize("rows", [Rows(real=2, complex=3), Rows(complex=2), Rows(real=3)])
@pytest.mark.parametrize("shape", [(4,), (2, 3, 3)])
def test_precomputed_planar_scale_equals_the_complex_product(rows, shape):
    """PlanarScale (three operations per call) against planar_scale_, and its sign."""
    g = gen(5)
    coef = torch.randn(rows.total, 1, generator=g, dtype=DT)
    t = torch.randn(rows.total, *shape, generator=g, dtype=DT)
    before = t.clone()
    got = PlanarScale(coef, rows, sign=-1.0)(t)
    assert torch.equal(t, before)  # a fresh result; t untouched
    want = planar_scale_(t.clone(), coef, rows).neg_()
    assert float((got - want).abs().max()) <= 1e-15


def test_the_nudge_follows_beta_and_targets_changed_between_steps():
    """The view computes the planar target and −β once per relaxation; a new β (or the same
    tensor changed in place) is picked up at the next call."""
    net, rows = _net("mse"), Rows(real=1, complex=2)
    view = PlanarNetwork(net, rows)
    state = [torch.rand(rows.total, 3, generator=gen(3), dtype=DT)]
    onehot = F.one_hot(torch.tensor([2, 0, 1, 0, 1]), 3).to(DT)
    beta = torch.tensor([[0.7], [0.3], [-0.2], [0.4], [0.5]], dtype=DT)

    def fresh(b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return PlanarNetwork(net, rows).nudge_drive(state, y, b)

    with torch.no_grad():
        assert torch.equal(view.nudge_drive(state, onehot, beta), fresh(beta, onehot))
        beta.mul_(2.0)  # in place: the same object, a new version
        assert torch.equal(view.nudge_drive(state, onehot, beta), fresh(beta, onehot))
        onehot = onehot.flip(0)
        assert torch.equal(view.nudge_drive(state, onehot, beta), fresh(beta, onehot))
        assert torch.equal(view.nudge_drive(state, onehot, 0.5), fresh(0.5 + 0 * beta, onehot))


def test_complex_step_derivative_of_the_cross_entropy_nudge():
    net = _net("ce")
    rows = Rows(complex=2)
    view = PlanarNetwork(net, rows)
    s = torch.rand(2, 4, generator=gen(3), dtype=DT)
    d = torch.rand(2, 4, generator=gen(4), dtype=DT)
    y = torch.tensor([1, 2])
    onehot = F.one_hot(y.repeat(2), 3).to(DT)
    ones = torch.ones(2, dtype=DT)
    column = torch.cat([ones, 0 * ones])[:, None]  # β = 1
    with torch.no_grad():
        got = view.nudge_drive([planar(torch.complex(s, H * d), rows)], onehot, column)
    with torch.no_grad():
        _, jvp = torch.func.jvp(lambda t: net.nudge_drive([t], y, 1.0), (s,), (d,))
    assert float((rows.split(got)[2] / H - jvp).abs().max()) <= 1e-14


# ----------------------------------------------------------------- the planar network view


def _conv_net(output: str = "ce", act: str = "dsilu") -> EnergyNetwork:
    torch.manual_seed(0)
    conv = [ConvLayer(3, 3, 1, 1, "s", temperature=2.0), ConvLayer(2, 2, 1, 1, "a")]
    net = EnergyNetwork((2, 7, 7), conv=conv, dense=[4], num_classes=3, output=output,
                        activation=act, init_scale=0.5)  # fmt: skip
    return net.double()


@pytest.mark.parametrize("output", ["ce", "mse"])
def test_planar_step_equals_the_complex_reference_step(output):
    """One synchronous step of the planar view at per-row complex β equals the reference step
    on complex128 states (autograd of the holomorphic Φ_β, conjugated back)."""
    net = _conv_net(output)
    g = gen(7)
    x = torch.rand(2, 2, 7, 7, generator=g, dtype=DT)
    y = torch.tensor([0, 2])
    state = [torch.rand(2, *s, generator=g, dtype=DT) for s in net.state_shapes]
    zs = [torch.complex(s, 0.2 * torch.rand_like(s)) for s in state]
    betas = [0.6 + 0j, 0.3 + 0.5j]  # a real point and a complex point
    rows = Rows(real=2, complex=2)
    view = PlanarNetwork(net, rows)
    p_state = [planar(z, rows, s) for z, s in zip(zs, state, strict=True)]
    column = torch.tensor([0.6, 0.6, 0.3, 0.3, 0.5, 0.5], dtype=DT)[:, None]
    onehot = F.one_hot(y.repeat(3), 3).to(DT)
    nudge = functools.partial(view.nudge_drive, y=onehot, beta=column)
    p_drive = to_planar([net.input_drive(x)], [net.input_drive(x)])
    with torch.no_grad():
        got = synchronous_step(view, p_drive, p_state, nudge)
    want_real = reference_step(net, x, state, y, betas[0].real)
    want = reference_step(
        net, x, zs, y, torch.tensor([betas[1]] * 2, dtype=torch.complex128)[:, None]
    )
    for gt, wr, wc in zip(got, want_real, want, strict=True):
        assert float((gt[:2] - wr).abs().max()) <= 1e-13
        assert float((complex_part(gt, rows) - wc).abs().max()) <= 1e-12
    with torch.no_grad():  # even/odd on the view: the same fixed-point map, layer by layer
        even_odd_step(view, p_drive, p_state, nudge)


def test_conjugate_points_relax_to_conjugate_states():
    net = _conv_net()
    x = torch.rand(2, 2, 7, 7, generator=gen(8), dtype=DT)
    y = torch.tensor([1, 0])
    free = SymmetricEP(0.1, 30, 1).relax_free(net, x)[1]
    rows = Rows(complex=4)
    view = PlanarNetwork(net, rows)
    beta = 0.4 * torch.tensor([0.5, 0.5, 0.5, 0.5, 0.8, 0.8, -0.8, -0.8], dtype=DT)[:, None]
    drive = net.input_drive(x)
    from eqprop import Solver

    res = Solver().relax(view, to_planar([], [drive, drive]), planar_states(free, 0, 2), 40,
                         y.repeat(4), beta)  # fmt: skip
    for s in res.state:
        z = complex_part(s, rows)
        assert float((z[:2] - z[2:].conj()).abs().max()) <= 1e-14
        assert float(z[:2].imag.abs().max()) > 1e-6  # the points are off the real axis


def test_networks_with_holomorphic_pieces_pickle_and_copy():
    net = _conv_net()
    clone = copy.deepcopy(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.rand(2, 2, 7, 7, dtype=DT)
    assert torch.equal(clone(x), net(x)) and torch.equal(loaded(x), net(x))


def test_complex_logistic_keeps_relative_precision_where_units_are_off():
    """float32, u = ς(x) near 0: the imaginary part u(1 − u)·(…) keeps its relative precision
    (a form through ¼ − (u − ½)² would lose it as u falls)."""
    x = torch.linspace(-16.0, 0.0, 33)
    re, im = x.clone(), torch.full_like(x, 0.3)
    COMPLEX_ACTIVATIONS["sigmoid"](re, im)
    want = torch.sigmoid(torch.complex(x.double(), torch.full_like(x, 0.3).double()))
    assert float(((re.double() - want.real).abs() / want.real.abs()).max()) <= 1e-6
    assert float(((im.double() - want.imag).abs() / want.imag.abs()).max()) <= 1e-6
