"""Which channels one step removes: candidates, channel ranking, and the three strategies held to a budget."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase

import numpy as np
from torch import nn

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.importance import Criterion, channel_scores
from lightning_prune.selection import Scored, global_counts, sensitivity_counts, uniform_counts
from lightning_prune.sensitivity import removal_count

__all__ = ["candidate_groups", "is_ignored", "max_removable", "score_channels", "select_counts"]


def is_ignored(group: Group, patterns: Sequence[str]) -> bool:
    """Whether ``group`` (its name or any producer's module) matches a name, a prefix or an ``fnmatch`` pattern."""
    modules = {group.name, *(member.module for member in group.producers)}
    return any(module == pattern or module.startswith(pattern + ".") or fnmatchcase(module, pattern)
               for pattern in patterns for module in modules)


def candidate_groups(graph: DependencyGraph, ignore: Sequence[str] = ()) -> list[Group]:
    """The prunable groups not ignored.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 2, 1))
        >>> graph = DependencyGraph(net, torch.randn(1, 3, 4, 4))
        >>> [g.name for g in candidate_groups(graph)], [g.name for g in candidate_groups(graph, ignore=["1"])]
        (['0', '1'], ['0'])
    """
    return [group for group in graph.prunable_groups if not is_ignored(group, ignore)]


def score_channels(groups: Sequence[Group], model: nn.Module, criterion: Criterion,
                   generator: np.random.Generator | None = None) -> tuple[dict[str, np.ndarray],
                                                                         dict[str, np.ndarray]]:
    """Per group: its channel scores, and its channels in pruning order (lowest score first, stable)."""
    scores = {group.name: channel_scores(group, model, criterion, generator) for group in groups}
    ranking = {name: np.argsort(values, kind="stable") for name, values in scores.items()}
    return scores, ranking


def max_removable(graph: DependencyGraph, groups: Sequence[Group], round_to: int = 1,
                  min_channels: int = 1) -> tuple[float, float]:
    """(FLOPs, parameters) removed by pruning every group to its minimum."""
    most = {g.name: list(range(removal_count(g, 1.0, round_to, min_channels))) for g in groups}
    return graph.estimate_removal({name: channels for name, channels in most.items() if channels})


def select_counts(strategy: str, graph: DependencyGraph, groups: Sequence[Group],
                  scores: Mapping[str, np.ndarray], ranking: Mapping[str, np.ndarray], budget: float,
                  cost: str = "flops", round_to: int = 1, min_channels: int = 1,
                  scored: Callable[[], Sequence[Scored]] | None = None, params_layers: int = 6,
                  flops_layers: int = 5) -> tuple[dict[str, int], list[Scored]]:
    """Channels to remove per group so that ``budget`` of ``cost`` goes, and the paper's picks used (sensitivity).

    ``scored`` runs (only when needed) the sensitivity probes and returns them scored.
    """
    if budget <= 0 or not groups:
        return {}, []
    if strategy == "uniform":
        return uniform_counts(graph, groups, ranking, budget, cost, round_to, min_channels), []
    if strategy == "global":
        return global_counts(graph, groups, scores, ranking, budget, cost, round_to, min_channels), []
    if strategy == "sensitivity":
        if scored is None:
            raise ValueError("strategy 'sensitivity' needs scored probes")
        return sensitivity_counts(graph, groups, ranking, scored(), budget, cost, params_layers, flops_layers,
                                  round_to, min_channels)
    raise ValueError(f"unknown strategy {strategy!r}")
