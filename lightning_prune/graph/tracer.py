"""Trace one real forward pass and propagate channel labels through every torch operation.

The tracer is a :class:`~torch.overrides.TorchFunctionMode`: every torch function, ``Tensor`` method and
``torch.nn.functional`` call made during the forward passes through :meth:`ChannelTracer.__torch_function__`, runs
for real, and then the handler for that operation (see :mod:`lightning_prune.graph.ops`) decides how the channel
labels of its inputs map onto its outputs, which parameter dimensions they bind, and which channels must be pinned.
Because the forward really runs, Python control flow in the model (ultralytics' ``_predict_once``, ``Detect``'s
train/eval branches) needs no symbolic support.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from lightning_prune.graph import ops
from lightning_prune.graph.attachments import ATTACHMENT_REASON, Attachments, attached_modules, run_attachments
from lightning_prune.graph.conventions import default_output_filter
from lightning_prune.graph.records import (
    OUTPUT_REASON,
    Binding,
    ChannelInfo,
    Role,
    TraceResult,
    channel_info,
    set_channel_info,
)
from lightning_prune.utils.model import call_model, eval_mode
from lightning_prune.utils.tree import iter_tensors

__all__ = ["ChannelTracer", "GraphTraceError", "trace_channels", "TraceResult", "call_model", "eval_mode",
           "flatten_output", "iter_tensors", "OUTPUT_REASON"]


class GraphTraceError(RuntimeError):
    """The model's forward failed on the example input, so no graph could be built."""


_VIEW_OPS = frozenset({*ops.RESHAPES, "getitem", "permute", "transpose", "contiguous", "to", "float", "half",
                       "type_as", "clone", "detach"})


def _only_long_dim(tensor: torch.Tensor) -> int | None:
    """The one dim of ``tensor`` longer than 1 (None when there are none or several)."""
    long = [d for d, size in enumerate(tensor.shape) if size > 1]
    return long[0] if len(long) == 1 else None


def _has_labels(obj: Any) -> bool:
    return any(channel_info(tensor) is not None for tensor in iter_tensors(obj))


class ChannelTracer(TorchFunctionMode):
    """Records how channels flow through ``model`` while it runs (use :func:`trace_channels`)."""

    def __init__(self, model: torch.nn.Module, attachments: Attachments | None = None) -> None:
        super().__init__()
        self.model = model
        self.result = TraceResult()
        self.forest = self.result.forest
        self.attached = attached_modules(attachments)
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
        if not isinstance(out, torch.Tensor) or name not in _VIEW_OPS:
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
        if ops.op_name(func) not in ops.RESHAPES:
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
            self._record_view(ops.op_name(func), args[0], out)
        if not (_has_labels(args) or any(_has_labels(v) for v in kwargs.values()) or self._uses_parameters(args)):
            if self.shape_reads.get(self.where) and isinstance(out, torch.Tensor):
                self._check_sized_by_channels(func, out)
            return out
        self.result.op_count += 1
        name = ops.op_name(func)
        try:
            ops.handle(self, name, func, args, kwargs, out)
        except Exception as err:  # an op we misread must pin, never break the user's forward
            self.pin((args, list(kwargs.values())), f"could not interpret '{name}' in {self.where} ({err!r})")
            for tensor in iter_tensors(out):
                set_channel_info(tensor, None)
        return out


@contextlib.contextmanager
def _module_stack_hooks(tracer: ChannelTracer) -> Iterator[None]:
    handles = []

    def push(name: str):
        def hook(module, args):  # noqa: ANN001, ANN202
            tracer.module_stack.append((name, module))

        return hook

    def pop(module, args, output):  # noqa: ANN001, ANN202
        if len(tracer.module_stack) > 1:
            tracer.module_stack.pop()

    for name, module in [*tracer.model.named_modules(), *tracer.attached]:
        if name:
            handles.append(module.register_forward_pre_hook(push(name)))
            handles.append(module.register_forward_hook(pop))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def trace_channels(model: torch.nn.Module, example_inputs: Any,
                   output_filter: Callable[[Any], Any] | None = None,
                   attachments: Attachments | None = None) -> TraceResult:
    """Run ``model`` once on ``example_inputs`` (eval mode, no grad) and return the channel trace.

    Channels that reach the output (after ``output_filter``, by default
    :func:`~lightning_prune.graph.conventions.default_output_filter`) are pinned. ``attachments`` (see
    :mod:`~lightning_prune.graph.attachments`) run on their source modules' outputs and are traced with the model.

    The model is left as it was: training flags are restored, and nothing is written to its parameters.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
        >>> result = trace_channels(net, torch.randn(1, 3, 16, 16))
        >>> sorted({b.module_name for b in result.bindings.values()})
        ['0', '2']
    """
    tracer = ChannelTracer(model, attachments)
    attached_outputs: list[Any] = []
    inputs = list(iter_tensors(example_inputs))
    if not inputs:
        raise GraphTraceError("the example input holds no tensor: pass the tensor(s) the model's forward takes")
    for index, tensor in enumerate(inputs):
        if tensor.ndim >= 2 and tensor.is_floating_point():
            labels = tracer.forest.allocate(tensor.shape[1], f"input:{index}")
            tracer.forest.pin(labels, "model input")
            set_channel_info(tensor, ChannelInfo(1, labels))
    try:
        with contextlib.ExitStack() as stack:
            for _, (_, module) in (attachments or {}).items():
                stack.enter_context(eval_mode(module))
            stack.enter_context(run_attachments(model, attachments, attached_outputs))
            stack.enter_context(eval_mode(model))
            stack.enter_context(torch.no_grad())
            stack.enter_context(_module_stack_hooks(tracer))
            stack.enter_context(tracer)
            try:
                output = call_model(model, example_inputs)
            except Exception as err:
                where = tracer.where
                kind = type(tracer.current_module).__name__
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise GraphTraceError(
                    f"the forward failed on the example input in module '{where}' ({kind}): "
                    f"{type(err).__name__}: {message}"
                ) from err
        if output_filter is None:
            output_filter = default_output_filter(model)
        kept = flatten_output(output_filter(output))
        for tensor in flatten_output(output):  # what the filter drops is no output, but must not keep labels
            if not any(tensor is k for k in kept):
                set_channel_info(tensor, None)
        outputs = kept
        tracer.pin(outputs, OUTPUT_REASON, override=True)
        if attachments:
            tracer.pin(attached_outputs, ATTACHMENT_REASON, override=True)
            attached = {id(module) for _, module in tracer.attached}
            for binding in tracer.result.bindings.values():
                if binding.role == Role.PRODUCER and id(binding.module) in attached:
                    tracer.forest.pin(binding.labels, ATTACHMENT_REASON, True)
            for tensor in flatten_output(attached_outputs):
                set_channel_info(tensor, None)
        tracer.result.output_shapes = [tuple(tensor.shape) for tensor in outputs]
        for tensor in outputs:
            set_channel_info(tensor, None)
    finally:
        for tensor in inputs:
            set_channel_info(tensor, None)
    return tracer.result


def flatten_output(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output, dataclass-like records included (see :func:`~lightning_prune.utils.tree.
    iter_tensors`)."""
    return list(iter_tensors(output, attributes=True))
