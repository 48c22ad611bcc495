"""Cost measurement: FLOPs and parameters, and measured latency (eager and ONNX Runtime)."""

from lightning_prune.profiling.flops import count_flops, count_params
from lightning_prune.profiling.latency import LatencyResult, compare_latency, measure_latency

__all__ = ["LatencyResult", "compare_latency", "count_flops", "count_params", "measure_latency"]
