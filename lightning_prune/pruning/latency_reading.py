"""Reading the model's latency while it is pruned, and the latency correction ladder.

:class:`LatencyReader` gives every process the same reading (rank 0 measures, the others get its number): a user's
``measure_latency`` as it is, or the deployed form of the model (:func:`~lightning_prune.profiling.deployed_copy`: a
BatchNorm-folded eval copy) timed on the configured backend. The baseline reading keeps that form as the reference
and every later reading times the model *interleaved* with it (the latency is the baseline times the measured
ratio), so a machine that slows down or speeds up between steps does not move the readings; after a resume, when
the reference is gone, readings are single runs again.

:class:`CorrectionLadder` picks a latency correction's plan: the plans for several multiples of the budget the
learned efficiency asks for (:data:`CORRECTION_SCALES`) are timed against the reference and the least pruning that
meets the goal wins, so a misjudged efficiency costs a step of the ladder, not an overshoot that pruning cannot take
back. :meth:`CorrectionLadder.correct` runs a step's corrections: after the prune it measures, teaches the
:class:`~lightning_prune.pruning.latency_control.LatencyController` the efficiency, and on the final step prunes more,
one ladder plan at a time, until the measured latency meets the goal.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from lightning_prune.graph import DependencyGraph
from lightning_prune.profiling import compare_latency, deployed_copy, measure_latency
from lightning_prune.pruning.communication import Communicator
from lightning_prune.pruning.config import PruningConfig
from lightning_prune.pruning.latency_control import LatencyController
from lightning_prune.pruning.measured_choice import time_plans
from lightning_prune.pruning.step_selection import StepSelector

__all__ = ["CORRECTION_SCALES", "CorrectionLadder", "LatencyReader"]

#: A latency correction's candidate budgets, as multiples of what the learned efficiency asks for: all are timed
#: against the unpruned model and the smallest that meets the goal is kept.
CORRECTION_SCALES = (0.5, 0.75, 1.0, 1.5)

Plan = dict[str, list[int]]


class LatencyReader:
    """The latency of ``model`` in ms, the same number on every rank of ``communicator`` (see the module docstring).

    Args:
        model, example_input: what is timed, and with what.
        config: ``latency_backend`` and ``latency_repeats`` say where and how long.
        communicator: rank 0 measures, the others get its reading.
        measure: a user's reading of the model (then no reference is kept and nothing is timed here).
    """

    def __init__(self, model: nn.Module, example_input: Any, config: PruningConfig, communicator: Communicator,
                 measure: Callable[[], float] | None = None) -> None:
        self.model = model
        self.example_input = example_input
        self.config = config
        self.communicator = communicator
        self.measure = measure
        #: the deployed baseline model later readings are timed against (``None`` before the baseline reading)
        self.reference: nn.Module | None = None

    @property
    def interleaved(self) -> bool:
        """Whether readings are this reader's own, timed against the baseline's reference."""
        return self.measure is None and self.reference is not None

    def read(self, baseline_ms: float | None, *, baseline: bool = False) -> float:
        """A reading, the same on every rank. ``baseline=True`` takes the baseline (and keeps the reference);
        otherwise ``baseline_ms`` (the recorded baseline reading) scales the ratio to the reference."""
        comm = self.communicator
        value = None
        if comm.rank == 0:
            value = float(self.measure()) if self.measure is not None else self._measured(baseline_ms, baseline)
        return float(comm.broadcast(value))

    def _measured(self, baseline_ms: float | None, baseline: bool) -> float:
        config, current = self.config, deployed_copy(self.model)
        if baseline or self.reference is None or baseline_ms is None:
            if baseline:
                self.reference = current
            return measure_latency(current, self.example_input, config.latency_backend,
                                   repeats=config.latency_repeats, num_threads=1).median_ms
        rounds = min(5, config.latency_repeats)
        timed = compare_latency({"reference": self.reference, "current": current}, self.example_input,
                                config.latency_backend, rounds=rounds, warmup=2,
                                repeats=max(1, -(-config.latency_repeats // rounds)), num_threads=1)
        return baseline_ms * timed["current"].median_ms / timed["reference"].median_ms


@dataclass(eq=False)
class CorrectionLadder:
    """One latency correction's plan (see the module docstring), the same on every rank: rank 0 times the rungs
    against ``reader``'s reference."""

    reader: LatencyReader
    graph: DependencyGraph
    config: PruningConfig
    communicator: Communicator

    def plan(self, budget: float, goal: float, baseline_ms: float,
             select: Callable[[float, str | None], Plan]) -> Plan:
        """The plan of one correction of ``budget`` towards ``goal`` (ms). ``select(budget, allocation)`` selects
        for a budget (``allocation=None``: the configured one).

        With the reader's own (interleaved) readings, the plans for every :data:`CORRECTION_SCALES` multiple of
        ``budget`` are timed against the reference (interleaved, on rank 0) and the least pruning whose latency
        meets the goal within half the tolerance wins (the fastest, when none does); with a user's
        ``measure_latency``, which reads only the model itself, the plan for ``budget``."""
        config, comm = self.config, self.communicator
        allocation = "threshold" if config.allocation == "measured" else None
        if not self.reader.interleaved:
            return select(budget, None)
        candidates: dict[str, Plan] = {}
        for scale in CORRECTION_SCALES:
            plan = select(budget * scale, allocation)
            if plan and plan not in candidates.values():
                candidates[f"x{scale:g}"] = plan
        if len(candidates) < 2:
            return next(iter(candidates.values()), {})
        name = None
        if comm.rank == 0:
            rounds = min(5, config.latency_repeats)
            times = time_plans(self.graph, candidates, self.reader.example_input, config.latency_backend,
                               others={"reference": self.reader.reference}, rounds=rounds, warmup=2,
                               repeats=max(1, -(-config.latency_repeats // rounds)), num_threads=1)
            reference = statistics.median(times["reference"])
            ms = {key: baseline_ms * statistics.median(times[key]) / reference for key in candidates}
            bound = goal * (1.0 + config.latency_tolerance / 2)  # half the tolerance: a margin for the noise
            meeting = [key for key in candidates if ms[key] <= bound]
            name = meeting[0] if meeting else min(candidates, key=lambda key: ms[key])
        return candidates[comm.broadcast(name)]

    def correct(self, controller: LatencyController, goal: float, before: tuple[float, float], step: int, *,
                final: bool, baseline_ms: float, controlled: Callable[[], float], selector: StepSelector,
                prune: Callable[[Callable[[], Plan]], Plan]) -> tuple[float, float, list[Plan]]:
        """Step ``step``'s latency corrections, after its prune: measure, teach ``controller`` the efficiency, and on
        the final step (``final``) prune more (a cheap importance-based re-selection by ``selector``, each plan from
        :meth:`plan`) until the measured latency meets ``goal`` (ms), at most ``config.latency_corrections`` times.
        Every decision reads broadcast numbers.

        ``before``: the controlled cost (what ``controlled()`` reads: predicted ms for a latency budget, else FLOPs)
        and the latency before the step; ``baseline_ms``: the recorded baseline reading; ``prune(select)`` prunes
        the plan ``select()`` returns and returns it. Returns the latency and the controlled cost at the end, and the
        corrections' plans."""
        config = self.config
        controlled_before, latency_before = before
        controlled_now, latency_now = controlled(), self.reader.read(baseline_ms)
        controller.observe(controlled_before, latency_before, controlled_now, latency_now)
        strategy = "global" if config.strategy == "sensitivity" else config.strategy

        def select(amount: float, allocation: str | None) -> Plan:
            return selector.select(amount, strategy, step, None, None, allocation)[0]

        plans: list[Plan] = []
        for _ in range(config.latency_corrections if final else 0):
            if not controller.needs_correction(latency_now, goal):
                break
            budget = controller.flops_budget(controlled_now, latency_now, goal, cap=0.25)
            plan = prune(functools.partial(self.plan, budget, goal, baseline_ms, select))
            if not plan:
                break
            plans.append(plan)
            controlled_before, latency_before = controlled_now, latency_now
            controlled_now, latency_now = controlled(), self.reader.read(baseline_ms)
            controller.observe(controlled_before, latency_before, controlled_now, latency_now)
        return latency_now, controlled_now, plans
