"""EP under PyTorch Lightning's automatic optimisation (``pip install -e ".[lightning]"``).

``training_step`` returns the estimator's surrogate: Lightning calls ``backward`` on it (and,
with ``strategy="ddp"``, all-reduces the gradients), so the optimiser receives the EP update.

Run: ``python examples/lightning_ep.py`` (a few seconds on a CPU).
"""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from eqprop import EnergyNetwork, FreeRelaxation, SymmetricEP


class EPModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = EnergyNetwork((16,), dense=[32], num_classes=2, output="ce")
        self.net.relaxation = FreeRelaxation(steps=15)
        self.estimator = SymmetricEP(beta=0.5, free_steps=15, nudged_steps=5)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        value, estimate = self.estimator.surrogate(self.net, *batch)
        self.log("train_error", (estimate.predictions != batch[1]).float().mean())
        return value

    def on_after_backward(self) -> None:
        self.estimator.after_backward(self.net)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def main() -> None:
    torch.manual_seed(0)
    x = torch.rand(256, 16)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long()
    module = EPModule()
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=32))
    accuracy = float((module.net(x).argmax(1) == y).float().mean())
    print(f"train accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
