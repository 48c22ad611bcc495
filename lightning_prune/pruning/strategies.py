"""Which channels one step removes: the candidate groups and their channel ranking (:class:`Candidates`), what is
asked of the step (:class:`SelectionRules`), and :func:`select_counts`, which holds the strategy to the budget with
an allocation (:mod:`~lightning_prune.pruning.allocation`); latency-aware rounding and caps on the way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
from torch import nn

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.pruning.allocation import (
    Cost,
    cost_function,
    global_counts,
    knapsack_counts,
    sensitivity_counts,
    uniform_counts,
)
from lightning_prune.pruning.config import Allocation, choices
from lightning_prune.pruning.counts import removal_count, valid_counts
from lightning_prune.pruning.importance import Criterion, channel_scores
from lightning_prune.pruning.scoring import Scored

__all__ = ["MEASURED_MULTIPLES", "MEASURED_RATES", "MEASURED_WEIGHTS", "PROXY_BACKENDS", "Candidates",
           "SelectionRules", "allocation_applies", "allocation_candidates", "candidate_groups", "capped_options",
           "default_proxies", "is_ignored", "latency_options", "latency_per_channel", "max_counts", "max_removable",
           "score_channels", "select_counts"]

MEASURED_MULTIPLES = (8, 16)  # besides round_to: the channel blocks backends lay convolutions out in
MEASURED_RATES = (0.75, 0.5)  # below max_rate: per-group caps that spread the budget over more groups
MEASURED_WEIGHTS = (1.0, 0.0)  # the knapsack's importance weights: importance against cost, and cost alone
#: the other backends whose cost tables propose extra candidates for ``allocation="measured"`` on a backend. OpenVINO's
#: per-layer timings in isolation rank its layers less like the compiled whole model does than eager PyTorch's and
#: ONNX Runtime's do (both run oneDNN-style blocked convolutions too): on YOLO11n at 640 px their knapsack allocations
#: ran 2-3 % faster on OpenVINO than those of OpenVINO's own table, at the same FLOPs.
PROXY_BACKENDS = {"openvino": ("eager", "onnxruntime")}


@dataclass(frozen=True)
class Candidates:
    """What one step may remove: the candidate ``groups`` of ``graph``, per group its channel ``scores`` and its
    channels in pruning order (``ranking``, lowest score first: :func:`score_channels`)."""

    graph: DependencyGraph
    groups: Sequence[Group]
    scores: Mapping[str, np.ndarray]
    ranking: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class SelectionRules:
    """What :func:`select_counts` is asked (the fields of :class:`~lightning_prune.pruning.PruningConfig` it reads).

    Attributes:
        strategy: ``"uniform"``, ``"global"`` or ``"sensitivity"``.
        cost: what the paper's value and latency-aware rounding read: ``"flops"``, ``"params"``, ``"latency"`` (needs
            a measured cost table) or a cost function ``plan -> removed cost``.
        budget_cost: what measures the budget when it differs from ``cost`` (``"latency"``: the table's predicted
            milliseconds); ``None``: ``cost``.
        allocation: ``"threshold"`` or ``"knapsack"`` (``"measured"`` is :func:`allocation_candidates`' and
            :func:`~lightning_prune.pruning.measured_choice.fastest_plan`'s).
        round_to, min_channels: as in :func:`~lightning_prune.pruning.counts.removal_count`.
        max_rate: the share of any one group a step removes at most; ``max_removal``: group -> channels at most.
        importance_weight: the knapsack's ``β`` (importance against cost).
        params_layers, flops_layers: the paper's picks by parameter and by FLOPs (latency) value.
    """

    strategy: str = "global"
    cost: Cost = "flops"
    budget_cost: Cost | None = None
    allocation: Allocation = "threshold"
    round_to: int = 1
    min_channels: int = 1
    max_rate: float = 1.0
    max_removal: Mapping[str, int] | None = None
    importance_weight: float = 1.0
    params_layers: int = 6
    flops_layers: int = 5


def default_proxies(backend: str) -> tuple[str, ...]:
    """The backends whose tables propose extra measured candidates for ``backend`` by default (:data:`PROXY_BACKENDS`).

    Example:
        >>> default_proxies("openvino"), default_proxies("eager")
        (('eager', 'onnxruntime'), ())
    """
    return tuple(PROXY_BACKENDS.get(backend, ()))


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


def max_removable(graph: DependencyGraph, groups: Sequence[Group], round_to: int = 1, min_channels: int = 1,
                  max_removal: Mapping[str, int] | None = None, max_rate: float = 1.0,
                  steps: int = 1) -> tuple[float, float]:
    """(FLOPs, parameters) removed by pruning every group to its minimum (at most ``max_removal[group]`` channels
    where given: what ``max_total_rate`` still lets go); with ``max_rate < 1``, by ``steps`` steps that each remove
    as much of every group as ``max_rate`` allows (the cap compounds: 10 channels at 0.5 over two steps keep 3).

    Example:
        >>> import torch
        >>> graph = DependencyGraph(torch.nn.Sequential(torch.nn.Conv2d(3, 10, 1, bias=False),
        ...                                             torch.nn.Conv2d(10, 2, 1, bias=False)), torch.randn(1, 3, 1, 1))
        >>> groups = candidate_groups(graph)
        >>> max_removable(graph, groups), max_removable(graph, groups, max_rate=0.5, steps=2)
        ((90.0, 45.0), (70.0, 35.0))
    """
    most = max_counts(groups, round_to, min_channels, max_removal, max_rate, steps)
    return graph.estimate_removal({name: list(range(count)) for name, count in most.items() if count})


def max_counts(groups: Sequence[Group], round_to: int = 1, min_channels: int = 1,
               max_removal: Mapping[str, int] | None = None, max_rate: float = 1.0, steps: int = 1) -> dict[str, int]:
    """Per group, the most channels ``steps`` steps may remove: down to its minimum, each step at most ``max_rate``
    of the group's width at its start, all together at most ``max_removal[group]`` where given (see
    :func:`max_removable`).

    Example:
        >>> from lightning_prune.graph.groups import Group
        >>> group = Group("conv", 10, True, None, True, None, [])
        >>> max_counts([group]), max_counts([group], max_rate=0.5, steps=2)
        ({'conv': 9}, {'conv': 7})
        >>> max_counts([group], max_removal={"conv": 4})
        {'conv': 4}
    """
    limit = dict(max_removal or {})
    most = {}
    for group in groups:
        count = removal_count(group, 1.0, round_to, min_channels)
        if max_rate < 1.0:
            count = _capped_removal(group, max_rate, steps, round_to, min_channels)
        most[group.name] = min(count, limit.get(group.name, group.size))
    return most


def _capped_removal(group: Group, max_rate: float, steps: int, round_to: int, min_channels: int) -> int:
    """The channels ``steps`` steps remove from ``group`` at most when each removes at most ``max_rate`` of the
    group's width at its start, counts rounded as ``round_to`` and ``min_channels`` allow."""
    width = group.size
    for _ in range(max(int(steps), 0)):
        shrunk = dataclasses.replace(group, size=width)
        taken = max([c for c in valid_counts(shrunk, round_to, min_channels) if c <= max_rate * width], default=0)
        if taken <= 0:
            break
        width -= taken
    return group.size - width


