"""One-command GPU check: CUDA speed of the paper net, prepared for the rare lent GPU.

Prints one JSON object (and writes it to ``--out``): the paper CIFAR-10 net's relaxation step
time (exact and fast schedules × float32 / TF32 / bf16 × with and without CUDA-graph capture),
the EP/BP training-iteration ratio, seconds per CIFAR-10 epoch of the exact and fast presets
(extrapolated from timed batches on random data), and, with several GPUs, the data-parallel
scaling efficiency. Every section is timed with CUDA synchronisation, after warm-up, median of
repeats; a failing section records its error and the others still run. ``--budget`` seconds
bound the whole run (sections that would start after it are skipped and say so).

Usage (from the repository root): ``bash benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    bp_iteration,
    feedforward_twin,
    finite,
    median_time,
    paper_cifar10,
    seeded,
    sgd,
)

from eqprop import Solver
from eqprop.dynamics import set_precision
from eqprop.train.builders import build_estimator, build_network, build_optimizer
from eqprop.train.config import load_config
from eqprop.train.environment import environment_facts

BATCH = 128
SCHEDULES = {"exact": "synchronous", "fast": "even_odd"}
PRESETS = ("cifar10-ce-symmetric", "cifar10-ce-symmetric-fast")
TRAIN_EXAMPLES, EVAL_EXAMPLES = 45_000, 15_000  # CIFAR-10 minus validation; val + test


def _data(device: torch.device, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    return x.to(device), torch.randint(0, 10, (batch,), generator=g).to(device)


def section_step(device: torch.device, reps: int) -> dict[str, Any]:
    """Milliseconds per relaxation step of the paper net, batch 128, 30-step relaxations."""
    net = seeded(lambda: paper_cifar10("ce")).to(device)
    x, _ = _data(device)
    drive = net.input_drive(x)
    steps, rows = 30, []
    for kind, schedule in SCHEDULES.items():
        for precision in ("float32", "tf32", "bf16"):
            for graph in (False, True):
                solver = Solver(schedule=schedule, precision=precision, cuda_graph=graph)
                t = median_time(lambda s=solver: s.relax(net, drive, None, steps), reps, 2, device)
                rows.append({"kind": kind, "schedule": schedule, "precision": precision,
                             "cuda_graph": graph, "ms_per_step": 1e3 * t / steps})  # fmt: skip
    return {"batch": BATCH, "steps": steps, "rows": rows}


def _ep_iteration_seconds(preset: str, device: torch.device, reps: int, graph: bool) -> float:
    cfg = load_config(
        preset, [f"dynamics.cuda_graph={str(graph).lower()}", f"train.batch_size={BATCH}"]
    )
    net = build_network(cfg, (3, 32, 32), 10).to(device)
    est, opt = build_estimator(cfg), build_optimizer(cfg, net)
    x, y = _data(device, cfg.train.batch_size)

    def iteration() -> None:
        opt.zero_grad(set_to_none=True)
        est.estimate(net, x, y)
        opt.step()

    return median_time(iteration, reps, 1, device)


def section_ratio(device: torch.device, reps: int) -> dict[str, Any]:
    """Seconds per EP training iteration (each preset) over one backprop iteration."""
    twin = feedforward_twin(seeded(lambda: paper_cifar10("ce"))).to(device)
    x, y = _data(device)
    opt = sgd(twin)
    bp = median_time(lambda: bp_iteration(twin, opt, x, y), reps * 4, 3, device)
    rows = []
    for preset in PRESETS:
        for graph in (False, True):
            ep = _ep_iteration_seconds(preset, device, reps, graph)
            rows.append({"preset": preset, "cuda_graph": graph, "ep_seconds": ep,
                         "ratio": ep / bp})  # fmt: skip
    return {"bp_seconds": bp, "rows": rows}


def section_epoch(device: torch.device, reps: int, ratio: dict[str, Any]) -> dict[str, Any]:
    """Seconds per CIFAR-10 epoch: timed training batches and evaluation relaxations."""
    rows = []
    for preset in PRESETS:
        cfg = load_config(preset, [f"train.batch_size={BATCH}", f"train.eval_batch_size={BATCH}"])
        net = build_network(cfg, (3, 32, 32), 10).to(device)
        eval_bs = cfg.train.resolved_eval_batch_size
        x, _ = _data(device, eval_bs)
        eval_t = median_time(lambda n=net, x=x: n(x), reps, 1, device)
        for graph in (False, True):
            train_t = next(r["ep_seconds"] for r in ratio["rows"]
                           if r["preset"] == preset and r["cuda_graph"] == graph)  # fmt: skip
            batches = math.ceil(TRAIN_EXAMPLES / cfg.train.batch_size)
            seconds = batches * train_t + math.ceil(EVAL_EXAMPLES / eval_bs) * eval_t
            rows.append({"preset": preset, "cuda_graph": graph, "epoch_seconds": seconds,
                         "train_batch_seconds": train_t, "eval_batch_seconds": eval_t})  # fmt: skip
    return {"rows": rows, "note": "random data of CIFAR-10's shapes; eval without graphs"}


def _ddp_worker(rank: int, world: int, port: int, reps: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    device = torch.device(f"cuda:{rank}")
    torch.cuda.set_device(device)
    cfg = load_config(PRESETS[1])
    net = build_network(cfg, (3, 32, 32), 10).to(device)
    ddp, est, opt = DDP(net), build_estimator(cfg), build_optimizer(cfg, net)
    x, y = _data(device, BATCH // world)

    def iteration() -> None:
        opt.zero_grad(set_to_none=True)
        est.estimate(ddp, x, y)
        opt.step()

    t = median_time(iteration, reps, 2, device)
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": t}))
    dist.barrier()  # no rank tears its connections down while a peer still uses them
    dist.destroy_process_group()


def section_ddp(device: torch.device, reps: int, ratio: dict[str, Any]) -> dict[str, Any]:
    """Data-parallel iteration time of the fast preset on every visible GPU, global batch 128."""
    world = torch.cuda.device_count()
    if world < 2:
        return {"skipped": f"{world} GPU visible"}
    out = Path("/tmp/eqprop_ddp.json")
    mp.spawn(_ddp_worker, args=(world, 29517, reps, str(out)), nprocs=world, join=True)
    t_world = json.loads(out.read_text())["seconds"]
    t_one = next(r["ep_seconds"] for r in ratio["rows"]
                 if r["preset"] == PRESETS[1] and not r["cuda_graph"])  # fmt: skip
    return {"gpus": world, "seconds_1gpu": t_one, "seconds_ngpu": t_world,
            "speedup": t_one / t_world, "efficiency": t_one / t_world / world}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of the script itself")
    p.add_argument("--batch", type=int, default=BATCH, help="smaller for a CPU smoke test")
    args = p.parse_args(argv)
    globals()["BATCH"] = args.batch  # the sections read the module-level batch size
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device visible"}))
        return 1
    set_precision("float32", device)  # true float32 unless a row asks for TF32 or bf16
    t0 = time.perf_counter()
    result: dict[str, Any] = {"environment": environment_facts(), "sections": {}}
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("step", lambda: section_step(device, args.reps)),
        ("ratio", lambda: section_ratio(device, args.reps)),
        ("epoch", lambda: section_epoch(device, args.reps, result["sections"]["ratio"])),
        ("ddp", lambda: section_ddp(device, args.reps, result["sections"]["ratio"])),
    ]
    for name, run in sections:
        if time.perf_counter() - t0 > args.budget:
            result["sections"][name] = {"skipped": "time budget spent"}
            continue
        start = time.perf_counter()
        try:
            result["sections"][name] = run()
        except Exception:  # a broken section must not lose the others' figures
            result["sections"][name] = {"error": traceback.format_exc(limit=3)}
        result["sections"][name]["seconds"] = time.perf_counter() - start
        print(f"[{time.perf_counter() - t0:6.1f}s] {name} done", file=sys.stderr, flush=True)
    text = json.dumps(finite(result), indent=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
