"""Deprecated: moved to :mod:`lightning_prune.pruning.importance`; this path goes in the next release."""

from lightning_prune.utils.deprecation import moved_names, moving

__getattr__ = moved_names(__name__, moving(["CRITERIA", "Criterion", "channel_scores", "lowest_channels"],
                                           "lightning_prune.pruning.importance"))
