"""The Lightning-free core of the iterative method: configuration, the loop, selection (importance, sensitivity
probes, the paper's scoring, strategies and allocations) and the per-group latency model, keeping optimizer state
and averaged copies in step with the pruned model.

:class:`IterativePruner` is to :class:`~lightning_prune.callbacks.IterativePruningCallback` what a torchmetrics
functional is to its class: the same computation, callable from any training loop (plain PyTorch, ultralytics'
trainer, Lightning).

This package exports what users type; the modules hold the rest (e.g. :mod:`~lightning_prune.pruning.strategies`,
:mod:`~lightning_prune.pruning.allocation`). Names it exported before that are internals answer for one more
release with a ``DeprecationWarning`` naming their module.
"""

from lightning_prune.pruning.communication import Communicator, LocalCommunicator, TorchDistributedCommunicator
from lightning_prune.pruning.config import (
    CriterionName,
    LatencyBackend,
    LatencyConfig,
    Limits,
    Mode,
    PruningConfig,
    SensitivityConfig,
    Strategy,
    TargetMetric,
)
from lightning_prune.pruning.cost_table import CostTable, build_cost_table
from lightning_prune.pruning.distill import (
    DistillationConfig,
    Distiller,
    distill_step,
    distillation_loss,
    identity_start,
)
from lightning_prune.pruning.importance import channel_scores, lowest_channels
from lightning_prune.pruning.pruner import IterativePruner
from lightning_prune.pruning.result import StepResult
from lightning_prune.utils.deprecation import moved_names, moving

__all__ = [
    "Communicator",
    "CostTable",
    "CriterionName",
    "DistillationConfig",
    "Distiller",
    "IterativePruner",
    "LatencyBackend",
    "LatencyConfig",
    "Limits",
    "LocalCommunicator",
    "Mode",
    "PruningConfig",
    "SensitivityConfig",
    "StepResult",
    "Strategy",
    "TargetMetric",
    "TorchDistributedCommunicator",
    "build_cost_table",
    "channel_scores",
    "distill_step",
    "distillation_loss",
    "identity_start",
    "lowest_channels",
]

#: internals this package exported in 0.1.0: importable from their modules; from here for one more release
__getattr__ = moved_names(__name__, {
    **moving(["declared_copies", "mirror_all", "mirror_prune"], "lightning_prune.pruning.averaged"),
    **moving(["declared_attachments"], "lightning_prune.pruning.distill"),
    **moving(["release_grad_accumulators"], "lightning_prune.pruning.grad_state"),
    **moving(["LatencyController"], "lightning_prune.pruning.latency_control"),
    **moving(["MeasuredChoice", "fastest_plan", "time_plans"], "lightning_prune.pruning.measured_choice"),
    **moving(["slice_optimizer_state"], "lightning_prune.pruning.optimizer_state"),
    **moving(["conv_widths"], "lightning_prune.pruning.pruner"),
    **moving(["compose_plans"], "lightning_prune.pruning.result"),
    **moving(["parse_schedule", "pending_epochs", "step_budget"], "lightning_prune.pruning.schedule"),
})
