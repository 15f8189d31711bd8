"""One epoch's bookkeeping: running statistics and the fields of its metrics record."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from eqprop.analysis.gdu import check_gdu
from eqprop.core import ChainNetwork
from eqprop.core.asymmetric import AsymmetricNetwork
from eqprop.core.graph import GraphNetwork
from eqprop.dynamics import Solver
from eqprop.estimators import make_estimator
from eqprop.train.loader import EpochLoader
from eqprop.train.schema import ExperimentConfig

__all__ = ["EpochStats", "gdu_summary", "model_fields", "update_and_reference"]


@dataclass
class EpochStats:
    """Running statistics of one epoch (saved in mid-epoch checkpoints)."""

    errors: int = 0
    loss_sum: float = 0.0
    count: int = 0
    free_steps: list[int] = field(default_factory=list)
    nudged_steps: list[int] = field(default_factory=list)
    train_seconds: float = 0.0  # the batches so far, over every session
    seconds: float = 0.0  # wall time of the epoch in earlier sessions
    #: Sums of the estimator's per-batch counts (``Estimate.stats``, e.g. hEP's
    #: ``guard_dropped`` and ``guard_fallback``), logged per epoch under the same names.
    estimator: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add(
        self, errors: int, loss_sum: float, count: int, free: int, nudged: int,
        estimator: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        """Count one batch."""
        for key, value in (estimator or {}).items():
            self.estimator[key] = self.estimator.get(key, 0.0) + value
        self.errors += errors
        self.loss_sum += loss_sum
        self.count += count
        self.free_steps.append(free)
        self.nudged_steps.append(nudged)

    @property
    def accuracy(self) -> float:
        return 1 - self.errors / max(self.count, 1)

    def fields(self) -> dict[str, Any]:
        """Training error and loss, relaxation steps (mean and max) of the epoch."""
        n = max(self.count, 1)
        return {
            "train_error": self.errors / n,
            "train_loss": self.loss_sum / n,
            "free_steps_mean": sum(self.free_steps) / max(len(self.free_steps), 1),
            "free_steps_max": max(self.free_steps, default=0),
            "nudged_steps_mean": sum(self.nudged_steps) / max(len(self.nudged_steps), 1),
            "nudged_steps_max": max(self.nudged_steps, default=0),
            **self.estimator,
        }


def model_fields(net: ChainNetwork, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Learning rate per layer and, for asymmetric nets, the W–B angle per layer (degrees);
    for graphs with feedback weights, per edge (``angle_src->dst``)."""
    out: dict[str, Any] = {f"lr_layer{i}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
    if isinstance(net, (AsymmetricNetwork, GraphNetwork)):  # a graph without feedback: none
        out.update({f"angle_{layer}": a for layer, a in net.weight_angles().items()})
    return out


def gdu_summary(
    net: ChainNetwork, loader: EpochLoader, cfg: ExperimentConfig, solver: Solver
) -> dict[str, float | None]:
    """Summary numbers of a small EP-versus-BPTT check at the run's β (no sweep)."""
    x, y = next(iter(loader.epoch(0)))
    n = cfg.log.check_batch
    d = cfg.dynamics
    report = check_gdu(
        net, x[:n], y[:n], free_steps=d.free_steps, nudged_steps=d.nudged_steps,
        betas=(cfg.estimator.beta,), sweep_betas=(), solver=solver,
    )  # fmt: skip
    (comparison,) = report.comparisons
    ratios = [r for r in comparison.layers.values() if r is not None]
    out: dict[str, float | None] = {
        f"gdu_{variant}_{key}": comparison.totals[variant][key]
        for variant in ("plus", "minus", "sym")
        for key in ("rmse", "final_error")
    }
    out["gdu_layer_ratio_mean"] = sum(ratios) / len(ratios) if ratios else None
    if cfg.estimator.kind != "bptt":
        out.update(gradient_agreement(net, x[:n], y[:n], cfg, solver))
    return out


def _layer_grads(net: ChainNetwork) -> list[Tensor]:
    """Each weight layer's gradient as one flat vector (weights and biases together); a
    parameter without one counts as zero (truncated BPTT over a single even/odd sweep does not
    reach the first layers)."""
    grads = [[torch.zeros_like(p) if p.grad is None else p.grad for p in layer.parameters()]
             for layer in net.weight_layers()]  # fmt: skip
    return [torch.cat([g.flatten() for g in layer]) for layer in grads]


def update_and_reference(
    net: ChainNetwork,
    x: Tensor,
    y: Tensor,
    cfg: ExperimentConfig,
    solver: Solver,
    *,
    free_steps: int,
    nudged_steps: int,
    beta: float,
    full: bool,
) -> tuple[list[Tensor], list[Tensor]]:
    """Per weight layer (:func:`_layer_grads`), the run's estimator at this budget and β, and
    BPTT's gradient, truncated to ``nudged_steps`` or through every free step (``full``). Both
    run on copies of ``net``, with their own random draws, no warm start and no clipping."""
    e, d = cfg.estimator, cfg.dynamics
    grads = []
    for kind in (e.kind, "bptt"):
        twin = copy.deepcopy(net)
        twin.zero_grad(set_to_none=True)
        est = make_estimator(
            kind, beta=beta, free_steps=free_steps, nudged_steps=nudged_steps,
            solver=solver, batch_phases=d.batch_phases, seed=cfg.seed, points=e.points,
            guard=e.guard, jacobian_reg=e.jacobian_reg, jacobian_probes=e.jacobian_probes,
            full=full,
        )  # fmt: skip
        est.estimate(twin, x, y)
        grads.append(_layer_grads(twin))
    return grads[0], grads[1]


def gradient_agreement(
    net: ChainNetwork, x: Tensor, y: Tensor, cfg: ExperimentConfig, solver: Solver
) -> dict[str, float | None]:
    """The run's gradient estimate against truncated BPTT with the same budgets (through every
    free step with ``log.check_reference: full``), on one batch:
    per weight layer n, ``gdu_cos_layer{n}`` (cosine) and ``gdu_relerr_layer{n}`` (‖g − g_BPTT‖
    / ‖g_BPTT‖), and ``gdu_cos_all`` over every weight. Both run on copies of the network, with
    their own random draws, no warm start and no clipping: the run itself is left untouched.
    A layer BPTT's truncated unroll does not reach has no reference: None for both."""
    d = cfg.dynamics
    grads = update_and_reference(
        net, x, y, cfg, solver, free_steps=d.free_steps, nudged_steps=d.nudged_steps,
        beta=cfg.estimator.beta, full=cfg.log.check_reference == "full",
    )  # fmt: skip
    out: dict[str, float | None] = {}
    for n, (g, ref) in enumerate(zip(*grads, strict=True)):
        norm = float(ref.norm())
        cos = float(torch.nn.functional.cosine_similarity(g, ref, 0))
        out[f"gdu_cos_layer{n}"] = cos if norm > 0 else None
        out[f"gdu_relerr_layer{n}"] = float((g - ref).norm()) / norm if norm > 0 else None
    g, ref = (torch.cat(v) for v in grads)
    out["gdu_cos_all"] = float(torch.nn.functional.cosine_similarity(g, ref, 0))
    return out
