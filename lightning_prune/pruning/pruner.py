"""The paper's iterative loop without Lightning: one call of :meth:`IterativePruner.step` is one
sensitivity → select → prune step; whatever trains the model between calls is the fine-tuning."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.profiling import count_flops, count_params, require_backend
from lightning_prune.pruning.communication import Communicator, LocalCommunicator
from lightning_prune.pruning.config import PruningConfig, configure
from lightning_prune.pruning.cost_table import CostTable, SharedCostTable
from lightning_prune.pruning.distill import Distiller
from lightning_prune.pruning.importance import channel_scores
from lightning_prune.pruning.latency_control import LatencyController
from lightning_prune.pruning.latency_reading import CorrectionLadder, LatencyReader
from lightning_prune.pruning.measured_choice import MeasuredAllocator
from lightning_prune.pruning.plan_applier import PlanApplier
from lightning_prune.pruning.result import StepResult, compose_plans
from lightning_prune.pruning.schedule import pending_epochs, step_budget
from lightning_prune.pruning.sensitivity import ShardedProbes
from lightning_prune.pruning.step_selection import StepSelector

__all__ = ["IterativePruner", "conv_widths"]

Copies = Iterable[tuple[nn.Module, str]]


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, in model order."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


class IterativePruner:
    r"""Iterative filter pruning (Pavlitska et al., 2024) for any training loop.

    The pruner keeps the state and the schedule and runs the step; its collaborators do the rest: a
    :class:`~lightning_prune.pruning.step_selection.StepSelector` (what a step removes), a
    :class:`~lightning_prune.pruning.plan_applier.PlanApplier` (the surgery), the latency
    :class:`~lightning_prune.pruning.latency_reading.LatencyReader` and :class:`~lightning_prune.pruning.
    latency_reading.CorrectionLadder`, the shared cost table, the measured choice and the sharded probes.

    Args:
        model: the model to prune in place (filters are physically removed).
        example_input: what ``model`` is called with to trace it and count FLOPs.
        config: a :class:`PruningConfig`; keyword arguments override its fields or groups (``schedule=[1, 3]``,
            ``limits=Limits(max_rate=0.5)``; see :func:`~lightning_prune.pruning.config.configure`), or build one.
        evaluate: returns the validation metric the sensitivity probes read (``config.mode`` says which way is
            better); required by ``strategy="sensitivity"``, optional otherwise (then ``metric_before/after``).
        remeasure: the same metric on other validation batches; the probes nearest the selection cut
            (``config.remeasure_fraction`` of them) are measured again with it, against one batch's noise.
        measure_latency: returns the model's latency in ms (latency targets only); default: the deployed form
            (a BatchNorm-folded eval copy) timed on ``config.latency_backend``, interleaved with the baseline's
            (:class:`~lightning_prune.pruning.latency_reading.LatencyReader`).
        cost_table: for ``cost="latency"``, a measured :class:`~lightning_prune.pruning.CostTable` of the model;
            default: built on first use and rebuilt incrementally after every prune (see :attr:`cost_table`).
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
                 evaluate: Callable[[], float] | None = None, remeasure: Callable[[], float] | None = None,
                 measure_latency: Callable[[], float] | None = None,
                 accumulate_gradients: Callable[[], None] | None = None, communicator: Communicator | None = None,
                 surgery_guard: Callable[[], contextlib.AbstractContextManager] | None = None,
                 progress: Callable[[Sequence[Any]], Iterable[Any]] | None = None, cost_table: Any = None,
                 distiller: Distiller | None = None, **overrides: Any) -> None:
        config = configure(config, where="IterativePruner", **overrides)
        self.config = config
        self.model = model
        self.example_input = example_input
        self.evaluate = evaluate
        self.communicator = communicator or LocalCommunicator()
        self.surgery_guard = surgery_guard or contextlib.nullcontext
        if distiller is not None and distiller.student[0] is not model:
            raise ValueError("the distiller was built for another model: Distiller(model, ...) with the model pruned")
        self.distiller = distiller
        self.graph = DependencyGraph(model, example_input,
                                     attachments=distiller.attachments() if distiller is not None else None)
        # the collaborators: latency readings and the correction ladder, the cost table, the measured choice, the
        # probes, the step's selection (which owns ``original_sizes``) and the surgery
        self.latency_reader = LatencyReader(model, example_input, config, self.communicator, measure_latency)
        self.correction_ladder = CorrectionLadder(self.latency_reader, self.graph, config, self.communicator)
        self.cost_tables = SharedCostTable(self.graph, config.latency_backend, config.cost_table_dir,
                                           self.communicator, cost_table)
        self.measured_choice = MeasuredAllocator(self.graph, example_input, config, self.communicator)
        self.probes = ShardedProbes(self.graph, self.communicator, config.sensitivity_rates, config.round_to,
                                    config.min_channels)
        self.selector = StepSelector(self.graph, config, self.communicator, probes=self.probes,
                                     measured_choice=self.measured_choice, cost_tables=self.cost_tables,
                                     evaluate=self._evaluate, remeasure=remeasure,
                                     accumulate_gradients=accumulate_gradients, progress=progress)
        self.applier = PlanApplier(self.graph, self.selector.candidates, self.surgery_guard)
        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, float] = {"flops": float(count_flops(model, example_input)),
                                           "params": float(count_params(model))}
        self.latency_efficiency = 1.0

    # -- state ----------------------------------------------------------------------------------------------------
    @property
    def original_sizes(self) -> dict[str, int]:
        """Every group's width when the pruner was made (or as restored): what ``max_total_rate`` is a share of."""
        return self.selector.original_sizes

    @original_sizes.setter
    def original_sizes(self, sizes: dict[str, int]) -> None:
        self.selector.original_sizes = sizes

    # what the selector calls, readable and settable here: one copy, the selector's
    remeasure = property(lambda self: self.selector.remeasure,
                         lambda self, fn: setattr(self.selector, "remeasure", fn),
                         doc="The metric on other validation batches, for the probes nearest the cut (or ``None``).")
    accumulate_gradients = property(lambda self: self.selector.accumulate_gradients,
                                    lambda self, fn: setattr(self.selector, "accumulate_gradients", fn),
                                    doc="Fills ``.grad`` for ``criterion='taylor'`` (or ``None``).")
    progress = property(lambda self: self.selector.progress,
                        lambda self, fn: setattr(self.selector, "progress", fn),
                        doc="Wraps the sensitivity task list, e.g. ``tqdm`` (or ``None``).")

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
        return self.selector.candidates()

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
        steps = len(self.pending()) + (config.latency_corrections if config.target_metric == "latency" else 0)
        self.selector.check_reachable(steps, self.baseline[config.cost_key], self._cost(config.cost_key))
        if callable(config.criterion):
            for group in self.candidates():
                channel_scores(group, self.model, config.criterion)
        if config.selection_cost == "latency" and self.cost_tables.last is None:
            require_backend(config.latency_backend)
        if config.target_metric == "latency" and "latency" not in self.baseline:
            self.baseline["latency"] = self.latency_reader.read(None, baseline=True)

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
            latency_before = self.latency_reader.read(self.baseline["latency"])
            goal = controller.step_goal(latency_before, remaining)
            controlled_before = self._controlled()
            budget = controller.flops_budget(controlled_before, latency_before, goal)
        else:
            cost_before = flops_before if config.cost_key == "flops" else params_before
            budget = step_budget(cost_before, self.baseline[config.cost_key], config.target, remaining)

        widths_before = conv_widths(self.model)
        sizes = {group.name: group.size for group in self.graph.groups}
        selection = self.selector.for_step(budget, step, local_before, metric_before)
        prune = functools.partial(self.applier.prune, step=step, optimizers=optimizers, copies=copies)
        plans = [prune(selection)]
        _, probes, picks, choice = selection.last
        latency_after = None
        if controller is not None:
            latency_after, controlled_after, corrections = self.correction_ladder.correct(
                controller, goal, (controlled_before, latency_before), step, final=remaining == 1,
                baseline_ms=self.baseline["latency"], controlled=self._controlled, selector=self.selector,
                prune=prune)
            plans += corrections
            self.latency_efficiency = controller.efficiency
            unit = "predicted latency" if config.latency_budget else "FLOPs"
            self.selector.warn_short(step, budget, selection.capacity, controlled_before - controlled_after,
                                     controlled_before, f"{unit} before the step")
        else:
            unit = "FLOPs" if config.cost_key == "flops" else "parameters"
            self.selector.warn_short(step, budget, selection.capacity, cost_before - self._cost(config.cost_key),
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

    def _cost(self, key: str) -> float:
        if key == "params":
            return float(count_params(self.model))
        return float(count_flops(self.model, self.example_input))

    def _controlled(self) -> float:
        """The cost the latency controller converts a latency goal into: predicted ms or FLOPs."""
        return float(self.cost_table.total_ms()) if self.config.latency_budget else self._cost("flops")

    def _evaluate(self) -> float | None:
        if self.evaluate is None:
            return None
        with torch.no_grad():
            return float(self.evaluate())
