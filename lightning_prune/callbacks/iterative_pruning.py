"""The paper's iterative loop inside ``Trainer.fit``: a thin Lightning shell over
:class:`~lightning_prune.pruning.IterativePruner`."""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning_utilities import apply_to_collection
from torch import nn

from lightning_prune.callbacks import conventions
from lightning_prune.callbacks.distributed import StrategyCommunicator, check_strategy, ddp_surgery_guard
from lightning_prune.callbacks.evaluation import ValidationProbe, accumulate_training_gradients, precision_context
from lightning_prune.callbacks.events import PruningStep, notify_pruning_step
from lightning_prune.callbacks.reporting import report_step
from lightning_prune.checkpoint import CHECKPOINT_KEY, PrunedCheckpointMixin, example_input_for, restore_pruned
from lightning_prune.graph import DependencyGraph
from lightning_prune.profiling import count_flops, count_params
from lightning_prune.pruning import CriterionName, PruningConfig, Strategy, TargetMetric
from lightning_prune.pruning.config import LatencyConfig, Limits, SensitivityConfig, front_end_config
from lightning_prune.pruning.distill import DeclaredAttachments, DistillationConfig, Distiller, declared_attachments
from lightning_prune.pruning.session import PruningSession, SessionViews, front_end_settings

__all__ = ["DISTILL_KEY", "IterativePruningCallback"]

#: checkpoint key of the projectors ``distill=`` added (kept out of ``state_dict`` so the plain module loads)
DISTILL_KEY = "lightning_prune_distiller"
_DISTILLER = "distiller"  # where the callback puts the Distiller on the module (see distill_step)


