"""EP under DistributedDataParallel, in the two wirings.

Each rank relaxes its shard of the global batch; gradients are averaged across ranks:

- ``estimator.estimate(ddp_net, x, y)``: the local EP estimate, then one all-reduce;
- ``DDP(SurrogateLoss(net, estimator))(x, y).backward()``: the surrogate's backward, reduced by
  DDP as any loss (the form trainers that own backward use), then ``after_backward``.

Run on CPU with two processes: ``torchrun --standalone --nproc_per_node=2 examples/ddp.py``
(on GPUs the backend is NCCL and each rank uses ``cuda:LOCAL_RANK``).
"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from eqprop import EnergyNetwork, SymmetricEP
from eqprop.estimators import SurrogateLoss


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu")
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts them)
    net = EnergyNetwork((16,), dense=[32], num_classes=2, output="ce").to(device)
    estimator = SymmetricEP(beta=0.5, free_steps=15, nudged_steps=5)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
    x = torch.rand(64, 16, generator=torch.Generator().manual_seed(1)).to(device)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long()
    shard = slice(rank * 64 // world, (rank + 1) * 64 // world)  # this rank's part of the batch

    ddp_net = DDP(net)  # wiring 1: estimate() on the wrapped network
    optimizer.zero_grad()
    estimator.estimate(ddp_net, x[shard], y[shard])
    optimizer.step()

    loss = DDP(SurrogateLoss(net, estimator))  # wiring 2: the surrogate inside DDP
    optimizer.zero_grad()
    loss(x[shard], y[shard]).backward()
    estimator.after_backward(net)
    optimizer.step()

    checksum = torch.stack([p.detach().sum() for p in net.parameters()]).sum()
    sums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(sums, checksum)
    if rank == 0:
        same = all(torch.equal(s, sums[0]) for s in sums)
        print(f"{world} ranks, replicas identical: {same}")
    # Teardown order matters with gloo: release the DDP wrappers (their reducers hold the process
    # group) while it is alive, wait for every rank, and only then destroy the group. Destroying it
    # under live reducers, or while a peer's last messages are in flight, can abort a rank at exit.
    del ddp_net, loss
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
