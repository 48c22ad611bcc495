"""An exponential moving average of a model's weights with ultralytics' ``ModelEMA`` semantics.

The decay ramps up with the number of updates, ``d = decay * (1 - exp(-updates / tau))`` (0.9999 and 2000 by
default, as ultralytics' trainer), so the average follows the model closely early in training and smooths it later.
Every floating-point entry of the state dict (parameters and BatchNorm running statistics) is averaged; integer
buffers are left as they are. The copy is a plain deep copy of the model, so the pruning callback can apply the
same surgery to it (:meth:`YOLOModule.averaged_copies <lightning_prune.integrations.ultralytics.YOLOModule.\
averaged_copies>`); :meth:`ModelEMA.update` reads the model's state dict on every call, so it keeps working when
tensors were replaced by pruning.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 2)
    >>> ema = ModelEMA(net, decay=0.9, tau=1.0)
    >>> ema.update(net)
    >>> ema.updates, round(ema.decay_at(1), 4)
    (1, 0.5689)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """A moving average ``ema`` of ``model`` (a deep copy in eval mode, no gradients).

    Args:
        model: the model to average; copied once here.
        decay: the largest decay.
        tau: updates over which the decay ramps up (63 % of ``decay`` after ``tau`` updates).
        updates: updates already done (when resuming).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if tau <= 0:
            raise ValueError(f"EMA tau must be positive, got {tau}")
        self.decay, self.tau, self.updates = float(decay), float(tau), int(updates)
        self.ema = self._copy(model)

    @staticmethod
    def _copy(model: nn.Module) -> nn.Module:
        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
        return ema

    def decay_at(self, updates: int) -> float:
        """The decay of the ``updates``-th update."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model``'s state dict has the same floating-point entries and shapes as the average's."""
        mine, theirs = self.ema.state_dict(), model.state_dict()
        return mine.keys() == theirs.keys() and all(
            v.shape == theirs[k].shape for k, v in mine.items() if v.dtype.is_floating_point)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One update from ``model``: ``ema = d * ema + (1 - d) * model``.

        Raises ``ValueError`` (nothing changed) when the model's shapes no longer match the average's, e.g. after
        the model was pruned without applying the same surgery to :attr:`ema`.
        """
        if not self.matches(model):
            raise ValueError("the model's parameters no longer match the EMA copy's shapes (pruned without "
                             "mirroring the surgery onto the EMA?)")
        self.updates += 1
        d = self.decay_at(self.updates)
        theirs = model.state_dict()
        for key, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(theirs[key].detach().to(value.dtype), alpha=1.0 - d)

    def reset(self, model: nn.Module) -> None:
        """Start over from ``model`` (``updates = 0``)."""
        self.ema = self._copy(model)
        self.updates = 0

    def to(self, device: torch.device | str) -> ModelEMA:
        self.ema.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """``{"updates", "decay", "tau", "state_dict"}``: plain data for a checkpoint."""
        return {"updates": self.updates, "decay": self.decay, "tau": self.tau, "state_dict": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises ``ValueError`` when the shapes do not match (nothing changed)."""
        weights = state["state_dict"]
        current = self.ema.state_dict()
        if weights.keys() != current.keys() or any(weights[k].shape != v.shape for k, v in current.items()):
            raise ValueError("the checkpoint's EMA weights do not match the model's architecture")
        self.ema.load_state_dict(weights)
        self.updates = int(state["updates"])
        self.decay, self.tau = float(state.get("decay", self.decay)), float(state.get("tau", self.tau))
