""":class:`YOLOModule`: an ultralytics YOLO detector as a LightningModule (ultralytics' loss, torchmetrics mAP)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_prune.integrations.ultralytics.build import build_detection_model
from lightning_prune.integrations.ultralytics.common import INSTALL_HINT

__all__ = ["WarmupDecay", "YOLOModule", "coco_map"]


class WarmupDecay:
    """LR factor per optimizer step: linear warm-up to 1, then cosine or linear decay to ``lrf``."""

    def __init__(self, warmup_steps: int, total_steps: float, kind: str | None, lrf: float) -> None:
        self.warmup_steps, self.total_steps, self.kind, self.lrf = warmup_steps, total_steps, kind, lrf

    def __call__(self, step: int) -> float:
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind is None or not math.isfinite(self.total_steps) or self.total_steps <= 0:
            return factor
        progress = min(1.0, step / self.total_steps)
        if self.kind == "cosine":
            decay = self.lrf + (1 - self.lrf) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            decay = 1 - (1 - self.lrf) * progress
        return factor * decay


def coco_map(result: Mapping[str, Any]) -> tuple[float, float]:
    """COCO mAP50-95 and mAP50 (area "all", the largest max-detections setting) from an extended-summary result.

    torchmetrics' ``map`` comes from pycocotools' summary, which always reads 100 detections per image (and gives
    -1 for other settings); ultralytics counts up to ``max_det`` (300), so read the precision table instead.
    Classes without ground truth are skipped, and no ground truth at all gives 0.
    """
    precision = result["precision"][:, :, :, 0, -1]  # IoU threshold x recall x class, area all, last max_det
    valid = precision > -1
    if not valid.any():
        return 0.0, 0.0
    map50 = precision[0][valid[0]].mean() if valid[0].any() else precision.new_zeros(())
    return float(precision[valid].mean()), float(map50)


class YOLOModule(pl.LightningModule):
    """An ultralytics YOLO detector as a LightningModule: ultralytics' loss, NMS + torchmetrics mAP validation.

    Args:
        model: a model YAML (``"yolov8n.yaml"``, ``"yolo11n.yaml"``, ``"yolov7-tiny"``, a path), a ``.pt`` checkpoint
            (ultralytics' or :func:`save_yolo`'s, pruned ones included) or a ``DetectionModel``; see
            :func:`build_detection_model`.
        nc: number of classes (default: the YAML's or the checkpoint's).
        imgsz: input size of :attr:`example_input_array` (``1 x 3 x imgsz x imgsz``) and of saved checkpoints.
        optimizer: ``"SGD"`` (Nesterov), ``"AdamW"`` or ``"Adam"``; weights get ``weight_decay``, biases and norm
            parameters none.
        lr: peak learning rate; ``momentum``: SGD momentum, or Adam's ``beta1``.
        weight_decay: decoupled (AdamW) or L2 (SGD, Adam) weight decay of conv/linear weights.
        warmup_epochs: linear learning-rate warm-up, in epochs (fractions allowed).
        scheduler: ``"cosine"``, ``"linear"`` or ``None``: decay per step from ``lr`` to ``lr * lrf`` over the run.
        box_gain, cls_gain, dfl_gain: ultralytics' loss gains ``box``, ``cls`` and ``dfl``.
        conf, iou, max_det: validation NMS settings; the defaults are ultralytics' validator's (0.001, 0.7, 300).
        predict_conf: confidence threshold of :meth:`predict_step`.

    The model lives in :attr:`model`; :meth:`forward` is the ultralytics model's forward (a raw-prediction dict in
    training mode, ``(decoded, raw)`` in eval mode). Nothing here caches channel counts, so pruning :attr:`model`
    in place (parameters keep their identity) between steps is fine. Class names come from the data module's
    ``names`` when it has them.
    """

    def __init__(self, model: str | nn.Module = "yolov8n.yaml", nc: int | None = None, imgsz: int = 160,
                 optimizer: str = "AdamW", lr: float = 0.002, momentum: float = 0.9, weight_decay: float = 5e-4,
                 warmup_epochs: float = 1.0, scheduler: str | None = "cosine", lrf: float = 0.01,
                 box_gain: float = 7.5, cls_gain: float = 0.5, dfl_gain: float = 1.5, conf: float = 0.001,
                 iou: float = 0.7, max_det: int = 300, predict_conf: float = 0.25) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        if optimizer.lower() not in ("sgd", "adamw", "adam"):
            raise ValueError(f"optimizer must be 'SGD', 'AdamW' or 'Adam', got {optimizer!r}")
        if scheduler is not None and scheduler not in ("cosine", "linear"):
            raise ValueError(f"scheduler must be 'cosine', 'linear' or None, got {scheduler!r}")
        if imgsz < 32 or imgsz % 32:
            raise ValueError(f"imgsz must be a positive multiple of 32 (the largest YOLO stride), got {imgsz}")
        from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

        self.model = build_detection_model(model, nc)
        self.model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, "box": box_gain, "cls": cls_gain,
                                                     "dfl": dfl_gain, "imgsz": imgsz})
        self.model.criterion = None  # ultralytics' own cache; ours is below and follows the device
        self.example_input_array = torch.zeros(1, 3, imgsz, imgsz)
        self._criterion: Any = None
        self._criterion_key: tuple[Any, ...] | None = None
        self.val_map = self._make_metric()

    def _make_metric(self) -> nn.Module:
        try:
            from torchmetrics.detection import MeanAveragePrecision

            # extended_summary: the precision table, read at max_det below (pycocotools' own summary is fixed to 100)
            return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", extended_summary=True,
                                        max_detection_thresholds=[1, 10, int(self.hparams.max_det)])
        except ModuleNotFoundError as err:
            raise ImportError(f"mAP needs pycocotools (torchmetrics' detection backend): {INSTALL_HINT}") from err

    @property
    def nc(self) -> int:
        return int(self.model.model[-1].nc)

    @property
    def criterion(self) -> Any:
        """ultralytics' detection loss for the model, rebuilt when the model moves (it keeps the device and strides)."""
        head = self.model.model[-1]
        key = (head.stride.device, head.stride.dtype, id(head.stride), head.nc)
        if self._criterion is None or self._criterion_key != key:
            self._criterion = self.model.init_criterion()
            self._criterion_key = key
        return self._criterion

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    # -- hooks -----------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "names", None)
        if names:
            if len(names) != self.nc:
                raise ValueError(f"the model predicts {self.nc} classes but the data set has {len(names)}: pass "
                                 f"nc={len(names)} to YOLOModule")
            self.model.names = dict(enumerate(names))
        imgsz = getattr(datamodule, "imgsz", None)
        if isinstance(imgsz, int) and imgsz != self.hparams.imgsz:
            rank_zero_warn(f"YOLOModule(imgsz={self.hparams.imgsz}) but the data module letterboxes to {imgsz}")

    def on_fit_start(self) -> None:
        self.model.args.epochs = max(int(self.trainer.max_epochs or 1), 1)  # E2E (YOLO26) loss decays over epochs
        self._criterion = None

    def on_train_epoch_end(self) -> None:
        update = getattr(self._criterion, "update", None)
        if callable(update):
            update()

    # -- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        preds = self.model(batch["img"])
        loss, items = self.criterion(preds, batch)
        batch_size = batch["img"].shape[0]
        if self._trainer is not None:  # also usable as a plain function, outside a Trainer
            self.log_dict({f"train/{name}": value for name, value in items.items()}, batch_size=batch_size)
            self.log("train/loss", sum(items.values()), prog_bar=True, batch_size=batch_size)
        return loss.sum()  # ultralytics' scale: summed components times batch size

    def _detections(self, decoded: Any, conf: float) -> list[torch.Tensor]:
        from ultralytics.utils.nms import non_max_suppression

        end2end = bool(getattr(self.model, "end2end", False))
        return non_max_suppression(decoded, conf, self.hparams.iou, multi_label=not end2end,
                                   max_det=self.hparams.max_det, end2end=end2end, max_time_img=10.0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        decoded, raw = self.model(batch["img"])
        batch_size = batch["img"].shape[0]
        loss, items = self.criterion(raw, batch)
        if self._trainer is not None:
            self.log("val/loss", sum(items.values()), on_epoch=True, prog_bar=True, batch_size=batch_size)
        detections = self._detections(decoded, self.hparams.conf)
        height, width = batch["img"].shape[2:]
        scale = torch.tensor([width, height, width, height], device=batch["bboxes"].device, dtype=torch.float32)
        preds, targets = [], []
        for i, det in enumerate(detections):
            det = det.float()
            preds.append({"boxes": det[:, :4], "scores": det[:, 4], "labels": det[:, 5].long()})
            mine = batch["batch_idx"] == i
            xywh = batch["bboxes"][mine].float() * scale
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
            targets.append({"boxes": xyxy, "labels": batch["cls"][mine].view(-1).long()})
        self.val_map.update(preds, targets)

    def on_validation_epoch_end(self) -> None:
        map50_95, map50 = coco_map(self.val_map.compute())
        self.val_map.reset()
        self.log("val/mAP50-95", map50_95, on_epoch=True, prog_bar=True)
        self.log("val/mAP50", map50, on_epoch=True, prog_bar=True)

    def predict_step(self, batch: Any, batch_idx: int) -> list[torch.Tensor]:
        """Detections per image, ``(n, 6)``: ``x1 y1 x2 y2 conf cls`` in letterboxed-image pixels."""
        images = batch["img"] if isinstance(batch, Mapping) else batch
        decoded = self.model(images)
        decoded = decoded[0] if isinstance(decoded, tuple) else decoded
        return self._detections(decoded, self.hparams.predict_conf)

    # -- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        name = hp.optimizer.lower()
        if name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        elif name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.momentum, 0.999))
        else:
            optimizer = torch.optim.Adam(groups, lr=hp.lr, betas=(hp.momentum, 0.999))
        if hp.scheduler is None and hp.warmup_epochs <= 0:
            return optimizer
        total = float("inf")
        steps_per_epoch = 0.0
        if self._trainer is not None:
            total = float(self.trainer.estimated_stepping_batches)
            epochs = self.trainer.max_epochs
            if math.isfinite(total) and epochs and epochs > 0:
                steps_per_epoch = total / epochs
        warmup = round(hp.warmup_epochs * steps_per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(warmup, total, hp.scheduler, hp.lrf))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


