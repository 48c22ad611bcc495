"""The paper's scoring: a sensitivity probe's value is ``Δcost × metric^k`` (parameters, FLOPs and, with a measured
cost table, predicted latency), the paper's pick of the best groups by those values, and the probes nearest its cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lightning_prune.pruning.sensitivity import Probe

__all__ = ["Scored", "boundary_probes", "paper_selection", "score_probes"]


@dataclass(frozen=True)
class Scored:
    """A probe with the paper's values: ``Δcost × quality^k`` for parameters, FLOPs and (with a cost table)
    predicted latency."""

    probe: Probe
    quality: float
    value_params: float
    value_flops: float
    value_latency: float = 0.0

    def value(self, cost: str) -> float:
        """The value for ``cost`` (``"params"``, ``"flops"`` or ``"latency"``)."""
        return {"params": self.value_params, "latency": self.value_latency}.get(cost, self.value_flops)


def score_probes(probes: Sequence[Probe], baseline_metric: float, mode: str = "max",
                 exponent: float = 20.0, latency: Callable[[Probe], float] | None = None) -> list[Scored]:
    """The paper's ``value = Δcost × mAP^k``, with the metric taken relative to the unpruned one (which ranks the
    same way for ``mode="max"`` and lets ``mode="min"`` metrics such as a loss work too).

    Quality is not clipped at 1: a probe that *improves* the metric ranks above one that leaves it unchanged.
    ``latency`` (e.g. a cost table's prediction for the probe's removal) adds ``Δlatency × quality^k``.

    Example:
        >>> probes = [Probe("a", 0.5, 4, 0.9, 100.0, 10.0), Probe("b", 0.5, 4, 0.5, 200.0, 20.0)]
        >>> [round(s.value_flops, 3) for s in score_probes(probes, baseline_metric=1.0, exponent=2)]
        [81.0, 50.0]
        >>> better, same = Probe("c", 0.5, 4, 1.1, 100.0, 10.0), Probe("d", 0.5, 4, 1.0, 100.0, 10.0)
        >>> [s.probe.group for s in sorted(score_probes([same, better], 1.0), key=lambda s: -s.value_flops)]
        ['c', 'd']
        >>> score_probes(probes, 1.0, exponent=2, latency=lambda p: p.removed * 0.5)[0].value_latency
        1.62
    """
    scored = []
    for probe in probes:
        if mode == "max":
            quality = probe.metric / baseline_metric if baseline_metric > 0 else float(probe.metric >= baseline_metric)
        else:
            quality = baseline_metric / probe.metric if probe.metric > 0 else float(probe.metric <= baseline_metric)
        quality = max(0.0, quality) if np.isfinite(quality) else 0.0
        weight = quality**exponent
        saved = float(latency(probe)) if latency is not None else 0.0
        scored.append(Scored(probe, quality, probe.params * weight, probe.flops * weight, saved * weight))
    return scored


def boundary_probes(scored: Sequence[Scored], params_layers: int = 6, flops_layers: int = 5,
                    count: int = 1, cost: str = "flops") -> list[Probe]:
    """The ``count`` probes whose paper decision is least certain: per group its best-rate probe, ranked by how close
    its value lies (in log scale) to the cut between the ``params_layers``-th and the next group by parameter value,
    or the ``flops_layers``-th and the next by FLOPs value (latency value for ``cost="latency"``). Re-measuring
    these on more data steadies the picks.

    Example:
        >>> probes = [Probe(g, 0.5, 4, 1.0, f, 1.0) for g, f in zip("abcd", (8.0, 4.0, 3.9, 1.0))]
        >>> [p.group for p in boundary_probes(score_probes(probes, 1.0), params_layers=0, flops_layers=2, count=2)]
        ['b', 'c']
    """
    if count <= 0:
        return []
    candidates: dict[tuple[str, float], float] = {}
    second = "latency" if cost == "latency" else "flops"
    for value, layers in ((lambda s: s.value_params, params_layers), (lambda s: s.value(second), flops_layers)):
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
    ``flops_layers`` by FLOPs value (by latency value for ``target_metric="latency"``: the paper's hardware score
    with a measured cost); their union, ordered by the target metric's value (best first).

    Example:
        >>> probes = [Probe("a", 0.25, 2, 1.0, 10.0, 1.0), Probe("a", 0.5, 4, 0.2, 20.0, 2.0),
        ...           Probe("b", 0.25, 2, 1.0, 5.0, 5.0)]
        >>> [(s.probe.group, s.probe.rate) for s in paper_selection(score_probes(probes, 1.0), 1, 1)]
        [('a', 0.25), ('b', 0.25)]
    """
    second = "latency" if target_metric == "latency" else "flops"
    best_params: dict[str, Scored] = {}
    best_second: dict[str, Scored] = {}
    for item in scored:
        name = item.probe.group
        if name not in best_params or item.value_params > best_params[name].value_params:
            best_params[name] = item
        if name not in best_second or item.value(second) > best_second[name].value(second):
            best_second[name] = item
    top_params = sorted(best_params.values(), key=lambda s: -s.value_params)[:params_layers]
    top_second = sorted(best_second.values(), key=lambda s: -s.value(second))[:flops_layers]
    primary = top_params if target_metric == "params" else top_second
    chosen: dict[str, Scored] = {s.probe.group: s for s in (top_params + top_second) if s.probe.group}
    for item in primary:  # where a group is in both lists, the target metric's best rate wins
        chosen[item.probe.group] = item
    key = "params" if target_metric == "params" else second
    return sorted(chosen.values(), key=lambda s: -s.value(key))
