"""Keeping Lightning's own callbacks right while the model's architecture changes mid-fit.

- ``ModelCheckpoint(monitor=...)``: at every pruning step its best-k record is forgotten (the files stay on disk),
  so ``best_model_path`` always names a checkpoint of the current architecture, and after the final step only
  epochs after the final prune compete for "best".
- ``EarlyStopping``: fit's ``min_epochs`` is raised so that no stop ends fit before the schedule's last step has
  trained; a stop requested before a pruning step is withdrawn at that step, with a warning saying so; patience and
  best score restart at every step (the metric dips right after a prune).
- ``WeightAveraging``/``EMAWeightAveraging`` and any module declaring ``averaged_copies()``: found here, pruned by
  the core with the model's own surgery.

Lightning keeps the averaged model of ``WeightAveraging`` in the private ``_average_model``; this module is the one
place that reads it (``tests/test_conventions.py`` fails loudly if Lightning renames it).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_prune.pruning.averaged import declared_copies

__all__ = ["averaged_copies", "cancel_early_stop", "forget_best_checkpoints", "hold_off_early_stopping",
           "restart_early_stopping"]


def _worst(mode: str) -> torch.Tensor:
    return torch.tensor(torch.inf if mode == "min" else -torch.inf)


def forget_best_checkpoints(trainer: Any) -> None:
    """Every monitoring ``ModelCheckpoint`` starts its best-k record afresh (files are kept)."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
            callback.best_k_models = {}
            callback.kth_best_model_path = ""
            callback.kth_value = _worst(callback.mode)
            callback.best_model_path = ""
            callback.best_model_score = None


def _early_stoppers(trainer: Any) -> list[EarlyStopping]:
    return [callback for callback in trainer.callbacks if isinstance(callback, EarlyStopping)]


def restart_early_stopping(trainer: Any) -> None:
    """Patience and best score start over (the pruned model is a new model)."""
    for callback in _early_stoppers(trainer):
        callback.wait_count = 0
        callback.best_score = _worst(callback.mode)


def hold_off_early_stopping(trainer: Any, last_epoch: int) -> None:
    """Raise ``trainer.fit_loop.min_epochs`` so that no stop request ends fit before epoch ``last_epoch`` (the
    schedule's last pruning step) has been trained — Lightning's own mechanism behind ``Trainer(min_epochs=...)``."""
    if not _early_stoppers(trainer):
        return
    loop = trainer.fit_loop
    if (loop.min_epochs or 0) < last_epoch + 1:
        loop.min_epochs = last_epoch + 1
        rank_zero_info(f"EarlyStopping is held off until the last pruning step (epoch {last_epoch}) has trained: "
                       f"min_epochs={last_epoch + 1}")


def cancel_early_stop(trainer: Any, epoch: int) -> bool:
    """At a pruning step: a stop an ``EarlyStopping`` requested for the previous architecture is withdrawn, with a
    warning saying so. Returns True when one was."""
    stoppers = [callback for callback in _early_stoppers(trainer) if callback.stopped_epoch]
    if not trainer.should_stop or not stoppers:
        return False
    asked = max(callback.stopped_epoch for callback in stoppers)
    trainer.should_stop = False
    for callback in stoppers:
        callback.stopped_epoch = 0
    rank_zero_warn(f"EarlyStopping asked to stop at epoch {asked}, before the pruning step at epoch {epoch}: "
                   "training continues through the pruning schedule, and EarlyStopping starts over on the pruned "
                   "model (fit the schedule into max_epochs, or remove EarlyStopping, to avoid this)")
    return True


def averaged_copies(trainer: Any, pl_module: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every averaged copy to prune alongside ``pl_module``: Lightning's ``WeightAveraging`` models (prefix ``""``)
    and whatever the module declares with ``averaged_copies()``."""
    from lightning.pytorch.callbacks import WeightAveraging

    copies = []
    for callback in trainer.callbacks:
        if isinstance(callback, WeightAveraging):
            if not hasattr(callback, "_average_model"):
                raise RuntimeError("this Lightning's WeightAveraging keeps no `_average_model`: lightning-prune "
                                   "cannot prune its averaged copy; please report this Lightning version")
            average = callback._average_model
            if average is not None:
                copies.append((average.module, ""))
    return copies + declared_copies(pl_module)
