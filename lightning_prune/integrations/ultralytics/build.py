"""Build ultralytics YOLO models (detect, segment, pose, obb) from a YAML, a ``.pt`` checkpoint or a module.

Example::

    from lightning_prune.integrations.ultralytics import build_yolo_model, model_task

    model = build_yolo_model("yolov8n-seg.yaml", nc=3)     # a SegmentationModel, random init
    model_task(model)                                      # 'segment'
    model = build_yolo_model("runs/detect/train/weights/best.pt")   # ultralytics' own checkpoint
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from lightning_prune.integrations.ultralytics.common import is_detection_model, one_line, require_ultralytics

__all__ = ["TASK_MODELS", "build_detection_model", "build_yolo_model", "model_task", "resolve_model_yaml"]

#: task -> ultralytics model class name in ``ultralytics.nn.tasks``
TASK_MODELS: dict[str, str] = {"detect": "DetectionModel", "segment": "SegmentationModel", "pose": "PoseModel",
                               "obb": "OBBModel"}


def model_task(model: nn.Module | dict[str, Any]) -> str:
    """The ultralytics task of a model or a parsed model YAML: ``detect``, ``segment``, ``pose`` or ``obb``.

    Read from the head's class (``Segment``, ``Pose``, ``OBB`` and their YOLO26/YOLOE variants), so a pruned model
    keeps its task; raises ``ValueError`` for other models (classification, RT-DETR, ...).
    """
    if isinstance(model, dict):
        head = str(model.get("head", [[None, None, ""]])[-1][2])
    else:
        if not is_detection_model(model):
            raise ValueError(f"expected an ultralytics detect/segment/pose/obb model, got {type(model).__name__}")
        head = type(model.model[-1]).__name__
    name = head.lower()
    for key, task in (("segment", "segment"), ("pose", "pose"), ("obb", "obb"), ("detect", "detect")):
        if key in name:
            return task
    raise ValueError(f"the model's head {head!r} is not a detect, segment, pose or obb head")


def _load_checkpoint(path: Path) -> nn.Module:
    from ultralytics.nn.tasks import load_checkpoint

    try:
        built, _ = load_checkpoint(str(path))
    except Exception as err:
        raise ValueError(f"{path}: not a readable ultralytics checkpoint ({one_line(err)})") from None
    if not is_detection_model(built):
        raise ValueError(f"{path} holds a {type(built).__name__}, not a detect/segment/pose/obb model")
    built.float().train()
    for p in built.parameters():  # ultralytics saves checkpoints with requires_grad=False
        p.requires_grad_(True)
    return built


def build_yolo_model(model: str | os.PathLike | nn.Module, nc: int | None = None, task: str | None = None,
                     verbose: bool = False) -> nn.Module:
    """An ultralytics detect/segment/pose/obb model from a model YAML, a ``.pt`` checkpoint or an existing model.

    Args:
        model: a YAML path, an ultralytics model YAML name (``"yolov8n.yaml"``, ``"yolo11n-seg"``), the name of a
            YAML shipped in :mod:`lightning_prune.models` (``"yolov7-tiny"``), a ``.pt`` checkpoint written by
            ultralytics' trainer or by :func:`save_yolo` (its pickled module is used as is, so pruned
            architectures, class names and the task survive), or a model.
        nc: the number of classes: overrides a YAML's; for a checkpoint or a model it must match (or be ``None``).
        task: the expected task; ``None`` accepts the model's own. A mismatch raises ``ValueError``.

    Example:
        >>> model = build_yolo_model("yolov8n-pose.yaml", nc=1)
        >>> model_task(model), int(model.model[-1].nc)
        ('pose', 1)
    """
    require_ultralytics()
    import ultralytics.nn.tasks as tasks

    label = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if isinstance(model, nn.Module):
        built = model
        found = model_task(built)
    elif str(model).endswith(".pt"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        built = _load_checkpoint(path)
        found = model_task(built)
    else:
        cfg = resolve_model_yaml(str(model))
        try:
            parsed = tasks.yaml_model_load(cfg)
        except FileNotFoundError:
            from lightning_prune.models import available_model_yamls

            raise FileNotFoundError(
                f"model {str(model)!r} is not a file, a lightning_prune model ({', '.join(available_model_yamls())}) "
                f"or an ultralytics model YAML such as 'yolov8n.yaml'") from None
        found = model_task(parsed)
        if task is not None and task != found:
            raise ValueError(f"model {label!r} is a {found} model, not {task}")
        built = getattr(tasks, TASK_MODELS[found])(parsed, ch=3, nc=nc, verbose=verbose)
    if task is not None and task != found:
        raise ValueError(f"model {label!r} is a {found} model, but the task is {task}")
    head_nc = int(built.model[-1].nc)
    if nc is not None and nc != head_nc:
        raise ValueError(f"model {label!r} has nc={head_nc}, got nc={nc}: build it from a YAML to change the number "
                         f"of classes")
    built.task = found
    return built


def build_detection_model(model: str | os.PathLike | nn.Module, nc: int | None = None,
                          verbose: bool = False) -> nn.Module:
    """Deprecated name of :func:`build_yolo_model` (which also builds segment, pose and obb models)."""
    return build_yolo_model(model, nc, verbose=verbose)


def resolve_model_yaml(name: str) -> str:
    """A YAML file path, one of :mod:`lightning_prune.models`' names, or an ultralytics name (``.yaml`` added)."""
    from lightning_prune.models import available_model_yamls, model_yaml

    path = Path(name).expanduser()
    if path.is_file():
        return str(path)
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    if stem in available_model_yamls():
        return str(model_yaml(stem))
    return name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
