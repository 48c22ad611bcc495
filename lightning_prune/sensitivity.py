"""Deprecated: moved to :mod:`lightning_prune.pruning.sensitivity` (``removal_count`` to
:mod:`lightning_prune.pruning.counts`); this path goes in the next release."""

from lightning_prune.utils.deprecation import moved_names, moving

__getattr__ = moved_names(__name__, {
    **moving(["Probe", "analyze_sensitivity", "rank_channels", "remeasure"], "lightning_prune.pruning.sensitivity"),
    **moving(["removal_count"], "lightning_prune.pruning.counts"),
})
