"""Communication overhead of data-parallel EP on this machine: one batch of a preset's network
with its global batch split over the ranks, and the time of the gradient all-reduce and the
per-batch figures' reduction alone (what data parallelism adds to a batch).

Run: ``torchrun --standalone --nproc_per_node=2 benchmarks/ddp_overhead.py [PRESET]`` and, for
the one-process figure, ``python benchmarks/ddp_overhead.py [PRESET]``. Prints JSON (rank 0).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from eqprop.train.builders import build_estimator, build_network
from eqprop.train.config import load_config
from eqprop.train.datasets import DATASETS
from eqprop.train.distributed import init_ranks


def _median(fn, reps: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    preset = sys.argv[1] if len(sys.argv) > 1 else "mnist-conv"
    ranks, _ = init_ranks("cpu")
    torch.set_num_threads(1)
    cfg = load_config(preset)
    spec = DATASETS[cfg.data.dataset]
    assert spec.image_shape is not None and spec.num_classes is not None
    net = build_network(cfg, spec.image_shape, spec.num_classes)
    est = build_estimator(cfg)
    b = cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(b, *spec.image_shape, generator=g), torch.randint(0, 10, (b,), generator=g)
    shard = ranks.shard(b)

    def local() -> None:
        net.zero_grad(set_to_none=True)
        est.accumulate(net, x[shard], y[shard], None)

    def reduce() -> None:
        ranks.average_gradients(net.parameters(), len(y[shard]), b)
        ranks.agree_batch(True, 0, 0.0, (1, 1), False)

    t_local = _median(local)
    t_reduce = _median(reduce)
    ranks.barrier()
    if ranks.is_main:
        print(json.dumps({
            "preset": preset, "world_size": ranks.world, "global_batch": b,
            "batch_seconds_local": t_local, "reduce_seconds": t_reduce,
            "batch_seconds": t_local + t_reduce,
            "overhead_fraction_of_batch": t_reduce / (t_local + t_reduce),
            "parameters": sum(p.numel() for p in net.parameters()),
        }, indent=1))  # fmt: skip
    ranks.close()


if __name__ == "__main__":
    main()
