"""Allocations: how one step's cost budget (FLOPs, parameters or predicted latency to remove) is spread over the
candidate groups — uniformly, by one threshold on normalised importance, by a marginal knapsack along measured
latency curves, or by the paper's picks (:mod:`~lightning_prune.pruning.scoring`) held to the budget.

Budgets are measured by a *cost function* ``plan -> removed cost``: ``"flops"`` and ``"params"`` name the
dependency graph's estimate (:meth:`~lightning_prune.graph.DependencyGraph.estimate_removal`), and any callable
works too, e.g. a measured latency table's :meth:`~lightning_prune.pruning.CostTable.removed_ms`. ``options``
(allowed removal counts per group, e.g. :meth:`~lightning_prune.pruning.CostTable.removal_options`: the widths
where the backend is fast) replace the one global ``round_to`` with per-group rounding. All of them produce counts
(:mod:`~lightning_prune.pruning.counts`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.pruning.counts import plan_from_counts, removal_count, snap_count, valid_counts
from lightning_prune.pruning.scoring import Scored, paper_selection

__all__ = [
    "Cost",
    "CostFn",
    "cost_function",
    "global_counts",
    "knapsack_counts",
    "sensitivity_counts",
    "uniform_counts",
]

COST_INDEX = {"flops": 0, "params": 1}

#: removed cost of a plan (group name -> channel indices)
CostFn = Callable[[Mapping[str, Sequence[int]]], float]
Cost = str | CostFn


def cost_function(graph: DependencyGraph, cost: Cost) -> CostFn:
    """``cost`` as a function ``plan -> removed cost``: a callable as it is, ``"flops"``/``"params"`` from the
    graph's estimate.

    Example:
        >>> import torch
        >>> graph = DependencyGraph(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1)),
        ...                         torch.randn(1, 3, 4, 4))
        >>> cost_function(graph, "params")({"0": [0, 1]})
        12.0
        >>> cost_function(graph, "latency")
        Traceback (most recent call last):
        ...
        ValueError: cost 'latency' needs a cost function (a measured table's removed_ms); named costs: flops, params
    """
    if callable(cost):
        return cost
    if cost not in COST_INDEX:
        raise ValueError(f"cost {cost!r} needs a cost function (a measured table's removed_ms); named costs: "
                         f"{', '.join(COST_INDEX)}")
    index = COST_INDEX[cost]
    return lambda plan: graph.estimate_removal(plan)[index]


def _removed(graph: DependencyGraph, ranking: Mapping[str, np.ndarray], counts: Mapping[str, int],
             target_metric: Cost) -> float:
    plan = plan_from_counts(ranking, counts)
    if callable(target_metric):
        return float(target_metric(plan))
    return graph.estimate_removal(plan)[COST_INDEX[target_metric]]


def _bisect_knob(graph: DependencyGraph, ranking: Mapping[str, np.ndarray],
                 counts_at: Callable[[float], dict[str, int]], lo: float, hi: float, budget: float,
                 target_metric: Cost, iterations: int = 40) -> dict[str, int]:
    """Bisect a knob (a fraction, a threshold) whose counts remove more as it grows; the counts closest to
    ``budget``. When even ``hi`` falls short it is returned: the caller checks reachability."""
    if _removed(graph, ranking, counts_at(hi), target_metric) < budget:
        return counts_at(hi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if _removed(graph, ranking, counts_at(mid), target_metric) >= budget:
            hi = mid
        else:
            lo = mid
    return _closest(graph, ranking, counts_at(lo), counts_at(hi), budget, target_metric)


def _closest(graph: DependencyGraph, ranking: Mapping[str, np.ndarray], below: dict[str, int],
             above: dict[str, int], budget: float, target_metric: Cost) -> dict[str, int]:
    short = budget - _removed(graph, ranking, below, target_metric)
    over = _removed(graph, ranking, above, target_metric) - budget
    return below if short < over else above


def _trim(graph: DependencyGraph, ranking: Mapping[str, np.ndarray], counts: dict[str, int], name: str,
          options: list[int], budget: float, target_metric: Cost) -> None:
    """Set ``counts[name]`` to the allowed count whose removal lands closest to ``budget``."""
    lo, hi = 0, len(options) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        counts[name] = options[mid]
        if _removed(graph, ranking, counts, target_metric) >= budget:
            hi = mid
        else:
            lo = mid + 1
    counts[name] = options[lo]
    if lo > 0:  # the count just below may land closer to the budget (channels are coarse in small groups)
        over = _removed(graph, ranking, counts, target_metric) - budget
        counts[name] = options[lo - 1]
        if budget - _removed(graph, ranking, counts, target_metric) >= over:
            counts[name] = options[lo]


def _snap(counts: dict[str, int], options: Mapping[str, Sequence[int]] | None) -> dict[str, int]:
    if not options:
        return counts
    return {name: snap_count(count, options.get(name)) for name, count in counts.items()}


def uniform_counts(graph: DependencyGraph, groups: Sequence[Group], ranking: Mapping[str, np.ndarray],
                   budget: float, target_metric: Cost = "flops", round_to: int = 1, min_channels: int = 1,
                   floor: Mapping[str, int] | None = None,
                   options: Mapping[str, Sequence[int]] | None = None) -> dict[str, int]:
    """The same fraction of every group (at least ``floor`` per group), the smallest that removes ``budget`` of
    ``target_metric`` (a name or a cost function ``plan -> removed cost``). With ``options`` (allowed removal counts
    per group) each group's count is the allowed one nearest the fraction's.

    Example:
        >>> import torch
        >>> graph = DependencyGraph(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1)),
        ...                         torch.randn(1, 3, 4, 4))
        >>> ranking = {"0": np.arange(8)}
        >>> uniform_counts(graph, graph.prunable_groups, ranking, 20.0, lambda plan: 10.0 * len(plan.get("0", [])))
        {'0': 2}
        >>> uniform_counts(graph, graph.prunable_groups, ranking, 20.0, lambda plan: 10.0 * len(plan.get("0", [])),
        ...                options={"0": [0, 4, 6]})
        {'0': 4}
    """
    floor = floor or {}

    def counts_at(fraction: float) -> dict[str, int]:
        counts = {g.name: removal_count(g, fraction, round_to, min_channels) for g in groups}
        counts = _snap(counts, options)
        return {name: max(floor.get(name, 0), count) for name, count in counts.items()}

    return _bisect_knob(graph, ranking, counts_at, 0.0, 1.0, budget, target_metric)


def _normalised_importance(groups: Sequence[Group], scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per group, its scores / its largest |score|, ascending (in ranking order). Equal scores (e.g. the BatchNorm
    scales of a fresh model, all 1) are split by a tiny rising offset, so one threshold can take part of a tie
    instead of all of it or none."""
    normalised = {}
    for group in groups:
        values = np.asarray(scores[group.name], dtype=np.float64)
        ordered = np.sort(values / (np.abs(values).max() or 1.0))
        normalised[group.name] = ordered + np.arange(len(ordered)) * 1e-12
    return normalised


