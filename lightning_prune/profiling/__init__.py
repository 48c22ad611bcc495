"""Cost measurement: FLOPs and parameters, measured latency (eager PyTorch, ONNX Runtime, OpenVINO; CPU or CUDA), the
deployed (BatchNorm-folded) form latency targets are measured on, and layers timed alone at sampled widths
(:mod:`~lightning_prune.profiling.curves`, with :mod:`~lightning_prune.profiling.isolated`; backends in
:mod:`~lightning_prune.profiling.backends`). This package only times models: it knows nothing of dependency graphs
(the per-group latency model latency-aware selection uses is :mod:`lightning_prune.pruning.cost_table`).

Modules by concern: :mod:`~lightning_prune.profiling.flops` (the cost model), :mod:`~lightning_prune.profiling.timing`
(whole-forward latency), :mod:`~lightning_prune.profiling.onnx_runtime` (export and ONNX Runtime),
:mod:`~lightning_prune.profiling.openvino_runtime` (OpenVINO's request and per-node profile),
:mod:`~lightning_prune.profiling.layers` (per-layer timers), :mod:`~lightning_prune.profiling.channels` (channel
speed tables), :mod:`~lightning_prune.profiling.results` (records) and :mod:`~lightning_prune.profiling.tracker`
(a measurement history with baseline and speedups, what :class:`~lightning_prune.callbacks.LatencyProfiler` keeps).
"""

from lightning_prune.profiling.backends import OPENVINO_EXTRA_HINT, require_backend
from lightning_prune.profiling.channels import ChannelSpeed, channel_speed_table, suggest_round_to
from lightning_prune.profiling.curves import LayerCurve, OpCost
from lightning_prune.profiling.deploy import deployed_copy, fuse_batchnorms
from lightning_prune.profiling.flops import conv_flops, count_flops, count_params, linear_flops
from lightning_prune.profiling.isolated import LayerSpec, OpSpec, time_layers
from lightning_prune.profiling.onnx_runtime import (
    ONNX_EXTRA_HINT,
    export_onnx,
    onnx_outputs,
    ort_max_abs_diff,
    ort_outputs_match,
    require_onnx,
)
from lightning_prune.profiling.results import LatencyResult, LayerTime
from lightning_prune.profiling.timing import BACKENDS, batched_input, check_backend, compare_latency, measure_latency
from lightning_prune.profiling.tracker import LatencyTracker
from lightning_prune.utils.deprecation import moved_names, moving

__all__ = [
    "BACKENDS",
    "ONNX_EXTRA_HINT",
    "OPENVINO_EXTRA_HINT",
    "ChannelSpeed",
    "LayerCurve",
    "LayerSpec",
    "OpCost",
    "OpSpec",
    "deployed_copy",
    "fuse_batchnorms",
    "require_backend",
    "time_layers",
    "LatencyResult",
    "LatencyTracker",
    "LayerTime",
    "batched_input",
    "channel_speed_table",
    "check_backend",
    "compare_latency",
    "conv_flops",
    "count_flops",
    "count_params",
    "export_onnx",
    "linear_flops",
    "measure_latency",
    "onnx_outputs",
    "ort_max_abs_diff",
    "ort_outputs_match",
    "require_onnx",
    "suggest_round_to",
]

#: moved out of this package: the per-group latency model reads the dependency graph (old paths work for one release)
__getattr__ = moved_names(__name__, moving(["CostTable", "build_cost_table"], "lightning_prune.pruning.cost_table"))
