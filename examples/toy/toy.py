"""A small concat CNN and a synthetic classification data set: the quickest way to see IterativePruningCallback
work from a LightningCLI YAML, without ultralytics.

    python examples/toy/main.py fit --config examples/toy/config.yaml
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["ConcatNet", "SyntheticClasses"]


class ConcatNet(pl.LightningModule):
    """Stem, then a block whose branches (a 3x3 conv, the halves of a ``chunk``, one with a residual) are
    concatenated and fused: a miniature of the YOLO blocks the pruning graph has to understand."""

    def __init__(self, width: int = 16, num_classes: int = 4, lr: float = 0.05, image_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        c = width
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(3 * c, 2 * c, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.head = nn.Linear(2 * c, num_classes)
        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.example_input_array = torch.zeros(1, 3, image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        r1, r2 = self.right(x).chunk(2, 1)
        x = self.fuse(torch.cat([self.left(x), r1 + x, r2], 1))
        return self.head(x.mean((2, 3)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.accuracy(self(x), y)
        self.log("val/acc", self.accuracy, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class SyntheticClasses(pl.LightningDataModule):
    """Random images whose class is decided by the signs of two colour channels' means (seeded)."""

    def __init__(self, num_samples: int = 128, image_size: int = 16, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(num_samples, 3, image_size, image_size, generator=generator)
        y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
        self.dataset = TensorDataset(x, y)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)