def global_counts(graph: DependencyGraph, groups: Sequence[Group], scores: Mapping[str, np.ndarray],
                  ranking: Mapping[str, np.ndarray], budget: float, target_metric: Cost = "flops",
                  round_to: int = 1, min_channels: int = 1,
                  options: Mapping[str, Sequence[int]] | None = None,
                  channel_cost: Mapping[str, float] | None = None) -> dict[str, int]:
    """One threshold on importance normalised per group (score / the group's largest |score|): every channel below
    it goes, as far as ``round_to``/``min_channels`` (or the allowed ``options``, nearest) allow; the lowest
    threshold that removes ``budget`` of ``target_metric`` (a name or a cost function).

    With ``channel_cost`` (group -> what one of its channels costs, e.g. milliseconds from a measured latency table)
    the threshold is on importance *per unit of cost* (the greedy answer to "keep the most importance within the
    cost", as in HALP's latency knapsack): a group whose channels are expensive is pruned further than one whose
    channels are cheap at the same importance.

    Example:
        >>> import torch
        >>> graph = DependencyGraph(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 1),
        ...                         torch.nn.Conv2d(8, 2, 1)), torch.randn(1, 3, 4, 4))
        >>> groups = graph.prunable_groups
        >>> scores = {g.name: np.arange(1.0, 9.0) for g in groups}
        >>> ranking = {g.name: np.arange(8) for g in groups}
        >>> flops = lambda plan: float(sum(len(v) for v in plan.values()))
        >>> global_counts(graph, groups, scores, ranking, 4.0, flops)
        {'0': 2, '1': 2}
        >>> global_counts(graph, groups, scores, ranking, 4.0, flops, channel_cost={"0": 1.0, "1": 10.0})
        {'0': 0, '1': 4}
    """
    normalised = _normalised_importance(groups, scores)
    if channel_cost:
        known = [c for c in (channel_cost.get(g.name, 0.0) for g in groups) if c > 0]
        mean = float(np.mean(known)) if known else 1.0
        for group in groups:
            # a channel that saves nothing is never worth its importance: it sorts after every costly one
            weight = channel_cost.get(group.name, 0.0) / mean
            normalised[group.name] = normalised[group.name] / weight if weight > 0 else \
                np.full_like(normalised[group.name], np.inf)
        finite = [v[np.isfinite(v)] for v in normalised.values()]
        finite = [v for v in finite if v.size]
        lo = min((float(v.min()) for v in finite), default=-1.0) - 1e-6
        hi = max((float(v.max()) for v in finite), default=1.0) + 1e-6
    else:  # normalised importance lies in [-1, 1]
        lo, hi = -1.0 - 1e-6, 1.0 + 1e-6

    def counts_at(threshold: float) -> dict[str, int]:
        counts = {}
        for group in groups:
            below = int(np.searchsorted(normalised[group.name], threshold, side="right"))
            counts[group.name] = removal_count(group, below / group.size, round_to, min_channels)
        return _snap(counts, options)

    return _bisect_knob(graph, ranking, counts_at, lo, hi, budget, target_metric)


