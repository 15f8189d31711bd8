"""Builders: turn an experiment config into the objects a run needs (device, network, solver,
estimator, optimiser, schedule, data loaders)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from eqprop.core import NETWORKS, ChainNetwork
from eqprop.dynamics import FreeRelaxation, Solver
from eqprop.estimators import GradientEstimator, make_estimator
from eqprop.train.convert import ConfigError
from eqprop.train.datasets import Dataset
from eqprop.train.loader import EpochLoader, normalizer_for, split_validation
from eqprop.train.optimizers import OPTIMIZERS, SCHEDULERS
from eqprop.train.schema import DTYPES, ExperimentConfig

__all__ = [
    "Splits",
    "TrainingError",
    "build_estimator",
    "build_network",
    "build_optimizer",
    "build_scheduler",
    "build_solver",
    "make_splits",
    "resolve_device",
    "resolve_dtype",
]


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite values, a file-system error while it runs); the
    message says why and what checkpoint is left."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{name!r} is not valid on this machine (CUDA is not available); expected cpu or auto",
            "train.device",
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"{name!r} is not valid on this machine; expected cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}, cpu or auto",
            "train.device",
        )
    return device


def resolve_dtype(cfg: ExperimentConfig) -> torch.dtype:
    """The run's floating-point type (``train.dtype``)."""
    return DTYPES[cfg.train.dtype]


def build_solver(cfg: ExperimentConfig) -> Solver:
    """The relaxation solver of ``cfg.dynamics`` (its Solver fields)."""
    return cfg.dynamics.solver


def build_network(
    cfg: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int
) -> ChainNetwork:
    """The network of ``cfg.model`` for inputs of ``input_shape``, seeded by ``cfg.seed``.

    ``net(x)`` relaxes with the run's solver for ``dynamics.resolved_eval_steps`` steps.
    """
    image = cfg.model.conv or cfg.model.graph is not None
    shape = tuple(input_shape) if image else (math.prod(input_shape),)
    # Initialisation draws from a local generator state so that it never depends on what ran
    # before in the process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = NETWORKS[cfg.model.kind].from_settings(shape, num_classes, cfg.model)
    net.relaxation = FreeRelaxation(build_solver(cfg), cfg.dynamics.resolved_eval_steps)
    return net


def build_estimator(cfg: ExperimentConfig) -> GradientEstimator:
    """The gradient estimator of ``cfg.estimator`` with the solver of ``cfg.dynamics``."""
    d, e = cfg.dynamics, cfg.estimator
    return make_estimator(
        e.kind, beta=e.beta, free_steps=d.free_steps, nudged_steps=d.nudged_steps,
        full=e.full_bptt, solver=build_solver(cfg), batch_phases=d.batch_phases, seed=cfg.seed,
        points=e.points, online=e.online, online_periods=e.online_periods, guard=e.guard,
        jacobian_reg=e.jacobian_reg, jacobian_probes=e.jacobian_probes,
        warm_start=e.warm_start, clip_grad_norm=cfg.optim.clip_grad_norm,
    )  # fmt: skip


def build_optimizer(cfg: ExperimentConfig, net: ChainNetwork) -> torch.optim.Optimizer:
    """One parameter group per weight layer, with that layer's lr and weight decay."""
    o = cfg.optim
    n = net.n_layers
    groups = [
        {"params": list(layer.parameters()), "lr": lr, "weight_decay": wd}
        for layer, lr, wd in zip(
            net.weight_layers(), o.layer_lrs(n), o.layer_weight_decays(n), strict=True
        )
    ]
    return OPTIMIZERS[o.kind](groups, o)


def build_scheduler(
    cfg: ExperimentConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of ``cfg.optim.scheduler`` (stepped per epoch), or None."""
    build = SCHEDULERS[cfg.optim.scheduler.kind]
    return None if build is None else build(optimizer, cfg.optim.scheduler, cfg.train.epochs)


@dataclass
class Splits:
    """The three loaders of a run."""

    train: EpochLoader
    val: EpochLoader | None
    test: EpochLoader


def make_splits(
    cfg: ExperimentConfig, data: Dataset, device: torch.device, dtype: torch.dtype
) -> Splits:
    """Seeded validation split, normalisation and loaders, all on ``device``."""
    n = data.y_train.shape[0]
    val_size = cfg.data.resolved_val_size(n)
    if val_size >= n:
        default = f" (the default for {cfg.data.dataset})" if cfg.data.val_size is None else ""
        raise ConfigError(
            f"{val_size}{default} is not valid; expected fewer than the {n} training examples "
            "of this data set (0 for no validation split)",
            "data.val_size",
        )
    train_idx, val_idx = split_validation(n, val_size, cfg.seed)
    if cfg.data.train_size is not None:
        train_idx = train_idx[: cfg.data.train_size]
    norm = normalizer_for(data, cfg.data.normalize)
    eval_bs = cfg.train.resolved_eval_batch_size

    def loader(x: Tensor, y: Tensor, train: bool) -> EpochLoader:
        return EpochLoader(
            x, y, batch_size=cfg.train.batch_size if train else eval_bs, device=device,
            dtype=dtype, normalizer=norm, shuffle=train, augment=train and cfg.data.augment,
            seed=cfg.seed, pad=cfg.data.augment_pad, hflip=cfg.data.augment_flip,
            randaugment=cfg.data.randaugment,
            magnitude=cfg.data.randaugment_magnitude,
        )  # fmt: skip

    return Splits(
        train=loader(data.x_train[train_idx], data.y_train[train_idx], True),
        val=loader(data.x_train[val_idx], data.y_train[val_idx], False) if val_size else None,
        test=loader(data.x_test, data.y_test, False),
    )
