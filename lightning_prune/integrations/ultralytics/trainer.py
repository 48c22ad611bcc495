"""Iterative filter pruning inside ultralytics' own trainer: :func:`add_pruning` on a ``YOLO`` model, then
``model.train(...)``.

:func:`add_pruning` registers ultralytics callbacks (``model.add_callback``) that drive the Lightning-free core,
:class:`~lightning_prune.pruning.IterativePruner`. ultralytics keeps doing everything else — optimizer and LR
schedule, warm-up, AMP, EMA, mosaic and ``close_mosaic``, validation, logging and checkpoints:

* ``on_pretrain_routine_start`` checks the configuration against the run (one line, before any data or model is
  built) and reads the pruning record of the checkpoint the run starts from (``model=...pt``, ``resume=True``).
* ``on_pretrain_routine_end`` gives the model ultralytics rebuilt from the YAML the recorded architecture (it
  *replays* the recorded plans, then loads the checkpoint's weights; on ``resume`` it then hands the checkpoint to
  ``trainer.resume_training`` so optimizer, EMA, scaler and early-stopping state fit), traces the dependency graph,
  checks that the validator produces ``monitor`` and that ``target`` is reachable.
* ``on_train_epoch_start`` runs one pruning step at each scheduled epoch: ``trainer.model`` is pruned,
  ``trainer.optimizer``'s state (momentum, Adam moments) is sliced by parameter identity (ultralytics' type-based
  parameter groups are untouched: parameters keep their identity), and ``trainer.ema.ema`` gets the same surgery
  (:func:`~lightning_prune.pruning.mirror_prune`; ``ema.updates`` is kept). ``best_fitness`` and the early stopper
  restart, so ``best.pt`` is chosen among epochs of the current — after the last step, the final — architecture,
  and patience cannot end the run before the last step.
* Checkpoints are self-describing: the model and its EMA carry the plan history as a plain ``lightning_prune``
  attribute, which ultralytics pickles into ``last.pt``/``best.pt`` with the (pruned) module, so ``YOLO(path)``
  loads the pruned architecture and ``model.train(resume=True)`` continues the schedule.

**What the sensitivity probes read.** The first ``sensitivity_batches`` batches of the validation split the trainer
validates on (``trainer.test_loader``'s data set, batched as its loader batches, cached once), validated by a
second instance of the task's own validator (``trainer.get_validator()``, same ``conf``/``iou``/``max_det``) on the
*live* model ``trainer.model`` while each probe masks it — not on the EMA, which is what ultralytics validates at
epoch end. ``monitor`` is a key of that validator's results, by default the task's mAP50-95
(``metrics/mAP50-95(B)`` for detect and obb, ``(M)`` masks for segment, ``(P)`` keypoints for pose); ``"fitness"``
works too. Logging is silenced during probes.

Example::

    from ultralytics import YOLO
    from lightning_prune.integrations.ultralytics import add_pruning

    model = YOLO("yolov8n.yaml")
    pruning = add_pruning(model, schedule=[2, 4, 6], target=0.5, strategy="sensitivity", criterion="l1")
    model.train(data="data.yaml", epochs=10, imgsz=320)
    print(pruning.flops_ratio)           # ≈ 0.5
    YOLO("runs/detect/train/weights/best.pt").export(format="onnx")   # the pruned detector

Not supported: ``compile=True`` and ``quantize=8`` (QAT), refused with one line; multi-GPU DDP (``device=[0, 1]``,
``"0,1"``), which ultralytics runs in worker processes that would each prune on their own (it runs no callback in the
launching process): refused with one line as the workers set up, before any pruning or training step — the launching
process then reports the workers' failure (``subprocess.CalledProcessError``); train on one device. Resuming a pruned
run needs :func:`add_pruning` (or :func:`keep_pruned`) on the model first: plain ultralytics cannot load a pruned
``last.pt``'s optimizer and EMA state into the model it rebuilds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_prune.checkpoint import CHECKPOINT_KEY, replay_history
from lightning_prune.integrations.ultralytics.common import require_ultralytics
from lightning_prune.integrations.ultralytics.distill import (
    DetectionProjectors,
    prepare_teacher,
    student_of,
    teacher_problem,
)
from lightning_prune.pruning import CriterionName, PruningConfig, StepResult, Strategy, TargetMetric
from lightning_prune.pruning.config import LatencyConfig, Limits, SensitivityConfig, front_end_config
from lightning_prune.pruning.session import PruningSession, SessionViews, front_end_settings
from lightning_prune.utils.model import shapes_fit

__all__ = ["TASK_MONITORS", "UltralyticsPruning", "add_pruning", "keep_pruned"]

#: the validator result each task's sensitivity probes read by default (mAP50-95 of the task's own output)
TASK_MONITORS: dict[str, str] = {
    "detect": "metrics/mAP50-95(B)",
    "segment": "metrics/mAP50-95(M)",
    "pose": "metrics/mAP50-95(P)",
    "obb": "metrics/mAP50-95(B)",
}

_UNSET = object()
_EVENTS = ("on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_epoch_start", "on_train_epoch_end",
           "on_train_end", "teardown")


class _CachedLoader:
    """A few fixed validation batches that a validator iterates like its dataloader (fresh dict per batch: the
    validator's ``preprocess`` rebinds the dict's entries)."""

    def __init__(self, batches: list[dict[str, Any]], dataset: Sequence[Any]) -> None:
        self.batches = batches
        self.dataset = dataset
        self.batch_size = len(dataset) // max(len(batches), 1)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (dict(batch) for batch in self.batches)


class _ProbeTrainer:
    """What ``BaseValidator.__call__(trainer=...)`` reads from a trainer, with the model under probe where the
    trainer has its EMA; everything else is the real trainer's.

    The second (and last) thing here that relies on ultralytics beyond its callback API: the validator's training
    mode validates ``trainer.ema.ema`` and reads ``loss_items``, ``epoch``, ``device``, ``data``, ``amp``,
    ``stopper``, ``epochs``, ``world_size`` and ``label_loss_items`` from the trainer. The sensitivity run in
    ``tests/test_ultralytics_trainer.py`` fails when that changes.
    """

    def __init__(self, trainer: Any, model: nn.Module, loss_items: dict[str, torch.Tensor]) -> None:
        from types import SimpleNamespace

        self._trainer = trainer
        self.ema = SimpleNamespace(ema=model)
        self.loss_items = loss_items
        self.epoch = getattr(trainer, "epoch", trainer.start_epoch)  # set by the epoch loop only

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ultralytics' logger (and with it its progress bars) at WARNING for the block."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _source_checkpoint(trainer: Any) -> tuple[nn.Module | None, dict[str, Any]]:
    """The model and checkpoint dict of the ``.pt`` the run starts from (``trainer.args.model``), else ``(None,
    {})``."""
    path = trainer.args.model
    if not isinstance(path, (str, Path)) or not str(path).lower().endswith(".pt") or not Path(path).is_file():
        return None, {}
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(path)
    return model, ckpt


def _refuse_several_devices(trainer: Any) -> None:
    """One line when the run trains on several devices. ultralytics runs multi-GPU training in DDP worker
    processes (the parent runs no callback; the workers get cloudpickled copies of them): there every rank would
    trace, probe and prune on its own, after the model is wrapped in DistributedDataParallel, and ranks other than 0
    would skip the checks of ``on_pretrain_routine_start`` — so the run is refused, on every rank, at its first hook
    (rank 0: ``on_pretrain_routine_start``, the others: ``on_pretrain_routine_end``), before any pruning or
    training step."""
    device = getattr(getattr(trainer, "args", None), "device", None)
    if isinstance(device, (list, tuple)):
        named = len(device)
    elif isinstance(device, str):
        named = len([part for part in device.split(",") if part.strip()])
    else:
        named = 1
    try:
        world_size = int(getattr(trainer, "world_size", 0) or 0)
    except (TypeError, ValueError):
        world_size = 0
    if max(named, world_size) > 1:
        raise ValueError(f"lightning_prune cannot prune multi-GPU training (device={device!r}, "
                         f"{max(named, world_size)} devices): ultralytics trains it in DDP worker processes that "
                         "would each prune on their own; train on one device (e.g. device=0)")


def _record_of(model: nn.Module | None) -> dict[str, Any]:
    record = getattr(student_of(model), CHECKPOINT_KEY, None) if model is not None else None
    return dict(record) if isinstance(record, Mapping) else {}


class UltralyticsPruning(SessionViews):
    """The callbacks :func:`add_pruning` registers, and what they did (:attr:`results`, :attr:`history`).

    ``config=None`` (:func:`keep_pruned`) prunes nothing: it only gives the rebuilt model the recorded pruned
    architecture and keeps the record in the checkpoints.
    """

    def __init__(self, config: PruningConfig | None, monitor: str | None = None, sensitivity_batches: int | None = None,
                 verbose: bool = True, distill: bool | str | os.PathLike = False,
                 distill_weight: float | None = None) -> None:
        if sensitivity_batches is None:
            sensitivity_batches = config.sensitivity.batches if config is not None else SensitivityConfig().batches
        if int(sensitivity_batches) < 1:
            raise ValueError(f"sensitivity_batches must be at least 1, got {sensitivity_batches!r}")
        if not isinstance(distill, (bool, str, os.PathLike)):
            raise ValueError(f"distill must be True, False or a teacher .pt path, got {type(distill).__name__}")
        if distill_weight is not None and not (float(distill_weight) > 0 and math.isfinite(float(distill_weight))):
            raise ValueError(f"distill_weight must be a positive number, got {distill_weight!r}")
        self.distill = distill
        self.distill_weight = distill_weight
        self._projectors: DetectionProjectors | None = None
        self._pretrained: Any = _UNSET
        self.session = PruningSession(config)  # config, pruner, state; its monitor: the validator key probes read
        self.monitor = monitor
        self.sensitivity_batches = int(sensitivity_batches)
        self.verbose = verbose
        self.prior: list[dict[str, Any]] = []  # plans applied before this run (the checkpoint it started from)
        self.save_dir: Path | None = None
        self._flops: float | None = None
        self._source: tuple[nn.Module | None, dict[str, Any]] = (None, {})
        self._resume_ckpt: dict[str, Any] | None = None
        self._validator: Any = None
        self._loss_items: dict[str, torch.Tensor] | None = None
        self._trainer: Any = None
        self._replayable = True  # False once the architecture was copied from a checkpoint without a record

    # -- plain views ----------------------------------------------------------------------------------------------
    @property
    def results(self) -> list[StepResult]:
        """One :class:`~lightning_prune.pruning.StepResult` per step of this run."""
        return self.session.results

    @property
    def example_input(self) -> torch.Tensor | None:
        """The input the model is traced with (zeros at the run's image size)."""
        return self.session.example

    @example_input.setter
    def example_input(self, value: torch.Tensor | None) -> None:
        self.session.example = value

    @property
    def _monitor_key(self) -> str | None:
        """The validator result the probes read (``monitor``, or the task's default)."""
        return self.session.monitor

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every plan applied to the model, in order: those of the checkpoint the run started from, then this run's."""
        return [*self.prior, *self.session.history]

    @property
    def baseline(self) -> dict[str, float]:
        """This run's unpruned costs (``flops`` at the example input, ``params``)."""
        return dict(self.session.baseline)

    @property
    def flops_ratio(self) -> float | None:
        """FLOPs now (after the run: at its end) over the baseline; None before the model was traced."""
        if self.pruner is not None:
            from lightning_prune.profiling import count_flops

            self._flops = float(count_flops(self.pruner.model, self.example_input))
        baseline = self.session.baseline
        if self._flops is None or not baseline.get("flops"):
            return None
        return self._flops / baseline["flops"]

    def record(self) -> dict[str, Any]:
        """The plain-data record stored on the model (and so in every checkpoint): the full plan history, how many
        of its entries predate this run, the pruner's state, the example input's shape, and whether replaying the
        history on the model built from the YAML gives the architecture (not when the run started from a pruned
        checkpoint without a record)."""
        from lightning_prune import __version__

        return {"history": self.history, "prior": len(self.prior), "pruner": self.session.pruner_state(),
                "example_input_shape": self.session.example_shape(), "replayable": self._replayable,
                "version": __version__}

    # -- registration ---------------------------------------------------------------------------------------------
    def attach(self, model: Any) -> UltralyticsPruning:
        """Register the callbacks on an ``ultralytics.YOLO`` model; ``ValueError`` if pruning is already attached."""
        callbacks = getattr(model, "callbacks", None)
        if not isinstance(callbacks, Mapping) or not callable(getattr(model, "add_callback", None)):
            raise TypeError(f"add_pruning needs an ultralytics YOLO model (with add_callback), got "
                            f"{type(model).__name__}")
        for functions in callbacks.values():
            for function in functions:
                if isinstance(getattr(function, "__self__", None), UltralyticsPruning):
                    raise ValueError("this YOLO model already has pruning attached (add_pruning/keep_pruned once)")
        for event in _EVENTS:
            model.add_callback(event, getattr(self, event))
        return self

    # -- callbacks ------------------------------------------------------------------------------------------------
    def on_pretrain_routine_start(self, trainer: Any) -> None:
        """Check the run's arguments; read the pruning record of the checkpoint the run starts from."""
        _refuse_several_devices(trainer)
        self._trainer = trainer
        self.session.reset()
        self.prior = []
        self._replayable = True
        self._validator = self._loss_items = self._resume_ckpt = None
        self.save_dir = Path(trainer.save_dir)
        args = trainer.args
        if getattr(args, "compile", False):
            raise ValueError("pruning cannot change a compiled model: train with compile=False")
        if getattr(args, "quantize", None) == 8:
            raise ValueError("pruning does not support quantization-aware training (quantize=8)")
        if self.config is not None:
            late = [epoch for epoch in self.config.schedule if epoch >= trainer.epochs]
            if late:
                raise ValueError(f"pruning schedule epoch {late[0]} is not below epochs={trainer.epochs}")
            self.session.monitor = TASK_MONITORS.get(args.task) if self.monitor is None else self.monitor
            if self.session.monitor is None and self.config.strategy == "sensitivity":
                raise ValueError(f"strategy 'sensitivity' has no default metric for task {args.task!r}: pass "
                                 "monitor=<a key of the validator's results>")
        if self.distill is not False and self.distill is not None:
            if trainer.resume:
                if getattr(args, "distill_model", None) is None:
                    raise ValueError("distill: the run being resumed did not distil (its checkpoint names no "
                                     "distill_model); resume without distill")
            else:
                args.distill_model = prepare_teacher(self.distill, trainer)
            if self.distill_weight is not None:
                args.dis = float(self.distill_weight)
        self._source = _source_checkpoint(trainer)
        source_model, ckpt = self._source
        record = _record_of(source_model)
        if trainer.resume and record.get("history"):
            # ultralytics' own resume loads the optimizer and EMA state into the model it rebuilt from the YAML,
            # which has the unpruned shapes; on_pretrain_routine_end resumes instead, once the model is pruned.
            self._resume_ckpt = ckpt
            _defer_resume(trainer)
            if student_of(source_model) is not source_model:
                # a DistillationModel: ultralytics would load its pruned projectors into fresh unpruned ones; with
                # no pretrained weights it builds the student and projectors unpruned, and _adopt replays the plans
                # on both and loads every weight
                self._pretrained = args.pretrained
                args.pretrained = False

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        """Restore the recorded architecture (and, on resume, the training state), trace the graph, check."""
        _refuse_several_devices(trainer)  # DDP ranks other than 0 never run on_pretrain_routine_start
        model = student_of(trainer.model)
        self._projectors = DetectionProjectors(trainer.model) if model is not trainer.model else None
        teacher = getattr(trainer.model, "teacher_model", None)
        if self._projectors is not None and isinstance(teacher, nn.Module):
            problem = teacher_problem(teacher, model)
            if problem is not None:
                raise ValueError(f"distillation teacher {trainer.args.distill_model!r} cannot teach this model: "
                                 f"{problem}")
        device = next(model.parameters()).device
        channels = int(trainer.data.get("channels", 3)) if isinstance(trainer.data, Mapping) else 3
        imgsz = trainer.args.imgsz if isinstance(trainer.args.imgsz, int) else max(trainer.args.imgsz)
        self.example_input = torch.zeros(1, channels, int(imgsz), int(imgsz), device=device)
        source_model, _ = self._source
        record = _record_of(source_model)
        self._replayable = bool(record.get("replayable", True))
        if source_model is not None:
            self._adopt(trainer, source_model, record)
        self._source = (None, {})  # free the copy
        if self._pretrained is not _UNSET:
            trainer.args.pretrained, self._pretrained = self._pretrained, _UNSET
        resumed_state: dict[str, Any] = {}
        if self._resume_ckpt is not None:
            trainer.resume = True
            trainer.resume_training(self._resume_ckpt)
            trainer.scheduler.last_epoch = trainer.start_epoch - 1
            self._resume_ckpt = None
            prior = int(record.get("prior", 0))
            self.prior = list(record.get("history", []))[:prior]
            resumed_state = dict(record.get("pruner", {}))
        else:
            self.prior = list(record.get("history", []))
        if self._projectors is not None and self.distill is True and not trainer.resume:
            self._projectors.identity_start(getattr(trainer, "ema", None))
        if self.config is None:
            self._stamp(trainer)
            return
        evaluate = None
        if self._monitor_key is not None:
            self._validator = self._probe_validator(trainer)
            absent = f"not produced by ultralytics' {type(self._validator).__name__}"
            if self.session.check_monitor(self._validate(trainer), absent, "produces"):
                evaluate = self._evaluate
        if resumed_state:
            self.session.load_state_dict(resumed_state)
        self.session.start(model, self.example_input, trainer.start_epoch, show_progress=self.verbose,
                           log=_info if self.verbose else None, evaluate=evaluate,
                           accumulate_gradients=lambda: self._accumulate_gradients(trainer), distiller=self._projectors)
        self._stamp(trainer)

    def on_train_epoch_start(self, trainer: Any) -> None:
        """Prune at a scheduled epoch; the optimizer's state and the EMA follow."""
        epoch = int(trainer.epoch)
        if not self.session.due(epoch):
            return
        result = self.session.step(epoch, optimizers=[trainer.optimizer], copies=self._ema_copies(trainer))
        _ema_follows_new_tensors(trainer)
        trainer.best_fitness = None  # best.pt: the best epoch of the current architecture
        trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, epoch
        trainer.stopper.possible_stop = False
        self._stamp(trainer)
        if self.verbose:
            _info(self.session.summary(result))
        self._write_report()

    def on_train_epoch_end(self, trainer: Any) -> None:
        """Early stopping cannot end the run before the last pruning step."""
        if self.pruner is not None and self.session.pending(int(trainer.epoch) + 1):
            trainer.stopper.best_epoch = int(trainer.epoch) + 1

    def on_train_end(self, trainer: Any) -> None:
        self._write_report()

    def teardown(self, trainer: Any) -> None:
        """Keep plain results; drop references to the trainer's model and data."""
        if self.pruner is not None:
            from lightning_prune.profiling import count_flops

            self._flops = float(count_flops(self.pruner.model, self.example_input))
        self.session.release()
        self._validator, self._loss_items, self._trainer = None, None, None

    # -- helpers --------------------------------------------------------------------------------------------------
    def _ema_copies(self, trainer: Any) -> list[tuple[nn.Module, str]]:
        """The EMA's twins of what the pruner changes: the EMA model, or with distillation its student and
        projectors."""
        if self._projectors is None:
            return [(trainer.ema.ema, "")]
        return self._projectors.ema_copies(trainer.ema.ema)

    def _adopt(self, trainer: Any, source: nn.Module, record: Mapping[str, Any]) -> None:
        """Give the model ultralytics rebuilt from the YAML (and its EMA) the source checkpoint's architecture and
        weights. Parameters keep their identity, so the optimizer built on the unpruned model stays valid.

        With a replayable plan history the recorded plans are replayed (the very surgery that made the source);
        without one (a pruned model saved elsewhere, e.g. by ``save_yolo``) every tensor and integer size attribute
        is copied from the source module of the same name, and accepted only if the outputs then agree."""
        model = student_of(trainer.model)
        whole, source = source, student_of(source)
        weights = source.float().state_dict()
        if shapes_fit(model, weights, same_keys=True):
            return  # unpruned, or already the right shapes: ultralytics has loaded the weights itself
        history = record.get("history") or []
        attachments = self._projectors.attachments() if self._projectors is not None else None
        if history and record.get("replayable", True):
            replay_history(model, history, self.example_input, copies=self._ema_copies(trainer),
                           attachments=attachments)
            _ema_follows_new_tensors(trainer)
            if not shapes_fit(model, weights, same_keys=True):
                raise ValueError(f"replaying the pruning record of {trainer.args.model} does not give its "
                                 "architecture")
            how = f"replayed {len(history)} recorded plans"
        else:
            if attachments:
                raise ValueError(f"{trainer.args.model} holds a pruned model without a replayable pruning record: "
                                 "distillation cannot size its projectors for it; train it without distill")
            self._replayable = False
            for target in (model, trainer.ema.ema):
                _copy_architecture(target, source)
            _ema_follows_new_tensors(trainer)
            if not _same_outputs(model, source, self.example_input):
                raise ValueError(f"{trainer.args.model} holds a pruned model whose architecture cannot be given to "
                                 "the model ultralytics rebuilds from its YAML (no pruning record, and copying its "
                                 "tensor shapes changes the outputs)")
            how = "copied its tensor shapes (no replayable pruning record)"
        with torch.no_grad():
            model.load_state_dict(weights)
            student_of(trainer.ema.ema).load_state_dict(weights)
            projector = getattr(whole, "projector", None)
            if self._projectors is not None and projector is not None:
                trainer.model.projector.load_state_dict(projector.float().state_dict())
        if self.verbose:
            _info(f"lightning_prune: gave the model the pruned architecture of {trainer.args.model}: {how}")

    def _stamp(self, trainer: Any) -> None:
        """Store the record on the model and its EMA, which ultralytics pickles into every checkpoint."""
        record = self.record()
        for module in (trainer.model, getattr(trainer.ema, "ema", None)):
            if isinstance(module, nn.Module):
                setattr(student_of(module), CHECKPOINT_KEY, record)

    def _probe_validator(self, trainer: Any) -> Any:
        from ultralytics.utils import callbacks

        validator = trainer.get_validator()
        validator.callbacks = callbacks.get_default_callbacks()  # probes are no validation epochs for loggers
        validator.args.plots = False
        validator.args.save_json = False
        validator.args.verbose = False
        validator.device = trainer.device
        loader = trainer.test_loader
        dataset = loader.dataset
        size = int(loader.batch_size or 1)
        count = min(len(dataset), size * self.sensitivity_batches)
        collate = getattr(loader, "collate_fn", None) or dataset.collate_fn
        batches = [collate([dataset[i] for i in range(start, min(start + size, count))])
                   for start in range(0, count, size)]
        validator.dataloader = _CachedLoader(batches, torch.utils.data.Subset(dataset, range(count)))
        return validator

    def _validate(self, trainer: Any) -> dict[str, float]:
        model = trainer.model
        end2end = getattr(model, "end2end", None) if hasattr(model, "end2end") else None
        try:
            with _quiet(), torch.no_grad():
                view = _ProbeTrainer(trainer, model, self._probe_loss_items(trainer, model))
                values = self._validator(trainer=view) or {}
        finally:
            if end2end is not None:
                with contextlib.suppress(AttributeError):
                    model.end2end = end2end
        return {key: float(value) for key, value in values.items()}

    def _evaluate(self) -> float:
        value = self._validate(self._trainer)[self._monitor_key]
        return 0.0 if math.isnan(value) else value

    def _probe_loss_items(self, trainer: Any, model: nn.Module) -> dict[str, torch.Tensor]:
        """Loss names (the validator accumulates a val loss): the trainer's once it has trained a batch, else from
        one validation batch."""
        items = getattr(trainer, "loss_items", None)
        if isinstance(items, Mapping) and items:
            return dict(items)
        if self._loss_items is None:
            batch = self._validator.preprocess(next(iter(self._validator.dataloader)))
            was_training = model.training
            model.eval()
            try:
                _, items = model.loss(batch, model(batch["img"]))
            finally:
                model.train(was_training)
            self._loss_items = {key: torch.as_tensor(value).detach() for key, value in dict(items).items()}
        return self._loss_items

    def _accumulate_gradients(self, trainer: Any) -> None:
        """For ``criterion="taylor"``: gradients of the training loss on a few training batches."""
        loader = trainer.train_loader
        dataset, size = loader.dataset, int(loader.batch_size or 1)
        collate = getattr(loader, "collate_fn", None) or dataset.collate_fn
        model = trainer.model
        was_training = model.training
        model.train()
        try:
            for start in range(0, min(len(dataset), size * self.sensitivity_batches), size):
                batch = trainer.preprocess_batch(collate([dataset[i] for i in range(start, min(start + size,
                                                                                              len(dataset)))]))
                loss, _ = model(batch)
                loss.sum().backward()
        finally:
            model.train(was_training)

    def _write_report(self) -> None:
        """``<save_dir>/pruning.json``: the baseline, every step's costs and metrics, the plan history."""
        if self.save_dir is None or not self.save_dir.is_dir():
            return
        steps = [{"step": r.step, "epoch": r.epoch, "flops_before": r.flops_before, "flops_after": r.flops_after,
                  "params_before": r.params_before, "params_after": r.params_after, "flops_ratio": r.flops_ratio,
                  "params_ratio": r.params_ratio, "metric_before": r.metric_before, "metric_after": r.metric_after,
                  "removed_channels": r.removed_channels, "picks": list(r.picks)} for r in self.results]
        report = {"monitor": self._monitor_key, "baseline": self.baseline, "steps": steps, **self.record()}
        from lightning_prune.utils.files import atomic_write

        atomic_write(self.save_dir / "pruning.json", json.dumps(report, indent=1, default=str))


def _defer_resume(trainer: Any) -> None:
    """THE one place that relies on ultralytics' setup order rather than its callback API.

    ``BaseTrainer._setup_train`` rebuilds the model from the checkpoint's YAML (unpruned shapes), builds the
    optimizer and EMA on it, then — only when ``trainer.resume`` is true — loads the checkpoint's optimizer and EMA
    state, which do not fit an unpruned model; no callback runs in between. So resuming is deferred: ``resume`` is
    cleared here (``on_pretrain_routine_start``, after ``check_resume`` read the checkpoint's arguments), and
    ``on_pretrain_routine_end`` prunes the model, sets it back and calls the trainer's public
    ``resume_training(ckpt)``. ``tests/test_ultralytics_trainer.py::test_ultralytics_setup_order`` fails loudly
    when ultralytics changes any of this.
    """
    if not hasattr(trainer, "resume") or not callable(getattr(trainer, "resume_training", None)):
        raise RuntimeError("this ultralytics version's trainer has no `resume`/`resume_training`; lightning_prune "
                           "cannot resume a pruned run with it")
    trainer.resume = False


def _copy_architecture(model: nn.Module, source: nn.Module) -> None:
    """Give ``model`` the tensor shapes and integer size attributes (``out_channels``, ``C2f.c``, ...) of
    ``source``, a model of the same structure (module names) and other widths. Parameters keep their identity.
    The integer attributes copied are those :func:`~lightning_prune.pruning.mirror_prune` copies."""
    theirs = dict(source.named_modules())
    with torch.no_grad():
        for name, module in model.named_modules():
            other = theirs.get(name)
            if other is None or type(other) is not type(module):
                raise ValueError(f"the checkpoint's model has no {type(module).__name__} '{name}' like the model "
                                 "built from its YAML")
            for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                value = getattr(other, key, None)
                if isinstance(value, torch.Tensor) and value.shape != tensor.shape:
                    tensor.data = value.detach().to(device=tensor.device, dtype=tensor.dtype).clone()
            for key, value in vars(other).items():  # ints only: tuples are caches here (Detect.shape)
                mine = vars(module).get(key)
                if not key.startswith("_") and _is_int(value) and _is_int(mine) and mine != value:
                    setattr(module, key, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same_outputs(model: nn.Module, source: nn.Module, example: torch.Tensor) -> bool:
    """Whether ``model`` (with ``source``'s weights loaded) computes what ``source`` computes on ``example``."""
    import copy

    reference = copy.deepcopy(source).float().to(example.device).eval()
    trial = copy.deepcopy(model).eval()
    try:
        trial.load_state_dict(reference.state_dict())
    except RuntimeError:
        return False
    with torch.no_grad():
        ours, theirs = trial(example), reference(example)
    ours, theirs = (x[0] if isinstance(x, (tuple, list)) else x for x in (ours, theirs))
    return ours.shape == theirs.shape and bool(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4))


def _info(message: str) -> None:
    from ultralytics.utils import LOGGER

    LOGGER.info(message)


def add_pruning(
    model: Any,
    schedule: Sequence[int] | dict[str, int] | int = (1,),
    target: float = 0.5,
    strategy: Strategy = "sensitivity",
    criterion: CriterionName | Callable[..., Any] = "l1",
    monitor: str | None = None,
    *,
    target_metric: TargetMetric = "flops",
    ignore: Sequence[str] = (),
    round_to: int = 1,
    distill: bool | str = False,
    distill_weight: float | None = None,
    verbose: bool = True,
    sensitivity: SensitivityConfig | None = None,
    latency: LatencyConfig | None = None,
    limits: Limits | None = None,
    seed: int = 0,
    config: PruningConfig | None = None,
    **deprecated: Any,
) -> UltralyticsPruning:
    """Prune an ultralytics ``YOLO`` model iteratively while ``model.train(...)`` fine-tunes it.

    Registers callbacks on ``model`` (see the module docstring for what each does) and returns the object holding
    them, whose :attr:`~UltralyticsPruning.results` (one :class:`~lightning_prune.pruning.StepResult` per step),
    :attr:`~UltralyticsPruning.history` and :attr:`~UltralyticsPruning.flops_ratio` say what was done; each step is
    also written to ``<save_dir>/pruning.json``. Works for detect, segment, pose and obb models.

    Args:
        model: an ``ultralytics.YOLO`` (from a YAML, from weights, or a ``last.pt`` to ``train(resume=True)``).
        schedule: epochs (0-based, as ultralytics counts them) at whose start a step runs, e.g. ``[2, 4, 6]``; all
            must be below ``train(epochs=...)``.
        target: fraction of ``target_metric`` removed by the end of the schedule, ``0 < target < 1``.
        strategy: ``"sensitivity"`` (the paper; its probes read the validator's ``monitor``), ``"uniform"`` or
            ``"global"``.
        criterion: which channels of a group go first (``l1``, ``l2``, ``bn_scale``, ``taylor``, ... or a callable).
        monitor: the validator result the probes read; default the task's mAP50-95 (:data:`TASK_MONITORS`).
        target_metric: ``"flops"``, ``"params"`` or ``"latency"`` (measured on ``latency.backend``).
        ignore: module names, prefixes or patterns whose groups are never pruned.
        round_to: keep each group's channel count a multiple of this.
        distill: distil while fine-tuning, with ultralytics' own ``distill_model`` machinery (score-weighted L2
            on the projected neck features): ``True`` — the teacher is the model as the run starts (before the
            first prune; its projectors start as the identity, so the loss starts at zero rather than at a random
            projection of the student's own features), ``"big.pt"`` — that model (ultralytics' random
            projectors). The projectors follow every prune; checkpoints hold the student alone, and
            ``train(resume=True)`` rebuilds the teacher from the recorded ``distill_model``.
        distill_weight: ultralytics' ``dis`` (the distillation loss weight); default: its own (6.0).
        verbose: log the graph summary and each step's summary through ultralytics' logger.
        sensitivity, latency, limits, seed, config: as :class:`~lightning_prune.callbacks.IterativePruningCallback`
            (``sensitivity.batches``: validation batches of the trainer's validation batch size per probe).
        **deprecated: the flat keywords of earlier releases, with a ``DeprecationWarning``.

    Bad input fails with one line: here (an unknown strategy or criterion, a target outside (0, 1)), or when
    ``train`` starts, before any epoch (a schedule epoch ≥ ``epochs``, a ``monitor`` the validator does not produce,
    a target the prunable channels cannot reach).

    Example::

        from ultralytics import YOLO
        from lightning_prune.integrations.ultralytics import add_pruning

        model = YOLO("yolov8n.yaml")
        add_pruning(model, schedule=[2, 4, 6], target=0.5)
        model.train(data="data.yaml", epochs=10, imgsz=320)
        YOLO("runs/detect/train/weights/last.pt").train(resume=True)   # after an interruption: same schedule
    """
    require_ultralytics()
    config = front_end_config(config, front_end_settings(locals()), add_pruning, deprecated, "add_pruning")
    return UltralyticsPruning(config, monitor, verbose=verbose, distill=distill,
                              distill_weight=distill_weight).attach(model)


def keep_pruned(model: Any, verbose: bool = True) -> UltralyticsPruning:
    """Fine-tune a pruned checkpoint with ultralytics' trainer without pruning further.

    ``YOLO("best.pt").train(...)`` rebuilds the model from its YAML — unpruned — and loads only the tensors whose
    shapes still fit. With ``keep_pruned(model)`` first, the rebuilt model gets the checkpoint's pruned architecture
    and all its weights back (from the plan history the checkpoint carries), and the new checkpoints keep carrying
    it. :func:`add_pruning` does the same, then prunes further.

    Example::

        model = YOLO("runs/detect/train/weights/best.pt")   # written by a run with add_pruning
        keep_pruned(model)
        model.train(data="data.yaml", epochs=20)
    """
    require_ultralytics()
    return UltralyticsPruning(None, verbose=verbose).attach(model)


def _ema_follows_new_tensors(trainer: Any) -> None:
    """Make ultralytics' EMA average the tensors the surgery put in place.

    ultralytics' ``ModelEMA`` (8.4) builds the list of (EMA tensor, model tensor) pairs it averages on its first
    update and keeps it; a prune replaces those tensors, so without this the EMA would go on averaging the old,
    unpruned tensors and the pruned EMA — what ultralytics validates and saves in ``best.pt``/``last.pt`` — would
    stay as it was right after the prune for the rest of training. Dropping the cached pairs makes the next update
    build them from the current tensors (older ultralytics releases build them on every update: nothing to do).
    """
    ema = getattr(trainer, "ema", None)
    if ema is not None and getattr(ema, "_pairs", None) is not None:
        ema._pairs = None

