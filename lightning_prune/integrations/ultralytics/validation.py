"""ultralytics' own validator on a saved checkpoint, to cross-check :class:`YOLOModule`'s torchmetrics mAP."""

from __future__ import annotations

import os
import tempfile

import torch

from lightning_prune.integrations.ultralytics.common import no_font_download, require_ultralytics

__all__ = ["ultralytics_val_map", "ultralytics_val_metrics"]


def ultralytics_val_metrics(weights: str | os.PathLike, data: str | os.PathLike, imgsz: int = 160, batch: int = 16,
                            device: str = "cpu", conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                            rect: bool = False, split: str = "val") -> dict[str, float]:
    """Run ultralytics' own validator (``YOLO(weights).val(...)``) on ``split`` and return its metrics.

    For a segment model the metrics are the masks' (``mAP50-95`` etc.), with the boxes' as ``box/mAP50-95`` ...;
    for pose, the keypoints' (OKS); for obb, the rotated boxes'. Detect: boxes.

    ``rect=False`` letterboxes every image to ``imgsz x imgsz`` exactly like :class:`YOLODataModule`, so the model
    sees the same pixels in both; ultralytics' default ``rect=True`` pads each batch by half a stride more. Nothing
    is plotted or downloaded, and run artefacts go to a temporary folder (ultralytics still writes its label cache
    ``labels/<split>.cache`` next to the data set).

    Returns:
        ``{"mAP50-95", "mAP50", "precision", "recall"}`` (and ``box/...`` for segment and pose) as floats in 0-1.

    Example::

        ultralytics_val_metrics("pruned.pt", "data.yaml", imgsz=128, split="test")["mAP50-95"]
    """
    ultralytics = require_ultralytics()
    threads = torch.get_num_threads()  # ultralytics' CPU device selection resets the process-wide thread count
    try:
        with tempfile.TemporaryDirectory() as tmp, no_font_download():
            yolo = ultralytics.YOLO(str(weights))
            metrics = yolo.val(data=str(data), imgsz=imgsz, batch=batch, device=device, conf=conf, iou=iou,
                               max_det=max_det, rect=rect, plots=False, save_json=False, verbose=False, project=tmp,
                               name="val", workers=0, split=split)
    finally:
        torch.set_num_threads(threads)
    main = {"segment": "seg", "pose": "pose"}.get(yolo.task)
    out: dict[str, float] = {}
    for prefix, part in (("", getattr(metrics, main) if main else metrics.box), ("box/", metrics.box)):
        if prefix and main is None:
            continue
        out.update({f"{prefix}mAP50-95": float(part.map), f"{prefix}mAP50": float(part.map50),
                    f"{prefix}precision": float(part.mp), f"{prefix}recall": float(part.mr)})
    return out


def ultralytics_val_map(weights_path: str | os.PathLike, data_yaml: str | os.PathLike, imgsz: int = 160,
                        batch: int = 16, device: str = "cpu", rect: bool = False) -> float:
    """mAP50-95 of ``weights_path`` on ``data_yaml``'s val split by ultralytics' own validator (conf 0.001, iou 0.7).

    See :func:`ultralytics_val_metrics`; used to cross-check :class:`YOLOModule`'s torchmetrics ``val/mAP50-95``.
    """
    return ultralytics_val_metrics(weights_path, data_yaml, imgsz, batch, device, rect=rect)["mAP50-95"]
