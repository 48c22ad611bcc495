"""ONNX export and ONNX Runtime (CPU): sessions, input feeds, per-kernel times from its profiler, output checks.

The model is exported with the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17; the
default ``torch.export``-based exporter needs the ``onnxscript`` package, which the extra does not install, while
the TorchScript-based one handles ultralytics models). Sessions run on ``CPUExecutionProvider`` with
``intra_op_num_threads`` set. Needs the ``onnx`` extra: ``pip install "lightning-prune[onnx]"``.

ONNX wants a flat tuple of tensors as output; :func:`onnx_outputs` decides which (ultralytics models in eval mode
return ``(predictions, raw_head_outputs_dict)``: only the predictions are exported).
"""

from __future__ import annotations

import bisect
import json
import os
import statistics
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_prune.profiling.results import LayerTime
from lightning_prune.utils.model import call_model, eval_mode
from lightning_prune.utils.tree import iter_tensors

__all__ = [
    "ONNX_EXTRA_HINT",
    "ONNX_OPSET",
    "ExportedModel",
    "OrtLayerTimer",
    "export_onnx",
    "export_to_directory",
    "onnx_outputs",
    "ort_feed",
    "ort_max_abs_diff",
    "ort_outputs_match",
    "ort_session",
    "positional_inputs",
    "require_onnx",
]

ONNX_EXTRA_HINT = 'pip install "lightning-prune[onnx]"'
ONNX_OPSET = 17


def require_onnx() -> tuple[Any, Any]:
    """Import ``onnx`` and ``onnxruntime``; a one-line ``ImportError`` naming the extra when either is missing.

    Example:
        >>> onnx, onnxruntime = require_onnx()  # doctest: +SKIP
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        missing = getattr(err, "name", None) or "onnx/onnxruntime"
        raise ImportError(
            f"the 'onnxruntime' latency backend needs onnx and onnxruntime ({missing} is not installed): "
            f"{ONNX_EXTRA_HINT}"
        ) from None
    return onnx, onnxruntime


def onnx_outputs(output: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a model output that go to ONNX (and are compared against ONNX Runtime).

    * the ultralytics eval-mode convention ``(predictions, dict_of_raw_head_outputs)``: only ``predictions``;
    * anything else: every tensor in it, depth first (dicts in insertion order).

    Example:
        >>> import torch
        >>> [t.shape for t in onnx_outputs((torch.zeros(1, 84, 8), {"boxes": torch.zeros(1, 64, 8)}))]
        [torch.Size([1, 84, 8])]
        >>> len(onnx_outputs({"a": torch.zeros(1), "b": [torch.zeros(2), torch.zeros(3)]}))
        3
    """
    if (isinstance(output, (tuple, list)) and len(output) == 2 and isinstance(output[0], torch.Tensor)
            and isinstance(output[1], dict)):
        return (output[0],)
    tensors = tuple(iter_tensors(output))
    if not tensors:
        raise ValueError(f"the model's output has no tensors to export ({type(output).__name__})")
    return tensors


def positional_inputs(example_input: Any) -> tuple[torch.Tensor, ...]:
    """The example input as the positional tuple ONNX export takes (a dict's values in order).

    Example:
        >>> import torch
        >>> len(positional_inputs({"x": torch.zeros(1), "y": torch.zeros(1)})), len(positional_inputs(torch.zeros(1)))
        (2, 1)
    """
    if isinstance(example_input, dict):
        return tuple(example_input.values())
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    return (example_input,)


class _OnnxWrapper(nn.Module):
    """Calls ``model`` like :func:`call_model` and returns :func:`onnx_outputs`; records conv call order."""

    def __init__(self, model: nn.Module, example_input: Any) -> None:
        super().__init__()
        self.model = model
        self.kwargs_names = list(example_input) if isinstance(example_input, dict) else None
        self.conv_calls: list[str] = []

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        self.conv_calls.clear()
        if self.kwargs_names is not None:
            return onnx_outputs(self.model(**dict(zip(self.kwargs_names, args))))
        return onnx_outputs(self.model(*args))