def latency_options(table: Any, groups: Sequence[Group], min_channels: int = 1,
                    round_to: int = 1) -> dict[str, list[int]]:
    """Per group, the removal counts that land on a width where the backend is fast (from a measured
    :class:`~lightning_prune.pruning.CostTable`): what latency-aware selection rounds to. With ``round_to > 1``
    only fast widths that are multiples of it (or the group's whole width)."""
    if round_to > 1:
        return {group.name: table.removal_options(group.name, min_channels, multiple=round_to) for group in groups}
    return {group.name: table.removal_options(group.name, min_channels) for group in groups}


def capped_options(groups: Sequence[Group], max_rate: float, round_to: int = 1, min_channels: int = 1,
                   options: Mapping[str, Sequence[int]] | None = None,
                   max_removal: Mapping[str, int] | None = None) -> dict[str, list[int]]:
    """Per group, the removal counts one step may take: its allowed ``options`` (else every count ``round_to`` and
    ``min_channels`` allow) that remove at most ``max_rate`` of the group and at most ``max_removal[group]``
    channels, ascending (``[0]`` when none does).

    Example:
        >>> import torch
        >>> graph = DependencyGraph(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1)),
        ...                         torch.randn(1, 3, 4, 4))
        >>> groups = candidate_groups(graph)
        >>> capped_options(groups, 0.5), capped_options(groups, 0.5, options={"0": [0, 6]})
        ({'0': [0, 1, 2, 3, 4]}, {'0': [0]})
    """
    most = max_removal or {}
    return {g.name: [c for c in valid_counts(g, round_to, min_channels, options)
                     if c <= max_rate * g.size and c <= most.get(g.name, g.size)] or [0] for g in groups}


