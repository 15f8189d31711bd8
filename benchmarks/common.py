"""Helpers shared by the benchmark scripts and the suite's sections.

Networks built from a fixed seed, timing, gradient comparisons, the feedforward twin used for
backprop, one EP or backprop training iteration, random data sets, and :func:`one_step`: the
only place where the benchmarks call a step function of :mod:`eqprop.dynamics` directly.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqprop import ConvLayer, EnergyNetwork, Solver, SymmetricEP
from eqprop.core import ConvInteraction
from eqprop.dynamics import SCHEDULES, precision_context
from eqprop.train.datasets import Dataset

State = list[Tensor]
SCHEDULE_NAMES = ("synchronous", "even_odd", "forward_backward")
TOLERANCES = (1e-3, 1e-4, 1e-5)
IMAGE_SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}
CIFAR10_TRAIN = 50_000
T = TypeVar("T")
T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress line on stderr, with the seconds since start."""
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------- relaxation


def one_step(
    net: EnergyNetwork,
    drive: Tensor,
    state: Sequence[Tensor],
    nudge: Callable[[State], Tensor] | None = None,
    precision: str | None = None,
    schedule: str = "synchronous",
) -> State:
    """One step of ``schedule`` from ``state``, without autograd and without a workspace.

    The benchmarks' only direct call of a step function of :mod:`eqprop.dynamics`, for timing
    single steps; relaxations go through :class:`eqprop.Solver` (``relax``, ``trajectory``).

    Args:
        net: the network.
        drive: ``net.input_drive(x)``.
        state: the current states (not modified).
        nudge: maps a state to the nudging drive, or None (free phase).
        precision: run the step under this ``Solver`` precision; None adds no context.
        schedule: a key of ``eqprop.dynamics.SCHEDULES``.
    """
    step = SCHEDULES[schedule]
    with torch.no_grad():
        if precision is None:
            return step(net, drive, state, nudge)
        with precision_context(precision, drive.device):
            return step(net, drive, state, nudge)


# ------------------------------------------------------------------------------- networks


def seeded(make: Callable[[], T], seed: int = 0) -> T:
    """Build a network from a fixed seed, whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def paper_cifar10(output: str = "mse") -> EnergyNetwork:
    """The paper's CIFAR-10 net: conv 128-256-512-512, 3×3, max pools, ``my_hard_sig``."""
    conv = [ConvLayer(128, 3, 1, 1), ConvLayer(256, 3, 1, 1), ConvLayer(512, 3, 1, 1),
            ConvLayer(512, 3, 1, 0)]  # fmt: skip
    return EnergyNetwork((3, 32, 32), conv=conv, output=output, activation="my_hard_sig")


def mnist_mlp() -> EnergyNetwork:
    """The MNIST MLP 784-512-10, squared error, ``my_hard_sig``."""
    return EnergyNetwork((784,), dense=[512], activation="my_hard_sig")


def mnist_conv() -> EnergyNetwork:
    """The original code's MNIST conv net: 32-64, 5×5, max pools, mse, hard_sigmoid."""
    return EnergyNetwork(
        (1, 28, 28), conv=[ConvLayer(32, 5), ConvLayer(64, 5)], activation="hard_sigmoid"
    )


def small_conv() -> EnergyNetwork:
    """A small conv net for the precision section: 16-32, 3×3 on 3×16×16, ce readout."""
    conv = [ConvLayer(16, 3, 1, 1), ConvLayer(32, 3, 1, 1)]
    return EnergyNetwork((3, 16, 16), conv=conv, output="ce", activation="my_hard_sig")


def conv_signature(net: EnergyNetwork) -> list[tuple[Any, ...]]:
    """Shapes of the conv interactions and their parameters (architecture identity)."""
    return [
        (inter.pre_shape, inter.post_shape, *(tuple(p.shape) for p in inter.parameters()))
        for inter in net.interactions
        if isinstance(inter, ConvInteraction)
    ]


