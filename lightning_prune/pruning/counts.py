"""Channel counts: how many channels a rate removes from a group (rounded as ``round_to`` and ``min_channels``
allow), the counts a group may take, the allowed count nearest another, and counts turned into a plan.

Every strategy (:mod:`~lightning_prune.pruning.allocation`) produces *counts* (channels to remove per group); a
ranking (:func:`~lightning_prune.pruning.sensitivity.rank_channels`) turns counts into a plan, so the channels chosen
are always the group's lowest-scored ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lightning_prune.graph import Group

__all__ = ["plan_from_counts", "removal_count", "snap_count", "valid_counts"]


def removal_count(group: Group, rate: float, round_to: int = 1, min_channels: int = 1) -> int:
    """How many channels of ``group`` pruning at ``rate`` removes, keeping a multiple of ``round_to`` channels
    (when the group has that many) and at least ``min_channels``.

    Example:
        >>> from lightning_prune.graph.groups import Group
        >>> group = Group("conv", 64, True, None, True, None, [])
        >>> removal_count(group, 0.3), removal_count(group, 0.3, round_to=8), removal_count(group, 0.99, min_channels=4)
        (19, 16, 60)
    """
    size = group.size
    kept = size - int(round(rate * size))
    if round_to > 1 and size >= round_to:
        kept = max(round_to, int(round(kept / round_to)) * round_to)
    kept = min(size, max(kept, min_channels, 1))
    return size - kept


def snap_count(count: int, options: Sequence[int] | None, down: bool = False) -> int:
    """The allowed removal count nearest ``count`` (ties: the smaller), or the largest not above it with ``down``;
    ``count`` itself without options.

    Example:
        >>> snap_count(5, [0, 4, 8]), snap_count(6, [0, 4, 8]), snap_count(7, [0, 4, 8], down=True)
        (4, 4, 4)
    """
    if not options:
        return int(count)
    if down:
        below = [o for o in options if o <= count]
        return max(below) if below else min(options)
    return min(options, key=lambda o: (abs(o - count), o))


def valid_counts(group: Group, round_to: int, min_channels: int,
                 options: Mapping[str, Sequence[int]] | None = None) -> list[int]:
    """The removal counts ``group`` may take, ascending: its allowed ``options`` when given, else every count that
    ``round_to`` and ``min_channels`` allow.

    Example:
        >>> import torch
        >>> from lightning_prune import DependencyGraph
        >>> graph = DependencyGraph(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1)),
        ...                         torch.randn(1, 3, 4, 4))
        >>> group = graph.prunable_groups[0]
        >>> valid_counts(group, 4, 1), valid_counts(group, 1, 1, {"0": [4, 0]})
        ([0, 4], [0, 4])
    """
    if options and group.name in options:
        return sorted(set(options[group.name]))
    return sorted({removal_count(group, k / group.size, round_to, min_channels) for k in range(group.size + 1)})


def plan_from_counts(ranking: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> dict[str, list[int]]:
    """Turn per-group removal counts into a plan: each group's first ``count`` channels of its ranking."""
    return {name: sorted(ranking[name][:count].tolist()) for name, count in counts.items() if count > 0}
