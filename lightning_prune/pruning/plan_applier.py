"""Pruning a selected plan out of the model, for :class:`~lightning_prune.pruning.IterativePruner`.

:class:`PlanApplier` prunes the graph inside the pruner's surgery guard, releases the pruned parameters' gradient
accumulators, slices the optimizers' state and prunes every averaged copy alike. A plan that breaks the model leaves
it unchanged and pins its culprit groups (:meth:`~lightning_prune.graph.DependencyGraph.prune`): the applier then
warns naming them and asks for a new selection, now without them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.pruning.averaged import mirror_all
from lightning_prune.pruning.grad_state import release_grad_accumulators
from lightning_prune.pruning.optimizer_state import slice_optimizer_state

__all__ = ["PlanApplier"]

Plan = dict[str, list[int]]


class PlanApplier:
    """Applies plans to ``graph``'s model (see the module docstring).

    Args:
        graph: the model's dependency graph; its ``prune`` does the surgery.
        candidates: the groups a selection may still choose from (how many retries a step can need).
        surgery_guard: a context-manager factory entered around each surgery (e.g. to drop a DDP wrapper).
    """

    def __init__(self, graph: DependencyGraph, candidates: Callable[[], Sequence[Group]],
                 surgery_guard: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.graph = graph
        self.candidates = candidates
        self.surgery_guard = surgery_guard

    def prune(self, select: Callable[[], Plan], step: int, optimizers: Sequence[torch.optim.Optimizer] = (),
              copies: Iterable[tuple[nn.Module, str]] = ()) -> Plan:
        """Prune the plan ``select`` returns and return it. A plan that breaks the model leaves it unchanged and pins
        its culprit groups: then warn naming them (pointing at the caller's caller: the step's caller) and select
        again, now without them. Every failure pins at least one more candidate group, so this ends after at most
        as many retries as there were candidates (the last selection has none left: an empty plan)."""
        copies = list(copies)
        retries = len(self.candidates())
        for _ in range(retries + 1):
            plan = select()
            pinned = set(self.graph.verification_pins)
            try:
                self.apply(plan, optimizers, copies)
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

    def apply(self, plan: Plan, optimizers: Sequence[torch.optim.Optimizer] = (),
              copies: Iterable[tuple[nn.Module, str]] = ()) -> None:
        """Prune ``plan`` out of the model, the optimizers' state and every averaged ``(copy, prefix)``; an empty
        plan changes nothing."""
        if not plan:
            return
        with self.surgery_guard():
            result = self.graph.prune(plan)
            # inside the guard: a DDP wrapper made after it hooks the fresh accumulators, not the released ones
            release_grad_accumulators(change.tensor for change in result.changes)
        slice_optimizer_state(optimizers, result.changes)
        mirror_all(copies, result, self.graph.model, self.graph.attachments)