class IterativePruningCallback(SessionViews, Callback):
    r"""Prune filter groups at scheduled epochs; the epochs in between fine-tune.

    At fit start the model's concat-aware dependency graph is built from ``example_input`` (default:
    ``pl_module.example_input_array``) and its summary printed. At the start of every epoch in ``schedule`` one
    pruning step of :class:`~lightning_prune.pruning.IterativePruner` runs: the budget left to reach ``target`` is
    spread over the remaining steps, channels are chosen by ``strategy`` and ``criterion`` and removed physically;
    optimizer state, ``WeightAveraging`` copies and any ``averaged_copies()`` the module declares follow. Training
    then simply continues — that is the fine-tuning.

    Lightning conventions kept while the architecture changes: ``ModelCheckpoint(monitor=...)`` forgets its best at
    every step, so "best" is chosen among epochs of the current (after the final step: the final) architecture;
    ``EarlyStopping`` restarts its patience at every step and cannot end fit before the last one (it is told so);
    checkpoints carry the plan history, and modules with :class:`~lightning_prune.checkpoint.PrunedCheckpointMixin`
    load with ``load_from_checkpoint(..., weights_only=True)``. FSDP and DeepSpeed are refused at setup; under DDP
    probes are sharded and every decision (plans, latency readings) is rank 0's, broadcast.

    Resuming (``Trainer.fit(..., ckpt_path=...)``): the checkpoint's pruned architecture, plan history and baseline
    (the original, unpruned model's costs) always come back, whatever the callback's settings are now. If
    ``schedule``, ``target``, ``strategy`` or another setting changed, the run continues the recorded history under
    the new settings — the steps already taken stay, the target still counts from the original model, and the
    scheduled epochs not reached yet prune toward the new target — and one warning names what changed (a
    ``target_metric="latency"`` the resumed run never measured is refused instead). Checkpoints written before the
    state key became stable resume the same way.

    Precision: graph tracing, FLOPs and latency readings, sensitivity probes and ``taylor`` gradients go through
    ``trainer.precision_plugin`` like Lightning's own steps (inputs by ``convert_input``, forwards inside its
    forward context), so ``precision="16-true"``/``"bf16-true"`` trace, probe and time the half-precision module;
    with ``"16-mixed"``/``"bf16-mixed"`` probes and gradients run under autocast (the loss scaled by the plugin's
    ``GradScaler``), while tracing and latency readings time the module in its own float dtype, as deployed.

    Args:
        schedule: epochs at whose start a pruning step happens, e.g. ``[1, 3, 5]``; or ``{"start": 1, "stop": 9,
            "every": 2}`` (stop exclusive).
        target: fraction of ``target_metric`` removed by the end of the schedule, ``0 < target < 1``.
        target_metric: ``"flops"`` (at the example input), ``"params"``, or ``"latency"`` (measured on
            ``latency.backend`` at fit start and after every step; see :class:`~lightning_prune.pruning.
            LatencyController`).
        strategy: ``"sensitivity"`` (the paper: probe every group at ``sensitivity.rates`` by masking, score
            ``Δcost × metric^exponent``, take the top ``params_layers`` groups by parameters ∪ top ``flops_layers``
            by FLOPs at their best rate, then more if the step's budget needs it); ``"uniform"``; ``"global"``.
        criterion: which channels of a group go first — ``l2``, ``l2_largest``, ``l1``, ``l1_largest``,
            ``bn_scale``, ``bn_scale_l1``, ``random``, ``taylor`` — or a callable ``(group, model) -> scores``.
        monitor: validation metric the probes read (as logged by the module, e.g. ``"val/mAP50-95"``); required by
            the sensitivity strategy; with any strategy it is logged before and after each prune, measured on the
            probe batches (``pruning/probe_metric_before``/``_after``).
        ignore: module names (or prefixes, or ``fnmatch`` patterns) whose groups are never pruned.
        round_to: keep each group's channel count a multiple of this (where the group is that large).
        example_input: input to trace the model with; a tensor, or a shape such as ``[1, 3, 640, 640]``.
        verbose: print the graph summary and each step's summary (rank 0).
        sensitivity: the sensitivity analysis' expert knobs (:class:`~lightning_prune.pruning.SensitivityConfig`:
            rates, batches per probe, exponent, N and M, remeasuring, ``mode`` of ``monitor``).
        latency: measured latency (:class:`~lightning_prune.pruning.LatencyConfig`: backend, repeats,
            corrections, tolerance, the latency ``cost`` model, its cache, allocations, proxies).
        limits: caps (:class:`~lightning_prune.pruning.Limits`: ``max_rate``, ``max_total_rate``,
            ``min_channels``).
        seed: seeds the ``random`` criterion.
        config: a whole :class:`~lightning_prune.pruning.PruningConfig` instead of the settings above (those set
            here as well override it).
        **deprecated: the flat keywords of earlier releases (``sensitivity_batches=2``, ``latency_backend=...``,
            ``max_rate=...``, ...) still work for this release, with a ``DeprecationWarning`` naming the new
            spelling.
        distill: distil from the module as it is at fit start (a frozen copy: the teacher, never saved) while it
            is pruned and fine-tuned (:class:`~lightning_prune.pruning.DistillationConfig`: feature names and/or
            ``outputs="kl"``). The callback puts a :class:`~lightning_prune.pruning.Distiller` at
            ``pl_module.distiller`` before the optimizers are built (its projectors train with the module and
            follow every prune); the module adds its loss in ``training_step`` with
            ``out, kd = distill_step(self, x)`` (:func:`~lightning_prune.pruning.distill_step`), and
            ``train/distill_loss`` is logged. Checkpoints keep the projectors beside the module's weights, so
            ``load_from_checkpoint`` of the plain module works, and resume restores them. (Modules that distil
            by themselves, like ``YOLOModule(distill=True)``, declare their projectors with
            ``distillation_attachments()``; the callback slices them too.)

    Example::

        from lightning.pytorch import Trainer
        from lightning_prune.callbacks import IterativePruningCallback

        pruning = IterativePruningCallback(schedule=[1, 3, 5], target=0.5, strategy="sensitivity",
                                           criterion="l1", monitor="val/mAP50-95")
        Trainer(max_epochs=8, callbacks=[pruning]).fit(model, datamodule)

    The same from a LightningCLI YAML::

        trainer:
          callbacks:
            - class_path: lightning_prune.callbacks.IterativePruningCallback
              init_args: {schedule: [1, 3, 5], target: 0.5, monitor: val/mAP50-95}
    """

    def __init__(
        self,
        schedule: list[int] | dict[str, int] = (1,),
        target: float = 0.5,
        target_metric: TargetMetric = "flops",
        strategy: Strategy = "sensitivity",
        criterion: CriterionName | Callable[..., Any] = "l1",
        monitor: str | None = None,
        *,
        ignore: Sequence[str] = (),
        round_to: int = 1,
        example_input: Any = None,
        distill: DistillationConfig | None = None,
        verbose: bool = True,
        sensitivity: SensitivityConfig | None = None,
        latency: LatencyConfig | None = None,
        limits: Limits | None = None,
        seed: int = 0,
        config: PruningConfig | None = None,
        **deprecated: Any,
    ) -> None:
        super().__init__()
        config = front_end_config(config, front_end_settings(locals()), IterativePruningCallback.__init__, deprecated,
                                  "IterativePruningCallback")
        if config.strategy == "sensitivity" and not monitor:
            raise ValueError("strategy 'sensitivity' needs `monitor`: the validation metric its probes read")
        if config.target_metric == "latency" or config.cost == "latency":
            from lightning_prune.profiling import require_backend

            require_backend(config.latency_backend)
        if distill is not None and not isinstance(distill, DistillationConfig):
            raise ValueError(f"distill must be a DistillationConfig, got {type(distill).__name__}")
        self.distill = distill
        self.session = PruningSession(config, monitor)  # config, pruner, the state before it exists (resume)
        self.example_input = example_input
        self.verbose = verbose
        self._probe: ValidationProbe | None = None
        self._second: ValidationProbe | None = None
        self._warned_mixin = False

    # -- plain views of the state ---------------------------------------------------------------------------------
    @property
    def monitor(self) -> str | None:
        return self.session.monitor

    @property
    def schedule(self) -> list[int]:
        return list(self.config.schedule)

    @property
    def target(self) -> float:
        return self.config.target

    @property
    def strategy(self) -> str:
        return self.config.strategy

    @property
    def history(self) -> list[dict[str, Any]]:
        """One plain entry per applied plan (epoch, step, plan, costs, probe metrics)."""
        return self.session.history

    @property
    def baseline(self) -> dict[str, float]:
        return self.session.baseline

    @property
    def graph(self) -> DependencyGraph | None:
        return self.pruner.graph if self.pruner is not None else None

    # -- Lightning state ------------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        # stable, so that Lightning hands the state back whatever the settings are now (see "Resuming" above);
        # the key used to name schedule, target and strategy: such entries are read too (_adopt_legacy_state)
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        return self.session.state_dict(self.example_input)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.session.load_state_dict(state_dict)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._adopt_legacy_state(checkpoint)  # before Lightning looks up `state_key` for `load_state_dict`

    def _adopt_legacy_state(self, checkpoint: dict[str, Any]) -> None:
        """Move a state saved under the old, settings-bearing key (``IterativePruningCallback{'schedule': ...}``)
        to :attr:`state_key`, recording the settings that key names."""
        callbacks = checkpoint.get("callbacks")
        if not isinstance(callbacks, dict) or self.state_key in callbacks:
            return
        legacy = _legacy_states(callbacks, self.state_key)
        if not legacy:
            return
        if len(legacy) > 1:
            current = {k: v for k, v in self.session.settings().items() if k in ("schedule", "target", "strategy")}
            same = [key for key, settings in legacy.items() if settings == current]
            if len(same) != 1:
                raise ValueError(f"the checkpoint holds the states of {len(legacy)} pruning callbacks "
                                 f"({', '.join(sorted(legacy))}); resume it with the settings of one of them")
            legacy = {same[0]: legacy[same[0]]}
        key, settings = next(iter(legacy.items()))
        state = dict(callbacks.pop(key))
        state.setdefault("settings", settings)
        callbacks[self.state_key] = state

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # a top-level, plain-typed record, so `load_pruned` needs neither the callback nor weights_only=False
        checkpoint[CHECKPOINT_KEY] = {"history": list(self.history),
                                      "example_input_shape": self.session.example_shape(self.example_input)}
        distiller = getattr(pl_module, _DISTILLER, None)
        if self.distill is not None and isinstance(distiller, Distiller):
            # the (live) projectors this callback added, beside the module's own weights: a state-dict hook keeps
            # them out of "state_dict" (and out of WeightAveraging's copy, whichever callback saves last), so
            # `load_from_checkpoint` of the plain module still fits
            checkpoint[DISTILL_KEY] = {f"{_DISTILLER}.{k}": v for k, v in distiller.state_dict().items()}
        if self.history and not isinstance(pl_module, PrunedCheckpointMixin) and not self._warned_mixin:
            self._warned_mixin = True
            rank_zero_warn(f"{type(pl_module).__name__} does not mix in lightning_prune.checkpoint."
                           "PrunedCheckpointMixin: `load_from_checkpoint` cannot rebuild the pruned architecture "
                           "from this checkpoint (use lightning_prune.checkpoint.load_pruned, or add the mixin)")

    # -- hooks ----------------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer.strategy)
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            late = [epoch for epoch in self.schedule if epoch >= max_epochs]
            if late:
                raise ValueError(f"pruning schedule epoch {late[0]} is not below max_epochs={max_epochs}")
        conventions.hold_off_early_stopping(trainer, self.schedule[-1])
        if self.distill is not None:
            current = getattr(pl_module, _DISTILLER, None)
            if current is not None and not isinstance(current, Distiller):
                raise ValueError(f"distill: {type(pl_module).__name__} already has an attribute {_DISTILLER!r}")
            if current is None:  # the teacher: a frozen copy of the module as constructed (before any pruning)
                setattr(pl_module, _DISTILLER, self.distill.build(pl_module, self._resolve_example(pl_module)))
            _bind_distiller(trainer, pl_module, getattr(pl_module, _DISTILLER))
        # Lightning loads a resumed checkpoint's weights right after the module's `on_load_checkpoint` hook (and
        # before any callback's): rebuild the pruned architecture there. Idempotent with PrunedCheckpointMixin.
        original = pl_module.on_load_checkpoint

        def restore_architecture(checkpoint: dict[str, Any]) -> Any:
            for key in ("state_dict", "current_model_state"):  # the latter: the live weights WeightAveraging keeps
                if isinstance(checkpoint.get(DISTILL_KEY), dict) and isinstance(checkpoint.get(key), dict):
                    checkpoint[key].update(checkpoint[DISTILL_KEY])  # this callback's projectors
            self._adopt_legacy_state(checkpoint)  # here too: before Lightning warns about an unknown state key
            record = checkpoint.get(CHECKPOINT_KEY) or {}
            example = self._resolve_example(pl_module, record.get("example_input_shape"))
            callbacks = checkpoint.get("callbacks")
            # no state of this callback to come (written by another callback class): the unpruned module's costs
            # now, before the replay, so that the original model stays the baseline
            unpruned = _unpruned_state(pl_module, example) if record.get("history") and not (
                isinstance(callbacks, dict) and self.state_key in callbacks) else None
            if restore_pruned(pl_module, checkpoint, example, conventions.averaged_copies(trainer, pl_module)) \
                    and unpruned is not None:
                self.session.recovered = {**unpruned, "history": list(record["history"])}
            return original(checkpoint)

        pl_module.on_load_checkpoint = restore_architecture

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _remove_restore_patch(pl_module)
        if stage == "fit" and self.distill is not None and isinstance(getattr(pl_module, _DISTILLER, None),
                                                                       Distiller):
            delattr(pl_module, _DISTILLER)  # the trained module leaves fit as the user built it (and pruned)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        distiller = getattr(pl_module, _DISTILLER, None)
        if self.distill is not None and isinstance(distiller, Distiller) and distiller.last_loss is not None:
            pl_module.log("train/distill_loss", distiller.last_loss, on_step=True, on_epoch=True)
            distiller.last_loss = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        _remove_restore_patch(pl_module)  # Lightning skips `teardown` when fit raises

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _remove_restore_patch(pl_module)  # checkpoint weights are loaded by now; keep the module picklable
        self.session.begin(type(self).__name__, rank_zero_warn)
        precision = trainer.precision_plugin  # the module is converted by now: inputs and forwards go through it
        example = self._resolve_example(pl_module, precision=precision)
        self.session.example = example
        if self.monitor and self.session.pending(trainer.current_epoch):
            self._probe = ValidationProbe.from_trainer(trainer, pl_module, self.config.sensitivity.batches)
            # the next batches re-measure the probes nearest the selection cut (None if the loader has no more)
            self._second = ValidationProbe.from_trainer(trainer, pl_module, self.config.sensitivity.batches,
                                                        skip=self.config.sensitivity.batches, allow_empty=True)
            self.session.check_monitor(self._probe.run(), "never logged by the module's validation", "logs",
                                       required=True)
        with precision_context(precision, pl_module.device):  # tracing, FLOPs, latency readings (as in a step)
            self.session.start(
                pl_module, example, trainer.current_epoch, show_progress=self.verbose and trainer.is_global_zero,
                log=rank_zero_info if self.verbose else None,
                evaluate=self._evaluate if self.monitor else None,
                remeasure=self._remeasure if self.monitor and self._second is not None else None,
                accumulate_gradients=lambda: accumulate_training_gradients(trainer, pl_module,
                                                                           self.config.sensitivity.batches),
                communicator=StrategyCommunicator(trainer), surgery_guard=ddp_surgery_guard(trainer),
                distiller=DeclaredAttachments(pl_module) if declared_attachments(pl_module) else None)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self.session.due(epoch):
            return
        with precision_context(trainer.precision_plugin, pl_module.device):
            result = self.session.step(epoch, optimizers=trainer.optimizers,
                                       copies=conventions.averaged_copies(trainer, pl_module))
        conventions.forget_best_checkpoints(trainer)
        conventions.cancel_early_stop(trainer, epoch)
        conventions.restart_early_stopping(trainer)
        report_step(trainer, result, self.pruner.graph, self.monitor)
        if self.verbose:
            rank_zero_info(self.session.summary(result))
        notify_pruning_step(trainer, pl_module, PruningStep.from_result(result, self.session.example), sender=self)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _evaluate(self) -> float:
        return self._probe.run()[self.monitor]

    def _remeasure(self) -> float:
        return self._second.run()[self.monitor]

    def _resolve_example(self, pl_module: LightningModule, shape: Sequence[int] | None = None,
                         precision: Any = None) -> Any:
        """The input to trace with, on the module's device. With ``precision`` (the trainer's plugin, once it has
        converted the module) it goes through ``convert_input`` like Lightning's batches; before that (setup, the
        replay of a resumed checkpoint) its floating tensors take the module's floating dtype."""
        example = self.example_input
        if isinstance(example, (list, tuple)) and example and all(isinstance(v, int) for v in example):
            example = torch.zeros(*example)
        example = move_data_to_device(example_input_for(pl_module, example, shape), pl_module.device)
        return precision.convert_input(example) if precision is not None else _as_module_dtype(example, pl_module)


