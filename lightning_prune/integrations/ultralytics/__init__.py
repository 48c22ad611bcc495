"""Train, validate, prune and export ultralytics YOLO models with PyTorch Lightning.

ultralytics is AGPL-3.0 and an optional extra (``pip install "lightning-prune[yolo]"``): nothing here imports it at
module level, and this package loads its submodules only when one of their names is first used.

By concern:

* :mod:`.data` — :class:`YOLODataModule` (YOLO-format ``data.yaml`` sets, or the synthetic shapes set).
* :mod:`.build` — :func:`build_detection_model` (from a model YAML, a ``.pt`` checkpoint or a module).
* :mod:`.module` — :class:`YOLOModule` (ultralytics' loss, NMS + torchmetrics mAP, optimizer and LR schedule).
* :mod:`.export` — :func:`save_yolo` (checkpoints ``ultralytics.YOLO(path)`` loads, pruned ones included).
* :mod:`.validation` — :func:`ultralytics_val_metrics` / :func:`ultralytics_val_map` (ultralytics' own validator).
* :mod:`.common` — optional-import helpers shared by the others.

Example (training a few epochs on the synthetic set, then saving for ultralytics)::

    import lightning.pytorch as pl
    from lightning_prune.integrations.ultralytics import YOLODataModule, YOLOModule, save_yolo

    data = YOLODataModule(synthetic=True, imgsz=160, batch_size=16)
    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=160)
    pl.Trainer(max_epochs=10, accelerator="cpu").fit(module, data)
    save_yolo(module, "yolov8n-shapes.pt", data=data.data_yaml)  # ultralytics.YOLO("yolov8n-shapes.pt") loads it
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "IMAGE_SUFFIXES": "data",
    "DataConfig": "data",
    "EpochSampler": "data",
    "YOLODataModule": "data",
    "YOLODataset": "data",
    "label_path": "data",
    "letterbox": "data",
    "load_data_yaml": "data",
    "read_labels": "data",
    "yolo_collate": "data",
    "build_detection_model": "build",
    "resolve_model_yaml": "build",
    "WarmupDecay": "module",
    "YOLOModule": "module",
    "coco_map": "module",
    "save_yolo": "export",
    "ultralytics_val_map": "validation",
    "ultralytics_val_metrics": "validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
