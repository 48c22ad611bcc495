"""Pruned checkpoints: replay the pruning history on a fresh model, then load the weights.

A Lightning checkpoint written while :class:`~lightning_prune.callbacks.IterativePruningCallback` runs carries a
``"lightning_prune"`` entry: the plans applied so far (plain lists, safe for ``torch.load(weights_only=True)``) and
the example input's shape. Replaying the plans on the unpruned architecture rebuilds the pruned one exactly, after
which the state dict fits.

``MyModule.load_from_checkpoint(path)`` works when the module mixes in :class:`PrunedCheckpointMixin` (Lightning
calls its ``on_load_checkpoint`` before loading the weights); any module can also use :func:`load_pruned`::

    class MyModule(PrunedCheckpointMixin, LightningModule): ...
    model = MyModule.load_from_checkpoint("epoch=9.ckpt", weights_only=True)

    model = load_pruned(MyModule(...), "epoch=9.ckpt")   # prunes it like the checkpoint, then loads the weights
"""

from __future__ import annotations

import copy
import errno
import os
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any

import torch
from torch import nn

from lightning_prune.graph import DependencyGraph
from lightning_prune.pruning.averaged import declared_copies, mirror_all
from lightning_prune.pruning.distill import declared_attachments
from lightning_prune.utils.model import shapes_fit

__all__ = ["CHECKPOINT_KEY", "PrunedCheckpointMixin", "example_input_for", "load_pruned", "read_checkpoint",
           "replay_history", "restore_pruned"]

CHECKPOINT_KEY = "lightning_prune"


def example_input_for(model: nn.Module, example_input: Any = None, shape: Sequence[int] | None = None) -> Any:
    """The input to trace ``model`` with: the given one, else ``model.example_input_array``, else zeros of
    ``shape``; ``ValueError`` when none is known."""
    if example_input is None:
        example_input = getattr(model, "example_input_array", None)
    if example_input is None and shape:
        example_input = torch.zeros(*shape)
    if example_input is None:
        raise ValueError(
            f"{type(model).__name__} has no example input: set `self.example_input_array` in the module "
            "or pass `example_input=`"
        )
    return example_input


def replay_history(model: nn.Module, history: Sequence[Mapping[str, Any]], example_input: Any,
                   copies: Iterable[tuple[nn.Module, str]] = (),
                   attachments: Mapping[str, tuple[str, nn.Module]] | None = None) -> None:
    """Apply the recorded plans to ``model`` in order (each entry has a ``"plan"``), and the same surgery to every
    averaged ``(copy, prefix)`` and graph attachment (e.g. distillation projectors)."""
    if not history:
        return
    copies = list(copies)
    graph = DependencyGraph(model, example_input, attachments=attachments)
    for entry in history:
        result = graph.prune(entry["plan"])
        mirror_all(copies, result, model, attachments)


def restore_pruned(model: nn.Module, checkpoint: Mapping[str, Any], example_input: Any = None,
                   copies: Iterable[tuple[nn.Module, str]] | None = None) -> bool:
    """Give ``model`` the architecture recorded in ``checkpoint`` (weights are not loaded). Does nothing when the
    checkpoint has no pruning history or ``model`` already fits its state dict; True when it pruned.

    ``copies`` default to what the model declares with ``averaged_copies()``.
    """
    record = checkpoint.get(CHECKPOINT_KEY) or {}
    history = record.get("history", [])
    state = checkpoint.get("state_dict", checkpoint)
    if not history or shapes_fit(model, state):
        return False
    example = example_input_for(model, example_input, record.get("example_input_shape"))
    replay_history(model, history, example, declared_copies(model) if copies is None else copies,
                   attachments=declared_attachments(model))
    return True


