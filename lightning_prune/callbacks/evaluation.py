"""Running a LightningModule's own validation logic outside Lightning's loops, on a few cached batches.

Sensitivity probes need the *monitored metric* of the user's module — whatever its ``validation_step`` and
``on_validation_epoch_end`` log — dozens of times inside one training epoch. Nesting ``trainer.validate`` in
``fit`` is not allowed, so the module's hooks are called directly, with ``self.log``/``self.log_dict`` captured
instead of sent to the trainer. torchmetrics objects logged directly are computed and reset.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

__all__ = ["ValidationProbe", "accumulate_training_gradients", "captured_logs", "outside_autocast", "precision_context"]


def _as_float(value: Any) -> float | None:
    from torchmetrics import Metric

    if isinstance(value, Metric):
        value = value.compute()
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else None
    if isinstance(value, (int, float)):
        return float(value)
    return None


@contextmanager
def captured_logs(module: nn.Module) -> Iterator[dict[str, list[Any]]]:
    """Within the block, ``module.log(name, value)`` and ``module.log_dict`` append to the yielded dict."""
    logs: dict[str, list[Any]] = {}

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        logs.setdefault(name, []).append(value.detach() if isinstance(value, torch.Tensor) else value)

    def log_dict(dictionary: dict, *args: Any, **kwargs: Any) -> None:
        for name, value in dictionary.items():
            log(name, value)

    module.log, module.log_dict = log, log_dict  # instance attributes shadow the methods
    try:
        yield logs
    finally:
        del module.log
        del module.log_dict


class ValidationProbe:
    """Evaluates a LightningModule on a fixed list of validation batches and returns what it logs.

    Example:
        >>> import torch, lightning.pytorch as pl
        >>> class Tiny(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(2, 1)
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("val/loss", self.layer(batch).pow(2).mean())
        >>> probe = ValidationProbe(Tiny(), [torch.ones(4, 2), torch.zeros(4, 2)], device=torch.device("cpu"))
        >>> sorted(probe.run())
        ['val/loss']
    """

    def __init__(self, module: Any, batches: list[Any], device: torch.device | None = None,
                 batch_to_device: Any = None, precision: Any = None) -> None:
        self.module = module
        self.batches = batches
        self.device = device
        self._to_device = batch_to_device
        self.precision = precision  # a Lightning precision plugin: batches go through it as in validation

    @classmethod
    def from_trainer(cls, trainer: Any, module: Any, num_batches: int, skip: int = 0,
                     allow_empty: bool = False) -> ValidationProbe | None:
        """Cache ``num_batches`` batches of the trainer's (first) validation dataloader, after the first ``skip``.
        With ``allow_empty``, None when the loader has no batch there (else ``ValueError``)."""
        loader = _val_dataloader(trainer, module)
        if loader is None:
            raise ValueError("pruning needs validation data to read its monitored metric: the trainer has no "
                             "val dataloader (define val_dataloader or pass val_dataloaders to fit)")
        batches = list(itertools.islice(iter(loader), skip, skip + num_batches))
        if not batches:
            if allow_empty:
                return None
            raise ValueError("the validation dataloader yielded no batch")
        strategy = trainer.strategy
        return cls(module, batches, module.device, lambda b: strategy.batch_to_device(b, module.device),
                   precision=getattr(trainer, "precision_plugin", None))

    def run(self) -> dict[str, float]:
        """One pass over the cached batches in eval mode; the mean of each logged value. With a precision plugin,
        each batch goes through its ``convert_input`` and ``validation_step`` runs in its ``val_step_context()``
        (half-precision inputs for ``*-true``, autocast for ``*-mixed``), as in Lightning's validation loop."""
        from torchmetrics import Metric

        precision = self.precision
        module = self.module
        training = module.training
        module.eval()
        # probes differ between ranks (each rank masks its own share of groups): compute metrics locally
        metrics = [m for m in module.modules() if isinstance(m, Metric)]
        syncing = [m.sync_on_compute for m in metrics]
        for metric in metrics:
            metric.sync_on_compute = False
        try:
            with torch.no_grad(), captured_logs(module) as logs:
                _call_hook(module, "on_validation_epoch_start")
                for index, batch in enumerate(self.batches):
                    if precision is not None:
                        batch = precision.convert_input(batch)
                    if self._to_device is not None:
                        batch = self._to_device(batch)
                    with precision.val_step_context() if precision is not None else nullcontext():
                        module.validation_step(batch, index)
                _call_hook(module, "on_validation_epoch_end")
            values = {}
            for name, logged in logs.items():
                numbers = [v for v in (_as_float(item) for item in logged) if v is not None]
                if numbers:
                    values[name] = sum(numbers) / len(numbers)
            return values
        finally:
            _reset_metrics(module)
            for metric, sync in zip(metrics, syncing):
                metric.sync_on_compute = sync
            module.train(training)


def outside_autocast(device_type: str) -> Any:
    """A context that switches autocast off for ``device_type`` where it is on (backward passes, ONNX exports)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # a device type autocast does not know
        return nullcontext()
    return torch.autocast(device_type, enabled=False) if enabled else nullcontext()


@contextmanager
def precision_context(precision: Any, device: torch.device | str) -> Iterator[None]:
    """Where the module runs outside Lightning's steps (graph tracing, FLOPs, finiteness checks, latency readings):
    the precision plugin's ``forward_context()`` — e.g. the half default dtype of ``*-true``, in which a module
    builds its tensors — without autocast, so that a ``*-mixed`` module is traced, counted, exported and timed in
    its own (float) dtype, as it is deployed. Probes and gradients enter the plugin's step contexts (autocast
    included) themselves. Nothing without a plugin."""
    if precision is None:
        yield
        return
    with precision.forward_context(), outside_autocast(torch.device(device).type):
        yield


def _call_hook(module: Any, name: str) -> None:
    hook = getattr(module, name, None)
    if callable(hook):
        hook()


def _reset_metrics(module: nn.Module) -> None:
    from torchmetrics import Metric

    for child in module.modules():
        if isinstance(child, Metric):
            child.reset()


def _val_dataloader(trainer: Any, module: Any) -> Any:
    loaders = getattr(trainer, "val_dataloaders", None)
    val_loop = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None)
    if loaders is None and val_loop is not None and trainer.limit_val_batches != 0:
        # loads what fit was given (with Lightning's distributed sampler); the fit loop reuses it
        try:
            val_loop.setup_data()
        except Exception:  # e.g. no val_dataloader defined anywhere: reported below as missing validation data
            return None
        loaders = getattr(trainer, "val_dataloaders", None)
    if loaders is None:
        source = getattr(trainer, "datamodule", None)
        for owner in (source, module):
            hook = getattr(owner, "val_dataloader", None)
            if callable(hook):
                try:
                    loaders = hook()
                except NotImplementedError:
                    loaders = None
                except Exception as err:  # Lightning's default hook raises a MisconfigurationException
                    if "val_dataloader" in str(err) or "not implemented" in str(err).lower():
                        loaders = None
                    else:
                        raise
                if loaders is not None:
                    break
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    return loaders


def accumulate_training_gradients(trainer: Any, module: Any, num_batches: int) -> None:
    """Gradients for the ``taylor`` criterion: a few training batches, forward + backward, no optimizer step, in
    eval mode (BatchNorm running statistics must not move). Batches go through the trainer's precision plugin
    (``convert_input``, ``training_step`` in its ``train_step_context()``); a ``16-mixed`` loss is scaled by its
    ``GradScaler`` for the backward (no underflow) and the gradients are unscaled afterwards."""
    loader = trainer.train_dataloader
    if loader is None:
        raise ValueError("criterion 'taylor' needs the train dataloader to compute gradients")
    precision = getattr(trainer, "precision_plugin", None)
    scaler = getattr(precision, "scaler", None)
    scale = None
    training = module.training
    module.eval()
    try:
        with captured_logs(module):
            for index, batch in enumerate(itertools.islice(iter(loader), num_batches)):
                if precision is not None:
                    batch = precision.convert_input(batch)
                batch = trainer.strategy.batch_to_device(batch, module.device)
                with precision.train_step_context() if precision is not None else nullcontext():
                    output = module.training_step(batch, index)
                loss = output["loss"] if isinstance(output, dict) else output
                if scaler is not None and scaler.is_enabled():
                    loss = scaler.scale(loss)
                    scale = float(scaler.get_scale())
                with outside_autocast(loss.device.type):  # the pruner's step may run inside an autocast context
                    loss.backward()
        if scale:
            for parameter in module.parameters():
                if parameter.grad is not None:
                    parameter.grad.div_(scale)
    finally:
        module.train(training)
