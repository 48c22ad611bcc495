"""Choosing what to prune in one step: the paper's scoring, plus uniform and global strategies, all held to a
cost budget (FLOPs or parameters to remove in this step).

All strategies produce *counts* (channels to remove per group); a ranking (:func:`~lightning_prune.sensitivity.
rank_channels`) turns counts into a plan, so the channels chosen are always the group's lowest-scored ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.sensitivity import Probe, removal_count

__all__ = [
    "Scored",
    "boundary_probes",
    "score_probes",
    "paper_selection",
    "plan_from_counts",
    "sensitivity_counts",
    "uniform_counts",
    "global_counts",
]

COST_INDEX = {"flops": 0, "params": 1}


@dataclass(frozen=True)
class Scored:
    """A probe with the paper's values: ``Δcost × quality^k`` for parameters and FLOPs."""

    probe: Probe
    quality: float
    value_params: float
    value_flops: float


def score_probes(probes: Sequence[Probe], baseline_metric: float, mode: str = "max",
                 exponent: float = 20.0) -> list[Scored]:
    """The paper's ``value = Δcost × mAP^k``, with the metric taken relative to the unpruned one (which ranks the
    same way for ``mode="max"`` and lets ``mode="min"`` metrics such as a loss work too).

    Quality is not clipped at 1: a probe that *improves* the metric ranks above one that leaves it unchanged.

    Example:
        >>> probes = [Probe("a", 0.5, 4, 0.9, 100.0, 10.0), Probe("b", 0.5, 4, 0.5, 200.0, 20.0)]
        >>> [round(s.value_flops, 3) for s in score_probes(probes, baseline_metric=1.0, exponent=2)]
        [81.0, 50.0]
        >>> better, same = Probe("c", 0.5, 4, 1.1, 100.0, 10.0), Probe("d", 0.5, 4, 1.0, 100.0, 10.0)
        >>> [s.probe.group for s in sorted(score_probes([same, better], 1.0), key=lambda s: -s.value_flops)]
        ['c', 'd']
    """
    scored = []
    for probe in probes:
        if mode == "max":
            quality = probe.metric / baseline_metric if baseline_metric > 0 else float(probe.metric >= baseline_metric)
        else:
            quality = baseline_metric / probe.metric if probe.metric > 0 else float(probe.metric <= baseline_metric)
        quality = max(0.0, quality) if np.isfinite(quality) else 0.0
        weight = quality**exponent
        scored.append(Scored(probe, quality, probe.params * weight, probe.flops * weight))
    return scored


def boundary_probes(scored: Sequence[Scored], params_layers: int = 6, flops_layers: int = 5,
                    count: int = 1) -> list[Probe]:
    """The ``count`` probes whose paper decision is least certain: per group its best-rate probe, ranked by how close
    its value lies (in log scale) to the cut between the ``params_layers``-th and the next group by parameter value,
    or the ``flops_layers``-th and the next by FLOPs value. Re-measuring these on more data steadies the picks.

    Example:
        >>> probes = [Probe(g, 0.5, 4, 1.0, f, 1.0) for g, f in zip("abcd", (8.0, 4.0, 3.9, 1.0))]
        >>> [p.group for p in boundary_probes(score_probes(probes, 1.0), params_layers=0, flops_layers=2, count=2)]
        ['b', 'c']
    """
    if count <= 0:
        return []
    candidates: dict[tuple[str, float], float] = {}
    for value, layers in ((lambda s: s.value_params, params_layers), (lambda s: s.value_flops, flops_layers)):
        best: dict[str, Scored] = {}
        for item in scored:
            name = item.probe.group
            if name not in best or value(item) > value(best[name]):
                best[name] = item
        ranked = sorted(best.values(), key=lambda s: -value(s))
        if layers <= 0 or layers >= len(ranked):
            continue
        cut = np.sqrt(max(value(ranked[layers - 1]), 1e-30) * max(value(ranked[layers]), 1e-30))
        for item in ranked:
            distance = abs(np.log(max(value(item), 1e-30) / cut))
            key = (item.probe.group, item.probe.rate)
            candidates[key] = min(candidates.get(key, np.inf), distance)
    by_key = {(s.probe.group, s.probe.rate): s.probe for s in scored}
    order = sorted(candidates, key=lambda key: candidates[key])
    return [by_key[key] for key in order[:count]]


def paper_selection(scored: Sequence[Scored], params_layers: int = 6, flops_layers: int = 5,
                    target_metric: str = "flops") -> list[Scored]:
    """The paper's pick: per group its best rate; the top ``params_layers`` groups by parameter value and the top
    ``flops_layers`` by FLOPs value; their union, ordered by the target metric's value (best first).

    Example:
        >>> probes = [Probe("a", 0.25, 2, 1.0, 10.0, 1.0), Probe("a", 0.5, 4, 0.2, 20.0, 2.0),
        ...           Probe("b", 0.25, 2, 1.0, 5.0, 5.0)]
        >>> [(s.probe.group, s.probe.rate) for s in paper_selection(score_probes(probes, 1.0), 1, 1)]
        [('a', 0.25), ('b', 0.25)]
    """
    best_params: dict[str, Scored] = {}
    best_flops: dict[str, Scored] = {}
    for item in scored:
        name = item.probe.group
        if name not in best_params or item.value_params > best_params[name].value_params:
            best_params[name] = item
        if name not in best_flops or item.value_flops > best_flops[name].value_flops:
            best_flops[name] = item
    top_params = sorted(best_params.values(), key=lambda s: -s.value_params)[:params_layers]
    top_flops = sorted(best_flops.values(), key=lambda s: -s.value_flops)[:flops_layers]
    primary = top_flops if target_metric == "flops" else top_params
    chosen: dict[str, Scored] = {s.probe.group: s for s in (top_params + top_flops) if s.probe.group}
    for item in primary:  # where a group is in both lists, the target metric's best rate wins
        chosen[item.probe.group] = item
    key = (lambda s: -s.value_flops) if target_metric == "flops" else (lambda s: -s.value_params)
    return sorted(chosen.values(), key=key)


