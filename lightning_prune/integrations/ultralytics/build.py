"""Build ultralytics detection models from a YAML, a ``.pt`` checkpoint or a module."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from lightning_prune.integrations.ultralytics.common import is_detection_model, require_ultralytics

__all__ = ["build_detection_model", "resolve_model_yaml"]


def build_detection_model(model: str | os.PathLike | nn.Module, nc: int | None = None,
                          verbose: bool = False) -> nn.Module:
    """An ultralytics ``DetectionModel`` from a model YAML, a ``.pt`` checkpoint or an existing model.

    ``model`` may be a YAML path, an ultralytics model YAML name (``"yolov8n.yaml"``, ``"yolo11n"``), the name of a
    YAML shipped in :mod:`lightning_prune.models` (``"yolov7-tiny"``), a ``.pt`` checkpoint written by ultralytics
    or :func:`save_yolo` (its pickled module is used as is, so pruned architectures survive), or a ``DetectionModel``.
    ``nc`` overrides a YAML's class count; for a checkpoint or a model it must match (or be ``None``).
    """
    require_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    if isinstance(model, nn.Module):
        if not is_detection_model(model):
            raise TypeError(f"expected an ultralytics DetectionModel, got {type(model).__name__}")
        built = model
    elif str(model).endswith(".pt"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        from ultralytics.nn.tasks import load_checkpoint

        built, _ = load_checkpoint(str(path))
        if not is_detection_model(built):
            raise TypeError(f"{path} holds a {type(built).__name__}, not a detection model")
        built.train()
        for p in built.parameters():  # ultralytics saves checkpoints with requires_grad=False
            p.requires_grad_(True)
    else:
        cfg = resolve_model_yaml(str(model))
        try:
            built = DetectionModel(cfg, ch=3, nc=nc, verbose=verbose)
        except FileNotFoundError:
            from lightning_prune.models import available_model_yamls

            raise FileNotFoundError(
                f"model {str(model)!r} is not a file, a lightning_prune model ({', '.join(available_model_yamls())}) "
                f"or an ultralytics model YAML such as 'yolov8n.yaml'") from None
    head_nc = int(built.model[-1].nc)
    if nc is not None and nc != head_nc:
        raise ValueError(f"model {model if isinstance(model, str) else type(model).__name__!r} has nc={head_nc}, got "
                         f"nc={nc}: build it from a YAML to change the number of classes")
    return built


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


