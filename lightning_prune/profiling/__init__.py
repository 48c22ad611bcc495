"""Cost measurement: FLOPs and parameters (latency lives here too once it lands)."""

from lightning_prune.profiling.flops import count_flops, count_params

__all__ = ["count_flops", "count_params"]