def plan_from_counts(ranking: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> dict[str, list[int]]:
    """Turn per-group removal counts into a plan: each group's first ``count`` channels of its ranking."""
    return {name: sorted(ranking[name][:count].tolist()) for name, count in counts.items() if count > 0}


def _removed(graph: DependencyGraph, ranking: Mapping[str, np.ndarray], counts: Mapping[str, int],
             target_metric: str) -> float:
    return graph.estimate_removal(plan_from_counts(ranking, counts))[COST_INDEX[target_metric]]


def _bisect_knob(graph: DependencyGraph, ranking: Mapping[str, np.ndarray],
                 counts_at: Callable[[float], dict[str, int]], lo: float, hi: float, budget: float,
                 target_metric: str, iterations: int = 40) -> dict[str, int]:
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
             above: dict[str, int], budget: float, target_metric: str) -> dict[str, int]:
    short = budget - _removed(graph, ranking, below, target_metric)
    over = _removed(graph, ranking, above, target_metric) - budget
    return below if short < over else above


def _valid_counts(group: Group, round_to: int, min_channels: int) -> list[int]:
    return sorted({removal_count(group, k / group.size, round_to, min_channels) for k in range(group.size + 1)})


def _trim(graph: DependencyGraph, ranking: Mapping[str, np.ndarray], counts: dict[str, int], name: str,
          options: list[int], budget: float, target_metric: str) -> None:
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


def uniform_counts(graph: DependencyGraph, groups: Sequence[Group], ranking: Mapping[str, np.ndarray],
                   budget: float, target_metric: str = "flops", round_to: int = 1, min_channels: int = 1,
                   floor: Mapping[str, int] | None = None) -> dict[str, int]:
    """The same fraction of every group (at least ``floor`` per group), the smallest that removes ``budget``."""
    floor = floor or {}

    def counts_at(fraction: float) -> dict[str, int]:
        return {g.name: max(floor.get(g.name, 0), removal_count(g, fraction, round_to, min_channels)) for g in groups}

    return _bisect_knob(graph, ranking, counts_at, 0.0, 1.0, budget, target_metric)


def global_counts(graph: DependencyGraph, groups: Sequence[Group], scores: Mapping[str, np.ndarray],
                  ranking: Mapping[str, np.ndarray], budget: float, target_metric: str = "flops",
                  round_to: int = 1, min_channels: int = 1) -> dict[str, int]:
    """One threshold on importance normalised per group (score / the group's largest |score|): every channel below
    it goes, as far as ``round_to``/``min_channels`` allow; the lowest threshold that removes ``budget``."""
    normalised = {}
    for group in groups:
        values = np.asarray(scores[group.name], dtype=np.float64)
        normalised[group.name] = np.sort(values / (np.abs(values).max() or 1.0))

    def counts_at(threshold: float) -> dict[str, int]:
        counts = {}
        for group in groups:
            below = int(np.searchsorted(normalised[group.name], threshold, side="right"))
            counts[group.name] = removal_count(group, below / group.size, round_to, min_channels)
        return counts

    return _bisect_knob(graph, ranking, counts_at, -1.0 - 1e-9, 1.0 + 1e-9, budget, target_metric)


def sensitivity_counts(graph: DependencyGraph, groups: Sequence[Group], ranking: Mapping[str, np.ndarray],
                       scored: Sequence[Scored], budget: float, target_metric: str = "flops",
                       params_layers: int = 6, flops_layers: int = 5, round_to: int = 1,
                       min_channels: int = 1) -> tuple[dict[str, int], list[Scored]]:
    """The paper's selection held to a budget.

    The paper's picks are applied first (best value first), then — if the step's budget is not reached — every other
    probed (group, rate) by value, each only raising a group's rate; the last one applied is trimmed to the smallest
    count that meets the budget. If all probed rates together still fall short, the remaining budget is spread
    uniformly. Returns the counts and the picks that were used.
    """
    picks = paper_selection(scored, params_layers, flops_layers, target_metric)
    value = (lambda s: s.value_flops) if target_metric == "flops" else (lambda s: s.value_params)
    picked = {id(s) for s in picks}
    rest = sorted((s for s in scored if id(s) not in picked), key=lambda s: -value(s))
    by_name = {g.name: g for g in groups}
    counts: dict[str, int] = {}
    used: list[Scored] = []
    if budget <= 0:
        return counts, used
    for item in [*picks, *rest]:
        name = item.probe.group
        if name not in by_name or item.probe.removed <= counts.get(name, 0):
            continue
        previous = counts.get(name, 0)
        counts[name] = item.probe.removed
        used.append(item)
        if _removed(graph, ranking, counts, target_metric) >= budget:
            options = [c for c in _valid_counts(by_name[name], round_to, min_channels)
                       if previous < c <= item.probe.removed]
            _trim(graph, ranking, counts, name, options, budget, target_metric)
            return counts, used
    topped = uniform_counts(graph, groups, ranking, budget, target_metric, round_to, min_channels, floor=counts)
    return topped, used
