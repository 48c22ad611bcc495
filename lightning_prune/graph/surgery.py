"""Physical removal of channels: slice parameters and buffers, fix module attributes, roll back on failure.

Surgery works on the bindings a trace left behind (which parameter dimension holds which channel labels), so it
knows nothing about graphs or plans: it is told which labels go, and removes every index that carries one.
Tensors are changed through ``.data`` so that parameter objects keep their identity: optimizers, EMA copies and
anything else holding a reference keep pointing at the (now smaller) parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_prune.graph.records import Binding, SplitRecord

__all__ = ["ParamChange", "Surgery", "sync_module_attributes"]


@dataclass(eq=False)
class ParamChange:
    """``tensor`` (``<module>.<name>``) kept only the indices ``keep[dim]`` along each changed dim."""

    module_name: str
    name: str
    tensor: torch.Tensor
    old_shape: tuple[int, ...]
    keep: dict[int, torch.Tensor] = field(default_factory=dict)

    def slice(self, value: torch.Tensor) -> torch.Tensor:
        """Apply the same slicing to a tensor shaped like the old parameter (a gradient, an optimizer moment);
        the result keeps ``value``'s memory format (``channels_last`` stays ``channels_last``)."""
        memory_format = _memory_format(value)
        for dim, index in sorted(self.keep.items()):
            value = value.index_select(dim, index.to(value.device))
        return value if memory_format is None else value.contiguous(memory_format=memory_format)


def _memory_format(value: torch.Tensor) -> torch.memory_format | None:
    """``channels_last`` (``_3d``) when ``value`` is laid out so and not also plainly contiguous; else ``None``."""
    if value.is_contiguous():
        return None
    if value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if value.dim() == 5 and value.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


