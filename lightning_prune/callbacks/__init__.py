"""Lightning callbacks: iterative pruning and (once it lands) latency profiling."""

from lightning_prune.callbacks.events import PruningListener, PruningStep
from lightning_prune.callbacks.iterative_pruning import IterativePruningCallback

__all__ = ["IterativePruningCallback", "PruningListener", "PruningStep"]
