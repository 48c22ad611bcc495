"""A small, fast LightningModule + DataModule for the callback tests.

``ToyNet`` has every coupling the pruning callback has to respect, at a width fine enough for FLOPs targets to be
met within a few percent: a stem, then two blocks that each expand with a 1x1 conv, ``chunk`` the result in halves,
add one half back onto the block input (a residual), run a depthwise + pointwise pair on the input and concatenate
``[half, half + x, pointwise(depthwise(x))]`` before a 1x1 fuse; global pooling and a linear classifier. The chunk
and the residual couple each block's expansion, depthwise conv and input into one group; the pointwise convs and the
fuse convs are groups of their own (five prunable groups of 32 channels).

Nothing is downloaded; data are random tensors with a learnable label rule (signs of two channel means).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 4
IMAGE_SIZE = 16


#: what :func:`plain_cnn` is traced and counted with
PLAIN_CNN_INPUT = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def plain_cnn(seed: int = 0) -> nn.Module:
    """Two 3x3 convs (16 channels, the first with BatchNorm), pooling and a linear head: the smallest net with two
    prunable groups, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 2))


def conv_bn(c_in: int, c_out: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class ConcatBlock(nn.Module):
    """``cat([a1, a2 + x, pw(dw(x))])`` -> 1x1 fuse, where ``a1, a2 = expand(x).chunk(2)``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = conv_bn(c, 2 * c)
        self.dw = conv_bn(c, c, 3, groups=c)
        self.pw = conv_bn(c, c)
        self.fuse = conv_bn(3 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1, a2 = self.expand(x).chunk(2, 1)
        return self.fuse(torch.cat([a1, a2 + x, self.pw(self.dw(x))], 1))


class ToyNet(nn.Module):
    def __init__(self, c: int = 32, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn(3, c, 3)
        self.block1 = ConcatBlock(c)
        self.block2 = ConcatBlock(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.head(x.mean((2, 3)))


class ToyModule(pl.LightningModule):
    """Classifier over :class:`ToyNet`; logs ``train/loss`` and ``val/acc`` (a torchmetrics Accuracy).

    Args:
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adamw"``.
        scheduler: add a ``StepLR(step_size=1, gamma=0.5)`` stepped every epoch.
        example_input: set ``example_input_array`` (a 1x3x16x16 zero tensor).
        log_val: log ``val/acc`` in validation (switch off to test a monitor that is never logged).
    """

    def __init__(self, width: int = 32, optimizer: str = "sgd", lr: float = 0.05, scheduler: bool = False,
                 example_input: bool = True, log_val: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = ToyNet(width)
        if example_input:
            self.example_input_array = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        self.acc = torchmetrics.Accuracy(task="multiclass", num_classes=NUM_CLASSES)
        self.optimizer_name = optimizer
        self.lr = lr
        self.scheduler = scheduler
        self.log_val = log_val
        self.training_steps = 0  # counts real training steps (proves that bad input stops fit before any)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.training_steps += 1

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y))
        if self.log_val:
            self.acc(logits, y)
            self.log("val/acc", self.acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adamw":
            optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr * 0.1, weight_decay=0.01)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if not self.scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class ToyData(pl.LightningDataModule):
    """``n`` random 3x16x16 images; label = (mean of channel 0 > 0) + 2 * (mean of channel 1 > 0)."""

    def __init__(self, n: int = 128, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
        self.dataset = TensorDataset(x, y)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=32)


def check_module_attributes(module: nn.Module) -> None:
    """Every conv/norm/linear module's size attributes agree with its tensors' shapes (surgery kept them in sync)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels, name
            assert m.weight.shape[1] * m.groups == m.in_channels, name
        elif isinstance(m, nn.BatchNorm2d):
            for tensor in (m.weight, m.bias, m.running_mean, m.running_var):
                assert tensor.shape == (m.num_features,), name
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), name
