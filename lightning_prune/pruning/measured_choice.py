"""Choosing among candidate pruning plans by what the backend measures, not what a cost model predicts.

A measured per-layer table times each layer alone; the deployed model also pays for what happens *between* layers
(ONNX Runtime's layout reorders around a concatenation of off-block widths, fusions, the head's fixed ops). Where the
table cannot tell two allocations apart, the backend can: :func:`fastest_plan` prunes a copy of the model with each
candidate plan, times their deployed forms (BatchNorm folded, eval) *interleaved* in one
:func:`~lightning_prune.profiling.compare_latency` run and returns the fastest.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune import DependencyGraph
    >>> net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 8, 3))
    >>> graph = DependencyGraph(net, torch.randn(1, 3, 32, 32))
    >>> group = graph.prunable_groups[0].name
    >>> choice = fastest_plan(graph, {"none": {}, "half": {group: list(range(16))}}, torch.randn(1, 3, 32, 32),
    ...                       rounds=2, repeats=2)
    >>> sorted(choice.ms), net[0].out_channels  # the model itself is untouched
    (['half', 'none'], 32)
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_prune.graph import DependencyGraph
from lightning_prune.profiling import compare_latency, deployed_copy, require_backend
from lightning_prune.pruning.communication import Communicator
from lightning_prune.pruning.config import PruningConfig
from lightning_prune.pruning.cost_table import CostTable, build_cost_table
from lightning_prune.pruning.counts import plan_from_counts
from lightning_prune.pruning.strategies import (
    MEASURED_RATES,
    MEASURED_WEIGHTS,
    Candidates,
    SelectionRules,
    allocation_candidates,
    default_proxies,
)

__all__ = ["MeasuredAllocator", "MeasuredChoice", "fastest_plan", "time_plans"]


@dataclass
class MeasuredChoice:
    """What :func:`fastest_plan` measured.

    Args:
        name: the fastest candidate.
        plan: its plan.
        ms: every candidate's median latency (ms), measured interleaved in one run.
    """

    name: str
    plan: dict[str, list[int]]
    ms: dict[str, float] = field(default_factory=dict)


def fastest_plan(graph: DependencyGraph, plans: Mapping[str, Mapping[str, Sequence[int]]], example_input: Any,
                 backend: str = "eager", *, rounds: int = 8, repeats: int = 2, warmup: int = 2,
                 num_threads: int = 1, finalists: int = 3) -> MeasuredChoice:
    """The candidate plan whose pruned model runs fastest on ``backend``. ``graph`` and its model are left as they
    are: each candidate prunes a deep copy. A single candidate is returned without measuring.

    Every candidate is timed for ``rounds`` interleaved rounds of ``repeats`` single calls; then the ``finalists``
    fastest are timed again for as many rounds, interleaved among themselves, and each finalist's median pools both
    runs (successive halving: the best of many noisy medians is biased low, the final pick is made on twice the
    calls). The first-named candidate wins a tie.
    """
    if not plans:
        raise ValueError("fastest_plan needs at least one candidate plan")
    if finalists < 1:
        raise ValueError(f"finalists must be >= 1, got {finalists}")
    named = {name: {group: list(channels) for group, channels in plan.items()} for name, plan in plans.items()}
    if len(named) == 1:
        name, plan = next(iter(named.items()))
        return MeasuredChoice(name, plan)
    deployed = _deployed(graph, named)

    def timed(names: Sequence[str]) -> dict[str, list[float]]:
        return _timed({name: deployed[name] for name in names}, example_input, backend, rounds=rounds,
                      warmup=warmup, repeats=repeats, num_threads=num_threads)

    times = timed(list(named))
    ms = {name: statistics.median(values) for name, values in times.items()}
    if len(named) > finalists:
        order = list(named)
        final = sorted(order, key=lambda name: (ms[name], order.index(name)))[:finalists]
        for name, values in timed([name for name in order if name in final]).items():
            ms[name] = statistics.median(times[name] + values)
    best = min(named, key=lambda name: ms[name])
    return MeasuredChoice(best, named[best], ms)


def time_plans(graph: DependencyGraph, plans: Mapping[str, Mapping[str, Sequence[int]]], example_input: Any,
               backend: str = "eager", *, others: Mapping[str, nn.Module] | None = None, rounds: int = 8,
               repeats: int = 2, warmup: int = 2, num_threads: int = 1) -> dict[str, list[float]]:
    """The single-call times (ms) of every candidate plan's pruned deployed copy, and of each model in ``others``
    (timed as given, e.g. a deployed reference to read the candidates against), all interleaved in one run.
    ``graph`` and its model are left as they are.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_prune import DependencyGraph
        >>> net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 8, 3))
        >>> graph = DependencyGraph(net, torch.randn(1, 3, 32, 32))
        >>> group = graph.prunable_groups[0].name
        >>> times = time_plans(graph, {"half": {group: list(range(16))}}, torch.randn(1, 3, 32, 32),
        ...                    others={"reference": net}, rounds=2, repeats=2)
        >>> sorted(times), len(times["half"])
        (['half', 'reference'], 4)
    """
    others = dict(others or {})
    clash = sorted(set(plans) & set(others))
    if clash:
        raise ValueError(f"time_plans: the names {clash} are both a plan and one of `others`")
    named = {name: {group: list(channels) for group, channels in plan.items()} for name, plan in plans.items()}
    return _timed({**_deployed(graph, named), **others}, example_input, backend, rounds=rounds, warmup=warmup,
                  repeats=repeats, num_threads=num_threads)


def _deployed(graph: DependencyGraph, plans: Mapping[str, Mapping[str, list[int]]]) -> dict[str, nn.Module]:
    """Each plan applied to a deep copy of ``graph``, in its deployed form."""
    deployed = {}
    for name, plan in plans.items():
        pruned = copy.deepcopy(graph)
        if plan:
            pruned.prune(plan)
        deployed[name] = deployed_copy(pruned.model)
    return deployed


def _timed(models: Mapping[str, nn.Module], example_input: Any, backend: str, **timing: Any) -> dict[str, list[float]]:
    results = compare_latency(dict(models), example_input, backend, **timing)
    return {name: list(result.times_ms) or [float(result.median_ms)] for name, result in results.items()}


@dataclass(eq=False)
class MeasuredAllocator:
    """``allocation="measured"`` for a pruner: rank 0 times the candidate allocations' pruned copies on the backend
    (:func:`fastest_plan`) and keeps the fastest; every rank of ``communicator`` prunes what it chose. Besides the
    target's own table, the tables of ``config.latency_proxies`` (default:
    :func:`~lightning_prune.pruning.strategies.default_proxies`) propose knapsack candidates; they are built on first
    use and updated after a prune, and a proxy whose packages are missing is left out."""

    graph: DependencyGraph
    example_input: Any
    config: PruningConfig
    communicator: Communicator
    #: proxy backend -> its table of the current architecture
    proxy_tables: dict[str, CostTable] = field(default_factory=dict, init=False)

    def choose(self, candidates: Candidates, rules: SelectionRules, budget: float, table: Any) -> MeasuredChoice:
        """The fastest of the candidate allocations of ``budget`` (see :func:`~lightning_prune.pruning.strategies.
        allocation_candidates`), measured on rank 0 and the same on every rank."""
        config, comm = self.config, self.communicator
        choice = None
        if comm.rank == 0:
            found = allocation_candidates(candidates, rules, budget, table, rates=MEASURED_RATES,
                                          weights=MEASURED_WEIGHTS)
            blocked = 8 if 8 % rules.round_to == 0 else rules.round_to
            for proxy, proxy_table in self.proxies().items():
                extra = allocation_candidates(candidates, dataclasses.replace(rules, round_to=blocked), budget,
                                              proxy_table, rates=MEASURED_RATES, allocations=("knapsack",))
                for name, counts in extra.items():
                    if counts not in found.values():
                        found[f"{proxy}:{name}"] = counts
            plans = {name: plan_from_counts(candidates.ranking, counts) for name, counts in found.items()}
            measured = fastest_plan(self.graph, plans, self.example_input, config.latency_backend,
                                    rounds=max(2, min(10, config.latency_repeats // 2)))
            choice = dataclasses.asdict(measured)
        return MeasuredChoice(**comm.broadcast(choice))

    def proxies(self) -> dict[str, CostTable]:
        """The proxy backends' tables for the current architecture."""
        config = self.config
        names = config.latency_proxies if config.latency_proxies is not None \
            else default_proxies(config.latency_backend)
        tables = {}
        for proxy in names:
            previous = self.proxy_tables.get(proxy)
            if previous is None:
                try:
                    require_backend(proxy)
                except (ImportError, RuntimeError, ValueError):
                    continue
                tables[proxy] = build_cost_table(self.graph, proxy, cache_dir=config.cost_table_dir)
            else:
                tables[proxy] = previous.updated(self.graph)
        self.proxy_tables.update(tables)
        return tables
