"""Time one relaxation step: closed form (eqprop) versus autograd of Φ (the original code's way).

Prints one JSON object. Usage: ``python benchmarks/relaxation_step.py [--device cpu] [--reps 5]``.
The autograd step is :func:`eqprop.reference.reference_step`, which builds Φ and calls
``torch.autograd.grad`` on it every step, on states in the default NCHW layout, as the paper's
scripts do; the same step on our channels-last states is reported too.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from common import State, mnist_mlp, one_step, paper_cifar10, sync

from eqprop import EnergyNetwork
from eqprop.core.interactions import ConvInteraction
from eqprop.reference import reference_step


def time_steps(step, state, steps: int, reps: int, device: torch.device) -> float:
    """Median seconds per step over ``reps`` runs of ``steps`` chained steps (after a warm-up)."""
    s = step(state)
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        s = state
        for _ in range(steps):
            s = step(s)
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def products_only(net: EnergyNetwork, s: State) -> State:
    """Only the products a step cannot avoid: each interaction's forward map of its
    presynaptic state and its transposed map back (conv and transposed conv, or the two
    matmuls), on the same layouts as the closed-form step. Returns ``s`` unchanged."""
    with torch.no_grad():
        for n in range(1, len(net.interactions)):
            layer = net.interactions[n]
            if isinstance(layer, ConvInteraction):
                z = layer.conv(s[n - 1])
                c = layer.spec
                F.conv_transpose2d(z, layer.conv.weight, stride=c.stride, padding=c.padding,
                                   output_padding=layer._output_padding)  # fmt: skip
            else:
                z = layer.forward_drive(s[n - 1])[0]
                layer.backward_drive(z, None)
    return s


def bench(name: str, net: EnergyNetwork, batch: int, steps: int, reps: int, device) -> dict:
    net = net.to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *net.input_shape), generator=g).to(device)
    y = torch.randint(0, net.num_classes, (batch,), generator=g).to(device)
    drive = net.input_drive(x)
    # Start from a relaxed-ish state so pools and clamps are in their usual regime.
    state = net.zero_state(batch)
    for _ in range(5):
        state = one_step(net, drive, state)

    def nudge(t):
        return net.nudge_drive(t, y, 0.5)

    def closed(s):
        return one_step(net, drive, s, nudge=nudge)

    def autograd(s):
        return reference_step(net, x, s, y, 0.5)

    # The original code keeps states and weights in PyTorch's default (NCHW) layout.
    original = copy.deepcopy(net)
    for p in original.parameters():
        p.data = p.data.contiguous()

    def autograd_original(s):
        return reference_step(original, x, s, y, 0.5)

    def closed_bf16(s):
        return one_step(net, drive, s, nudge=nudge, precision="bf16")

    def floor(s):
        return products_only(net, s)

    nchw = [s.contiguous() for s in state]
    t_closed = time_steps(closed, state, steps, reps, device)
    t_floor = time_steps(floor, state, steps, reps, device)
    t_bf16 = time_steps(closed_bf16, state, steps, reps, device)
    t_auto = time_steps(autograd_original, nchw, steps, reps, device)
    t_auto_cl = time_steps(autograd, state, steps, reps, device)
    return {
        "net": name,
        "batch": batch,
        "closed_form_s_per_step": t_closed,
        "autograd_s_per_step": t_auto,
        "speedup": t_auto / t_closed,
        "products_only_s_per_step": t_floor,
        "speedup_bound_products_only": t_auto / t_floor,
        "closed_form_bf16_s_per_step": t_bf16,
        "speedup_bf16": t_auto / t_bf16,
        "autograd_channels_last_s_per_step": t_auto_cl,
        "speedup_vs_channels_last_autograd": t_auto_cl / t_closed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    results = []
    for batch in (32, 128):
        results.append(bench("cifar10_paper_conv", paper_cifar10(), batch, 3, args.reps, device))
    for batch in (32, 50, 128):
        results.append(bench("mnist_mlp_784_512_10", mnist_mlp(), batch, 50, args.reps, device))
    print(json.dumps({
        "benchmark": "relaxation_step",
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "results": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