def latency_per_channel(table: Any, groups: Sequence[Group], options: Mapping[str, Sequence[int]],
                        per: Callable[[dict[str, list[int]]], float] | None = None) -> dict[str, float]:
    """Per group, the predicted milliseconds one of its channels saves on average up to its largest allowed removal
    count in ``options`` (from a measured :class:`~lightning_prune.pruning.CostTable`): the cost that global
    latency-aware selection weighs each channel's importance against.

    With ``per`` (a cost function ``plan -> removed cost``, e.g. the FLOPs a plan removes), the milliseconds saved
    per unit of that cost instead: how slow the backend runs the group's FLOPs compared with the others. A group
    whose removal saves nothing of ``per`` costs ``0``.

    Example:
        >>> import torch
        >>> from lightning_prune import DependencyGraph
        >>> from lightning_prune.pruning import build_cost_table
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 8, 3, padding=1))
        >>> graph = DependencyGraph(net, torch.randn(1, 3, 32, 32))
        >>> table = build_cost_table(graph, "eager", repeats=1)
        >>> groups = candidate_groups(graph)
        >>> options = latency_options(table, groups)
        >>> latency_per_channel(table, groups, options)["0"] > 0
        True
        >>> flops = lambda plan: graph.estimate_removal(plan)[0]
        >>> latency_per_channel(table, groups, options, per=flops)["0"] > 0
        True
    """
    costs = {}
    for group in groups:
        most = max(options.get(group.name) or [0])
        spent = float(most if per is None or most <= 0 else per({group.name: list(range(most))}))
        costs[group.name] = table.removed_ms({group.name: most}) / spent if spent > 0 else 0.0
    return costs


