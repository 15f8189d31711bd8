"""Data parallelism: two gloo processes on the CPU give the single-process gradient of the
global batch, through both wirings (estimate on the DDP-wrapped net, and SurrogateLoss in DDP)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nets import make_batch, make_net
from torch.nn.parallel import DistributedDataParallel as DDP

from eqprop import BPTT, AsymmetricNetwork, Solver, SymmetricEP
from eqprop.estimators import SurrogateLoss

WORLD = 2
BATCH = 6  # global batch; each rank relaxes 3 examples

#: name -> (dtype, network kwargs, estimator factory)
CASES = {
    "symmetric-ce-f64": (torch.float64, {}, lambda: SymmetricEP(0.3, 10, 4)),
    "symmetric-ce-f32": (torch.float32, {}, lambda: SymmetricEP(0.3, 10, 4)),
    "asymmetric-same": (
        torch.float64,
        {"cls": AsymmetricNetwork, "update_rule": "same"},
        lambda: SymmetricEP(0.3, 10, 4, solver=Solver(schedule="even_odd")),
    ),
    "bptt": (torch.float64, {}, lambda: BPTT(10, 4)),
}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _setup(case: str):
    dtype, kwargs, make = CASES[case]
    net = make_net("conv_max", output="ce", dtype=dtype, **kwargs)
    x, y = make_batch(net, batch=BATCH)
    return net, make(), x, y


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters()}


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    results = {}
    for case in CASES:
        net, est, x, y = _setup(case)
        est.estimate(DDP(net), x[shard], y[shard])
        results[case, "estimate"] = _grads(net)
        net.zero_grad(set_to_none=True)
        loss = DDP(SurrogateLoss(net, est))
        loss(x[shard], y[shard]).backward()
        est.after_backward(net)
        results[case, "surrogate"] = _grads(net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net, est, x, y = _setup("symmetric-ce-f64")
        est.estimate(net, x[shard], y[shard])  # the bare module: local gradients, a warning
    results["warning"] = [str(w.message) for w in caught]
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.barrier()  # no rank tears its connections down while a peer still uses them
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    os.environ.pop("WORLD_SIZE", None)
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("wiring", ["estimate", "surrogate"])
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_give_the_single_process_gradient_of_the_global_batch(ranks, case, wiring):
    net, est, x, y = _setup(case)
    est.estimate(net, x, y)
    expected = _grads(net)
    tol = TOL[CASES[case][0]]
    for rank in ranks:
        got = rank[case, wiring]
        assert got.keys() == expected.keys()
        for name, g in got.items():
            scale = float(expected[name].norm()) or 1.0
            assert float((g - expected[name]).norm()) <= tol * scale, (case, wiring, name)


def test_a_bare_module_under_several_processes_warns_that_gradients_stay_local(ranks):
    for rank in ranks:
        assert len(rank["warning"]) == 1
        assert "not wrapped in DistributedDataParallel" in rank["warning"][0]