def _remove_restore_patch(pl_module: LightningModule) -> None:
    if "on_load_checkpoint" in vars(pl_module):
        del pl_module.on_load_checkpoint


def _outside_state_dict(module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict hook of the Distiller ``distill=`` adds: as a submodule (``prefix`` set) its projectors stay out of
    the module's ``state_dict`` and out of any averaged copy's (the callback saves them under ``DISTILL_KEY``)."""
    if prefix:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]


def _bind_distiller(trainer: Trainer, pl_module: LightningModule, distiller: Distiller) -> None:
    """Keep ``distiller`` out of the module's state dicts (deep copies, like WeightAveraging's, inherit the hook), and
    give a WeightAveraging copy made before it existed (that callback's ``setup`` ran first) a twin bound to the copy:
    Lightning swaps the copy's parameters with the module's one by one, so they must line up."""
    if _outside_state_dict not in distiller._state_dict_hooks.values():
        distiller._register_state_dict_hook(_outside_state_dict)
    for average, prefix in conventions.averaged_copies(trainer, pl_module):
        if prefix == "" and not isinstance(getattr(average, _DISTILLER, None), Distiller):
            twin = copy.deepcopy(distiller, {id(pl_module): average})  # the frozen teacher is shared
            parameter = next(average.parameters(), None)
            if parameter is not None:
                twin.projectors.to(parameter.device)
            setattr(average, _DISTILLER, twin)


def _as_module_dtype(example: Any, module: nn.Module) -> Any:
    """``example`` with its floating tensors in the dtype of the module's first floating parameter."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return example
    return apply_to_collection(example, torch.Tensor,
                               lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t)


def _legacy_states(callbacks: dict[Any, Any], name: str) -> dict[str, dict[str, Any]]:
    """The entries of ``checkpoint["callbacks"]`` under the old state key, ``name`` followed by the settings' dict
    (``IterativePruningCallback{'schedule': [1, 2], 'target': 0.5, 'strategy': 'uniform'}``): key -> settings."""
    found = {}
    for key, state in callbacks.items():
        if isinstance(key, str) and key.startswith(name + "{") and isinstance(state, dict):
            try:
                settings = ast.literal_eval(key[len(name):])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(settings, dict):
                found[key] = settings
    return found


def _unpruned_state(pl_module: LightningModule, example: Any) -> dict[str, Any]:
    """The baseline costs and group sizes of ``pl_module`` as it is (unpruned), as the pruner records them."""
    graph = DependencyGraph(pl_module, example, attachments=declared_attachments(pl_module))
    return {"baseline": {"flops": float(count_flops(pl_module, example)), "params": float(count_params(pl_module))},
            "original_sizes": {group.name: group.size for group in graph.groups}}