def knapsack_counts(graph: DependencyGraph, groups: Sequence[Group], ranking: Mapping[str, np.ndarray],
                    budget: float, target_metric: Cost, gain: CostFn,
                    options: Mapping[str, Sequence[int]] | None = None, round_to: int = 1, min_channels: int = 1,
                    scores: Mapping[str, np.ndarray] | None = None,
                    importance_weight: float = 0.0, lookahead: bool = True) -> dict[str, int]:
    """A marginal greedy knapsack: spend ``budget`` of ``target_metric`` where each unit of it buys the most
    ``gain`` (e.g. a measured table's predicted milliseconds under a FLOPs budget).

    A group's step goes from its current count to any larger allowed one (in ``options``, else what
    ``round_to``/``min_channels`` allow; with ``lookahead=False`` only to the next) and is valued
    ``Δgain / Δbudget``, recomputed from the counts taken so far, so a group whose removal speeds up its neighbours'
    layers too is credited for it; each group offers its best step, the best of those is taken until the budget is
    spent, and the last one is trimmed to the allowed count closest to the budget. With ``scores`` and
    ``importance_weight`` ``β > 0`` a step's value is divided by the mean normalised importance (score / the
    group's largest |score|) of the channels it removes, to the power ``β`` (the importance side of HALP's latency
    knapsack). Values are kept in a lazy priority queue: a popped step is re-valued and taken only if it still
    leads, which makes it fast (seconds for YOLOv8n's 57 groups and their fast widths).

    Unlike one threshold on importance per cost (:func:`global_counts` with ``channel_cost``), which weighs each
    group by one average, the steps follow the measured curve: a group is pruned to the width where the backend
    gets fast and no further than pays off.

    Example:
        >>> import torch
        >>> graph = DependencyGraph(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 1),
        ...                         torch.nn.Conv2d(8, 2, 1)), torch.randn(1, 3, 4, 4))
        >>> groups = graph.prunable_groups
        >>> ranking = {g.name: np.arange(8) for g in groups}
        >>> flops = lambda plan: float(sum(len(v) for v in plan.values()))
        >>> ms = lambda plan: 1.0 * len(plan.get("0", [])) + 6.0 * (len(plan.get("1", [])) >= 4)
        >>> knapsack_counts(graph, groups, ranking, 4.0, flops, ms, options={"0": [0, 2, 4], "1": [0, 4]})
        {'0': 0, '1': 4}
    """
    if budget <= 0:
        return {}
    allowed = {g.name: valid_counts(g, round_to, min_channels, options) for g in groups}
    weigh = scores is not None and importance_weight > 0
    normalised = _normalised_importance(groups, scores) if weigh else {}
    spend = cost_function(graph, target_metric)
    counts = {g.name: 0 for g in groups}
    spent = gained = 0.0

    def step(name: str) -> tuple[float, int, float, float] | None:
        best = None
        for count in (c for c in allowed[name] if c > counts[name]):
            plan = plan_from_counts(ranking, {**counts, name: count})
            d_spent = float(spend(plan)) - spent
            if d_spent <= 0:
                continue
            d_gain = float(gain(plan)) - gained
            value = d_gain / d_spent
            if weigh:
                value /= max(float(normalised[name][counts[name]:count].mean()), 1e-3) ** importance_weight
            if best is None or value > best[0]:
                best = (value, count, d_spent, d_gain)
            if not lookahead:
                break
        return best

    queue = [(-item[0], name) for name in counts if (item := step(name)) is not None]
    heapq.heapify(queue)
    last = None
    while spent < budget and queue:
        _, name = heapq.heappop(queue)
        item = step(name)
        if item is None:
            continue
        if queue and item[0] < -queue[0][0]:  # stale: re-queue at its current value
            heapq.heappush(queue, (-item[0], name))
            continue
        last = (name, counts[name])
        counts[name] = item[1]
        spent += item[2]
        gained += item[3]
        if (following := step(name)) is not None:
            heapq.heappush(queue, (-following[0], name))
    if last is not None and spent >= budget:
        name, previous = last
        choices = [c for c in allowed[name] if previous <= c <= counts[name]]
        _trim(graph, ranking, counts, name, choices, budget, target_metric)
    return counts


