"""Cost of holomorphic EP: one complex relaxation step against one real step, and one N-point
training iteration for N = 2, 4, 6.

Prints one JSON object. Usage:
``python benchmarks/holomorphic.py [--device cpu] [--reps 5] [--threads 2] [--quick]
[--steps-only]``.

- ``step``: one synchronous nudged step of B complex examples (a planar batch of 2B rows, the
  real and imaginary parts stacked along the batch, weights real) against one real step of B
  examples, on the same holomorphic net. Nets: the authors' VGG-5 (the paper's CIFAR-10 net with
  softmax pooling, τ = 1, and ``dsilu``, cross-entropy readout) and the MNIST MLP 784-512-10
  (``mysig``, squared error; the ``mnist-mlp`` preset's net). The real step of the paper's own
  net (max pool, ``my_hard_sig``) is timed too, for scale; the MLP's complex step also with its
  complex activation compiled (``dynamics.compile: true``). ``complex_over_real_*`` is the
  ratio the issue's target (≤ 2.5) is about.
- ``iteration``: one training iteration (``HolomorphicEP.estimate`` + an SGD step) with N = 2,
  4 and 6 points: the MNIST MLP with the ``mnist-mlp`` preset's steps (T1 30, T2 10, batch 50),
  the ``fashion-conv-hep2``/``-hep4`` presets' conv net with their steps (even/odd, T1 10, T2 4,
  batch 64), and the VGG-5 at batch 32 with T1 20, T2 6 (a fraction of the recipe's 250/60).
  N = 2 relaxes 2 real points, N = 4 adds one complex point, N = 6 two.

Every timing is given as the median wall seconds and the median process CPU seconds
(``time.process_time``): with ``--threads 1`` the latter is the compute itself even when other
jobs share the cores, which the wall time is not.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import one_step, paper_cifar10, seeded, sgd, timed, timed_side_by_side

from eqprop import ConvLayer, EnergyNetwork, Solver
from eqprop.core.holomorphic import PlanarNetwork, planar_states, to_planar
from eqprop.core.planar import Rows
from eqprop.estimators import HolomorphicEP


def hep_vgg5() -> EnergyNetwork:
    """The authors' VGG-5: the paper's CIFAR-10 net with softmax pools (τ = 1) and dsilu."""
    conv = [ConvLayer(c, 3, 1, p, "s") for c, p in ((128, 1), (256, 1), (512, 1), (512, 0))]
    return EnergyNetwork((3, 32, 32), conv=conv, output="ce", activation="dsilu")


def mnist_mlp_mysig() -> EnergyNetwork:
    """The mnist-mlp preset's net: 784-512-10, squared error, mysig."""
    return EnergyNetwork((784,), dense=[512], activation="mysig")


def _batch(net: EnergyNetwork, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *net.input_shape), generator=g).to(device)
    y = torch.randint(0, net.num_classes, (batch,), generator=g).to(device)
    return x, y


def step_costs(
    name: str, net: EnergyNetwork, batch: int, reps: int, device, compiled: bool = False
) -> dict:
    """Seconds per real step (B examples) and per complex step (B complex examples)."""
    net = net.to(device)
    x, y = _batch(net, batch, device)
    drive = net.input_drive(x)
    state = Solver().relax(net, drive, None, 5).state  # pools and σ in their usual regime
    onehot = F.one_hot(y, net.num_classes).to(drive.dtype)
    real_nudge = functools.partial(net.nudge_drive, y=onehot, beta=0.5)

    rows = Rows(0, batch)
    view = PlanarNetwork(net, rows)
    p_drive = to_planar([], [drive])
    p_state = planar_states(state, 0, 1)
    for s in p_state:  # a generic complex state: imaginary parts of the size a nudge gives
        rows.imag(s).copy_(0.1 * rows.split(s)[1])
    beta = torch.cat([drive.new_full((batch,), 0.0), drive.new_full((batch,), 0.5)])[:, None]
    complex_nudge = functools.partial(view.nudge_drive, y=onehot.repeat(2, 1), beta=beta)

    def real() -> None:
        one_step(net, drive, state, nudge=real_nudge)

    def cplx() -> None:
        one_step(view, p_drive, p_state, nudge=complex_nudge)

    fns: dict[str, Callable[[], object]] = {"real": real, "complex": cplx}
    if compiled:  # the complex activation through torch.compile (dynamics.compile: true)
        fast = PlanarNetwork(net, rows, compile=True)
        fast_nudge = functools.partial(fast.nudge_drive, y=onehot.repeat(2, 1), beta=beta)
        fns["compiled"] = lambda: one_step(fast, p_drive, p_state, nudge=fast_nudge)
    t = timed_side_by_side(fns, reps, 3, device)
    t_real, t_complex = t["real"], t["complex"]
    out = {
        "net": name,
        "batch": batch,
        "real_step": t_real,
        "complex_step": t_complex,
        "complex_over_real_wall": t_complex["wall_s"] / t_real["wall_s"],
        "complex_over_real_cpu": t_complex["cpu_s"] / t_real["cpu_s"],
    }
    if compiled:
        out["complex_step_compiled_activation"] = t["compiled"]
        out["compiled_complex_over_real_cpu"] = t["compiled"]["cpu_s"] / t_real["cpu_s"]
    return out


