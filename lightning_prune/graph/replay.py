"""Replay of data-dependent selections (``topk``, ``sort``, ``argmax``, ...) between two forwards.

A model whose forward *selects* by value — RT-DETR picks its 300 decoder queries with ``topk`` over encoder scores,
YOLOv10's end-to-end head ranks boxes — is discontinuous: float noise of 1e-6 on its input can swap two selected
items and move the output by 0.4. Comparing the masked model with the pruned one (which differ only in summation
order) would then reject every plan. :class:`SelectionReplay` records the indices every selection op chose during
the reference forward and makes the second forward choose the same ones (values gathered at those indices), so the
comparison measures what pruning changed and nothing else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from lightning_prune.graph.ops import op_name

__all__ = ["SelectionReplay"]

_SELECTIONS = frozenset({"topk", "sort", "argsort", "argmax", "argmin", "max", "min"})


def _dim(name: str, args: tuple, kwargs: dict) -> Any:
    if "dim" in kwargs:
        return kwargs["dim"]
    index = 2 if name == "topk" else 1
    if len(args) > index and isinstance(args[index], int):
        return args[index]
    return -1 if name in ("topk", "sort", "argsort") else None


class SelectionReplay(TorchFunctionMode):
    """Inside a first ``with SelectionReplay() as replay:`` block, record the indices chosen by every selection op;
    inside ``with replay.replaying():`` blocks afterwards, the same calls (in the same order, on inputs of the same
    shape) return the recorded choices. A call that does not line up runs normally.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[0.5, 0.50001, 0.1]])
        >>> with SelectionReplay() as replay:
        ...     first = torch.topk(scores, 1).indices.tolist()
        >>> with replay.replaying():
        ...     again = torch.topk(scores.flip(-1).flip(-1) + torch.tensor([[0.0, -0.001, 0.0]]), 1).indices.tolist()
        >>> first, again
        ([[1]], [[1]])
    """

    def __init__(self) -> None:
        super().__init__()
        self.recorded: list[tuple[str, tuple[int, ...], torch.Tensor]] = []
        self._replay = False
        self._index = 0

    def replaying(self) -> SelectionReplay:
        """This mode, set to replay what it recorded (from the first call on)."""
        self._replay, self._index = True, 0
        return self

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = op_name(func)
        if name not in _SELECTIONS or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        dim = _dim(name, args, kwargs)
        if name in ("max", "min") and not isinstance(dim, int):
            return func(*args, **kwargs)  # a reduction to a scalar or an element-wise max: nothing is selected
        x = args[0]
        if not self._replay:
            out = func(*args, **kwargs)
            indices = out if isinstance(out, torch.Tensor) else getattr(out, "indices", None)
            if isinstance(indices, torch.Tensor):
                self.recorded.append((name, tuple(x.shape), indices.detach().clone()))
            return out
        if self._index >= len(self.recorded):
            return func(*args, **kwargs)
        recorded_name, shape, indices = self.recorded[self._index]
        self._index += 1
        if recorded_name != name or shape != tuple(x.shape):
            return func(*args, **kwargs)
        if name in ("argmax", "argmin", "argsort"):
            return indices.clone()
        out = func(*args, **kwargs)
        values = x.gather(dim, indices) if indices.dim() == x.dim() else x.gather(dim, indices.unsqueeze(dim)).squeeze(
            dim)
        return type(out)((values, indices.clone()))