def sensitivity_counts(graph: DependencyGraph, groups: Sequence[Group], ranking: Mapping[str, np.ndarray],
                       scored: Sequence[Scored], budget: float, target_metric: Cost = "flops",
                       params_layers: int = 6, flops_layers: int = 5, round_to: int = 1,
                       min_channels: int = 1, options: Mapping[str, Sequence[int]] | None = None,
                       value: str | None = None) -> tuple[dict[str, int], list[Scored]]:
    """The paper's selection held to a budget.

    The paper's picks are applied first (best value first), then — if the step's budget is not reached — every other
    probed (group, rate) by value, each only raising a group's rate; the last one applied is trimmed to the smallest
    count that meets the budget. If all probed rates together still fall short, the remaining budget is spread
    uniformly. Returns the counts and the picks that were used.

    ``target_metric`` measures the budget (a name or a cost function); ``value`` says which of the paper's values
    ranks (``"flops"``, ``"params"`` or ``"latency"``; default: ``target_metric`` when it is a name, else
    ``"flops"``). With ``options`` a probe's count is rounded down to an allowed one (a fast width) before it is
    applied, and the trim chooses among allowed counts.
    """
    if value is None:
        value = target_metric if isinstance(target_metric, str) else "flops"
    picks = paper_selection(scored, params_layers, flops_layers, value)
    picked = {id(s) for s in picks}
    rest = sorted((s for s in scored if id(s) not in picked), key=lambda s: -s.value(value))
    by_name = {g.name: g for g in groups}
    counts: dict[str, int] = {}
    used: list[Scored] = []
    if budget <= 0:
        return counts, used
    for item in [*picks, *rest]:
        name = item.probe.group
        if name not in by_name:
            continue
        wanted = snap_count(item.probe.removed, (options or {}).get(name), down=True)
        if wanted <= counts.get(name, 0):
            continue
        previous = counts.get(name, 0)
        counts[name] = wanted
        used.append(item)
        if _removed(graph, ranking, counts, target_metric) >= budget:
            allowed = [c for c in valid_counts(by_name[name], round_to, min_channels, options)
                       if previous < c <= wanted]
            _trim(graph, ranking, counts, name, allowed, budget, target_metric)
            return counts, used
    topped = uniform_counts(graph, groups, ranking, budget, target_metric, round_to, min_channels, floor=counts,
                            options=options)
    return topped, used
