"""Train, validate, prune and export ultralytics YOLO models with PyTorch Lightning.

ultralytics is AGPL-3.0 and an optional extra (``pip install "lightning-prune[yolo]"``): nothing here imports it at
module level, and this package loads its submodules only when one of their names is first used.

By concern:

* :mod:`.data` — :class:`YOLODataModule` (ultralytics' data pipeline on YOLO-format ``data.yaml`` sets, or the
  synthetic shapes set; strict, one-line errors for bad labels).
* :mod:`.build` — :func:`build_yolo_model` (detect/segment/pose/obb from a model YAML, a ``.pt`` or a module).
* :mod:`.ema` — :class:`ModelEMA` (weight averaging with ultralytics' semantics, prunable with the model).
* :mod:`.module` — :class:`YOLOModule` (ultralytics' loss and EMA, NMS + torchmetrics mAP, optimizer, LR schedule).
* :mod:`.export` — :func:`save_yolo` (checkpoints ``ultralytics.YOLO(path)`` loads, pruned ones included).
* :mod:`.validation` — :func:`ultralytics_val_metrics` / :func:`ultralytics_val_map` (ultralytics' own validator).
* :mod:`.trainer` — :func:`add_pruning` / :func:`keep_pruned` (iterative pruning inside ultralytics' own trainer).
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

from lightning_prune.utils.deprecation import moved_names, moving

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "TASKS": "data",
    "DataConfig": "data",
    "DataSetError": "data",
    "YOLODataModule": "data",
    "load_data_yaml": "data",
    "build_detection_model": "build",
    "build_yolo_model": "build",
    "model_task": "build",
    "resolve_model_yaml": "build",
    "ModelEMA": "ema",
    "YOLOModule": "module",
    "save_yolo": "export",
    "ultralytics_val_map": "validation",
    "ultralytics_val_metrics": "validation",
    "TASK_MONITORS": "trainer",
    "UltralyticsPruning": "trainer",
    "add_pruning": "trainer",
    "keep_pruned": "trainer",
}

__all__ = sorted(_EXPORTS)

#: internals this package exported in 0.1.0: importable from their modules; from here for one more release
_moved = moved_names(__name__, {**moving(["EpochSampler", "yolo_collate"], f"{__name__}.data"),
                                **moving(["WarmupDecay", "coco_map"], f"{__name__}.module")})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    return _moved(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
