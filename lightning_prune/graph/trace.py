"""Trace one real forward pass: the tracer (:mod:`~lightning_prune.graph.tracer`) run with the op handlers
(:mod:`~lightning_prune.graph.ops`), the module stack, graph attachments, and the output's channels pinned."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from lightning_prune.graph import ops
from lightning_prune.graph.attachments import ATTACHMENT_REASON, Attachments, run_attachments
from lightning_prune.graph.conventions import default_output_filter
from lightning_prune.graph.records import OUTPUT_REASON, ChannelInfo, Role, TraceResult, set_channel_info
from lightning_prune.graph.tracer import ChannelTracer
from lightning_prune.utils.model import call_model, eval_mode
from lightning_prune.utils.tree import iter_tensors

__all__ = ["GraphTraceError", "flatten_output", "trace_channels"]


class GraphTraceError(RuntimeError):
    """The model's forward failed on the example input, so no graph could be built."""


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
    tracer = ChannelTracer(model, ops, attachments)
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
