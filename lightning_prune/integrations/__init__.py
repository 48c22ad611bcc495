"""Integrations with third-party model libraries; each is an optional extra and imported only when used.

:mod:`lightning_prune.integrations.ultralytics`
    :class:`~lightning_prune.integrations.ultralytics.YOLOModule` and
    :class:`~lightning_prune.integrations.ultralytics.YOLODataModule` train ultralytics YOLO detectors (YOLOv8,
    YOLO11, our YOLOv7-tiny YAML) with PyTorch Lightning, so the pruning callbacks can prune them;
    :func:`~lightning_prune.integrations.ultralytics.save_yolo` writes (pruned) models back as ultralytics ``.pt``
    checkpoints. Needs ``pip install "lightning-prune[yolo]"`` (ultralytics is AGPL-3.0).

Importing this package imports nothing heavy: the names below are loaded from their module on first access.
"""

from __future__ import annotations

from typing import Any

__all__ = ["YOLODataModule", "YOLOModule", "save_yolo", "ultralytics_val_map", "ultralytics_val_metrics"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("lightning_prune.integrations.ultralytics"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
