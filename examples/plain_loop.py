"""EP in a plain PyTorch training loop: ``estimate`` writes the gradients, the optimiser steps.

Run: ``python examples/plain_loop.py`` (about a second on a CPU).
"""

import torch

from eqprop import EnergyNetwork, FreeRelaxation, Solver, SymmetricEP


def main() -> float:
    torch.manual_seed(0)
    x = torch.rand(256, 16)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long()  # a toy two-class problem
    net = EnergyNetwork((16,), dense=[32], num_classes=2, output="ce", activation="mysig")
    solver = Solver(schedule="even_odd")
    net.relaxation = FreeRelaxation(solver, steps=15)  # what net(x) relaxes with
    estimator = SymmetricEP(beta=0.5, free_steps=15, nudged_steps=5, solver=solver)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    for _ in range(5):
        for i in range(0, 256, 32):
            optimizer.zero_grad()
            estimator.estimate(net, x[i : i + 32], y[i : i + 32])
            optimizer.step()
    accuracy = float((net(x).argmax(1) == y).float().mean())
    print(f"train accuracy {accuracy:.2%}")
    return accuracy


if __name__ == "__main__":
    main()
