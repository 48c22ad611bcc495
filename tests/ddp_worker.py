"""Run by tests/test_distributed.py: a 2-process CPU (gloo) DDP fit with IterativePruningCallback.

Lightning's "ddp" strategy re-launches this script for rank 1; every rank writes its final architecture and
pruning history to ``<out>/rank<k>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import count_flops
from lightning_prune.callbacks import IterativePruningCallback


class ConcatNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        c = 16
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(3 * c, 2 * c, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.head = nn.Linear(2 * c, 4)
        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=4)
        self.example_input_array = torch.zeros(1, 3, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        r1, r2 = self.right(x).chunk(2, 1)
        x = self.fuse(torch.cat([self.left(x), r1 + x, r2], 1))
        return self.head(x.mean((2, 3)))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        self.accuracy(self(x), y)
        self.log("val/acc", self.accuracy, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 16, 16, generator=generator)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = ConcatNet()
    flops_before = count_flops(model, model.example_input_array)
    pruning = IterativePruningCallback(schedule=[1, 2], target=0.4, strategy="sensitivity", monitor="val/acc",
                                       sensitivity_batches=2, verbose=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, limit_train_batches=4,
                         limit_val_batches=2, callbacks=[pruning], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader(), loader())
    result = {
        "rank": trainer.global_rank,
        "shapes": {name: list(p.shape) for name, p in model.named_parameters()},
        "history": [{"epoch": e["epoch"], "plan": e["plan"]} for e in pruning.history],
        "flops_ratio": count_flops(model, model.example_input_array.to(model.device)) / flops_before,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
