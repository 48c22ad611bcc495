"""The Lightning-free core of the iterative method: configuration, schedule and budgets, selection, the loop, and
keeping optimizer state and averaged copies in step with the pruned model.

:class:`IterativePruner` is to :class:`~lightning_prune.callbacks.IterativePruningCallback` what a torchmetrics
functional is to its class: the same computation, callable from any training loop (plain PyTorch, ultralytics'
trainer, Lightning).
"""

from lightning_prune.pruning.averaged import declared_copies, mirror_all, mirror_prune
from lightning_prune.pruning.communication import Communicator, LocalCommunicator, TorchDistributedCommunicator
from lightning_prune.pruning.config import CriterionName, LatencyBackend, Mode, PruningConfig, Strategy, TargetMetric
from lightning_prune.pruning.cost_table import CostTable, build_cost_table
from lightning_prune.pruning.distill import (
    DistillationConfig,
    Distiller,
    declared_attachments,
    distill_step,
    distillation_loss,
)
from lightning_prune.pruning.grad_state import release_grad_accumulators
from lightning_prune.pruning.latency_control import LatencyController
from lightning_prune.pruning.measured_choice import MeasuredChoice, fastest_plan, time_plans
from lightning_prune.pruning.optimizer_state import slice_optimizer_state
from lightning_prune.pruning.pruner import IterativePruner, conv_widths
from lightning_prune.pruning.result import StepResult, compose_plans
from lightning_prune.pruning.schedule import parse_schedule, pending_epochs, step_budget

__all__ = [
    "Communicator",
    "CostTable",
    "CriterionName",
    "DistillationConfig",
    "Distiller",
    "IterativePruner",
    "LatencyBackend",
    "LatencyController",
    "LocalCommunicator",
    "MeasuredChoice",
    "Mode",
    "PruningConfig",
    "StepResult",
    "Strategy",
    "TargetMetric",
    "TorchDistributedCommunicator",
    "build_cost_table",
    "compose_plans",
    "declared_copies",
    "declared_attachments",
    "distill_step",
    "distillation_loss",
    "fastest_plan",
    "conv_widths",
    "mirror_all",
    "mirror_prune",
    "parse_schedule",
    "pending_epochs",
    "release_grad_accumulators",
    "slice_optimizer_state",
    "step_budget",
    "time_plans",
]
