"""Measured latency on real backends: eager PyTorch and ONNX Runtime (CPU) — compatibility re-exports.

The implementation lives in modules by concern: :mod:`~lightning_prune.profiling.timing` (measure/compare),
:mod:`~lightning_prune.profiling.onnx_runtime` (export, sessions, profile parsing),
:mod:`~lightning_prune.profiling.layers` (per-layer timers), :mod:`~lightning_prune.profiling.channels` (channel speed
tables) and :mod:`~lightning_prune.profiling.results` (records). Import from :mod:`lightning_prune.profiling`; this
module keeps the names it used to define importable.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    >>> result = measure_latency(net, torch.randn(1, 3, 32, 32), repeats=5, per_layer=True)
    >>> result.backend, len(result.times_ms), result.median_ms > 0
    ('eager', 5, True)
    >>> sorted(layer.name for layer in result.layers)
    ['0', '2']
"""

from lightning_prune.profiling.channels import ChannelSpeed, channel_speed_table, suggest_round_to
from lightning_prune.profiling.onnx_runtime import (
    ONNX_EXTRA_HINT,
    export_onnx,
    onnx_outputs,
    ort_max_abs_diff,
    ort_outputs_match,
    require_onnx,
)
from lightning_prune.profiling.results import LatencyResult, LayerTime
from lightning_prune.profiling.timing import BACKENDS, compare_latency, measure_latency

__all__ = [
    "BACKENDS",
    "ONNX_EXTRA_HINT",
    "ChannelSpeed",
    "LatencyResult",
    "LayerTime",
    "channel_speed_table",
    "compare_latency",
    "export_onnx",
    "measure_latency",
    "onnx_outputs",
    "ort_max_abs_diff",
    "ort_outputs_match",
    "require_onnx",
    "suggest_round_to",
]