def paper_real_step(batch: int, reps: int, device) -> dict:
    """The paper net's own real step (max pool, my_hard_sig), for scale."""
    net = seeded(lambda: paper_cifar10("ce")).to(device)
    x, y = _batch(net, batch, device)
    drive = net.input_drive(x)
    state = Solver().relax(net, drive, None, 5).state
    onehot = F.one_hot(y, net.num_classes).to(drive.dtype)
    nudge = functools.partial(net.nudge_drive, y=onehot, beta=0.5)
    t = timed(lambda: one_step(net, drive, state, nudge=nudge), reps, 2, device)
    return {"net": "cifar10_paper_max_pool_my_hard_sig", "batch": batch, "real_step": t}


def fashion_conv_hep() -> EnergyNetwork:
    """The fashion-conv-hep2/4 presets' net: conv 16-32 (5×5, softmax pools), dsilu, CE."""
    conv = [ConvLayer(16, 5, 1, 0, "s"), ConvLayer(32, 5, 1, 0, "s")]
    return EnergyNetwork((1, 28, 28), conv=conv, output="ce", activation="dsilu")


def iteration_costs(
    name: str, make, batch: int, steps: tuple[int, int], beta: float, reps: int, device,
    schedule: str = "synchronous",
) -> dict:  # fmt: skip
    """Seconds per training iteration (estimate + SGD step) for N = 2, 4, 6."""
    out: dict = {"net": name, "batch": batch, "free_steps": steps[0], "nudged_steps": steps[1],
                 "schedule": schedule}  # fmt: skip
    for n in (2, 4, 6):
        net = seeded(make).to(device)
        x, y = _batch(net, batch, device)
        est = HolomorphicEP(beta, steps[0], steps[1], Solver(schedule=schedule), points=n)
        opt = sgd(net)

        def iteration(net=net, est=est, opt=opt, x=x, y=y) -> None:
            opt.zero_grad(set_to_none=True)
            est.estimate(net, x, y)
            opt.step()

        out[f"N{n}"] = timed(iteration, reps, 1, device)
    for n in (4, 6):
        for kind in ("wall", "cpu"):
            out[f"N{n}_over_N2_{kind}"] = out[f"N{n}"][f"{kind}_s"] / out["N2"][f"{kind}_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="one batch size per net, 3 reps")
    parser.add_argument(
        "--steps-only", action="store_true", help="time the steps, not the N-point iterations"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0]  # other jobs on the machine: see the module docstring
    reps = 3 if args.quick else args.reps
    steps = []
    for batch in (32,) if args.quick else (32, 128):
        steps.append(step_costs("vgg5_softmax_pool_dsilu", seeded(hep_vgg5), batch, reps, device))
        steps.append(paper_real_step(batch, reps, device))
    for batch in (50,) if args.quick else (32, 50, 128):
        net = seeded(mnist_mlp_mysig)
        steps.append(
            step_costs("mnist_mlp_784_512_10_mysig", net, batch, reps * 10, device, compiled=True)
        )
    iterations = [] if args.steps_only else [
        iteration_costs("mnist_mlp_784_512_10_mysig", mnist_mlp_mysig, 50, (30, 10), 0.1,
                        reps * 4, device),
        iteration_costs("fashion_conv_16_32_softmax_pool_dsilu", fashion_conv_hep, 64, (10, 4),
                        1.0, reps * 2, device, "even_odd"),
        iteration_costs("vgg5_softmax_pool_dsilu", hep_vgg5, 32, (20, 6), 1.0, reps, device),
    ]  # fmt: skip
    print(json.dumps({
        "benchmark": "holomorphic",
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_start": load,
        "step": steps,
        "iteration": iterations,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
