"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on the path)."""

from __future__ import annotations

import contextlib
import copy
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def dist_version(dist: str) -> str:
    """Installed version of a distribution, or ``"not installed"``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def yolo_at_width(yaml_name: str, width: float | None = None, nc: int | None = None, seed: int = 0) -> Any:
    """An ultralytics detection model from its YAML (random init, ``torch.manual_seed(seed)``), optionally at
    another ``width_multiple`` — ultralytics' own narrower (or wider) sibling, channel counts rounded as it rounds
    them."""
    import torch
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = copy.deepcopy(yaml_model_load(yaml_name))
    if width is not None:
        scale = cfg.get("scale") or next(iter(cfg["scales"]))
        depth, _, max_channels = cfg["scales"][scale]
        cfg["scales"][scale] = [depth, width, max_channels]
    torch.manual_seed(seed)
    kwargs = {} if nc is None else {"nc": nc}
    return DetectionModel(cfg, verbose=False, **kwargs)
