"""How close a saved run's EP update is to the exact gradient of what its network computes.

Prints one JSON object. Usage: ``python benchmarks/gradient_quality.py RUN [RUN ...]
[--budget T,K[,BETA] ...] [--schedule NAME] [--init NAME] [--batch 64] [--checkpoint last]
[--threads 1]``.

For each run directory (its config and checkpoint) and each budget (default: the run's own
free steps T, nudged steps K and β), on the first ``--batch`` validation images (test images
when the run has no validation split): the run's estimator with that budget and the run's
schedule and free-phase start (or ``--schedule``, ``--init``), against backpropagation through
all T free steps. The reference is the exact
gradient of the loss of the T-step network the run trains and evaluates; the in-training check
(``log.check_every``) compares with BPTT truncated to K steps instead, the paper's
equivalence, which with one nudged sweep over a graph reaches only the output's weights.

Per budget: ``cos`` over all weights, ``sign_disagreement`` (the fraction of weights whose
update and gradient have opposite signs), ``norm_ratio`` (‖update‖ / ‖gradient‖), and the
same per weight layer (``cos_layers``, ``sign_disagreement_layers``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eqprop.dynamics.schedules import SCHEDULES
from eqprop.dynamics.solver import INITS
from eqprop.train.builders import build_solver
from eqprop.train.config import ExperimentConfig
from eqprop.train.epochs import update_and_reference
from eqprop.train.saved import load_run


def _cos(g: Tensor, ref: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(g, ref, 0))


def _disagree(g: Tensor, ref: Tensor) -> float:
    return float(((g * ref) < 0).float().mean())


def quality(
    net: Any, x: Tensor, y: Tensor, cfg: ExperimentConfig, free: int, nudged: int, beta: float
) -> dict[str, Any]:
    """The run's estimator at (free, nudged, β) against BPTT through all ``free`` steps, on
    copies of ``net`` (left untouched)."""
    grads = update_and_reference(
        net, x, y, cfg, build_solver(cfg), free_steps=free, nudged_steps=nudged, beta=beta,
        full=True,
    )  # fmt: skip
    g, ref = (torch.cat(v) for v in grads)
    return {
        "free_steps": free, "nudged_steps": nudged, "beta": beta,
        "cos": _cos(g, ref), "sign_disagreement": _disagree(g, ref),
        "norm_ratio": float(g.norm() / ref.norm()),
        "cos_layers": [_cos(a, b) for a, b in zip(*grads, strict=True)],
        "sign_disagreement_layers": [_disagree(a, b) for a, b in zip(*grads, strict=True)],
    }  # fmt: skip


def parse_budget(text: str) -> tuple[int, int, float | None]:
    """``T,K`` or ``T,K,BETA``."""
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        beta = float(parts[2]) if len(parts) == 3 else None
        return int(parts[0]), int(parts[1]), beta
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid; expected T,K or T,K,BETA (e.g. 4,1 or 4,1,0.3)"
        ) from None


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories")
    p.add_argument("--budget", type=parse_budget, action="append", help="T,K[,BETA]; repeatable")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), help="instead of the run's")
    p.add_argument("--init", choices=sorted(INITS), help="free-phase start instead of the run's")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--checkpoint", default="last")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = []
    for run in a.runs:
        trainer = load_run(run, a.checkpoint)
        cfg, net = trainer.cfg, trainer.net
        changes = {k: v for k, v in (("schedule", a.schedule), ("init", a.init)) if v}
        cfg = dataclasses.replace(cfg, dynamics=dataclasses.replace(cfg.dynamics, **changes))
        x, y = next(iter((trainer.splits.val or trainer.splits.test).epoch(0)))
        x, y = x[: a.batch], y[: a.batch]
        d = cfg.dynamics
        budgets = a.budget or [(d.free_steps, d.nudged_steps, None)]
        rows = [quality(net, x, y, cfg, t, k, cfg.estimator.beta if b is None else b)
                for t, k, b in budgets]  # fmt: skip
        out.append({
            "run": str(run), "checkpoint": a.checkpoint, "batch": len(y),
            "estimator": cfg.estimator.kind, "schedule": d.schedule, "init": d.init,
            "budgets": rows,
        })  # fmt: skip
    print(json.dumps({"torch": torch.__version__, "runs": out}, indent=1))


if __name__ == "__main__":
    main()
