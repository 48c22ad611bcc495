"""What one pruning step removes, for :class:`~lightning_prune.pruning.IterativePruner`.

:class:`StepSelector` scores the candidate groups' channels, runs the sensitivity probes (sharded over the
processes, the ones nearest the cut measured again), and holds the strategy to the step's budget with the configured
allocation (:func:`~lightning_prune.pruning.strategies.select_counts`, or the measured choice); the plan is the same
on every rank. It also knows what the candidate groups can give at most — per step (:meth:`StepSelector.capacity`,
which the shortfall warning reads) and over the steps left (:meth:`StepSelector.check_reachable`) — within
``max_rate`` per step and ``max_total_rate`` of the widths the pruner started from.

:class:`StepSelection` is one step's selections: the step selects again, on the same budget and reusing the
probes, when a plan broke the model and pinned its culprits.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.pruning.communication import Communicator
from lightning_prune.pruning.config import PruningConfig
from lightning_prune.pruning.cost_table import SharedCostTable
from lightning_prune.pruning.counts import plan_from_counts
from lightning_prune.pruning.measured_choice import MeasuredAllocator, MeasuredChoice
from lightning_prune.pruning.scoring import boundary_probes, score_probes
from lightning_prune.pruning.sensitivity import Probe, ShardedProbes
from lightning_prune.pruning.strategies import (
    Candidates,
    SelectionRules,
    allocation_applies,
    candidate_groups,
    max_counts,
    max_removable,
    score_channels,
    select_counts,
)

__all__ = ["SHORTFALL_TOLERANCE", "Selection", "StepSelection", "StepSelector"]

#: a step whose candidate groups cannot give its whole budget (caps, pinned or ignored groups, ``min_channels``) warns
#: when it ends more than this share of the budget short. One that can is not judged: selection lands on whole
#: channels nearest the budget, so on small models it misses by a few per cent of it either way.
SHORTFALL_TOLERANCE = 0.01

Plan = dict[str, list[int]]
#: one selection: the plan, the sensitivity probes, the paper's picks and (``allocation="measured"``) what the
#: candidate allocations measured
Selection = tuple[Plan, list[Probe], list[str], MeasuredChoice | None]


class StepSelector:
    """Selects what a pruning step removes from ``graph``'s model (see the module docstring).

    Args:
        graph: the model's dependency graph (its ``model`` is scored and probed).
        config: the :class:`~lightning_prune.pruning.PruningConfig` (strategy, criterion, caps, allocation).
        communicator: rank 0's plan is everyone's.
        probes: the sensitivity probes, sharded over the processes.
        measured_choice: ``allocation="measured"``.
        cost_tables: the latency table of the current architecture (``cost="latency"``, latency budgets).
        evaluate: the validation metric the probes read (``None`` without one).
        remeasure: the same metric on other batches, for the probes nearest the cut.
        accumulate_gradients: fills ``.grad`` for ``criterion="taylor"``.
        progress: wraps the sensitivity task list, e.g. ``tqdm``.
    """

    def __init__(self, graph: DependencyGraph, config: PruningConfig, communicator: Communicator, *,
                 probes: ShardedProbes, measured_choice: MeasuredAllocator, cost_tables: SharedCostTable,
                 evaluate: Callable[[], float | None],
                 remeasure: Callable[[], float] | None = None,
                 accumulate_gradients: Callable[[], None] | None = None,
                 progress: Callable[[Sequence[Any]], Iterable[Any]] | None = None) -> None:
        self.graph = graph
        self.config = config
        self.communicator = communicator
        self.probes = probes
        self.measured_choice = measured_choice
        self.cost_tables = cost_tables
        self.evaluate = evaluate
        self.remeasure = remeasure
        self.accumulate_gradients = accumulate_gradients
        self.progress = progress
        #: every group's width when the selector was made (or as restored): what ``max_total_rate`` is a share of
        self.original_sizes: dict[str, int] = {group.name: group.size for group in graph.groups}

    def candidates(self) -> list[Group]:
        """The prunable groups not ignored (nor pinned)."""
        return candidate_groups(self.graph, self.config.ignore)

    def max_removal(self, groups: Sequence[Group]) -> dict[str, int] | None:
        """Per group, the channels ``max_total_rate`` still lets go (of its width in :attr:`original_sizes`)."""
        rate = self.config.max_total_rate
        if rate >= 1.0:
            return None
        return {g.name: max(0, g.size - math.ceil((1.0 - rate) * self.original_sizes.get(g.name, g.size) - 1e-9))
                for g in groups}

    def for_step(self, budget: float, step: int, local_before: float | None,
                 metric_before: float | None) -> StepSelection:
        """Step ``step``'s selections of ``budget`` (see :class:`StepSelection`)."""
        return StepSelection(self, budget, step, local_before, metric_before)

    def select(self, budget: float, strategy: str, step: int, local_before: float | None,
               metric_before: float | None, allocation: str | None = None, reuse: list[Probe] | None = None
               ) -> Selection:
        """This step's plan, the sensitivity probes, the paper's picks and (``allocation="measured"``) what the
        candidates measured. ``allocation`` overrides the configured one; ``reuse``: probes an earlier selection of
        this step measured on the same model, used for the groups still candidates instead of probing again."""
        config, model = self.config, self.graph.model
        groups = self.candidates()
        generator = np.random.default_rng(config.seed + step)
        if config.criterion == "taylor":
            model.zero_grad(set_to_none=True)
            self.accumulate_gradients()
        try:
            scores, ranking = score_channels(groups, model, config.criterion, generator)
        finally:
            if config.criterion == "taylor":
                model.zero_grad(set_to_none=True)
        probes: list[Probe] = []
        cost = config.selection_cost
        table = self.cost_tables.current() if cost == "latency" or config.latency_budget else None
        latency = (lambda probe: table.removed_ms({probe.group: probe.removed})) if table is not None else None
        budget_cost = "latency" if config.latency_budget else config.cost_key

        def scored() -> list:
            if metric_before is None:
                raise ValueError("strategy 'sensitivity' needs `evaluate`: the validation metric its probes read")
            if config.mode == "max" and abs(metric_before) < 1e-3:
                warnings.warn(f"the monitored metric is {metric_before:.4g} before pruning step {step}: the "
                              "sensitivity probes cannot tell groups apart and the choice falls to cost alone; train "
                              "the model before pruning it, or use strategy='uniform'", UserWarning, stacklevel=2)
            scale = metric_before / local_before if local_before else 1.0
            if reuse:
                names = {group.name for group in groups}
                probes.extend(probe for probe in reuse if probe.group in names)
            else:
                probes.extend(self.probes.probe(groups, ranking, self.evaluate, scale, self.progress))
            result = score_probes(probes, metric_before, config.mode, config.exponent, latency)
            count = int(config.remeasure_fraction * len(probes))
            if self.remeasure is not None and count > 0:
                chosen = boundary_probes(result, config.params_layers, config.flops_layers, count,
                                         config.selection_cost)
                remeasured = self.probes.remeasure(chosen, ranking, self.remeasure, metric_before)
                refined = {(p.group, p.rate): p for p in remeasured}
                probes[:] = [refined.get((p.group, p.rate), p) for p in probes]
                result = score_probes(probes, metric_before, config.mode, config.exponent, latency)
            return result

        candidates = Candidates(self.graph, groups, scores, ranking)
        allocation = allocation or config.allocation
        rules = SelectionRules(strategy, cost, budget_cost, allocation, config.round_to, config.min_channels,
                               config.max_rate, self.max_removal(groups), params_layers=config.params_layers,
                               flops_layers=config.flops_layers)
        if allocation == "measured":
            if allocation_applies(strategy, cost, budget_cost):
                choice = self.measured_choice.choose(candidates, rules, budget, table)
                return choice.plan, probes, [], choice
            rules = dataclasses.replace(rules, allocation="threshold")
        counts, used = select_counts(candidates, rules, budget, scored=scored, cost_table=table)
        plan = self.communicator.broadcast(plan_from_counts(ranking, counts))
        return plan, probes, [item.probe.group for item in used], None

    def capacity(self) -> float:
        """What the candidate groups can give in one step at most, in the step budget's cost (the graph's estimate,
        or the cost table's predicted ms for a latency budget): each down to its minimum within ``max_rate`` and
        ``max_total_rate``. An upper bound: a cost table's fast widths are not considered. Read after a selection,
        which has built or updated the table."""
        config, groups = self.config, self.candidates()
        counts = max_counts(groups, config.round_to, config.min_channels, self.max_removal(groups), config.max_rate)
        plan = {name: list(range(count)) for name, count in counts.items() if count}
        if config.latency_budget:
            table = self.cost_tables.last
            return float(table.removed_ms(plan)) if table is not None else math.inf
        return self.graph.estimate_removal(plan)[1 if config.cost_key == "params" else 0]

    def check_reachable(self, steps: int, baseline: float, current: float) -> None:
        """Raise ``ValueError``, in one line, when no group is left to prune, or when ``steps`` steps that prune
        every candidate group to its minimum (within ``max_rate`` per step and ``max_total_rate``) cannot bring the
        target cost from ``current`` to the target share of ``baseline``."""
        config, groups = self.config, self.candidates()
        if not groups:
            raise ValueError("no prunable group is left to reach the target (all pinned or ignored); "
                             "see the graph summary for reasons")
        most = self.max_removal(groups)
        removable = max_removable(self.graph, groups, config.round_to, config.min_channels, most, config.max_rate,
                                  steps)
        reachable = (baseline - current + removable[1 if config.cost_key == "params" else 0]) / baseline
        if reachable < config.target:
            caps = [f"max_rate={config.max_rate:g} per step over {steps} step{'s' * (steps != 1)}"] \
                if config.max_rate < 1.0 else []
            caps += [f"max_total_rate={config.max_total_rate:g}"] if most is not None else []
            limit = f" within {' and '.join(caps)}" if caps else ""
            raise ValueError(f"target {config.target:.0%} of {config.target_metric} is unreachable: pruning every "
                             f"prunable group to its minimum{limit} removes at most {reachable:.0%}")

    def warn_short(self, step: int, budget: float, capacity: float, removed: float, scale: float,
                   what: str) -> None:
        """Warn, in one line, when step ``step`` removed less than its ``budget`` because its candidate groups could
        not give it (``capacity``), by more than :data:`SHORTFALL_TOLERANCE` of it; numbers as shares of ``scale``
        (``what``). Called by the pruner's step: the warning points at the step's caller."""
        if capacity >= budget or scale <= 0 or removed >= budget * (1.0 - SHORTFALL_TOLERANCE):
            return
        config = self.config
        causes = [f"max_rate={config.max_rate:g} per step"] if config.max_rate < 1.0 else []
        causes += [f"max_total_rate={config.max_total_rate:g}"] if config.max_total_rate < 1.0 else []
        pins = len(self.graph.verification_pins)
        causes += [f"{pins} group{'s' * (pins > 1)} pinned for breaking the model"] if pins else []
        why = f"; limited by {' and '.join(causes)}" if causes else \
            "; the candidate groups give no more (min_channels, round_to, pinned or ignored groups)"
        warnings.warn(f"pruning step {step} ends short of its budget: it removed {removed / scale:.1%} of the {what} "
                      f"instead of {budget / scale:.1%}, {(budget - removed) / scale:.1%} short{why}",
                      UserWarning, stacklevel=3)


@dataclass(eq=False)
class StepSelection:
    """One step's selections of ``budget`` with the configured strategy, in order: calling it selects on the model
    as it is now (reusing the last selection's probes: a plan that broke the model left it unchanged) and returns
    the plan; :attr:`capacity` is what the candidates could give at the last call."""

    selector: StepSelector
    budget: float
    step: int
    local_before: float | None
    metric_before: float | None
    #: every selection made, in order
    made: list[Selection] = field(default_factory=list)
    capacity: float = math.inf

    def __call__(self) -> Plan:
        """Select again and return the plan."""
        reuse = self.made[-1][1] if self.made else None  # the probes still hold: the model is unchanged
        selector = self.selector
        self.made.append(selector.select(self.budget, selector.config.strategy, self.step, self.local_before,
                                         self.metric_before, reuse=reuse))
        self.capacity = selector.capacity()
        return self.made[-1][0]

    @property
    def last(self) -> Selection:
        """The last selection (the plan pruned, when the step went through)."""
        return self.made[-1]

