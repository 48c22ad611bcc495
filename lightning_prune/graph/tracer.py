"""The tracer: a :class:`~torch.overrides.TorchFunctionMode` that propagates channel labels through every torch
operation of one real forward pass (:func:`~lightning_prune.graph.trace.trace_channels` runs it).

Every torch function, ``Tensor`` method and ``torch.nn.functional`` call made during the forward passes through
:meth:`ChannelTracer.__torch_function__`, runs for real, and then the handler for that operation (the
:class:`~lightning_prune.graph.protocol.OpTable` the tracer is given: :mod:`lightning_prune.graph.ops`) decides how
the channel labels of its inputs map onto its outputs, which parameter dimensions they bind, and which channels must
be pinned. Because the forward really runs, Python control flow in the model (ultralytics' ``_predict_once``,
``Detect``'s train/eval branches) needs no symbolic support.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from lightning_prune.graph.attachments import Attachments, attached_modules
from lightning_prune.graph.protocol import OpTable
from lightning_prune.graph.records import Binding, ChannelInfo, Role, TraceResult, channel_info, set_channel_info
from lightning_prune.utils.deprecation import moved_names, moving
from lightning_prune.utils.tree import iter_tensors

__all__ = ["ChannelTracer"]

#: what this module held or re-exported before the tracer and the op handlers were parted (issue 36): one more release
__getattr__ = moved_names(__name__, {
    **moving(["GraphTraceError", "flatten_output", "trace_channels"], "lightning_prune.graph.trace"),
    **moving(["call_model", "eval_mode"], "lightning_prune.utils.model"),
    **moving(["OUTPUT_REASON"], "lightning_prune.graph.records"),
})

#: besides the op table's reshapes: the ops whose output is a view of a per-channel parameter (``gamma[:, None]``)
_VIEW_OPS = frozenset({"getitem", "permute", "transpose", "contiguous", "to", "float", "half", "type_as", "clone",
                       "detach"})


def _only_long_dim(tensor: torch.Tensor) -> int | None:
    """The one dim of ``tensor`` longer than 1 (None when there are none or several)."""
    long = [d for d, size in enumerate(tensor.shape) if size > 1]
    return long[0] if len(long) == 1 else None


def _has_labels(obj: Any) -> bool:
    return any(channel_info(tensor) is not None for tensor in iter_tensors(obj))


class ChannelTracer(TorchFunctionMode):
    """Records how channels flow through ``model`` while it runs, each operation handled by ``ops`` (use
    :func:`~lightning_prune.graph.trace.trace_channels`)."""

    def __init__(self, model: torch.nn.Module, ops: OpTable, attachments: Attachments | None = None) -> None:
        super().__init__()
        self.model = model
        self.ops = ops
        self.view_ops = _VIEW_OPS | frozenset(ops.RESHAPES)
        self.result = TraceResult()
        self.forest = self.result.forest
        self.attached = attached_modules(attachments)
        self.result.attached_names = frozenset(name for name, _ in self.attached)
        # parameters and buffers by identity -> (module name, attribute name, module)
        self.owners: dict[int, tuple[str, str, torch.nn.Module]] = {}
        for module_name, module in [*model.named_modules(remove_duplicate=False), *self.attached]:
            for attr, tensor in list(module._parameters.items()) + list(module._buffers.items()):
                if tensor is not None:
                    self.owners.setdefault(id(tensor), (module_name, attr, module))
        self.module_stack: list[tuple[str, torch.nn.Module]] = [("", model)]
        self._block_names: dict[str, int] = {}
        # channel counts read through ``x.shape``/``x.size()``, per module: (count, labels)
        self.shape_reads: dict[str, list[tuple[int, np.ndarray]]] = {}
        # reshaped views of per-channel parameters: id(view) -> (view, parameter, its channel dim, the view's)
        self.param_views: dict[int, tuple[torch.Tensor, torch.Tensor, int, int]] = {}

    # -- context used by the op handlers -------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """Name of the innermost module now running (``<model>`` for the top level)."""
        return self.module_stack[-1][0] or "<model>"

    @property
    def current_module(self) -> torch.nn.Module:
        return self.module_stack[-1][1]

    def block_name(self, base: str) -> str:
        """A unique producer-block name derived from ``base``."""
        count = self._block_names.get(base, 0) + 1
        self._block_names[base] = count
        return base if count == 1 else f"{base}#{count}"

    def owner(self, tensor: Any) -> tuple[str, str, torch.nn.Module] | None:
        return self.owners.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None

    def _record_view(self, name: str, source: torch.Tensor, out: Any) -> None:
        """``out`` is a reshaped view of a per-channel parameter (``gamma.view(1, -1, 1, 1)``, ``beta[:, None]``):
        remember which parameter dim its channel dim is, so that binding the view binds the parameter."""
        if not isinstance(out, torch.Tensor) or name not in self.view_ops:
            return
        base = self.param_views.get(id(source))
        if base is not None:
            _, param, param_dim, source_dim = base
        else:
            param, source_dim = source, _only_long_dim(source)
            param_dim = source_dim
        if source_dim is None or source_dim != _only_long_dim(source):
            return
        out_dim = _only_long_dim(out)
        if out_dim is not None and out.shape[out_dim] == source.shape[source_dim]:
            self.param_views[id(out)] = (out, param, param_dim, out_dim)

    def bind(self, tensor: torch.Tensor, dim: int, labels: np.ndarray, role: str) -> bool:
        """Bind ``dim`` of a model parameter/buffer (or of a reshaped view of a per-channel one) to ``labels``;
        False when ``tensor`` is not the model's."""
        view = self.param_views.get(id(tensor))
        if view is not None and view[0] is tensor:
            if dim != view[3]:
                return False
            tensor, dim = view[1], view[2]
        owner = self.owner(tensor)
        if owner is None:
            return False
        key = (id(tensor), dim)
        binding = self.result.bindings.get(key)
        if binding is None:
            self.result.bindings[key] = Binding(owner[0], owner[2], owner[1], dim, labels, role)
        else:  # the same weight used again (shared weights): its indices stay one channel each
            self.forest.unite_arrays(binding.labels, labels)
            if role == Role.PRODUCER:
                binding.role = Role.PRODUCER
        return True

    def produce(self, weight: torch.Tensor, dim: int) -> np.ndarray:
        """Labels of the channels that ``weight`` produces along ``dim`` (fresh on first use, shared after)."""
        binding = self.result.bindings.get((id(weight), dim))
        if binding is not None:
            binding.role = Role.PRODUCER
            return binding.labels
        owner = self.owner(weight)
        labels = self.forest.allocate(weight.shape[dim], self.block_name(owner[0] if owner else self.where))
        if owner is not None:
            self.bind(weight, dim, labels, Role.PRODUCER)
        return labels

    def pin(self, obj: Any, reason: str, override: bool = False) -> None:
        """Pin the channels of every labelled tensor in ``obj``."""
        for tensor in iter_tensors(obj):
            info = channel_info(tensor)
            if info is not None:
                self.forest.pin(info.labels, reason, override)

    def consume(self, info: ChannelInfo) -> None:
        """A layer mixes these channels: if they may be non-zero under masking, masking and pruning differ."""
        if info.taint is not None:
            self.forest.mark_inexact(info.labels, f"{info.taint} feeds {self.where}")

    def _check_sized_by_channels(self, func: Any, out: torch.Tensor) -> None:
        """An untraced tensor reshaped to a channel count read from a traced tensor's shape (e.g. ultralytics
        ``Attention``: ``B, C, H, W = x.shape ... (v @ attn).view(B, C, H, W)``): those channels are tied to
        something the trace cannot follow, so they are pinned."""
        if self.ops.op_name(func) not in self.ops.RESHAPES:
            return
        sizes = set(out.shape[1:])
        for count, labels in self.shape_reads[self.where]:
            if count in sizes:
                reason = f"its channel count {count} (read from a shape) sizes a reshape in {self.where}"
                self.forest.pin(labels, reason)

    def _uses_parameters(self, args: tuple) -> bool:
        # a layer fed by untraced values (e.g. after an unsupported op) still produces channels of its own
        return any(isinstance(a, torch.Tensor) and id(a) in self.owners for a in args[1:3])

    # -- the mode ---------------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if args and isinstance(args[0], torch.Tensor) and (id(args[0]) in self.owners or id(args[0]) in
                                                           self.param_views):
            self._record_view(self.ops.op_name(func), args[0], out)
        if not (_has_labels(args) or any(_has_labels(v) for v in kwargs.values()) or self._uses_parameters(args)):
            if self.shape_reads.get(self.where) and isinstance(out, torch.Tensor):
                self._check_sized_by_channels(func, out)
            return out
        self.result.op_count += 1
        name = self.ops.op_name(func)
        try:
            self.ops.handle(self, name, func, args, kwargs, out)
        except Exception as err:  # an op we misread must pin, never break the user's forward
            self.pin((args, list(kwargs.values())), f"could not interpret '{name}' in {self.where} ({err!r})")
            for tensor in iter_tensors(out):
                set_channel_info(tensor, None)
        return out