def select_counts(candidates: Candidates, rules: SelectionRules, budget: float, *,
                  scored: Callable[[], Sequence[Scored]] | None = None,
                  cost_table: Any = None) -> tuple[dict[str, int], list[Scored]]:
    """Channels to remove per group of ``candidates`` so that ``budget`` of ``rules.budget_cost`` (default:
    ``rules.cost``) goes, and the paper's picks used (sensitivity).

    ``rules.cost`` is ``"flops"``, ``"params"``, ``"latency"`` (needs ``cost_table``, a measured
    :class:`~lightning_prune.pruning.CostTable`: the paper's value becomes ``Δlatency × metric^k``, and every
    strategy rounds each group to its fast widths instead of ``round_to``) or a cost function ``plan -> removed
    cost``. ``budget_cost`` measures the budget when it differs (e.g. a FLOPs budget met at latency-fast widths);
    ``"latency"`` there means the table's predicted milliseconds. ``scored`` runs (only when needed) the
    sensitivity probes and returns them scored. ``max_rate`` caps the share of any one group this step removes,
    ``max_removal`` (group -> channels) the count.

    ``global`` with ``cost="latency"`` thresholds importance *per predicted millisecond* (each group's channels
    weighed by what one of them costs on the backend), so it prunes where the backend is slow, not only where
    channels are unimportant. Under a FLOPs or params budget (``budget_cost``) the weight is the milliseconds a
    channel saves *per FLOP (parameter) it removes*: the budget is spent where the backend runs its FLOPs slowest,
    which buys the most latency for the FLOPs removed (measured in ``benchmarks/latency_aware.py``).
    ``allocation="knapsack"`` spends such a FLOPs or params budget with :func:`~lightning_prune.pruning.allocation.
    knapsack_counts` instead: step by step along each group's measured curve, the step that saves the most
    predicted milliseconds per FLOP (parameter), divided by its channels' importance to the power
    ``importance_weight``.

    Example:
        >>> import torch
        >>> graph = DependencyGraph(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1)),
        ...                         torch.randn(1, 3, 4, 4))
        >>> candidates = Candidates(graph, candidate_groups(graph), {}, {"0": np.arange(8)})
        >>> select_counts(candidates, SelectionRules("uniform"), 320.0)
        ({'0': 2}, [])
        >>> select_counts(candidates, SelectionRules("uniform", cost="latency"), 1.0)
        Traceback (most recent call last):
        ...
        ValueError: cost 'latency' needs a measured cost table (lightning_prune.pruning.build_cost_table)
    """
    graph, groups, scores, ranking = candidates.graph, candidates.groups, candidates.scores, candidates.ranking
    strategy, cost, budget_cost, allocation = rules.strategy, rules.cost, rules.budget_cost, rules.allocation
    round_to, min_channels, max_rate, max_removal = rules.round_to, rules.min_channels, rules.max_rate, \
        rules.max_removal
    if allocation not in choices(Allocation):
        raise ValueError(f"unknown allocation {allocation!r}; choose one of {', '.join(choices(Allocation))}")
    if allocation == "measured":
        raise ValueError("allocation 'measured' times candidate plans on the backend: use allocation_candidates "
                         "and lightning_prune.pruning.measured_choice.fastest_plan (IterativePruner does both)")
    if budget <= 0 or not groups:
        return {}, []
    options = None
    channel_cost = None
    value = cost if isinstance(cost, str) else "flops"
    if cost == "latency":
        if cost_table is None:
            raise ValueError("cost 'latency' needs a measured cost table (lightning_prune.pruning.build_cost_table)")
        options = latency_options(cost_table, groups, min_channels, round_to)
    if not 0.0 < max_rate <= 1.0:
        raise ValueError(f"max_rate must be a fraction in (0, 1], got {max_rate!r}")
    if max_rate < 1.0 or max_removal:
        options = capped_options(groups, max_rate, round_to, min_channels, options, max_removal)
    knapsack = allocation == "knapsack" and allocation_applies(strategy, cost, budget_cost)
    if cost == "latency":
        if strategy == "global" and not knapsack:
            # what one channel saves, on average over the range this step may remove; under a FLOPs (params)
            # budget, per FLOP (parameter) it removes: the budget then goes where the backend is slowest per unit
            per = None if budget_cost in (None, "latency") else cost_function(graph, budget_cost)
            channel_cost = latency_per_channel(cost_table, groups, options, per)
        cost = cost_table.removed_ms
    measure = cost if budget_cost is None else budget_cost
    if measure == "latency":
        if cost_table is None:
            raise ValueError("a latency budget needs a measured cost table (lightning_prune.pruning."
                             "build_cost_table)")
        measure = cost_table.removed_ms
    if strategy == "uniform":
        return uniform_counts(graph, groups, ranking, budget, measure, round_to, min_channels, options=options), []
    if knapsack:
        return knapsack_counts(graph, groups, ranking, budget, measure, cost, options, round_to, min_channels,
                               scores=scores, importance_weight=rules.importance_weight), []
    if strategy == "global":
        return global_counts(graph, groups, scores, ranking, budget, measure, round_to, min_channels,
                             options=options, channel_cost=channel_cost), []
    if strategy == "sensitivity":
        if scored is None:
            raise ValueError("strategy 'sensitivity' needs scored probes")
        return sensitivity_counts(graph, groups, ranking, scored(), budget, measure, rules.params_layers,
                                  rules.flops_layers, round_to, min_channels, options=options, value=value)
    raise ValueError(f"unknown strategy {strategy!r}")


