"""The paper's iterative loop without Lightning: one call of :meth:`IterativePruner.step` is one
sensitivity → select → prune step; whatever trains the model between calls is the fine-tuning."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.profiling import count_flops, count_params, require_backend
from lightning_prune.pruning.averaged import mirror_all
from lightning_prune.pruning.communication import Communicator, LocalCommunicator
from lightning_prune.pruning.config import PruningConfig, configure
from lightning_prune.pruning.cost_table import CostTable, SharedCostTable
from lightning_prune.pruning.counts import plan_from_counts
from lightning_prune.pruning.distill import Distiller
from lightning_prune.pruning.grad_state import release_grad_accumulators
from lightning_prune.pruning.importance import channel_scores
from lightning_prune.pruning.latency_control import LatencyController
from lightning_prune.pruning.latency_reading import CorrectionLadder, LatencyReader
from lightning_prune.pruning.measured_choice import MeasuredAllocator, MeasuredChoice
from lightning_prune.pruning.optimizer_state import slice_optimizer_state
from lightning_prune.pruning.result import StepResult, compose_plans
from lightning_prune.pruning.schedule import pending_epochs, step_budget
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

__all__ = ["IterativePruner", "conv_widths"]

Copies = Iterable[tuple[nn.Module, str]]

#: a step whose candidate groups cannot give its whole budget (caps, pinned or ignored groups, ``min_channels``) warns
#: when it ends more than this share of the budget short. One that can is not judged: selection lands on whole
#: channels nearest the budget, so on small models it misses by a few per cent of it either way.
SHORTFALL_TOLERANCE = 0.01


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, in model order."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


class IterativePruner:
    r"""Iterative filter pruning (Pavlitska et al., 2024) for any training loop.

    Args:
        model: the model to prune in place (filters are physically removed).
        example_input: what ``model`` is called with to trace it and count FLOPs.
        config: a :class:`PruningConfig`; keyword arguments override its fields or groups (``schedule=[1, 3]``,
            ``limits=Limits(max_rate=0.5)``; see :func:`~lightning_prune.pruning.config.configure`), or build one.
        evaluate: returns the validation metric the sensitivity probes read (``config.mode`` says which way is
            better); required by ``strategy="sensitivity"``, optional otherwise (then ``metric_before/after``).
        remeasure: the same metric on other validation batches; the probes nearest the selection cut
            (``config.remeasure_fraction`` of them) are measured again with it, so that one batch's noise does not
            decide the picks.
        measure_latency: returns the model's latency in ms; default: :func:`lightning_prune.profiling.
            measure_latency` of the deployed form (:func:`~lightning_prune.profiling.deployed_copy`: a BatchNorm-
            folded eval copy) on ``config.latency_backend`` (latency targets only). The default keeps the deployed
            form of the model as it was at the baseline reading and times every later reading *interleaved* with it
            (the latency is the baseline times the measured ratio), so a machine that slows down or speeds up
            between steps does not move the controller's readings; after a resume, when that reference is gone,
            readings are single runs again.
        cost_table: for ``cost="latency"``, a measured :class:`~lightning_prune.pruning.CostTable` of the model
            (or anything with its ``removed_ms``, ``removal_options``, ``total_ms`` and ``updated(graph)``); default:
            built on first use on ``config.latency_backend`` (cached in ``config.cost_table_dir``) and rebuilt
            incrementally after every prune.
        accumulate_gradients: fills ``.grad`` of the parameters (a few training batches), for ``criterion="taylor"``.
        communicator: for several processes (:class:`~lightning_prune.pruning.communication.Communicator`);
            rank 0 decides, everyone prunes the same.
        surgery_guard: a context-manager factory entered around each surgery (e.g. to drop a DDP wrapper).
        progress: wraps the sensitivity task list, e.g. ``tqdm``.
        distiller: a :class:`~lightning_prune.pruning.Distiller` of ``model``: its projectors are traced with the
            model (graph attachments), so every prune slices their inputs too; put its parameters in the optimizer.

    Example — the whole method in a plain loop:

        >>> import torch
        >>> from torch import nn
        >>> from lightning_prune.pruning import IterativePruner
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        ...                     nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(16, 2))
        >>> x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 2, (64,))
        >>> accuracy = lambda: float((net(x).argmax(1) == y).float().mean())
        >>> pruner = IterativePruner(net, x[:1], schedule=[1, 2], target=0.5, evaluate=accuracy)
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        >>> for epoch in range(4):
        ...     if pruner.due(epoch):
        ...         result = pruner.step(epoch, optimizers=[optimizer])
        ...     loss = nn.functional.cross_entropy(net(x), y)
        ...     optimizer.zero_grad(); loss.backward(); optimizer.step()
        >>> len(pruner.history), round(result.flops_ratio, 1)
        (2, 0.5)

    With distillation from the model as it was before the first prune (its projectors follow every prune):

        >>> from lightning_prune.pruning import Distiller
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        ...                     nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(16, 2))
        >>> distiller = Distiller(net, x[:1], features=["4"], outputs="kl")   # teacher: a frozen copy of net
        >>> pruner = IterativePruner(net, x[:1], schedule=[1], target=0.5, strategy="uniform", distiller=distiller)
        >>> optimizer = torch.optim.SGD([*net.parameters(), *distiller.parameters()], lr=0.05, momentum=0.9)
        >>> for epoch in range(3):
        ...     if pruner.due(epoch):
        ...         result = pruner.step(epoch, optimizers=[optimizer])
        ...     out, kd = distiller(x)                    # the student's output and the distillation loss
        ...     loss = nn.functional.cross_entropy(out, y) + kd
        ...     optimizer.zero_grad(); loss.backward(); optimizer.step()
        >>> distiller.projectors[0].in_channels == net[3].out_channels < 16   # the projector follows the prune
        True

    A ``loss`` kept alive across a step is fine: the pruned parameters' gradient accumulators are released
    (:func:`~lightning_prune.pruning.grad_state.release_grad_accumulators`).
    """

    def __init__(self, model: nn.Module, example_input: Any, config: PruningConfig | None = None, *,
                 evaluate: Callable[[], float] | None = None,
                 remeasure: Callable[[], float] | None = None,
                 measure_latency: Callable[[], float] | None = None,
                 accumulate_gradients: Callable[[], None] | None = None,
                 communicator: Communicator | None = None,
                 surgery_guard: Callable[[], contextlib.AbstractContextManager] | None = None,
                 progress: Callable[[Sequence[Any]], Iterable[Any]] | None = None,
                 cost_table: Any = None,
                 distiller: Distiller | None = None,
                 **overrides: Any) -> None:
        config = configure(config, where="IterativePruner", **overrides)
        self.config = config
        self.model = model
        self.example_input = example_input
        self.evaluate = evaluate
        self.remeasure = remeasure
        self.accumulate_gradients = accumulate_gradients
        self.communicator = communicator or LocalCommunicator()
        self.surgery_guard = surgery_guard or contextlib.nullcontext
        self.progress = progress
        if distiller is not None and distiller.student[0] is not model:
            raise ValueError("the distiller was built for another model: Distiller(model, ...) with the model pruned")
        self.distiller = distiller
        self.graph = DependencyGraph(model, example_input,
                                     attachments=distiller.attachments() if distiller is not None else None)
        # the collaborators: latency readings and the correction ladder, the cost table, the measured choice, probes
        self.latency_reader = LatencyReader(model, example_input, config, self.communicator, measure_latency)
        self.correction_ladder = CorrectionLadder(self.latency_reader, self.graph, config, self.communicator)
        self.cost_tables = SharedCostTable(self.graph, config.latency_backend, config.cost_table_dir,
                                           self.communicator, cost_table)
        self.measured_choice = MeasuredAllocator(self.graph, example_input, config, self.communicator)
        self.probes = ShardedProbes(self.graph, self.communicator, config.sensitivity_rates, config.round_to,
                                    config.min_channels)
        self.original_sizes = {group.name: group.size for group in self.graph.groups}  # for max_total_rate
        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, float] = {"flops": float(count_flops(model, example_input)),
                                           "params": float(count_params(model))}
        self.latency_efficiency = 1.0

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data: the history (one entry per applied plan), the baseline costs, the learned efficiency."""
        return {"history": list(self.history), "baseline": dict(self.baseline),
                "latency_efficiency": self.latency_efficiency, "original_sizes": dict(self.original_sizes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. The model must already have the recorded architecture
        (replay the history with :func:`lightning_prune.checkpoint.replay_history` first)."""
        self.history = list(state_dict.get("history", []))
        self.baseline = {**self.baseline, **dict(state_dict.get("baseline", {}))}
        self.latency_efficiency = float(state_dict.get("latency_efficiency", 1.0))
        self.original_sizes = {**self.original_sizes, **dict(state_dict.get("original_sizes", {}))}

    # -- schedule -------------------------------------------------------------------------------------------------
    @property
    def done_epochs(self) -> list[int]:
        return sorted({entry["epoch"] for entry in self.history if entry.get("epoch") is not None})

    @property
    def steps_done(self) -> int:
        return len({entry["step"] for entry in self.history})

    def pending(self, epoch: int | None = None) -> list[int]:
        """Scheduled epochs still to prune at (from ``epoch`` on, when given)."""
        return pending_epochs(self.config.schedule, self.done_epochs, epoch)

    def due(self, epoch: int) -> bool:
        """Whether a step is scheduled at ``epoch`` and has not run."""
        return epoch in self.pending()

    @property
    def finished(self) -> bool:
        return not self.pending()

    # -- checks ---------------------------------------------------------------------------------------------------
    def candidates(self) -> list[Group]:
        return candidate_groups(self.graph, self.config.ignore)

    def check(self) -> None:
        """Fail now, with one line, on what would fail at the first step: no evaluation for the sensitivity
        strategy, no gradients for ``taylor``, a NaN or an infinity in a weight or the output
        (:meth:`~lightning_prune.graph.DependencyGraph.check_finite`), a target the prunable channels cannot reach
        (within ``max_rate`` per step over the steps left and ``max_total_rate``), a custom criterion that returns
        the wrong number of scores. Measures the latency baseline for a latency target."""
        config = self.config
        if self.finished:
            return
        self.graph.check_finite()
        if config.strategy == "sensitivity" and self.evaluate is None:
            raise ValueError("strategy 'sensitivity' needs `evaluate`: the validation metric its probes read")
        if config.criterion == "taylor" and self.accumulate_gradients is None:
            raise ValueError("criterion 'taylor' needs `accumulate_gradients`: something that fills the gradients")
        groups = self.candidates()
        if not groups:
            raise ValueError("no prunable group is left to reach the target (all pinned or ignored); "
                             "see the graph summary for reasons")
        most = self._max_removal(groups)
        steps = len(self.pending()) + (config.latency_corrections if config.target_metric == "latency" else 0)
        removable = max_removable(self.graph, groups, config.round_to, config.min_channels, most, config.max_rate,
                                  steps)
        key = config.cost_key
        baseline = self.baseline[key]
        reachable = (baseline - self._cost(key) + removable[1 if key == "params" else 0]) / baseline
        if reachable < config.target:
            caps = [f"max_rate={config.max_rate:g} per step over {steps} step{'s' * (steps != 1)}"] \
                if config.max_rate < 1.0 else []
            caps += [f"max_total_rate={config.max_total_rate:g}"] if most is not None else []
            limit = f" within {' and '.join(caps)}" if caps else ""
            raise ValueError(f"target {config.target:.0%} of {config.target_metric} is unreachable: pruning every "
                             f"prunable group to its minimum{limit} removes at most {reachable:.0%}")
        if callable(config.criterion):
            for group in groups:
                channel_scores(group, self.model, config.criterion)
        if config.selection_cost == "latency" and self.cost_tables.last is None:
            require_backend(config.latency_backend)
        if config.target_metric == "latency" and "latency" not in self.baseline:
            self.baseline["latency"] = self.latency_reader.read(None, baseline=True)

    @property
    def cost_table(self) -> Any:
        """The measured latency table of the current architecture (``cost="latency"``): built on first use,
        rebuilt incrementally (only the changed layers) after a prune. With several processes only rank 0 measures;
        the others get its table."""
        return self.cost_tables.current()

    @property
    def last_cost_table(self) -> CostTable | None:
        """The latency table as last built or updated (``None`` before the first use), read without measuring
        anything — e.g. to record what a finished run measured.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
            >>> IterativePruner(net, torch.randn(1, 3, 16, 16), cost="latency").last_cost_table is None
            True
        """
        return self.cost_tables.last

    def _controlled(self) -> float:
        """The cost the latency controller converts a latency goal into: predicted ms or FLOPs."""
        return float(self.cost_table.total_ms()) if self.config.latency_budget else self._cost("flops")

    # -- the step -------------------------------------------------------------------------------------------------
    def step(self, epoch: int | None = None, *, optimizers: Iterable[torch.optim.Optimizer] = (),
             copies: Copies = ()) -> StepResult:
        """Run one pruning step: spread the remaining budget, select with the strategy, prune the model, slice
        ``optimizers``' state and prune every averaged ``(copy, prefix)`` alike. ``epoch`` defaults to the next
        scheduled one.

        A NaN or an infinity in a weight or the output raises ``ValueError`` naming it before anything runs. A plan
        that breaks the model leaves it unchanged and pins the groups to blame
        (:meth:`~lightning_prune.graph.DependencyGraph.prune`); the step then warns naming them and selects again
        without them, for the same budget. A step that ends short of its budget (caps, pinned groups) warns how far.
        """
        config, comm = self.config, self.communicator
        optimizers, copies = list(optimizers), list(copies)
        self.graph.check_finite()
        if config.target_metric == "latency" and "latency" not in self.baseline:
            self.baseline["latency"] = self.latency_reader.read(None, baseline=True)
        pending = self.pending(epoch)
        if epoch is None and pending:
            epoch = pending[0]
        remaining = max(len(pending), 1)
        step = self.steps_done + 1
        flops_before, params_before = count_flops(self.model, self.example_input), count_params(self.model)
        local_before = self._evaluate()
        metric_before = comm.broadcast(local_before)

        latency_before = controller = None
        if config.target_metric == "latency":
            controller = LatencyController(self.baseline["latency"], config.target, config.latency_tolerance,
                                           self.latency_efficiency)
            latency_before = self._latency()
            goal = controller.step_goal(latency_before, remaining)
            controlled_before = self._controlled()
            budget = controller.flops_budget(controlled_before, latency_before, goal)
        else:
            cost_before = flops_before if config.cost_key == "flops" else params_before
            budget = step_budget(cost_before, self.baseline[config.cost_key], config.target, remaining)

        widths_before = conv_widths(self.model)
        sizes = {group.name: group.size for group in self.graph.groups}
        selections: list[tuple[dict[str, list[int]], list[Probe], list[str], MeasuredChoice | None]] = []
        capacity = [math.inf]

        def select() -> dict[str, list[int]]:
            reuse = selections[-1][1] if selections else None  # the probes still hold: the model is unchanged
            selections.append(self._select(budget, config.strategy, step, local_before, metric_before, reuse=reuse))
            capacity[0] = self._capacity()
            return selections[-1][0]

        plan = self._prune_selected(select, step, optimizers, copies)
        _, probes, picks, choice = selections[-1]
        plans = [plan]
        latency_after = None
        if controller is not None:
            latency_after, controlled_after = self._correct_latency(
                controller, goal, controlled_before, latency_before, step, final=remaining == 1, plans=plans,
                optimizers=optimizers, copies=copies)
            self.latency_efficiency = controller.efficiency
            unit = "predicted latency" if config.latency_budget else "FLOPs"
            self._warn_short(step, budget, capacity[0], controlled_before - controlled_after, controlled_before,
                             f"{unit} before the step")
        else:
            unit = "FLOPs" if config.cost_key == "flops" else "parameters"
            self._warn_short(step, budget, capacity[0], cost_before - self._cost(config.cost_key),
                             self.baseline[config.cost_key], f"baseline {unit}")

        result = StepResult(
            step=step, epoch=epoch, plan=compose_plans(plans, sizes), plans=plans,
            flops_before=int(flops_before), flops_after=int(count_flops(self.model, self.example_input)),
            params_before=int(params_before), params_after=int(count_params(self.model)),
            baseline=dict(self.baseline), metric_before=metric_before, metric_after=comm.broadcast(self._evaluate()),
            latency_before=latency_before, latency_after=latency_after, probes=probes, picks=picks,
            widths_before=widths_before, widths_after=conv_widths(self.model),
            allocation=choice.name if choice is not None else None,
            candidates_ms=dict(choice.ms) if choice is not None else {},
        )
        self.history.extend(result.history_entries())
        return result

    def _prune_selected(self, select: Callable[[], dict[str, list[int]]], step: int,
                        optimizers: list[torch.optim.Optimizer], copies: list) -> dict[str, list[int]]:
        """Prune the plan ``select`` returns and return it. A plan that breaks the model leaves it unchanged and pins
        its culprit groups (:meth:`~lightning_prune.graph.DependencyGraph.prune`): then warn naming them and select
        again, now without them. Every failure pins at least one more candidate group, so this ends after at most
        as many retries as there were candidates (the last selection has none left: an empty plan)."""
        retries = len(self.candidates())
        for _ in range(retries + 1):
            plan = select()
            pinned = set(self.graph.verification_pins)
            try:
                self._apply(plan, optimizers, copies)
                return plan
            except ValueError:
                culprits = sorted(set(self.graph.verification_pins) - pinned)
                if not culprits:
                    raise
                reason = self.graph.verification_pins[culprits[0]]
                warnings.warn(f"pruning step {step}: group{'s' * (len(culprits) > 1)} "
                              f"{', '.join(repr(name) for name in culprits)} pinned ({reason}); the model is "
                              f"unchanged and the step selects again without {'them' if len(culprits) > 1 else 'it'}",
                              UserWarning, stacklevel=3)
        raise RuntimeError(f"pruning step {step}: the plan still breaks the model after {retries} re-selections")

    def _capacity(self) -> float:
        """What the candidate groups can give in one step at most, in the step budget's cost (the graph's estimate,
        or the cost table's predicted ms for a latency budget): each down to its minimum within ``max_rate`` and
        ``max_total_rate``. An upper bound: a cost table's fast widths are not considered. Read after a selection,
        which has built or updated the table."""
        config, groups = self.config, self.candidates()
        counts = max_counts(groups, config.round_to, config.min_channels, self._max_removal(groups), config.max_rate)
        plan = {name: list(range(count)) for name, count in counts.items() if count}
        if config.latency_budget:
            table = self.cost_tables.last
            return float(table.removed_ms(plan)) if table is not None else math.inf
        return self.graph.estimate_removal(plan)[1 if config.cost_key == "params" else 0]

    def _warn_short(self, step: int, budget: float, capacity: float, removed: float, scale: float,
                    what: str) -> None:
        """Warn, in one line, when step ``step`` removed less than its ``budget`` because its candidate groups could
        not give it (``capacity``), by more than :data:`SHORTFALL_TOLERANCE` of it; numbers as shares of ``scale``
        (``what``)."""
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

    def _cost(self, key: str) -> float:
        if key == "params":
            return float(count_params(self.model))
        return float(count_flops(self.model, self.example_input))

    def _evaluate(self) -> float | None:
        if self.evaluate is None:
            return None
        with torch.no_grad():
            return float(self.evaluate())

    def _latency(self) -> float:
        """A latency reading after the baseline, the same on every rank (:class:`~lightning_prune.pruning.
        latency_reading.LatencyReader`)."""
        return self.latency_reader.read(self.baseline.get("latency"))

    def _select(self, budget: float, strategy: str, step: int, local_before: float | None,
                metric_before: float | None, allocation: str | None = None, reuse: list[Probe] | None = None
                ) -> tuple[dict[str, list[int]], list[Probe], list[str], MeasuredChoice | None]:
        """This step's plan, the sensitivity probes, the paper's picks and (``allocation="measured"``) what the
        candidates measured. ``allocation`` overrides the configured one; ``reuse``: probes an earlier selection of
        this step measured on the same model, used for the groups still candidates instead of probing again."""
        config = self.config
        groups = self.candidates()
        generator = np.random.default_rng(config.seed + step)
        if config.criterion == "taylor":
            self.model.zero_grad(set_to_none=True)
            self.accumulate_gradients()
        try:
            scores, ranking = score_channels(groups, self.model, config.criterion, generator)
        finally:
            if config.criterion == "taylor":
                self.model.zero_grad(set_to_none=True)
        probes: list[Probe] = []
        cost = config.selection_cost
        table = self.cost_table if cost == "latency" or config.latency_budget else None
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
                probes.extend(self.probes.probe(groups, ranking, self._evaluate, scale, self.progress))
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
                               config.max_rate, self._max_removal(groups), params_layers=config.params_layers,
                               flops_layers=config.flops_layers)
        if allocation == "measured":
            if allocation_applies(strategy, cost, budget_cost):
                choice = self.measured_choice.choose(candidates, rules, budget, table)
                return choice.plan, probes, [], choice
            rules = dataclasses.replace(rules, allocation="threshold")
        counts, used = select_counts(candidates, rules, budget, scored=scored, cost_table=table)
        plan = self.communicator.broadcast(plan_from_counts(ranking, counts))
        return plan, probes, [item.probe.group for item in used], None

    def _max_removal(self, groups: list[Group]) -> dict[str, int] | None:
        """Per group, the channels ``max_total_rate`` still lets go (of its width when the pruner was made)."""
        rate = self.config.max_total_rate
        if rate >= 1.0:
            return None
        return {g.name: max(0, g.size - math.ceil((1.0 - rate) * self.original_sizes.get(g.name, g.size) - 1e-9))
                for g in groups}

    def _apply(self, plan: dict[str, list[int]], optimizers: list[torch.optim.Optimizer], copies: list) -> None:
        if not plan:
            return
        with self.surgery_guard():
            result = self.graph.prune(plan)
            # inside the guard: a DDP wrapper made after it hooks the fresh accumulators, not the released ones
            release_grad_accumulators(change.tensor for change in result.changes)
        slice_optimizer_state(optimizers, result.changes)
        mirror_all(copies, result, self.model, self.graph.attachments)

    def _correct_latency(self, controller: LatencyController, goal: float, flops_before: float,
                         latency_before: float, step: int, final: bool, plans: list, optimizers: list,
                         copies: list) -> tuple[float, float]:
        """Measure after the prune, learn the efficiency, and on the final step prune more (a cheap importance-
        based re-selection) until the measured latency meets the goal. Every decision reads broadcast numbers.
        (``flops_before``: the controlled cost, predicted ms for a latency budget.) Returns the latency and the
        controlled cost at the end."""
        flops_now, latency_now = self._controlled(), self._latency()
        controller.observe(flops_before, latency_before, flops_now, latency_now)
        for _ in range(self.config.latency_corrections if final else 0):
            if not controller.needs_correction(latency_now, goal):
                break
            strategy = "global" if self.config.strategy == "sensitivity" else self.config.strategy
            budget = controller.flops_budget(flops_now, latency_now, goal, cap=0.25)
            plan = self._prune_selected(functools.partial(self._correction, budget, goal, strategy, step), step,
                                        optimizers, copies)
            if not plan:
                break
            plans.append(plan)
            flops_before, latency_before = flops_now, latency_now
            flops_now, latency_now = self._controlled(), self._latency()
            controller.observe(flops_before, latency_before, flops_now, latency_now)
        return latency_now, flops_now

    def _correction(self, budget: float, goal: float, strategy: str, step: int) -> dict[str, list[int]]:
        """One correction's plan, from the ladder (:class:`~lightning_prune.pruning.latency_reading.
        CorrectionLadder`)."""
        return self.correction_ladder.plan(
            budget, goal, self.baseline["latency"],
            lambda amount, allocation: self._select(amount, strategy, step, None, None, allocation)[0])
