""":func:`save_yolo`: write (pruned) models as checkpoints ``ultralytics.YOLO(path)`` loads."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_prune.integrations.ultralytics.build import model_task
from lightning_prune.integrations.ultralytics.common import is_detection_model, require_ultralytics
from lightning_prune.utils.files import atomic_write

__all__ = ["save_yolo"]


def _names_dict(names: Any, nc: int) -> dict[int, str]:
    if isinstance(names, Mapping):
        out = {int(k): str(v) for k, v in names.items()}
    else:
        out = dict(enumerate(str(n) for n in names))
    if sorted(out) != list(range(nc)):
        raise ValueError(f"names must name the model's {nc} classes 0..{nc - 1}, got {len(out)}: {out}")
    return out


def save_yolo(module_or_model: nn.Module, path: str | os.PathLike,
              names: Sequence[str] | Mapping[int, str] | None = None, imgsz: int | None = None,
              data: str | os.PathLike | None = None, half: bool = False, ema: bool = True) -> Path:
    """Write a checkpoint ``ultralytics.YOLO(path)`` loads, predicts with, validates and exports (pruned or not).

    The model module itself is pickled (as ultralytics does), so a pruned model keeps its pruned channel counts;
    only ultralytics and torch classes end up in the file. The task (detect, segment, pose, obb, read from the
    model's head), the class names and the image size are stored where ``YOLO(path)`` reads them, so
    ``YOLO(path).predict``, ``.val`` and ``.export`` work, and ``YOLOModule(path)`` trains and prunes it further.
    The live model is not changed.

    Args:
        module_or_model: a :class:`YOLOModule` (its EMA weights, as ultralytics saves them; see ``ema``), any
            LightningModule with a ``model``, or an ultralytics detect/segment/pose/obb model.
        path: the ``.pt`` file to write (folders are created).
        names: class names (list or ``{index: name}``); default: the model's ``names`` (set from the data set by
            :class:`YOLOModule` during fit).
        imgsz: image size stored for ultralytics (default: the module's ``imgsz``, else 640).
        data: the ``data.yaml`` stored as ``train_args["data"]``, so ``YOLO(path).val()`` finds the data set.
        half: store fp16 weights like ultralytics' final checkpoints (default: fp32, exactly what was trained).
        ema: write a :class:`YOLOModule`'s EMA copy (default, what it validates) rather than the live model.

    Example::

        path = save_yolo(module, "pruned.pt", data="data.yaml")
        from ultralytics import YOLO
        YOLO(path).predict("image.png"); YOLO(path).export(format="onnx")

    Returns:
        The written path.

    Raises:
        OSError: one line naming ``path`` when it cannot be written (a full disk, no permission); the file is then
            as it was, and no temporary file is left behind.
    """
    ultralytics = require_ultralytics()
    from ultralytics.utils import DEFAULT_CFG_DICT

    if is_detection_model(module_or_model):
        model = module_or_model
    else:
        export_model = getattr(module_or_model, "export_model", None)
        model = export_model(ema) if callable(export_model) else getattr(module_or_model, "model", None)
    if not is_detection_model(model):
        raise TypeError(f"save_yolo needs a YOLOModule or an ultralytics detect/segment/pose/obb model, got "
                        f"{type(module_or_model).__name__}")
    task = model_task(model)
    if imgsz is None:
        hparams = getattr(module_or_model, "hparams", {})
        imgsz = int(hparams.get("imgsz", 640)) if isinstance(hparams, Mapping) else 640
    nc = int(model.model[-1].nc)
    export = copy.deepcopy(model).cpu()
    export.names = _names_dict(names if names is not None else getattr(model, "names", range(nc)), nc)
    export.criterion = None
    export.task = task
    for module in export.modules():  # hooks (profilers, summaries) may hold unpicklable closures
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            getattr(module, hooks, {}).clear()
    for p in export.parameters():
        p.requires_grad_(False)
        p.grad = None
    export = export.half() if half else export.float()
    export.eval()
    train_args = {"task": task, "imgsz": int(imgsz), "data": str(data) if data is not None else None,
                  "model": str(path), "box": DEFAULT_CFG_DICT["box"], "cls": DEFAULT_CFG_DICT["cls"],
                  "dfl": DEFAULT_CFG_DICT["dfl"]}
    old_args = getattr(model, "args", None)
    for key in ("box", "cls", "dfl"):
        value = old_args.get(key) if isinstance(old_args, Mapping) else getattr(old_args, key, None)
        if value is not None:
            train_args[key] = value
    export.args = {**DEFAULT_CFG_DICT, **train_args}
    from lightning_prune import __version__ as lp_version

    checkpoint = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": export,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": train_args,
        "train_metrics": {},
        "lightning_prune": {"version": lp_version,
                            "parameters": int(sum(p.numel() for p in export.parameters()))},
    }
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: cannot create its folder ({err.strerror or err})") from None
    # an unpredictable temporary next to the target, removed on any failure (a full disk leaves nothing behind)
    return atomic_write(path, lambda file: torch.save(checkpoint, file))


