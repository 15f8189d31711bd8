"""``epoch`` (CUDA only): seconds per CIFAR-10 epoch of exact and fast EP, and of backprop."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from common import (
    CIFAR10_TRAIN,
    bp_iteration,
    ep_iteration,
    feedforward_twin,
    log,
    paper_cifar10,
    random_dataset,
    seeded,
    sgd,
    sync,
)
from context import Context
from torch import Tensor

from eqprop.train.builders import build_estimator, build_network, build_optimizer
from eqprop.train.config import load_config
from eqprop.train.loader import EpochLoader, normalizer_for

BATCH = 128
PRESETS = (("fast", "cifar10-ce-symmetric-fast"), ("exact", "cifar10-ce-symmetric"))


def run(ctx: Context) -> dict[str, Any]:
    """CUDA only: seconds per CIFAR-10 epoch (exact and fast presets, and backprop)."""
    if ctx.s.device.type != "cuda":
        return {"skipped": "no CUDA device"}
    return {
        "gpu": torch.cuda.get_device_name(ctx.s.device),
        **epoch_timings(ctx),
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
    }


def epoch_timings(ctx: Context) -> dict[str, Any]:
    """Seconds per training batch of the paper net, extrapolated to a CIFAR-10 epoch."""
    s = ctx.s
    ds = ctx.dataset("cifar10")
    source = "cifar10 train" if ds is not None else "random uint8 images of CIFAR-10's size"
    ds = ds or random_dataset("cifar10", CIFAR10_TRAIN, 1)
    loader = EpochLoader(
        ds.x_train,
        ds.y_train,
        BATCH,
        s.device,
        torch.float32,
        normalizer_for(ds, "paper"),
        shuffle=True,
        augment=True,
        seed=0,
    )
    n = min(s.epoch_batches, len(loader) - 3)
    per_epoch = math.ceil(CIFAR10_TRAIN / BATCH)
    timer = partial(time_batches, loader, n, s.device)

    out: dict[str, Any] = {}
    for kind, preset in PRESETS:
        log(f"epoch: {preset}, {n} batches")
        cfg = load_config(preset)
        net = build_network(cfg, ds.input_shape, 10).to(s.device)
        est, opt = build_estimator(cfg), build_optimizer(cfg, net)
        spb = timer(partial(ep_iteration, net, opt, est))
        out[kind] = {
            "preset": preset,
            "seconds_per_batch": spb,
            "seconds_per_epoch": spb * per_epoch,
        }
    by_layout = backprop_seconds_per_batch(timer, s.device)
    spb = min(by_layout.values())
    out["backprop"] = {
        "seconds_per_batch": spb,
        "seconds_per_epoch": spb * per_epoch,
        "seconds_per_batch_by_layout": by_layout,
    }
    for kind in ("exact", "fast"):
        out[f"ratio_{kind}"] = out[kind]["seconds_per_epoch"] / out["backprop"]["seconds_per_epoch"]
    return {
        **out,
        "data": source,
        "timed_batches": n,
        "batches_per_epoch": per_epoch,
        "extrapolated": f"seconds per batch over {n} timed batches (after 3 warm-up) x "
        f"{per_epoch} batches (= ceil(50000/128)); training iterations with data loading and "
        "augmentation, no evaluation",
    }


def time_batches(
    loader: EpochLoader, n: int, device: torch.device, train: Callable[[Tensor, Tensor], None]
) -> float:
    """Seconds per batch of ``train`` over ``n`` batches of epoch 0, after 3 warm-up batches."""
    batches = loader.epoch(0)
    for _ in range(3):  # warm-up
        train(*next(batches))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        train(*next(batches))
    sync(device)
    return (time.perf_counter() - t0) / n


def backprop_seconds_per_batch(
    timer: Callable[[Callable[[Tensor, Tensor], None]], float], device: torch.device
) -> dict[str, float]:
    """The paper net's feedforward twin with backprop, channels-last and contiguous."""
    twin = seeded(lambda: feedforward_twin(paper_cifar10("ce")))
    by_layout = {}
    for fmt in (torch.channels_last, torch.contiguous_format):
        log(f"epoch: backprop, {fmt}")
        bp = copy.deepcopy(twin).to(device, memory_format=fmt)
        by_layout[str(fmt).removeprefix("torch.")] = timer(partial(bp_iteration, bp, sgd(bp)))
    return by_layout
