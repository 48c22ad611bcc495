"""Sensitivity analysis (paper, step 3): prune each group alone at several rates and measure the metric.

Probes *mask in place* (:meth:`DependencyGraph.masked`): the planned channels' producers are zeroed for one
evaluation and restored exactly, so no model copy is made. For groups with :attr:`Group.exact` this is the same as
evaluating the pruned model. Under several processes :class:`ShardedProbes` shares the probes out and gathers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.pruning.communication import Communicator
from lightning_prune.pruning.counts import removal_count
from lightning_prune.pruning.importance import Criterion, channel_scores

__all__ = ["Probe", "ShardedProbes", "analyze_sensitivity", "rank_channels", "remeasure"]


@dataclass(frozen=True)
class Probe:
    """One (group, rate) evaluation: ``removed`` channels masked, ``metric`` measured (the mean over ``repeats``
    evaluations on different batches), cost that would go."""

    group: str
    rate: float
    removed: int
    metric: float
    flops: float
    params: float
    repeats: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def rank_channels(groups: Iterable[Group], model, criterion: Criterion,
                  generator: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """For each group, its channels in the order they are pruned (lowest score first)."""
    return {group.name: np.argsort(channel_scores(group, model, criterion, generator), kind="stable")
            for group in groups}


def analyze_sensitivity(
    graph: DependencyGraph,
    evaluate: Callable[[], float],
    groups: Sequence[Group],
    ranking: Mapping[str, np.ndarray],
    rates: Sequence[float] = (0.25, 0.5, 0.75),
    round_to: int = 1,
    min_channels: int = 1,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[Probe]:
    """Evaluate every (group, rate) with the group's first channels of ``ranking`` masked.

    Args:
        graph: the model's dependency graph.
        evaluate: runs one validation pass and returns the monitored metric.
        groups: the groups to probe.
        ranking: per group name, its channels in pruning order (:func:`rank_channels`).
        rates: fractions of each group to prune.
        round_to, min_channels: as in :func:`~lightning_prune.pruning.counts.removal_count`.
        shard: ``(rank, world_size)``; this process probes every ``world_size``-th task (gather the results).
        progress: wraps the task list, e.g. ``tqdm``.

    Rates that remove the same number of channels are probed once.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))
        >>> graph = DependencyGraph(net, torch.randn(1, 3, 8, 8))
        >>> x = torch.randn(4, 3, 8, 8)
        >>> reference = net(x).detach()
        >>> evaluate = lambda: float(1 / (1 + (net(x) - reference).pow(2).mean()))
        >>> groups = graph.prunable_groups
        >>> probes = analyze_sensitivity(graph, evaluate, groups, rank_channels(groups, net, "l1"))
        >>> [(p.group, p.rate, p.removed) for p in probes]
        [('0', 0.25, 2), ('0', 0.5, 4), ('0', 0.75, 6)]
    """
    tasks = []
    for group in groups:
        seen: set[int] = set()
        for rate in sorted(rates):
            count = removal_count(group, rate, round_to, min_channels)
            if count > 0 and count not in seen:
                seen.add(count)
                tasks.append((group, rate, count))
    rank, world = shard
    mine = tasks[rank::world]
    probes = []
    for group, rate, count in progress(mine) if progress else mine:
        plan = {group.name: ranking[group.name][:count].tolist()}
        flops, params = graph.estimate_removal(plan)
        with graph.masked(plan):
            metric = float(evaluate())
        probes.append(Probe(group.name, float(rate), count, metric, flops, params))
    # every rank evaluates equally often, so collectives inside `evaluate` (a user's all_gather) line up
    for _ in range(-(-len(tasks) // world) - len(mine)):
        evaluate()
    return probes


def remeasure(graph: DependencyGraph, evaluate: Callable[[], float], probes: Sequence[Probe],
              ranking: Mapping[str, np.ndarray], shard: tuple[int, int] = (0, 1)) -> list[Probe]:
    """Evaluate ``probes`` again with ``evaluate`` (on other batches than the first measurement) and return them
    with the running mean as ``metric``. Like :func:`analyze_sensitivity`, shards the work over ``shard`` and keeps
    every rank's number of evaluations equal.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1))
        >>> graph = DependencyGraph(net, torch.randn(1, 3, 4, 4))
        >>> probe = Probe("0", 0.5, 4, 0.2, 0.0, 0.0)
        >>> [(p.metric, p.repeats) for p in remeasure(graph, lambda: 0.4, [probe], {"0": np.arange(8)})]
        [(0.30000000000000004, 2)]
    """
    from dataclasses import replace

    rank, world = shard
    mine = list(probes)[rank::world]
    updated = []
    for probe in mine:
        with graph.masked({probe.group: ranking[probe.group][:probe.removed].tolist()}):
            value = float(evaluate())
        metric = (probe.metric * probe.repeats + value) / (probe.repeats + 1)
        updated.append(replace(probe, metric=metric, repeats=probe.repeats + 1))
    for _ in range(-(-len(probes) // world) - len(mine)):
        evaluate()
    return updated


class ShardedProbes:
    """A pruner's sensitivity probes shared out over the processes of ``communicator``: each rank probes (and
    re-measures) its share on its own data shard, and every rank gets them all, in task order.

    Args:
        graph: the model's dependency graph.
        communicator: the processes (``rank``, ``world_size``, ``all_gather``).
        rates, round_to, min_channels: as in :func:`analyze_sensitivity`.
    """

    def __init__(self, graph: DependencyGraph, communicator: Communicator, rates: Sequence[float],
                 round_to: int = 1, min_channels: int = 1) -> None:
        self.graph = graph
        self.communicator = communicator
        self.rates = tuple(rates)
        self.round_to = round_to
        self.min_channels = min_channels

    def probe(self, groups: Sequence[Group], ranking: Mapping[str, np.ndarray], evaluate: Callable[[], float],
              scale: float = 1.0, progress: Callable[[Sequence[Any]], Iterable[Any]] | None = None) -> list[Probe]:
        """Every rank's probes of ``groups``. Each rank evaluates its own data shard, so its metrics are rescaled by
        ``scale`` (rank 0's unpruned metric over its own)."""
        comm = self.communicator
        mine = analyze_sensitivity(self.graph, evaluate, groups, ranking, self.rates, self.round_to,
                                   self.min_channels, shard=(comm.rank, comm.world_size), progress=progress)
        if comm.world_size <= 1:
            return mine
        gathered = comm.all_gather([{**p.to_dict(), "metric": p.metric * scale} for p in mine])
        probes = [Probe(**item) for part in gathered for item in part]
        order = {(g.name, r): i for i, g in enumerate(groups) for r in self.rates}
        return sorted(probes, key=lambda p: order.get((p.group, p.rate), 0))

    def remeasure(self, chosen: Sequence[Probe], ranking: Mapping[str, np.ndarray], measure: Callable[[], float],
                  metric_before: float) -> list[Probe]:
        """``chosen`` measured again with ``measure`` (other validation batches); its readings are put on the scale
        of the probes' by the unpruned model's ratio of the two (``metric_before`` over ``measure``'s, and of rank
        0's, under several processes)."""
        comm = self.communicator
        with torch.no_grad():
            base = float(measure())
        factor = metric_before / base if base else 1.0

        def scaled() -> float:
            return float(measure()) * factor

        with torch.no_grad():
            mine = remeasure(self.graph, scaled, chosen, ranking, shard=(comm.rank, comm.world_size))
        if comm.world_size <= 1:
            return mine
        return [Probe(**item) for part in comm.all_gather([p.to_dict() for p in mine]) for item in part]
