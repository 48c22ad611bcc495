"""lightning-prune: structured filter pruning for CNNs with concatenations, as PyTorch Lightning callbacks."""

from lightning_prune.graph import DependencyGraph, GraphTraceError, Group, Member, PruneResult
from lightning_prune.profiling import count_flops, count_params

__version__ = "0.1.0"

__all__ = [
    "DependencyGraph",
    "GraphTraceError",
    "Group",
    "Member",
    "PruneResult",
    "count_flops",
    "count_params",
    "__version__",
]
