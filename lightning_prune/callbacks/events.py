"""The event :class:`~lightning_prune.callbacks.IterativePruningCallback` announces after every pruning step.

Any callback in ``trainer.callbacks`` that defines ``on_pruning_step(trainer, pl_module, step)`` is called with a
:class:`PruningStep` right after the model was pruned (on every rank, after the architecture is final for that
step). This is how :class:`~lightning_prune.callbacks.LatencyProfiler` measures after each prune without reaching
into the pruning callback's internals.

Example:
    >>> import lightning.pytorch as pl
    >>> class PrintSteps(pl.Callback):
    ...     def on_pruning_step(self, trainer, pl_module, step):
    ...         print(f"step {step.step}: {step.flops_after / step.flops_before:.0%} of FLOPs left")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["PruningListener", "PruningStep", "notify_pruning_step"]


@dataclass(frozen=True)
class PruningStep:
    """One completed pruning step.

    Attributes:
        step: 1-based index of the step in the schedule.
        epoch: the epoch at whose start it ran.
        plan: channels removed per group name.
        flops_before, flops_after, params_before, params_after: model cost around the prune.
        baseline_flops, baseline_params: cost of the unpruned model at fit start.
        metric_before, metric_after: the monitored metric around the prune (None when not measured).
        example_input: the input the pruning callback traces the model with (a tensor or a tuple).
    """

    step: int
    epoch: int
    plan: dict[str, list[int]]
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    baseline_flops: int
    baseline_params: int
    metric_before: float | None = None
    metric_after: float | None = None
    example_input: Any = field(default=None, repr=False)


@runtime_checkable
class PruningListener(Protocol):
    """What a callback implements to hear about pruning steps."""

    def on_pruning_step(self, trainer: Any, pl_module: Any, step: PruningStep) -> None: ...


def notify_pruning_step(trainer: Any, pl_module: Any, step: PruningStep, sender: Any = None) -> None:
    """Call ``on_pruning_step`` on every callback of ``trainer`` that defines it (except ``sender``)."""
    for callback in getattr(trainer, "callbacks", []):
        if callback is not sender and isinstance(callback, PruningListener):
            callback.on_pruning_step(trainer, pl_module, step)
