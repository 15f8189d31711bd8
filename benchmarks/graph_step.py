"""Energy graphs: one relaxation sweep against its convolutions alone, and the EP/BP ratio.

Prints one JSON object. Usage: ``python benchmarks/graph_step.py [--widths 128,256,512,512]
[--side 32] [--batch 32] [--reps 5] [--steps 120,50] [--device cpu]``.

- ``sweep_seconds``: one sweep of each schedule (synchronous, the proper colouring, the
  reference parity split) of the Hopfield-ResNet graph, median of ``reps``.
- ``products_seconds``: the products a sweep must perform, timed alone: every edge's
  convolution (or matmul) on its source and its transposed convolution on its target, except
  the forward products of the input edges (constant over a batch, computed once). The issue's
  target is a sweep at most 1.1× this.
- ``ep_over_bp``: one training iteration (symmetric EP with T1 free and 2×T2 nudged coloured
  sweeps, batched phases, then an SGD step) over one backprop iteration of the same graph as a
  feedforward residual net (each node from its incoming edges in depth order, relu6, loss on
  the output node, autograd backward, SGD step).
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable

import torch
from common import median_time

from eqprop import Solver, SymmetricEP
from eqprop.core.graph import GraphNetwork
from eqprop.core.graph_builders import residual_graph
from eqprop.dynamics.graph_schedules import GRAPH_SCHEDULES
from eqprop.dynamics.schedules import Workspace


def timed(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after one warm-up."""
    return median_time(fn, reps, 1, device)


def products(net: GraphNetwork, state: list[torch.Tensor]) -> Callable[[], None]:
    """Every product of a sweep, alone (forward of free-source edges, every transpose)."""
    layers = net.interactions

    def run() -> None:
        with torch.no_grad():
            for e, layer in enumerate(layers):
                p, q = net.edge_src[e], net.edge_dst[e]
                if p >= 0:
                    layer.forward_drive(state[p])
                    layer.backward_drive(state[q], None)

    return run


def feedforward_loss(net: GraphNetwork, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The graph as a feedforward residual net: nodes in order from their incoming edges."""
    state: list[torch.Tensor | None] = [None] * len(net.state_shapes)
    for n in range(len(state)):
        drive = 0
        for e in net.edges_into(net.node_names[n]):
            p = net.edge_src[e]
            drive = drive + net.interactions[e].forward_drive(x if p < 0 else state[p])[0]
        bias = net.node_bias(n)
        if bias is not None:
            drive = drive + bias.view(1, -1, *([1] * (len(net.state_shapes[n]) - 1)))
        state[n] = net.node_activations[n].fn(drive)
    return net.loss([s for s in state if s is not None], y).mean()


def measure(
    widths: tuple[int, ...], side: int, batch: int, reps: int, steps: tuple[int, int],
    device: torch.device,
) -> dict[str, object]:  # fmt: skip
    """The sweep, products and EP/BP figures of the residual graph of ``widths`` on
    ``side``×``side`` RGB inputs (the module docstring says what each is)."""
    t1, t2 = steps
    torch.manual_seed(0)
    shape = (3, side, side)
    net = GraphNetwork(shape, residual_graph(shape, 10, widths), 10).to(device)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    drive = net.input_drive(x)
    state = Solver(schedule="even_odd").relax(net, drive, None, 10).state
    out: dict[str, object] = {"device": str(device), "cpu": platform.processor(),
                              "threads": torch.get_num_threads(), "widths": widths,
                              "side": side, "batch": batch, "steps": [t1, t2]}  # fmt: skip
    sweeps = {}
    for name in ("synchronous", "coloured", "parity_jacobi"):
        step = GRAPH_SCHEDULES[name]
        with torch.no_grad():
            sweeps[name] = timed(
                lambda s=step: s(net, drive, state, None, Workspace()), reps, device
            )
    bound = timed(products(net, state), reps, device)
    out["sweep_seconds"] = sweeps
    out["products_seconds"] = bound
    out["sweep_over_products"] = {k: v / bound for k, v in sweeps.items()}
    est = SymmetricEP(0.1, t1, t2, solver=Solver(schedule="coloured"))
    opt = torch.optim.SGD(net.parameters(), lr=1e-6)

    def ep_iteration() -> None:
        opt.zero_grad()
        est.estimate(net, x, y)
        opt.step()

    def bp_iteration() -> None:
        opt.zero_grad()
        feedforward_loss(net, x, y).backward()
        opt.step()

    ep, bp = timed(ep_iteration, max(1, reps // 5), device), timed(bp_iteration, reps, device)
    out["ep_iteration_seconds"], out["bp_iteration_seconds"] = ep, bp
    out["ep_over_bp"] = ep / bp
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="128,256,512,512")
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", default="120,50", help="T1,T2 of the EP iteration")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    widths = tuple(int(w) for w in a.widths.split(","))
    t1, t2 = (int(s) for s in a.steps.split(","))
    out = measure(widths, a.side, a.batch, a.reps, (t1, t2), torch.device(a.device))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
