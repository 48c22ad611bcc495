"""Deprecated: split by concept into :mod:`lightning_prune.pruning.scoring` (the paper's values and picks),
:mod:`lightning_prune.pruning.allocation` (budgets spread over groups) and :mod:`lightning_prune.pruning.counts`
(channel counts and plans); this path goes in the next release."""

from lightning_prune.utils.deprecation import moved_names, moving

__getattr__ = moved_names(__name__, {
    **moving(["Scored", "boundary_probes", "paper_selection", "score_probes"], "lightning_prune.pruning.scoring"),
    **moving(["Cost", "CostFn", "cost_function", "global_counts", "knapsack_counts", "sensitivity_counts",
              "uniform_counts"], "lightning_prune.pruning.allocation"),
    **moving(["plan_from_counts", "snap_count", "valid_counts"], "lightning_prune.pruning.counts"),
})