@dataclass
class ExportedModel:
    """An exported model file and what is needed to run and read it.

    Attributes:
        path: the ``.onnx`` file.
        input_names: the graph's input names, in positional order.
        names: ONNX node/tensor name -> conv module name (see :func:`export_onnx`).
    """

    path: str
    input_names: list[str]
    names: dict[str, str]


_FOLLOW_OPS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Mul", "Add", "Tanh", "Elu"}


def export_onnx(model: nn.Module, example_input: Any, path: str | os.PathLike) -> dict[str, str]:
    """Export ``model`` (eval mode, no grad; training flags restored) to ``path`` for ONNX Runtime.

    Uses the TorchScript-based exporter (``dynamo=False``, opset 17, static shapes) with the outputs chosen by
    :func:`onnx_outputs`.

    Returns:
        ONNX names that belong to each conv module: the conv node's name and output tensor names, and those of the
        activation/add nodes right after it (ONNX Runtime names fused kernels after them), each mapped to the module
        name. Convs are matched to modules by call order; when the counts disagree (functional convolutions), the
        conv node's own name is used as the module name.

    Example:
        >>> import torch, tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
        ...     names = export_onnx(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), os.path.join(d, "m.onnx"))
    """
    require_onnx()
    import onnx

    wrapper = _OnnxWrapper(model, example_input)
    convs = {module: name for name, module in model.named_modules() if isinstance(module, nn.modules.conv._ConvNd)}
    handles = [module.register_forward_pre_hook(lambda m, args: wrapper.conv_calls.append(convs[m]))
               for module in convs]
    inputs = positional_inputs(example_input)
    input_names = [f"input_{i}" for i in range(len(inputs))]
    try:
        with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
            wrapper.eval()
            warnings.simplefilter("ignore")  # TracerWarnings and the legacy exporter's deprecation notice
            torch.onnx.export(wrapper, inputs, os.fspath(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=input_names, do_constant_folding=True)
    finally:
        for handle in handles:
            handle.remove()
    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    conv_nodes = [node for node in graph.node if node.op_type in ("Conv", "ConvTranspose")]
    calls = list(wrapper.conv_calls)
    owners = calls if len(calls) == len(conv_nodes) else [node.name for node in conv_nodes]
    names: dict[str, str] = {}
    tensor_owner: dict[str, str] = {}
    for node, owner in zip(conv_nodes, owners):
        names[node.name] = owner
        for output in node.output:
            names[output] = tensor_owner[output] = owner
    for _ in range(2):  # up to two activation/add nodes after a conv (SiLU is Sigmoid then Mul)
        for node in graph.node:
            if node.op_type not in _FOLLOW_OPS or node.name in names:
                continue
            owner = next((tensor_owner[i] for i in node.input if i in tensor_owner), None)
            if owner is not None:
                names[node.name] = owner
                for output in node.output:
                    names.setdefault(output, owner)
                    tensor_owner.setdefault(output, owner)
    return names


def export_to_directory(model: nn.Module, example_input: Any, directory: str) -> ExportedModel:
    """:func:`export_onnx` to ``<directory>/model.onnx``."""
    path = os.path.join(directory, "model.onnx")
    names = export_onnx(model, example_input, path)
    return ExportedModel(path, [f"input_{i}" for i in range(len(positional_inputs(example_input)))], names)


def ort_session(path: str | bytes, num_threads: int, profile_prefix: str | None = None,
                providers: list[str] | None = None) -> Any:
    """A sequential ``InferenceSession`` (CPU unless ``providers`` say otherwise) with ``num_threads`` intra-op
    threads (profiling when a prefix is given); ``path`` may also be a serialised model."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])


def ort_feed(exported: ExportedModel, example_input: Any) -> dict[str, Any]:
    """The input feed of ``exported`` for ``example_input`` (NumPy arrays on the CPU)."""
    return {name: t.detach().cpu().numpy() for name, t in zip(exported.input_names, positional_inputs(example_input))}


class OrtLayerTimer:
    """Conv kernels' median time per run from ONNX Runtime's profiler (a separate, profiling session).

    ONNX Runtime renames the kernels it fuses or re-lays-out (``<tensor>_nchwc``, a conv fused with the activation
    after it is named after the activation's output), so kernel names are matched to modules through every ONNX name
    :func:`export_onnx` recorded for a conv; conv kernels that match none keep their kernel name.
    """

    def __init__(self, exported: ExportedModel, feed: dict[str, Any], num_threads: int, directory: str) -> None:
        self.exported, self.feed = exported, feed
        self.session = ort_session(exported.path, num_threads, profile_prefix=os.path.join(directory, "ort_profile"))
        self.warmup = 0

    def step(self, record: bool = True) -> None:
        """One profiled run (not counted when ``record`` is False)."""
        self.session.run(None, self.feed)
        if not record:
            self.warmup += 1

    def finish(self) -> list[LayerTime]:
        """Parse the profile: median time and share of each conv kernel (by module) over the recorded runs."""
        with open(self.session.end_profiling()) as file:
            events = json.load(file)
        runs = sorted((e["ts"], e["dur"]) for e in events
                      if e.get("cat") == "Session" and e.get("name") == "model_run")
        starts = [ts for ts, _ in runs]
        names = self.exported.names
        keys = sorted(names, key=len, reverse=True)
        per_run: dict[str, dict[int, float]] = {}
        kinds: dict[str, str] = {}
        for event in events:
            name, kind = event.get("name", ""), event.get("args", {}).get("op_name", "")
            if event.get("cat") != "Node" or not name.endswith("_kernel_time") or "Conv" not in kind:
                continue
            run = bisect.bisect_right(starts, event["ts"]) - 1
            if run < self.warmup:
                continue
            stem = name[: -len("_kernel_time")]
            key = next((k for k in keys if stem == k or stem.startswith(k + "_")), None)
            layer = names[key] if key is not None else stem
            times = per_run.setdefault(layer, {})
            times[run] = times.get(run, 0.0) + float(event["dur"])
            kinds[layer] = kind
        measured = [dur for _, dur in runs[self.warmup:]]
        total_us = statistics.median(measured) if measured else 0.0
        layers = []
        for layer, times in per_run.items():
            us = statistics.median(times.values())
            layers.append(LayerTime(layer, kinds[layer], us / 1e3, us / total_us if total_us else 0.0))
        return sorted(layers, key=lambda layer: -layer.ms)


def ort_max_abs_diff(model: nn.Module, example_input: Any, num_threads: int | None = None) -> float:
    """Largest absolute difference between eager outputs and ONNX Runtime outputs of the exported model.

    Both sides see the same inputs; the compared tensors are :func:`onnx_outputs` of the eager output.

    Example:
        >>> import torch
        >>> ort_max_abs_diff(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)) < 1e-4  # doctest: +SKIP
        True
    """
    require_onnx()
    threads = int(num_threads) if num_threads else torch.get_num_threads()
    with eval_mode(model), torch.inference_mode():
        expected = [t.detach().float().cpu() for t in onnx_outputs(call_model(model, example_input))]
    with tempfile.TemporaryDirectory(prefix="lightning_prune_ort_") as directory:
        exported = export_to_directory(model, example_input, directory)
        actual = ort_session(exported.path, threads).run(None, ort_feed(exported, example_input))
    if len(actual) != len(expected):
        raise AssertionError(f"ONNX Runtime returned {len(actual)} outputs, eager {len(expected)}")
    diff = 0.0
    for a, e in zip(actual, expected):
        a = torch.as_tensor(a).float()
        if a.shape != e.shape:
            raise AssertionError(f"output shapes differ: ONNX Runtime {tuple(a.shape)}, eager {tuple(e.shape)}")
        if e.numel():
            diff = max(diff, float((a - e).abs().max()))
    return diff


def ort_outputs_match(model: nn.Module, example_input: Any, atol: float = 1e-4) -> bool:
    """Whether ONNX Runtime reproduces the eager outputs within ``atol`` (see :func:`ort_max_abs_diff`)."""
    return ort_max_abs_diff(model, example_input) <= atol