class _Act(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def feedforward_twin(net: EnergyNetwork) -> nn.Sequential:
    """The feedforward net of the same architecture, for backprop.

    Each conv layer is conv → its pool → σ; dense layers are linear → σ; the last layer (mse
    output layer or ce readout) is a plain linear map to the classes, trained with cross-entropy.
    """
    act = _Act(net.activation.fn)
    pools = {"m": nn.MaxPool2d(2), "a": nn.AvgPool2d(2), "i": nn.Identity()}
    layers: list[nn.Module] = []
    inters = list(net.interactions)
    for i, inter in enumerate(inters):
        if isinstance(inter, ConvInteraction):
            s = inter.spec
            layers += [nn.Conv2d(inter.pre_shape[0], s.channels, s.kernel, s.stride, s.padding)]
            layers += [pools[s.pool], act]
        else:
            layers += [nn.Flatten(), nn.Linear(math.prod(inter.pre_shape), inter.post_shape[0])]
            if net.readout is not None or i < len(inters) - 1:
                layers.append(act)
    if net.readout is not None:
        layers += [nn.Flatten(), nn.Linear(net.readout.in_features, net.num_classes)]
    return nn.Sequential(*layers)


def random_dataset(name: str, n_train: int, n_test: int) -> Dataset:
    """Random uint8 images of a dataset's shape, with random labels (seeded).

    Named after the dataset (so ``normalizer_for`` picks its statistics), unlike the CLI's
    ``_random_dataset``, which is sized and seeded from a training config.
    """
    g = torch.Generator().manual_seed(0)
    shape = IMAGE_SHAPES[name]

    def images(n: int) -> Tensor:
        return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)

    def labels(n: int) -> Tensor:
        return torch.randint(0, 10, (n,), generator=g)

    x_train, y_train = images(n_train), labels(n_train)
    x_test, y_test = images(n_test), labels(n_test)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        name=name,
        input_shape=shape,
    )


# ------------------------------------------------------------------------------- comparisons, JSON


def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Largest absolute difference over all layers, units and examples."""
    return float(torch.stack([(u - v).abs().amax() for u, v in zip(a, b, strict=True)]).amax())


def flat_grad(layers: Sequence[nn.Module]) -> list[Tensor]:
    """Gradients in float64, one flat vector per layer (zeros where no grad)."""
    out = []
    for layer in layers:
        parts = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
            for p in layer.parameters()
        ]
        out.append(torch.cat(parts))
    return out


def compare(g: Sequence[Tensor], ref: Sequence[Tensor]) -> dict[str, Any]:
    """Cosine similarity and relative error ‖g − ref‖/‖ref‖, overall and per layer."""

    def pair(a: Tensor, b: Tensor) -> tuple[float, float]:
        a, b = a.cpu(), b.cpu()
        cos = float(F.cosine_similarity(a, b, dim=0, eps=1e-30))
        return cos, float((a - b).norm() / b.norm().clamp_min(1e-300))

    cos, rel = pair(torch.cat(list(g)), torch.cat(list(ref)))
    per = [pair(a, b) for a, b in zip(g, ref, strict=True)]
    return {
        "cosine": cos,
        "rel_err": rel,
        "per_layer_cosine": [c for c, _ in per],
        "per_layer_rel_err": [r for _, r in per],
    }


def finite(obj: Any) -> Any:
    """Replace non-finite floats by None so the output is strict JSON.

    A copy of the package's private ``_json_safe`` (``eqprop.analysis``), which is moving
    between modules; keys become strings as ``json.dumps`` would make them.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------- timing, training


def median_time(fn: Callable[[], object], reps: int, warmup: int, device: torch.device) -> float:
    """Median wall seconds of ``fn`` over ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(fn: Callable[[], object], reps: int, warmup: int, device: torch.device) -> dict:
    """Median wall seconds and median process CPU seconds of ``fn`` over ``reps`` calls.

    With one thread the CPU seconds are the compute a call needs, whatever else shares the
    cores; the wall seconds include the waits when it does.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def timed_side_by_side(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: torch.device
) -> dict[str, dict]:
    """:func:`timed` of several functions, their calls interleaved (a, b, a, b, ...), so that
    a drift of the machine's speed weighs on each alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    return {
        k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k])} for k in fns
    }


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of every timed training iteration (EP and backprop alike)."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)


def bp_iteration(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    """One backprop training iteration: cross-entropy, backward, optimizer step."""
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def ep_iteration(
    net: EnergyNetwork, opt: torch.optim.Optimizer, est: SymmetricEP, x: Tensor, y: Tensor
) -> None:
    """One EP training iteration: estimate (relaxations + gradient), optimizer step."""
    opt.zero_grad(set_to_none=True)
    est.estimate(net, x, y)
    opt.step()


def ep_gradient(
    net: EnergyNetwork, x: Tensor, y: Tensor, solver: Solver, steps: tuple[int, int]
) -> list[Tensor]:
    """Symmetric EP gradient (β = 1, batched phases), float64, one vector per weight layer."""
    est = SymmetricEP(1.0, steps[0], steps[1], solver, batch_phases=True)
    net.zero_grad(set_to_none=True)
    est.estimate(net, x.to(next(net.parameters()).dtype), y)
    return flat_grad(net.weight_layers())


@contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 on CUDA (PyTorch lets cuDNN convolutions use it by default)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported only when a section plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
