"""lightning-prune: structured filter pruning for CNNs with concatenations, as PyTorch Lightning callbacks.

What users type is importable from here:

* the Lightning front-ends :class:`~lightning_prune.callbacks.IterativePruningCallback` and
  :class:`~lightning_prune.callbacks.LatencyProfiler`, and ultralytics' trainer's
  :func:`~lightning_prune.integrations.ultralytics.add_pruning` (the optional ``[yolo]`` extra) — loaded on first
  use, so ``import lightning_prune`` needs neither Lightning's import time nor ultralytics;
* the Lightning-free core: :class:`~lightning_prune.pruning.IterativePruner` with its
  :class:`~lightning_prune.pruning.PruningConfig`, :class:`~lightning_prune.pruning.Distiller` and
  :class:`~lightning_prune.pruning.DistillationConfig`, :class:`~lightning_prune.graph.DependencyGraph`;
* :func:`~lightning_prune.checkpoint.load_pruned` and :func:`~lightning_prune.profiling.count_flops`.

The subpackages, in layers (each imports only from those before it; see the package layout in the docs):
:mod:`~lightning_prune.utils`, :mod:`~lightning_prune.profiling` (timing and FLOPs), :mod:`~lightning_prune.graph`
(the channel dependency graph and its surgery), :mod:`~lightning_prune.pruning` (selection, the loop, the latency
model), :mod:`~lightning_prune.checkpoint`, :mod:`~lightning_prune.callbacks` (Lightning) and
:mod:`~lightning_prune.integrations` (ultralytics).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_prune.checkpoint import load_pruned
from lightning_prune.graph import DependencyGraph, GraphTraceError, Group, Member, PruneResult
from lightning_prune.profiling import count_flops, count_params
from lightning_prune.pruning import DistillationConfig, Distiller, IterativePruner, PruningConfig

if TYPE_CHECKING:
    from lightning_prune.callbacks import IterativePruningCallback, LatencyProfiler
    from lightning_prune.integrations.ultralytics.trainer import add_pruning

__version__ = "0.1.0"

#: the front-ends, loaded on first use: name -> the module that defines it
_LAZY = {
    "IterativePruningCallback": "lightning_prune.callbacks",
    "LatencyProfiler": "lightning_prune.callbacks",
    "add_pruning": "lightning_prune.integrations.ultralytics.trainer",
}

__all__ = [
    "DependencyGraph",
    "DistillationConfig",
    "Distiller",
    "GraphTraceError",
    "Group",
    "IterativePruner",
    "IterativePruningCallback",
    "LatencyProfiler",
    "Member",
    "PruneResult",
    "PruningConfig",
    "__version__",
    "add_pruning",
    "count_flops",
    "count_params",
    "load_pruned",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
