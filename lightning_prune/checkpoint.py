"""Pruned checkpoints: replay the pruning history on a fresh model, then load the weights.

A Lightning checkpoint written while :class:`~lightning_prune.callbacks.IterativePruningCallback` runs carries a
``"lightning_prune"`` entry: the plans applied so far (plain lists, safe for ``torch.load(weights_only=True)``) and
the example input's shape. Replaying the plans on the unpruned architecture rebuilds the pruned one exactly, after
which the state dict fits.

Loading for inference in a fresh process::

    model = MyLightningModule(...)                       # the unpruned architecture, as built for training
    load_pruned(model, "epoch=9.ckpt")                   # prunes it like the checkpoint, then loads the weights
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import torch
from torch import nn

from lightning_prune.graph import DependencyGraph

__all__ = ["CHECKPOINT_KEY", "load_pruned", "replay_history", "example_input_for"]

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


def replay_history(model: nn.Module, history: Sequence[Mapping[str, Any]], example_input: Any) -> None:
    """Apply the recorded plans to ``model`` in order (each entry has a ``"plan"``)."""
    if not history:
        return
    graph = DependencyGraph(model, example_input)
    for entry in history:
        graph.prune(entry["plan"])


def load_pruned(model: nn.Module, checkpoint: str | PathLike | Mapping[str, Any], example_input: Any = None,
                strict: bool = True) -> nn.Module:
    """Prune ``model`` (unpruned architecture) as recorded in ``checkpoint``, then load its weights.

    ``checkpoint`` is a path (read with ``torch.load(..., weights_only=True)``) or an already loaded dict.
    Works on the LightningModule the checkpoint was written from (its ``state_dict`` keys). Returns ``model``.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record = checkpoint.get(CHECKPOINT_KEY) or {}
    history = record.get("history", [])
    if history:
        replay_history(model, history, example_input_for(model, example_input, record.get("example_input_shape")))
    model.load_state_dict(checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint, strict=strict)
    return model