_EXPECTED = "a checkpoint written by Lightning or torch.save (a dict holding a 'state_dict', or a state dict)"


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An error message as one line (torch's load errors span several), at most ``limit`` characters."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint(path: str | PathLike) -> Mapping[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True)``, checked to be a checkpoint dict.

    Raises:
        FileNotFoundError, IsADirectoryError: ``path`` does not exist, or is a folder (one line naming it).
        ValueError: one line naming ``path`` and what was expected, when it is empty, truncated, not a checkpoint,
            or holds something other than a dict.
    """
    name = os.fspath(path)
    if os.path.isdir(name):
        raise IsADirectoryError(errno.EISDIR, f"{name}: a folder, not a checkpoint file")
    if not os.path.isfile(name):
        raise FileNotFoundError(errno.ENOENT, f"{name}: no such checkpoint file")
    try:
        checkpoint = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as err:  # empty: EOFError; truncated: RuntimeError/OSError; other files: UnpicklingError, ...
        size = os.path.getsize(name)
        what = "an empty file" if size == 0 else f"not a readable checkpoint ({_one_line(err, 160)})"
        raise ValueError(f"{name}: {what}; expected {_EXPECTED}") from None
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{name}: holds a {type(checkpoint).__name__}; expected {_EXPECTED}")
    return checkpoint


def load_pruned(model: nn.Module, checkpoint: str | PathLike | Mapping[str, Any], example_input: Any = None,
                strict: bool = True) -> nn.Module:
    """Prune ``model`` (unpruned architecture) as recorded in ``checkpoint``, then load its weights.

    ``checkpoint`` is a path (read with ``torch.load(..., weights_only=True)``) or an already loaded dict.
    Works on the LightningModule the checkpoint was written from (its ``state_dict`` keys). Returns ``model``.

    Everything is tried on a copy of ``model`` first, so that a checkpoint that does not fit — a file that is not a
    checkpoint, a pruning history that does not apply (e.g. ``model`` was already pruned further than the
    checkpoint), weights of other shapes or names — raises one ``ValueError`` naming the file and leaves ``model``
    exactly as it was.
    """
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, PathLike)) else "the checkpoint"
    if not isinstance(checkpoint, Mapping):
        checkpoint = read_checkpoint(checkpoint)
    state = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: its 'state_dict' is a {type(state).__name__}; expected {_EXPECTED}")
    try:
        trial = copy.deepcopy(model)
    except Exception:  # a model that cannot be copied is loaded directly, as before
        trial = None
    if trial is not None:
        history = (checkpoint.get(CHECKPOINT_KEY) or {}).get("history", [])
        try:
            restore_pruned(trial, checkpoint, example_input)
        except Exception as err:
            raise ValueError(
                f"{source}: its pruning history ({len(history)} step(s)) does not apply to {type(model).__name__} "
                f"({_one_line(err)}); load_pruned needs the model unpruned, or pruned exactly as recorded; the model "
                "is unchanged") from None
        try:
            trial.load_state_dict(state, strict=strict)
        except Exception as err:
            pruned = " (already pruned further than the checkpoint?)" if history else ""
            raise ValueError(f"{source}: its weights do not fit {type(model).__name__}{pruned}: {_one_line(err)}; "
                             "the model is unchanged") from None
        del trial
    restore_pruned(model, checkpoint, example_input)
    model.load_state_dict(state, strict=strict)
    return model


class PrunedCheckpointMixin:
    """Mix into a ``LightningModule`` (before it in the bases) so that ``load_from_checkpoint`` — and
    ``Trainer.fit(ckpt_path=...)`` — rebuild a pruned architecture before the weights load.

    Example:
        >>> import lightning.pytorch as pl, torch
        >>> class Net(PrunedCheckpointMixin, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1))
        ...         self.example_input_array = torch.zeros(1, 3, 4, 4)
        ...     def forward(self, x):
        ...         return self.body(x)
        >>> pruned = Net()
        >>> _ = DependencyGraph(pruned, pruned.example_input_array).prune({"body.0": [0, 1, 2]})
        >>> checkpoint = {"state_dict": pruned.state_dict(),
        ...               CHECKPOINT_KEY: {"history": [{"plan": {"body.0": [0, 1, 2]}}]}}
        >>> fresh = Net()
        >>> fresh.on_load_checkpoint(checkpoint)
        >>> fresh.body[0].out_channels
        5
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_pruned(self, checkpoint)
        parent = getattr(super(), "on_load_checkpoint", None)
        if callable(parent):
            parent(checkpoint)
