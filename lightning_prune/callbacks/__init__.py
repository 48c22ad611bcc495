"""Lightning callbacks: iterative pruning and latency profiling."""

from lightning_prune.callbacks.events import PruningListener, PruningStep
from lightning_prune.callbacks.iterative_pruning import IterativePruningCallback
from lightning_prune.callbacks.latency_profiler import LatencyProfiler

__all__ = ["IterativePruningCallback", "LatencyProfiler", "PruningListener", "PruningStep"]
