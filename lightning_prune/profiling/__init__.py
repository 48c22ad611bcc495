"""Cost measurement: FLOPs and parameters, measured latency (eager PyTorch, ONNX Runtime, OpenVINO; CPU or CUDA), the
deployed (BatchNorm-folded) form latency targets are measured on, and layers timed alone at sampled widths. This
package only times models: it knows nothing of dependency graphs (the per-group latency model latency-aware selection
uses is :mod:`lightning_prune.pruning.cost_table`).

Modules by concern: :mod:`~lightning_prune.profiling.flops` (the cost model), :mod:`~lightning_prune.profiling.timing`
(whole-forward latency), :mod:`~lightning_prune.profiling.onnx_runtime` (export and ONNX Runtime),
:mod:`~lightning_prune.profiling.openvino_runtime` (OpenVINO's request and per-node profile),
:mod:`~lightning_prune.profiling.backends` (which backends exist and what they need),
:mod:`~lightning_prune.profiling.layers` (per-layer timers), :mod:`~lightning_prune.profiling.channels` (channel
speed tables), :mod:`~lightning_prune.profiling.isolated` and :mod:`~lightning_prune.profiling.curves` (layers timed
alone, at sampled widths), :mod:`~lightning_prune.profiling.results` (records) and
:mod:`~lightning_prune.profiling.tracker` (a measurement history with baseline and speedups, what
:class:`~lightning_prune.callbacks.LatencyProfiler` keeps). This package exports what users type; names it exported
before that are internals answer for one more release with a ``DeprecationWarning`` naming their module.
"""

from lightning_prune.profiling.backends import BACKENDS, require_backend
from lightning_prune.profiling.channels import ChannelSpeed, channel_speed_table, suggest_round_to
from lightning_prune.profiling.deploy import deployed_copy, fuse_batchnorms
from lightning_prune.profiling.flops import count_flops, count_params
from lightning_prune.profiling.onnx_runtime import export_onnx, ort_outputs_match
from lightning_prune.profiling.results import LatencyResult, LayerTime
from lightning_prune.profiling.timing import compare_latency, measure_latency
from lightning_prune.profiling.tracker import LatencyTracker
from lightning_prune.utils.deprecation import moved_names, moving

__all__ = [
    "BACKENDS",
    "ChannelSpeed",
    "LatencyResult",
    "LatencyTracker",
    "LayerTime",
    "channel_speed_table",
    "compare_latency",
    "count_flops",
    "count_params",
    "deployed_copy",
    "export_onnx",
    "fuse_batchnorms",
    "measure_latency",
    "ort_outputs_match",
    "require_backend",
    "suggest_round_to",
]

#: what this package exported in 0.1.0 besides: the per-group latency model (it reads the dependency graph) and
#: internals, importable from their modules; from here for one more release
__getattr__ = moved_names(__name__, {
    **moving(["CostTable", "build_cost_table"], "lightning_prune.pruning.cost_table"),
    **moving(["OPENVINO_EXTRA_HINT", "check_backend"], "lightning_prune.profiling.backends"),
    **moving(["LayerCurve", "OpCost"], "lightning_prune.profiling.curves"),
    **moving(["conv_flops", "linear_flops"], "lightning_prune.profiling.flops"),
    **moving(["LayerSpec", "OpSpec", "time_layers"], "lightning_prune.profiling.isolated"),
    **moving(["ONNX_EXTRA_HINT", "onnx_outputs", "ort_max_abs_diff", "require_onnx"],
             "lightning_prune.profiling.onnx_runtime"),
    **moving(["batched_input"], "lightning_prune.profiling.timing"),
})
