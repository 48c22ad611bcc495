"""Deprecated: the per-group latency model reads the dependency graph, so it moved above it, to
:mod:`lightning_prune.pruning.cost_table`; the layer curves it is built from are in
:mod:`lightning_prune.profiling.curves`. This path goes in the next release."""

from lightning_prune.utils.deprecation import moved_names, moving

__getattr__ = moved_names(__name__, {
    **moving(["CostTable", "build_cost_table", "discover_ops"], "lightning_prune.pruning.cost_table"),
    **moving(["LayerCurve", "OpCost", "discover_layers", "sample_widths", "monotone"],
             "lightning_prune.profiling.curves"),
})