def allocation_applies(strategy: str, cost: Any, budget_cost: Cost | None) -> bool:
    """Whether ``allocation`` ``"knapsack"`` or ``"measured"`` applies: latency-aware ``global`` selection
    (``cost="latency"``) spending a FLOPs or params budget for predicted milliseconds; elsewhere (a latency budget
    included) selection uses the threshold.

    Example:
        >>> allocation_applies("global", "latency", "flops"), allocation_applies("global", "latency", "latency")
        (True, False)
        >>> allocation_applies("uniform", "latency", "flops")
        False
    """
    return strategy == "global" and cost == "latency" and budget_cost not in (None, "latency")


def allocation_candidates(candidates: Candidates, rules: SelectionRules, budget: float, cost_table: Any, *,
                          multiples: Sequence[int] = MEASURED_MULTIPLES, rates: Sequence[float] = (),
                          weights: Sequence[float] = (),
                          allocations: Sequence[str] = ("threshold", "knapsack")) -> dict[str, dict[str, int]]:
    """The latency-aware ``global`` allocations of one FLOPs (params) ``budget`` (``rules.budget_cost``) that
    ``allocation="measured"`` times on the backend: ``threshold`` and ``knapsack`` (see :func:`select_counts`), each
    at the table's fast widths that are multiples of ``rules.round_to`` and of every larger one of ``multiples`` that
    ``round_to`` divides, named ``"<allocation>/<multiple>"``; a candidate with the same counts as an earlier one is
    left out. ``rules``' strategy, cost and allocation are not read.

    Each is also tried with every per-group cap of ``rates`` below ``rules.max_rate`` (named ``...@<rate>``; a lower
    cap spreads the budget over more groups) and, for the knapsack, every importance weight of ``weights`` besides
    ``rules.importance_weight`` (named ``...~w<weight>``; ``0``: cost alone). Which of these the backend runs fastest
    differs by model and backend by a few per cent, more than the table can tell apart. ``allocations`` keeps only
    some of the two families.

    Example:
        >>> import torch
        >>> from lightning_prune.pruning import build_cost_table
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 3))
        >>> graph = DependencyGraph(net, torch.randn(1, 3, 32, 32))
        >>> table = build_cost_table(graph, "eager", repeats=1)
        >>> groups = candidate_groups(graph)
        >>> candidates = Candidates(graph, groups, *score_channels(groups, net, "l1"))
        >>> found = allocation_candidates(candidates, SelectionRules(budget_cost="flops"), 0.3 * graph.traced_flops,
        ...                               table)
        >>> all(name.split("/")[0] in ("threshold", "knapsack") for name in found), "threshold/1" in found
        (True, True)
    """
    unknown = sorted(set(allocations) - {"threshold", "knapsack"})
    if unknown or not allocations:
        raise ValueError(f"allocations must be some of 'threshold', 'knapsack', got {list(allocations)}")
    round_to, max_rate, importance_weight = rules.round_to, rules.max_rate, rules.importance_weight
    steps = sorted({int(round_to), *(int(m) for m in multiples if m > round_to and m % round_to == 0)})
    caps = [float(max_rate), *sorted({float(r) for r in rates if 0.0 < r < max_rate}, reverse=True)]
    knapsack_weights = [float(importance_weight), *(float(w) for w in dict.fromkeys(weights)
                                                    if w != importance_weight)]
    found: dict[str, dict[str, int]] = {}
    for cap in caps:
        for multiple in steps:
            families = [("threshold", importance_weight), *(("knapsack", w) for w in knapsack_weights)]
            for allocation, weight in [(a, w) for a, w in families if a in allocations]:
                asked = dataclasses.replace(rules, strategy="global", cost="latency", round_to=multiple,
                                            max_rate=cap, allocation=allocation, importance_weight=weight)
                counts, _ = select_counts(candidates, asked, budget, cost_table=cost_table)
                counts = {name: count for name, count in counts.items() if count}
                if counts not in found.values():
                    name = f"{allocation}/{multiple}" + (f"@{cap:g}" if cap != max_rate else "")
                    found[name + (f"~w{weight:g}" if weight != importance_weight else "")] = counts
    return found
