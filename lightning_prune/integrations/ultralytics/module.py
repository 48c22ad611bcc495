""":class:`YOLOModule`: an ultralytics YOLO model as a LightningModule (ultralytics' loss and EMA, torchmetrics mAP).

Example::

    import lightning.pytorch as pl
    from lightning_prune.callbacks import IterativePruningCallback
    from lightning_prune.integrations.ultralytics import YOLODataModule, YOLOModule

    module = YOLOModule("runs/detect/train/weights/best.pt")      # or "yolov8n.yaml" with nc=...
    data = YOLODataModule("my/data.yaml", imgsz=640)
    pruning = IterativePruningCallback(schedule=[1, 3, 5], target=0.5, monitor="val/mAP50-95")
    pl.Trainer(max_epochs=8, callbacks=[pruning]).fit(module, data)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_prune.checkpoint import PrunedCheckpointMixin
from lightning_prune.integrations.ultralytics.build import build_yolo_model
from lightning_prune.integrations.ultralytics.common import INSTALL_HINT
from lightning_prune.integrations.ultralytics.ema import ModelEMA

__all__ = ["WarmupDecay", "YOLOModule", "coco_map"]

#: task -> what ``val/mAP50-95`` measures in :class:`YOLOModule`'s validation loop
VAL_METRIC = {"detect": "box mAP", "segment": "box mAP", "pose": "box mAP", "obb": "none (val/loss only)"}


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


class YOLOModule(PrunedCheckpointMixin, pl.LightningModule):
    """An ultralytics YOLO model (detect, segment, pose or obb) as a LightningModule.

    Training uses the model's own ultralytics loss (``init_criterion``: detection, segmentation, pose or OBB loss),
    gradient-norm clipping at 10 and an exponential moving average of the weights with ultralytics' semantics
    (:class:`~lightning_prune.integrations.ultralytics.ema.ModelEMA`, updated after every optimizer step).
    Lightning's validation and test loops evaluate the EMA copy, and :func:`save_yolo` writes it; a
    ``validation_step`` called while the trainer is *training* — the pruning callback's sensitivity probes, which
    mask the live model — evaluates the live model. Validation runs NMS and
    :class:`torchmetrics.detection.MeanAveragePrecision`, logging ``val/mAP50-95``, ``val/mAP50`` and ``val/loss``
    (box mAP for detect, segment and pose; obb logs ``val/loss`` only: use :func:`ultralytics_val_metrics` for its
    mAP). The test loop logs the same under ``test/``.

    Args:
        model: a model YAML (``"yolov8n.yaml"``, ``"yolo11n-seg.yaml"``, ``"yolov7-tiny"``, a path), a ``.pt``
            checkpoint (ultralytics' trainer's ``best.pt``/``last.pt`` or :func:`save_yolo`'s, pruned ones
            included: weights, task and class names are loaded) or a model; see :func:`build_yolo_model`.
        nc: number of classes (default: the YAML's or the checkpoint's; must match a checkpoint's).
        task: the expected task (default: the model's own); a mismatch raises ``ValueError``.
        imgsz: input size of :attr:`example_input_array` (``1 x 3 x imgsz x imgsz``) and of saved checkpoints.
        optimizer: ``"SGD"`` (Nesterov), ``"AdamW"`` or ``"Adam"``; weights get ``weight_decay``, biases and norm
            parameters none.
        lr: peak learning rate; ``momentum``: SGD momentum, or Adam's ``beta1``.
        weight_decay: decoupled (AdamW) or L2 (SGD, Adam) weight decay of conv/linear weights.
        warmup_epochs: linear learning-rate warm-up, in epochs (fractions allowed).
        scheduler: ``"cosine"``, ``"linear"`` or ``None``: decay per step from ``lr`` to ``lr * lrf`` over the run.
        box_gain, cls_gain, dfl_gain: ultralytics' loss gains ``box``, ``cls`` and ``dfl``.
        ema: keep the EMA (ultralytics' default); ``ema_decay``, ``ema_tau``: its largest decay and ramp.
        clip_grad_norm: gradient-norm clipping (ultralytics clips at 10); ``None`` leaves it to the Trainer.
        conf, iou, max_det: validation NMS settings; the defaults are ultralytics' validator's (0.001, 0.7, 300).
        predict_conf: confidence threshold of :meth:`predict_step`.
        distill: distil while training with ultralytics' own distillation loss (``ultralytics.nn.distill_model``:
            score-weighted L2 between the teacher's neck features and the student's, each through a learned
            projector), added to the loss and logged as ``train/distill_loss``: ``True`` — the teacher is a frozen
            copy of the model as built here (e.g. the unpruned ``best.pt`` about to be pruned; the projectors then
            start as the identity, so the loss starts at zero and pulls only where a prune moved the student),
            ``"teacher.pt"`` — that model (ultralytics' projectors, randomly initialised). The teacher runs under
            ``no_grad`` in eval mode and is never saved: checkpoints hold the projectors, and
            ``load_from_checkpoint`` rebuilds the teacher from these arguments.
        distill_weight: the distillation loss weight (ultralytics' ``dis``).

    Nothing here caches channel counts, so pruning :attr:`model` in place (parameters keep their identity) between
    steps is fine; :meth:`averaged_copies` tells the pruning callback where the EMA copy is, so it gets the same
    surgery. Class names come from the data module's ``names`` when it has them; an ``nc`` or a task that disagrees
    with the data module raises ``ValueError`` in :meth:`setup`, before any training.
    """

    def __init__(self, model: str | nn.Module = "yolov8n.yaml", nc: int | None = None,
                 task: Literal["detect", "segment", "pose", "obb"] | None = None, imgsz: int = 160,
                 optimizer: Literal["SGD", "AdamW", "Adam"] = "AdamW", lr: float = 0.002, momentum: float = 0.9,
                 weight_decay: float = 5e-4, warmup_epochs: float = 1.0,
                 scheduler: Literal["cosine", "linear"] | None = "cosine", lrf: float = 0.01,
                 box_gain: float = 7.5, cls_gain: float = 0.5, dfl_gain: float = 1.5, ema: bool = True,
                 ema_decay: float = 0.9999, ema_tau: float = 2000.0, clip_grad_norm: float | None = 10.0,
                 conf: float = 0.001, iou: float = 0.7, max_det: int = 300, predict_conf: float = 0.25,
                 distill: bool | str = False, distill_weight: float = 6.0) -> None:
        super().__init__()
        if optimizer.lower() not in ("sgd", "adamw", "adam"):
            raise ValueError(f"optimizer must be 'SGD', 'AdamW' or 'Adam', got {optimizer!r}")
        if scheduler is not None and scheduler not in ("cosine", "linear"):
            raise ValueError(f"scheduler must be 'cosine', 'linear' or None, got {scheduler!r}")
        if imgsz < 32 or imgsz % 32:
            raise ValueError(f"imgsz must be a positive multiple of 32 (the largest YOLO stride), got {imgsz}")
        from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

        self.model = build_yolo_model(model, nc, task)
        self.task: str = self.model.task
        # not ``task``: Lightning refuses hparams a data module also has with another value, and None (the model's
        # own task) would differ from the data module's; the model's task is kept with the model
        self.save_hyperparameters(ignore=["task", "model"] if isinstance(model, nn.Module) else ["task"])
        self.model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, "box": box_gain, "cls": cls_gain,
                                                     "dfl": dfl_gain, "imgsz": imgsz, "task": self.task})
        self.model.criterion = None  # ultralytics' own cache; ours is below and follows the device
        if not isinstance(getattr(self.model, "names", None), Mapping) or len(self.model.names) != self.nc:
            self.model.names = {i: f"class_{i}" for i in range(self.nc)}
        self.example_input_array = torch.zeros(1, 3, imgsz, imgsz)
        self.ema: ModelEMA | None = ModelEMA(self.model, ema_decay, ema_tau) if ema else None
        self._ema_step = -1
        self._pending_ema: dict[str, Any] | None = None
        self._criterion: Any = None
        self._criterion_key: tuple[Any, ...] | None = None
        self.val_map = self._make_metric()
        self._distillation: list[nn.Module] = []  # a list: the teacher is not a submodule (never in state_dict)
        self.distill_projector: nn.ModuleList | None = None
        if distill is not False and distill is not None:
            self._setup_distillation(distill, distill_weight)

    def _setup_distillation(self, distill: bool | str, weight: float) -> None:
        from ultralytics.nn.distill_model import DistillationModel

        from lightning_prune.integrations.ultralytics.distill import DetectionProjectors, teacher_problem

        if not (isinstance(weight, (int, float)) and weight > 0 and math.isfinite(weight)):
            raise ValueError(f"distill_weight must be a positive number, got {weight!r}")
        if distill is True:
            teacher = copy.deepcopy(self.model)
        elif isinstance(distill, str):
            try:
                teacher = build_yolo_model(distill)
            except Exception as err:  # noqa: BLE001 - the user's file, named in one line
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ValueError(f"distillation teacher {distill!r} does not load: {first}") from None
        else:
            raise ValueError(f"distill must be True, False or a teacher path, got {distill!r}")
        problem = teacher_problem(teacher, self.model)
        if problem is not None:
            raise ValueError(f"distillation teacher {distill!r} cannot teach this model: {problem}")
        self.model.args.dis = float(weight)
        distillation = DistillationModel(teacher_model=teacher.float(), student_model=self.model)
        distillation._remove_feature_hooks()  # hooked only inside training_step: the model stays picklable
        if distill is True:  # the student is its teacher: zero loss at the start, the kept channels in place after
            DetectionProjectors(distillation).identity_start()
        self._distillation = [distillation]
        self.distill_projector = distillation.projector

    def set_teacher(self, distill: bool | str, weight: float | None = None) -> None:
        """(Re)build the distillation teacher: ``True`` — a frozen copy of :attr:`model` now (e.g. after loading
        trained weights into a module built from a YAML), a path — that model. Recorded in the hyperparameters, so
        ``load_from_checkpoint`` rebuilds the same teacher; call it before fit (the projectors start afresh)."""
        weight = float(self.hparams.get("distill_weight", 6.0) if weight is None else weight)
        self._setup_distillation(distill, weight)
        self.hparams["distill"], self.hparams["distill_weight"] = distill, weight

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen distillation teacher (``distill=...``), else None."""
        return self._distillation[0].teacher_model if self._distillation else None

    def distillation_attachments(self) -> dict[str, tuple[str, nn.Module]]:
        """The distillation projectors as graph attachments (each reads a neck output of :attr:`model`), so the
        pruning callback slices their inputs with every prune; empty without ``distill``."""
        if not self._distillation:
            return {}
        levels = self._distillation[0].feats_idx[:-1]
        return {f"distill_projector.{i}": (f"model.model.{level}", self.distill_projector[i])
                for i, level in enumerate(levels)}

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
    def names(self) -> dict[int, str]:
        """Class names, ``{index: name}``."""
        return dict(self.model.names)

    @property
    def criterion(self) -> Any:
        """ultralytics' loss for the model's task, rebuilt when the model moves (it keeps the device and strides)."""
        head = self.model.model[-1]
        key = (head.stride.device, head.stride.dtype, id(head.stride), head.nc)
        if self._criterion is None or self._criterion_key != key:
            self._criterion = self.model.init_criterion()
            self._criterion_key = key
        return self._criterion

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    # -- the EMA ---------------------------------------------------------------------------------------------------
    def averaged_copies(self) -> list[tuple[nn.Module, str]]:
        """``[(copy, prefix)]``: the averaged copies of submodules of this module, for the pruning callback.

        After every pruning step the callback applies the same surgery to each copy (``copy`` is a twin of the
        submodule at dotted path ``prefix``). Here: the EMA of :attr:`model`, when ``ema=True``.

        Example:
            >>> module = YOLOModule("yolov8n.yaml", nc=3, imgsz=64)
            >>> [(type(copy).__name__, prefix) for copy, prefix in module.averaged_copies()]
            [('DetectionModel', 'model')]
        """
        return [(self.ema.ema, "model")] if self.ema is not None else []

    def export_model(self, ema: bool = True) -> nn.Module:
        """The model to save: the EMA copy (``ema=True``, when the module keeps one) or the live model."""
        if ema and self.ema is not None:
            self._sync_ema()
            self.ema.ema.names = self.model.names
            return self.ema.ema
        return self.model

    @property
    def eval_model(self) -> nn.Module:
        """The model validation reads: the EMA copy in Lightning's evaluation loops, else the live model."""
        if self.ema is None or (self._trainer is not None and self.trainer.training):
            return self.model
        self._sync_ema()
        return self.ema.ema

    def _sync_ema(self) -> None:
        assert self.ema is not None
        if not self.ema.matches(self.model):
            rank_zero_warn("YOLOModule: the model changed shape without the same surgery on its EMA copy (pruned "
                           "outside IterativePruningCallback?); the EMA restarts from the model")
            self.ema.reset(self.model)
        device = next(self.model.parameters()).device
        if next(self.ema.ema.parameters()).device != device:
            self.ema.to(device)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is None:
            return
        step = self.trainer.global_step if self._trainer is not None else self._ema_step + 1
        if step != self._ema_step:  # an optimizer step happened (not an accumulation micro-batch)
            self._ema_step = step
            self._sync_ema()
            self.ema.update(self.model)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["yolo_ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # PrunedCheckpointMixin: rebuilds a pruned architecture first
        state = checkpoint.get("yolo_ema")
        if self.ema is not None and state is not None:
            if not self.ema.matches(self.model):
                self.ema.reset(self.model)  # the pruned architecture; its averages come from the checkpoint
            try:
                self.ema.load_state_dict(state)
            except ValueError:
                self._pending_ema = state  # the architecture changes later (resume): tried again at fit start

    # -- hooks -----------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        data_task = getattr(datamodule, "task", None)
        if isinstance(data_task, str) and data_task != self.task:
            raise ValueError(f"the model is a {self.task} model but the data module reads {data_task} labels: pass "
                             f"task={self.task!r} to YOLODataModule (or a {data_task} model)")
        names = getattr(datamodule, "names", None)
        if names:
            if len(names) != self.nc:
                raise ValueError(f"the model predicts {self.nc} classes but the data set has {len(names)}: pass "
                                 f"nc={len(names)} to YOLOModule (a checkpoint's class count cannot change)")
            self.model.names = dict(enumerate(names))
            if self.ema is not None:
                self.ema.ema.names = self.model.names
        imgsz = getattr(datamodule, "imgsz", None)
        if isinstance(imgsz, int) and imgsz != self.hparams.imgsz:
            rank_zero_warn(f"YOLOModule(imgsz={self.hparams.imgsz}) but the data module letterboxes to {imgsz}")

    def on_fit_start(self) -> None:
        self.model.args.epochs = max(int(self.trainer.max_epochs or 1), 1)  # E2E (YOLO26) loss decays over epochs
        self._criterion = None
        if self.ema is not None:
            self._sync_ema()
            if self._pending_ema is not None:
                try:
                    self.ema.load_state_dict(self._pending_ema)
                except ValueError as err:
                    rank_zero_warn(f"YOLOModule: {err}; the EMA restarts from the model")
                    self.ema.reset(self.model)
                self._pending_ema = None
        self._ema_step = self.trainer.global_step

    def on_train_epoch_end(self) -> None:
        update = getattr(self._criterion, "update", None)
        if callable(update):
            update()

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if gradient_clip_val is None and self.hparams.clip_grad_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.clip_grad_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # -- steps -----------------------------------------------------------------------------------------------------
    def _distilled_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """ultralytics' ``DistillationModel.loss``: the task loss with the distillation term appended."""
        distillation = self._distillation[0]
        device = batch["img"].device
        if next(distillation.teacher_model.parameters()).device != device:
            distillation.teacher_model.to(device)
        self.model.criterion = self.criterion  # ours (it follows the device); ultralytics' cache stays empty
        distillation._register_feature_hooks()
        try:
            loss, items = distillation.loss(batch)
        finally:
            distillation._remove_feature_hooks()
            distillation._teacher_feats.clear()
            distillation._student_feats.clear()
            self.model.criterion = None
        items = dict(items)
        items["distill_loss"] = items.pop("dis_loss").reshape(())
        return loss, items

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self._distillation:
            loss, items = self._distilled_loss(batch)
        else:
            preds = self.model(batch["img"])
            loss, items = self.criterion(preds, batch)
        batch_size = batch["img"].shape[0]
        if self._trainer is not None:  # also usable as a plain function, outside a Trainer
            names = getattr(self._criterion, "loss_names", None) or ("box_loss", "cls_loss", "dfl_loss")
            parts = items.detach().flatten() if isinstance(items, torch.Tensor) else None
            if parts is not None and len(parts) == len(names):
                self.log_dict({f"train/{name}": value for name, value in zip(names, parts)}, batch_size=batch_size)
                self.log("train/loss", parts.sum(), prog_bar=True, batch_size=batch_size)
            elif isinstance(items, Mapping):
                self.log_dict({f"train/{name}": value for name, value in items.items()}, batch_size=batch_size)
                self.log("train/loss", sum(items.values()), prog_bar=True, batch_size=batch_size)
        return loss.sum()  # ultralytics' scale: summed components times batch size

    def _detections(self, decoded: Any, conf: float) -> list[torch.Tensor]:
        from ultralytics.utils.nms import non_max_suppression

        model = self.eval_model
        end2end = bool(getattr(model, "end2end", False))
        return non_max_suppression(decoded, conf, self.hparams.iou, multi_label=not end2end,
                                   max_det=self.hparams.max_det, end2end=end2end, max_time_img=10.0,
                                   nc=0 if self.task == "detect" else self.nc, rotated=self.task == "obb")

    def _evaluate(self, batch: dict[str, Any], prefix: str) -> None:
        model = self.eval_model
        decoded, raw = model(batch["img"])
        if isinstance(decoded, (list, tuple)):  # segment: (detections with mask coefficients, protos)
            decoded = decoded[0]
        batch_size = batch["img"].shape[0]
        loss, items = self._loss(model, raw, batch)
        if self._trainer is not None:
            self.log(f"{prefix}/loss", loss, on_epoch=True, prog_bar=prefix == "val", batch_size=batch_size)
        if self.task == "obb":
            return
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

    def _loss(self, model: nn.Module, raw: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        criterion = self.criterion
        if model is not self.model:  # the EMA copy: the loss reads only the model's strides and head sizes
            criterion = model.init_criterion()
        loss, items = criterion(raw, batch)
        total = items.sum() if isinstance(items, torch.Tensor) else sum(items.values())
        return total, items

    def _log_map(self, prefix: str) -> None:
        if self.task == "obb":
            return
        map50_95, map50 = coco_map(self.val_map.compute())
        self.val_map.reset()
        self.log(f"{prefix}/mAP50-95", map50_95, on_epoch=True, prog_bar=prefix == "val")
        self.log(f"{prefix}/mAP50", map50, on_epoch=True, prog_bar=prefix == "val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_map("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_map("test")

    def predict_step(self, batch: Any, batch_idx: int) -> list[torch.Tensor]:
        """Detections per image, ``(n, 6+)``: ``x1 y1 x2 y2 conf cls`` (and mask/keypoint columns) in input pixels."""
        images = batch["img"] if isinstance(batch, Mapping) else batch
        decoded = self.eval_model(images)
        decoded = decoded[0] if isinstance(decoded, (tuple, list)) else decoded
        decoded = decoded[0] if isinstance(decoded, (tuple, list)) else decoded
        return self._detections(decoded, self.hparams.predict_conf)

    # -- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        projectors = self.distill_projector.parameters() if self.distill_projector is not None else ()
        for p in [*self.model.parameters(), *projectors]:  # the distillation projectors train with the model
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
