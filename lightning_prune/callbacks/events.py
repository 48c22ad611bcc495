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
        plan: every channel removed in this step, per group name, in the group's indices before the step
            (latency corrections included).
        flops_before, flops_after, params_before, params_after: model cost around the prune.
        baseline_flops, baseline_params: cost of the unpruned model at fit start.
        metric_before, metric_after: the monitored metric around the prune (None when not measured).
        example_input: the input the pruning callback traces the model with (a tensor or a tuple).
        plans: the plans in the order they were applied (the strategy's, then any latency corrections).
        latency_before, latency_after: measured latency in ms (latency targets only).
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
    plans: list[dict[str, list[int]]] = field(default_factory=list, repr=False)
    latency_before: float | None = None
    latency_after: float | None = None

    @classmethod
    def from_result(cls, result: Any, example_input: Any = None) -> PruningStep:
        """The event for a :class:`~lightning_prune.pruning.StepResult`."""
        return cls(step=result.step, epoch=result.epoch, plan=result.plan, flops_before=result.flops_before,
                   flops_after=result.flops_after, params_before=result.params_before,
                   params_after=result.params_after, baseline_flops=int(result.baseline["flops"]),
                   baseline_params=int(result.baseline["params"]), metric_before=result.metric_before,
                   metric_after=result.metric_after, example_input=example_input, plans=list(result.plans),
                   latency_before=result.latency_before, latency_after=result.latency_after)


@runtime_checkable
class PruningListener(Protocol):
    """What a callback implements to hear about pruning steps."""

    def on_pruning_step(self, trainer: Any, pl_module: Any, step: PruningStep) -> None: ...


def notify_pruning_step(trainer: Any, pl_module: Any, step: PruningStep, sender: Any = None) -> None:
    """Call ``on_pruning_step`` on every callback of ``trainer`` that defines it (except ``sender``)."""
    for callback in getattr(trainer, "callbacks", []):
        if callback is not sender and isinstance(callback, PruningListener):
            callback.on_pruning_step(trainer, pl_module, step)