class Surgery:
    """One atomic removal: :meth:`apply` it, and :meth:`rollback` restores every tensor and attribute.

    ``root`` (the whole model) lets it find every module that holds a sliced parameter, not only the one the trace
    bound it to, so that a second module sharing a weight gets its ``in_channels``/``out_channels`` fixed too.
    Sliced tensors keep their memory format (a ``channels_last`` model stays ``channels_last``).

    Example:
        >>> import numpy as np, torch
        >>> from lightning_prune.graph.trace import trace_channels
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1))
        >>> result = trace_channels(net, torch.randn(1, 3, 8, 8))
        >>> removed = np.zeros(len(result.forest), dtype=bool)
        >>> removed[3 + 0] = True  # the first output channel of conv 0 (labels 0-2 are the input's)
        >>> surgery = Surgery(result.bindings.values(), result.splits, removed)
        >>> _ = surgery.apply()
        >>> net[0].out_channels, net[1].in_channels
        (7, 7)
        >>> surgery.rollback()
        >>> net[0].weight.shape[0]
        8
    """

    def __init__(self, bindings: Iterable[Binding], splits: Iterable[SplitRecord], removed: np.ndarray,
                 root: nn.Module | None = None) -> None:
        self._bindings = list(bindings)
        self._splits = list(splits)
        self._removed = removed
        self._root = root
        self._saved_tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._saved_attrs: list[tuple[Any, str, Any]] = []

    def plan(self) -> list[ParamChange]:
        """The slicing each touched tensor will get (nothing is changed)."""
        changes: dict[int, ParamChange] = {}
        for binding in self._bindings:
            gone = self._removed[binding.labels]
            if not gone.any():
                continue
            tensor = binding.tensor
            change = changes.setdefault(
                id(tensor), ParamChange(binding.module_name, binding.name, tensor, tuple(tensor.shape))
            )
            change.keep[binding.dim] = torch.from_numpy(np.nonzero(~gone)[0])
        return list(changes.values())

    def apply(self) -> list[ParamChange]:
        """Slice every touched tensor and fix module attributes; on any error, roll back and re-raise."""
        changes = self.plan()
        try:
            touched: dict[int, nn.Module] = {}
            for binding in self._bindings:
                if self._removed[binding.labels].any():
                    touched[id(binding.module)] = binding.module
            if self._root is not None:  # a module sharing a sliced parameter (tied weights) needs its sizes fixed too
                sliced = {id(change.tensor) for change in changes}
                for module in self._root.modules():
                    if id(module) not in touched and any(
                            id(t) in sliced for t in (*module.parameters(recurse=False),
                                                      *module.buffers(recurse=False))):
                        touched[id(module)] = module
            modules = list(touched.values())
            before = {id(m): _module_shape_attrs(m) for m in modules}
            for change in changes:
                tensor = change.tensor
                grad = tensor.grad
                self._saved_tensors.append((tensor, tensor.data, grad))
                with torch.no_grad():
                    tensor.data = change.slice(tensor.data)
                    if grad is not None:
                        tensor.grad = change.slice(grad)
            for module in modules:
                for name, value in before[id(module)].items():
                    self._saved_attrs.append((module, name, value))
                sync_module_attributes(module, before[id(module)])
            for split in self._splits:
                pieces = split.extra.get("pieces")
                if pieces is not None:  # a list attribute of piece sizes (timm MixedConv2d.splits)
                    sizes = [int((~self._removed[labels]).sum()) for labels in pieces]
                    for attr in split.extra.get("sequence_attrs", []):
                        old = getattr(split.module, attr)
                        if list(old) != sizes:
                            self._saved_attrs.append((split.module, attr, old))
                            setattr(split.module, attr, type(old)(sizes))
                    continue
                kept = int((~self._removed[split.piece_labels]).sum())
                if kept != len(split.piece_labels):
                    for attr in split.attrs:
                        self._saved_attrs.append((split.module, attr, getattr(split.module, attr)))
                        setattr(split.module, attr, kept)
        except BaseException:
            self.rollback()
            raise
        return changes

    def rollback(self) -> None:
        """Undo :meth:`apply` exactly (tensors and attributes)."""
        for obj, name, value in reversed(self._saved_attrs):
            setattr(obj, name, value)
        for tensor, data, grad in reversed(self._saved_tensors):
            tensor.data = data
            tensor.grad = grad
        self._saved_attrs.clear()
        self._saved_tensors.clear()


_SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                "num_channels", "num_groups", "num_parameters")


def _module_shape_attrs(module: nn.Module) -> dict[str, Any]:
    return {name: getattr(module, name) for name in _SHAPE_ATTRS if isinstance(getattr(module, name, None), int)}


def sync_module_attributes(module: nn.Module, before: dict[str, Any] | None = None) -> None:
    """Make a module's size attributes (``out_channels``, ``num_features``, ...) agree with its tensors' shapes.

    ``before`` are the attribute values before slicing (they tell a depthwise conv from a dense one).
    """
    before = before if before is not None else _module_shape_attrs(module)
    if isinstance(module, nn.modules.conv._ConvNd):
        weight = module.weight
        # one input channel per group (depthwise, or a channel multiplier): pruning removes whole groups; otherwise
        # pruning removes the same in-group positions from every group and the group count stays
        groups = before.get("groups", 1)
        one_input_per_group = groups > 1 and groups == before.get("in_channels")
        if module.transposed:
            module.in_channels = weight.shape[0]
            module.groups = module.in_channels if one_input_per_group else module.groups
            module.out_channels = weight.shape[1] * module.groups
        else:
            per_group_out = max(1, before.get("out_channels", weight.shape[0]) // groups)
            module.out_channels = weight.shape[0]
            module.groups = module.out_channels // per_group_out if one_input_per_group else module.groups
            module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, (nn.modules.batchnorm._NormBase,)):
        source = module.weight if module.weight is not None else module.running_mean
        if source is not None:
            module.num_features = source.shape[0]
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        module.num_channels = module.weight.shape[0]
        module.num_groups = module.num_channels  # only per-channel GroupNorm is ever pruned
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()
