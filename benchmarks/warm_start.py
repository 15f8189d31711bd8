"""Does a feedforward warm start help the free phase? Steps to a tolerance from zeros vs one sweep.

Prints one JSON object. For each network (run directories given on the command line, plus the
untrained paper CIFAR-10 net) and each schedule, relaxes the first ``--batch`` test images from
all-zero states and from one feedforward sweep (:func:`eqprop.dynamics.feedforward_state`) until
the largest state change falls below ``--tol`` (cap ``--cap`` steps), and reports the steps, the
distance between the two end states and how often their predictions agree (these networks can
have several fixed points, so a warm start may land on another one).

Usage: ``python benchmarks/warm_start.py [RUN_DIR ...] [--data-dir DIR] [--batch 64]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from relaxation_step import paper_cifar10

from eqprop import Solver
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.config import config_from_dict
from eqprop.train.data import load_dataset, normalizer_for
from eqprop.train.trainer import build_network


def test_batch(cfg_data: dict, data_dir: str | None, batch: int, like: torch.Tensor):
    name = cfg_data["dataset"]
    root = cfg_data.get("root") if name == "npz" or not data_dir else data_dir
    ds = load_dataset(name, root)
    norm = normalizer_for(ds, cfg_data.get("normalize", "standard"))
    return norm(ds.x_test[:batch], like.dtype)


def compare(net, x: torch.Tensor, tol: float, cap: int) -> dict:
    out = {}
    drive = net.input_drive(net.check_input(x)[0])
    for schedule in ("synchronous", "even_odd"):
        ends = {}
        for init in ("zeros", "feedforward"):
            solver = Solver(schedule=schedule, tol=tol, init=init)
            res = solver.relax(net, drive, solver.initial_state(net, drive), cap)
            ends[init] = res
            out[f"{schedule}/{init}"] = {"steps": res.steps, "residual": res.residual}
        a, b = ends["zeros"].state, ends["feedforward"].state
        out[f"{schedule}/distance"] = max(
            float((u - v).abs().max()) for u, v in zip(a, b, strict=True)
        )
        same = net.predict_from_state(a) == net.predict_from_state(b)
        out[f"{schedule}/prediction_agreement"] = float(same.float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories (their checkpoints/last.pt)")
    parser.add_argument("--data-dir", help="dataset directory (default: each run's data.root)")
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
        for run in args.runs:
            ckpt = load_checkpoint(Path(run) / "checkpoints" / "last.pt")
            cfg = config_from_dict(ckpt["config"])
            ds_shape = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}.get(
                cfg.data.dataset, (3, 32, 32)
            )
            net = build_network(cfg, ds_shape, 10)
            net.load_state_dict(ckpt["model"])
            raw = ckpt["config"]["data"]
            x = test_batch(raw, args.data_dir, args.batch, next(net.parameters()))
            results[f"{cfg.name}@epoch{ckpt['epoch']}"] = compare(net, x, args.tol, args.cap)
    print(
        json.dumps(
            {"tol": args.tol, "cap": args.cap, "batch": args.batch, "nets": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
