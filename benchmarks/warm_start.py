"""Do warm starts help the free phase? Steps to a tolerance from zeros, one sweep, the last state.

Prints one JSON object. For each network (run directories given on the command line, plus the
untrained paper CIFAR-10 net) and each schedule, relaxes the first ``--batch`` test images until
the largest state change falls below ``--tol`` (cap ``--cap`` steps) from

- ``zeros``: all-zero states (the paper's start);
- ``feedforward``: one feedforward sweep (:func:`eqprop.dynamics.feedforward_state`);
- ``previous`` (runs given with ``--previous RUN_DIR=CHECKPOINT``): the state these examples
  had when last seen, i.e. the free phase of the run's own recipe (its schedule and
  ``free_steps``) under the earlier checkpoint's weights, typically one epoch before.

It reports the steps, the distance between each warm end state and the zero-start one and how
often their predictions agree (these networks can have several fixed points, so a warm start
may land on another one).

Usage: ``python benchmarks/warm_start.py [RUN_DIR ...] [--previous RUN_DIR=CKPT ...]
[--data-dir DIR] [--batch 64]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import paper_cifar10

from eqprop import Solver, relax
from eqprop.train.builders import build_network
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.config import config_from_dict
from eqprop.train.datasets import load_dataset
from eqprop.train.loader import normalizer_for


def test_batch(cfg_data: dict, data_dir: str | None, batch: int, like: torch.Tensor):
    name = cfg_data["dataset"]
    root = cfg_data.get("root") if name == "npz" or not data_dir else data_dir
    ds = load_dataset(name, root)
    norm = normalizer_for(ds, cfg_data.get("normalize", "standard"))
    return norm(ds.x_test[:batch], like.dtype)


def compare(net, x: torch.Tensor, tol: float, cap: int, previous: list | None = None) -> dict:
    """Steps from each start; ``previous`` is a state of ``x`` to start from, when given."""
    out = {}
    drive = net.input_drive(net.check_input(x)[0])
    for schedule in ("synchronous", "even_odd"):
        ends = {}
        starts = {"zeros": None, "feedforward": None}
        if previous is not None:
            starts["previous"] = previous
        for init, start in starts.items():
            solver = Solver(schedule=schedule, tol=tol, init="zeros" if start else init)
            res = solver.relax(net, drive, start or solver.initial_state(net, drive), cap)
            ends[init] = res
            out[f"{schedule}/{init}"] = {"steps": res.steps, "residual": res.residual}
        a = ends["zeros"].state
        for init in list(starts)[1:]:
            b = ends[init].state
            suffix = "" if init == "feedforward" else f"_{init}"  # keys of earlier results
            out[f"{schedule}/distance{suffix}"] = max(
                float((u - v).abs().max()) for u, v in zip(a, b, strict=True)
            )
            same = net.predict_from_state(a) == net.predict_from_state(b)
            out[f"{schedule}/prediction_agreement{suffix}"] = float(same.float().mean())
    return out


def load_net(path: Path):
    """(network with the checkpoint's weights, its config, the checkpoint)."""
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    shape = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}.get(cfg.data.dataset, (3, 32, 32))
    net = build_network(cfg, shape, 10)
    net.load_state_dict(ckpt["model"])
    return net, cfg, ckpt


def previous_state(path: Path, x: torch.Tensor) -> list:
    """Free state of ``x`` under an earlier checkpoint, with that run's own free phase."""
    net, cfg, _ = load_net(path)
    solver = Solver(schedule=cfg.dynamics.schedule)
    return relax(net, x, cfg.dynamics.free_steps, solver=solver).state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories (their checkpoints/last.pt)")
    parser.add_argument("--data-dir", help="dataset directory (default: each run's data.root)")
    parser.add_argument(
        "--previous", action="append", default=[], metavar="RUN_DIR=CKPT",
        help="an earlier checkpoint of RUN_DIR whose free states give the 'previous' start",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--cap", type=int, default=500)
    args = parser.parse_args()
    results = {}
    with torch.no_grad():
        torch.manual_seed(0)
        net = paper_cifar10("ce")
        cifar = {"dataset": "cifar10", "normalize": "paper"}
        try:
            x = test_batch(cifar, args.data_dir, args.batch, next(net.parameters()))
        except Exception:  # no CIFAR-10 here: random images
            x = torch.rand(args.batch, 3, 32, 32)
        results["paper_cifar10_untrained"] = compare(net, x, args.tol, args.cap)
        previous = dict(p.split("=", 1) for p in args.previous)
        for run in [*args.runs, *(r for r in previous if r not in args.runs)]:
            net, cfg, ckpt = load_net(Path(run) / "checkpoints" / "last.pt")
            raw = ckpt["config"]["data"]
            x = test_batch(raw, args.data_dir, args.batch, next(net.parameters()))
            prev = previous_state(Path(previous[run]), x) if run in previous else None
            results[f"{cfg.name}@epoch{ckpt['epoch']}"] = compare(net, x, args.tol, args.cap, prev)
    print(
        json.dumps(
            {"tol": args.tol, "cap": args.cap, "batch": args.batch, "nets": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
