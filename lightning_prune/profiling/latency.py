"""Measured latency on real backends: eager PyTorch and ONNX Runtime (CPU).

FLOPs say how much arithmetic a pruned model saves; these functions say how much *time* it saves on the machine they
run on. Everything here measures a model in eval mode (eager: under :func:`torch.inference_mode`) with a fixed thread
count, after warm-up runs, and reports the median and interquartile range of single-call times (never the mean: one
preempted call would move it). The model's training flags (per module) and torch's thread count are restored. To
compare models, :func:`compare_latency` interleaves them (A, B, A, B, ...) so a drifting machine hits all alike.

Backends:

* ``"eager"``: ``model(example_input)`` timed with :class:`torch.utils.benchmark.Timer` (which synchronises CUDA).
* ``"onnxruntime"``: the model is exported to a temporary directory with the TorchScript-based exporter
  (``torch.onnx.export(..., dynamo=False)``, opset 17; the default ``torch.export``-based exporter needs the
  ``onnxscript`` package, which the extra does not install, while the TorchScript-based one handles ultralytics
  models) and ``InferenceSession.run`` is timed on ``CPUExecutionProvider`` with ``intra_op_num_threads`` set. Needs
  the ``onnx`` extra: ``pip install "lightning-prune[onnx]"``.

ONNX wants a flat tuple of tensors as output; :func:`onnx_outputs` decides which (ultralytics models in eval mode
return ``(predictions, raw_head_outputs_dict)``: only the predictions are exported).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    >>> result = measure_latency(net, torch.randn(1, 3, 32, 32), repeats=5, per_layer=True)
    >>> result.backend, len(result.times_ms), result.median_ms > 0
    ('eager', 5, True)
    >>> sorted(layer.name for layer in result.layers)
    ['0', '2']
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.benchmark import Measurement, Timer

from lightning_prune.graph.tracer import call_model, eval_mode, iter_tensors

__all__ = [
    "BACKENDS",
    "ONNX_EXTRA_HINT",
    "ChannelSpeed",
    "LatencyResult",
    "LayerTime",
    "channel_speed_table",
    "compare_latency",
    "export_onnx",
    "measure_latency",
    "onnx_outputs",
    "ort_max_abs_diff",
    "ort_outputs_match",
    "require_onnx",
    "suggest_round_to",
]

BACKENDS = ("eager", "onnxruntime")
ONNX_EXTRA_HINT = 'pip install "lightning-prune[onnx]"'
ONNX_OPSET = 17


# -- results ----------------------------------------------------------------------------------------------------------
class LayerTime(NamedTuple):
    """Time of one conv layer inside a forward pass.

    Attributes:
        name: the module's qualified name in the measured model (for ONNX Runtime: the ONNX node name when it cannot
            be matched to a module).
        op_type: the module class (eager) or the ONNX Runtime kernel (``Conv``, ``FusedConv``, ...).
        ms: median time of the layer per forward pass, in milliseconds.
        share: ``ms`` divided by the median time of the whole forward in the same (instrumented) passes.
    """

    name: str
    op_type: str
    ms: float
    share: float


@dataclass
class LatencyResult:
    """What :func:`measure_latency` measured.

    Attributes:
        backend: ``"eager"`` or ``"onnxruntime"``.
        median_ms, iqr_ms: median and interquartile range of the single-call times.
        times_ms: every timed call, in the order it ran.
        num_threads: the intra-op thread count used.
        batch_size: the batch size of the input that was timed.
        layers: conv layers, slowest first, when ``per_layer=True`` (``None`` otherwise). They come from separate,
            instrumented passes (forward hooks for eager, ONNX Runtime's profiler), so they are for ranking and shares,
            not to be added up against ``median_ms``.
    """

    backend: str
    median_ms: float
    iqr_ms: float
    times_ms: list[float]
    num_threads: int
    batch_size: int
    layers: list[LayerTime] | None = field(default=None, repr=False)

    @property
    def conv_share(self) -> float | None:
        """Share of the forward time spent in conv layers (``None`` without ``per_layer``)."""
        return None if self.layers is None else sum(layer.share for layer in self.layers)

    def slowest(self, n: int = 10) -> list[LayerTime]:
        """The ``n`` slowest conv layers (empty without ``per_layer``)."""
        return list(self.layers or [])[:n]

    def __str__(self) -> str:
        text = (f"{self.backend}: {self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f}, n={len(self.times_ms)}, "
                f"{self.num_threads} threads, batch {self.batch_size})")
        if self.layers is not None:
            text += f", conv {self.conv_share:.0%} of time"
        return text


# -- helpers ----------------------------------------------------------------------------------------------------------
def require_onnx() -> tuple[Any, Any]:
    """Import ``onnx`` and ``onnxruntime``; a one-line ``ImportError`` naming the extra when either is missing."""
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


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map_tensors(item, fn) for item in obj)
    if isinstance(obj, list):
        return [_map_tensors(item, fn) for item in obj]
    if isinstance(obj, dict):
        return {key: _map_tensors(value, fn) for key, value in obj.items()}
    return obj


def _batched(example_input: Any, batch_size: int | None) -> Any:
    """``example_input`` with every tensor's first sample repeated ``batch_size`` times along dim 0."""
    if batch_size is None:
        return example_input
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def repeat(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        return t[:1].repeat(batch_size, *([1] * (t.dim() - 1)))

    return _map_tensors(example_input, repeat)


def _batch_size_of(example_input: Any) -> int:
    tensors = [t for t in iter_tensors(example_input) if t.dim() > 0]
    return int(tensors[0].shape[0]) if tensors else 1


@contextlib.contextmanager
def _threads(num_threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], warmup: int, repeats: int, num_threads: int, label: str) -> Measurement:
    """``warmup`` untimed calls, then ``repeats`` single calls, each timed by :class:`torch.utils.benchmark.Timer`."""
    for _ in range(warmup):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads, label=label)
    return Measurement.merge([timer.timeit(number=1) for _ in range(repeats)])[0]


# -- ONNX -------------------------------------------------------------------------------------------------------------
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


def _positional(example_input: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_input, dict):
        return tuple(example_input.values())
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    return (example_input,)


@dataclass
class _Exported:
    path: str
    input_names: list[str]
    names: dict[str, str]  # ONNX node/tensor name -> conv module name (see export_onnx)


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
    """
    require_onnx()
    import onnx

    wrapper = _OnnxWrapper(model, example_input)
    convs = {module: name for name, module in model.named_modules() if isinstance(module, nn.modules.conv._ConvNd)}
    handles = [module.register_forward_pre_hook(lambda m, args: wrapper.conv_calls.append(convs[m]))
               for module in convs]
    inputs = _positional(example_input)
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


def _export(model: nn.Module, example_input: Any, directory: str) -> _Exported:
    path = os.path.join(directory, "model.onnx")
    names = export_onnx(model, example_input, path)
    return _Exported(path, [f"input_{i}" for i in range(len(_positional(example_input)))], names)


def _session(path: str, num_threads: int, profile_prefix: str | None = None) -> Any:
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _feed(exported: _Exported, example_input: Any) -> dict[str, Any]:
    return {name: t.detach().cpu().numpy() for name, t in zip(exported.input_names, _positional(example_input))}


class _OrtLayerTimer:
    """Conv kernels' median time per run from ONNX Runtime's profiler (a separate, profiling session).

    ONNX Runtime renames the kernels it fuses or re-lays-out (``<tensor>_nchwc``, a conv fused with the activation
    after it is named after the activation's output), so kernel names are matched to modules through every ONNX name
    :func:`export_onnx` recorded for a conv; conv kernels that match none keep their kernel name.
    """

    def __init__(self, exported: _Exported, feed: dict[str, Any], num_threads: int, directory: str) -> None:
        self.exported, self.feed = exported, feed
        self.session = _session(exported.path, num_threads, profile_prefix=os.path.join(directory, "ort_profile"))
        self.warmup = 0

    def step(self, record: bool = True) -> None:
        self.session.run(None, self.feed)
        if not record:
            self.warmup += 1

    def finish(self) -> list[LayerTime]:
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


class _EagerLayerTimer:
    """Conv modules' median time per forward, from pre/post forward hooks (CUDA synchronised around each)."""

    def __init__(self, model: nn.Module, example_input: Any, device: torch.device) -> None:
        self.model, self.example_input, self.device = model, example_input, device
        self.convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
        self.per_layer: dict[str, list[float]] = {name: [] for name, _ in self.convs}
        self.totals: list[float] = []
        self._starts: dict[int, float] = {}
        self._current: dict[str, float] = {}

    def _pre(self, module: nn.Module, args: Any) -> None:
        _sync(self.device)
        self._starts[id(module)] = time.perf_counter()

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            _sync(self.device)
            elapsed = time.perf_counter() - self._starts.pop(id(module))
            self._current[name] = self._current.get(name, 0.0) + elapsed

        return hook

    def step(self, record: bool = True) -> None:
        handles = []
        for name, module in self.convs:
            handles += [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post(name))]
        self._current.clear()
        try:
            _sync(self.device)
            start = time.perf_counter()
            call_model(self.model, self.example_input)
            _sync(self.device)
            total = time.perf_counter() - start
        finally:
            for handle in handles:
                handle.remove()
        if record:
            self.totals.append(total)
            for name, seconds in self._current.items():
                self.per_layer[name].append(seconds)

    def finish(self) -> list[LayerTime]:
        if not self.totals:
            return []
        total = statistics.median(self.totals)
        kinds = {name: type(module).__name__ for name, module in self.convs}
        layers = [LayerTime(name, kinds[name], statistics.median(times) * 1e3, statistics.median(times) / total)
                  for name, times in self.per_layer.items() if times]
        return sorted(layers, key=lambda layer: -layer.ms)


# -- measuring ------------------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """A model ready to be timed: ``run()`` is one forward; ``layer_timer()`` starts a per-layer breakdown."""

    run: Callable[[], Any]
    layer_timer: Callable[[], _EagerLayerTimer | _OrtLayerTimer]
    batch_size: int


@contextlib.contextmanager
def _prepare(model: nn.Module, example_input: Any, backend: str, threads: int,
             batch_size: int | None) -> Iterator[_Prepared]:
    """Eval mode (restored on exit) and, for ONNX Runtime, the exported model's session in a temporary directory."""
    device = _device(model)
    inputs = _map_tensors(_batched(example_input, batch_size), lambda t: t.to(device))
    with eval_mode(model):
        if backend == "eager":
            yield _Prepared(lambda: call_model(model, inputs), lambda: _EagerLayerTimer(model, inputs, device),
                            _batch_size_of(inputs))
            return
        with tempfile.TemporaryDirectory(prefix="lightning_prune_ort_") as directory:
            exported = _export(model, inputs, directory)
            session = _session(exported.path, threads)
            feed = _feed(exported, inputs)
            yield _Prepared(lambda: session.run(None, feed),
                            lambda: _OrtLayerTimer(exported, feed, threads, directory), _batch_size_of(inputs))


def compare_latency(models: dict[str, nn.Module], example_input: Any, backend: str = "eager", *, rounds: int = 5,
                    warmup: int = 3, repeats: int = 10, num_threads: int | None = None,
                    batch_size: int | None = None, per_layer: bool = False) -> dict[str, LatencyResult]:
    """Latency of several models on the same input, measured interleaved: ``rounds`` rounds of ``A, B, C, ...``.

    Use this, not separate :func:`measure_latency` calls, to compare models: a machine that slows down or speeds up
    during the measurement (other processes, frequency scaling) then affects every model alike. Each model is
    prepared once (exported once for ONNX Runtime), warmed up once, then timed for ``repeats`` single calls per
    round; each result pools the ``rounds * repeats`` calls (median, IQR). With ``per_layer``, the instrumented
    passes (``repeats`` per model after one warm-up) are interleaved the same way. Other arguments as for
    :func:`measure_latency`.

    Example:
        >>> import torch
        >>> models = {"wide": torch.nn.Conv2d(3, 64, 3), "narrow": torch.nn.Conv2d(3, 8, 3)}
        >>> results = compare_latency(models, torch.randn(1, 3, 32, 32), rounds=2, repeats=3)
        >>> sorted(results), len(results["wide"].times_ms)
        (['narrow', 'wide'], 6)
    """
    _check_backend(backend)
    if backend == "onnxruntime":
        require_onnx()
    if repeats < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"need repeats >= 1, rounds >= 1 and warmup >= 0, got repeats={repeats}, rounds={rounds}, "
                         f"warmup={warmup}")
    threads = int(num_threads) if num_threads else torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    timed: dict[str, list[Measurement]] = {name: [] for name in models}
    layers: dict[str, list[LayerTime] | None] = dict.fromkeys(models)
    with _threads(threads), contextlib.ExitStack() as stack:
        prepared = {name: stack.enter_context(_prepare(model, example_input, backend, threads, batch_size))
                    for name, model in models.items()}
        with torch.inference_mode() if backend == "eager" else contextlib.nullcontext():
            for round_index in range(rounds):
                for name, runner in prepared.items():
                    label = f"{name} [{backend}]"
                    timed[name].append(_time_calls(runner.run, warmup if round_index == 0 else 0, repeats, threads,
                                                   label))
            if per_layer:
                timers = {name: runner.layer_timer() for name, runner in prepared.items()}
                for index in range(repeats + min(warmup, 1)):
                    for timer in timers.values():
                        timer.step(record=index >= min(warmup, 1))
                layers = {name: timer.finish() for name, timer in timers.items()}
    results = {}
    for name, measurements in timed.items():
        merged = Measurement.merge(measurements)[0]
        results[name] = LatencyResult(
            backend=backend,
            median_ms=merged.median * 1e3,
            iqr_ms=merged.iqr * 1e3,
            times_ms=[t * 1e3 for t in merged.times],
            num_threads=threads,
            batch_size=prepared[name].batch_size,
            layers=layers[name],
        )
    return results


def measure_latency(model: nn.Module, example_input: Any, backend: str = "eager", *, warmup: int = 3,
                    repeats: int = 20, num_threads: int | None = None, batch_size: int | None = None,
                    per_layer: bool = False) -> LatencyResult:
    """Median latency of one forward of ``model`` on ``example_input`` with ``backend``.

    Args:
        model: any ``nn.Module``; measured in eval mode (eager: under :func:`torch.inference_mode`), every module's
            training flag restored afterwards. Eager runs where the model's parameters are; ONNX Runtime on the CPU.
        example_input: what the model is called with: a tensor, a tuple of positional inputs, or a dict of keyword
            inputs (moved to the model's device).
        backend: ``"eager"`` or ``"onnxruntime"`` (needs ``pip install "lightning-prune[onnx]"``).
        warmup: untimed calls first (also ONNX Runtime's first-run allocations).
        repeats: timed single calls; their median and IQR are reported.
        num_threads: intra-op threads for torch (and ONNX Runtime); default: ``torch.get_num_threads()``. Torch's
            setting is restored afterwards.
        batch_size: when given, every input tensor's first sample is repeated ``batch_size`` times along dim 0.
        per_layer: also time each conv layer (see :attr:`LatencyResult.layers`); extra instrumented passes.

    Returns:
        a :class:`LatencyResult`. To compare models, use :func:`compare_latency` (interleaved rounds).

    Example:
        >>> import torch
        >>> result = measure_latency(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 16, 16), repeats=3, batch_size=2)
        >>> result.batch_size, len(result.times_ms)
        (2, 3)
    """
    return compare_latency({"model": model}, example_input, backend, rounds=1, warmup=warmup, repeats=repeats,
                           num_threads=num_threads, batch_size=batch_size, per_layer=per_layer)["model"]


def ort_max_abs_diff(model: nn.Module, example_input: Any, num_threads: int | None = None) -> float:
    """Largest absolute difference between eager outputs and ONNX Runtime outputs of the exported model.

    Both sides see the same inputs; the compared tensors are :func:`onnx_outputs` of the eager output.
    """
    require_onnx()
    threads = int(num_threads) if num_threads else torch.get_num_threads()
    with eval_mode(model), torch.inference_mode():
        expected = [t.detach().float().cpu() for t in onnx_outputs(call_model(model, example_input))]
    with tempfile.TemporaryDirectory(prefix="lightning_prune_ort_") as directory:
        exported = _export(model, example_input, directory)
        actual = _session(exported.path, threads).run(None, _feed(exported, example_input))
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


# -- channel counts -------------------------------------------------------------------------------------------------
class ChannelSpeed(NamedTuple):
    """One row of :func:`channel_speed_table`."""

    channels: int
    ms: float
    ms_per_channel: float


def _conv_with(conv: nn.Conv2d, out_channels: int) -> nn.Conv2d:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and not depthwise and out_channels % conv.groups:
        raise ValueError(f"{out_channels} output channels is not a multiple of groups={conv.groups}")
    in_channels = out_channels if depthwise else conv.in_channels
    return nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     out_channels if depthwise else conv.groups, conv.bias is not None, conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)


def channel_speed_table(conv: nn.Conv2d, input_hw: Sequence[int], channels: Sequence[int] | None = None,
                        backend: str = "eager", *, batch_size: int = 1, warmup: int = 3, repeats: int = 20,
                        num_threads: int | None = None, seed: int = 0) -> list[ChannelSpeed]:
    """Time a stand-alone copy of ``conv`` at several output-channel counts.

    Each count gets a fresh ``nn.Conv2d`` like ``conv`` (same input channels, kernel, stride, padding, bias; a
    depthwise conv also shrinks its input) fed a random ``(batch_size, in_channels, *input_hw)`` input. Counts are
    measured in a shuffled order (``seed``) so slow drift of the machine does not line up with channel count.

    Args:
        conv: the layer to study (only its hyper-parameters are used).
        input_hw: the spatial size of its input, ``(H, W)``.
        channels: counts to time; default every count from ``out_channels // 2`` to ``out_channels`` (from 1 when
            ``out_channels <= 64``) — where pruning to a multiple matters.
        backend, batch_size, warmup, repeats, num_threads: as for :func:`measure_latency`.

    Returns:
        rows ``(channels, ms, ms_per_channel)`` sorted by channel count; feed them to :func:`suggest_round_to`.

    Example:
        >>> import torch
        >>> rows = channel_speed_table(torch.nn.Conv2d(8, 16, 3), (8, 8), channels=[4, 8], repeats=3)
        >>> [row.channels for row in rows]
        [4, 8]
    """
    _check_backend(backend)
    if len(input_hw) != 2:
        raise ValueError(f"input_hw must be (H, W), got {tuple(input_hw)}")
    out = conv.out_channels
    if channels is None:
        channels = range(1 if out <= 64 else out // 2, out + 1)
    counts = sorted({int(c) for c in channels})
    if not counts or counts[0] < 1:
        raise ValueError(f"channel counts must be >= 1, got {list(channels)}")
    order = counts[:]
    random.Random(seed).shuffle(order)
    ms: dict[int, float] = {}
    for count in order:
        layer = _conv_with(conv, count)
        x = torch.randn(batch_size, layer.in_channels, *input_hw, device=conv.weight.device, dtype=conv.weight.dtype)
        result = measure_latency(layer, x, backend, warmup=warmup, repeats=repeats, num_threads=num_threads)
        ms[count] = result.median_ms
    return [ChannelSpeed(c, ms[c], ms[c] / c) for c in counts]


def suggest_round_to(table: Sequence[ChannelSpeed | tuple[int, float, float]], tolerance: float = 0.02,
                     candidates: Sequence[int] = (1, 2, 4, 8, 16, 32), min_samples: int = 3) -> int:
    """The largest multiple to round pruned channel counts *up* to while paying almost nothing for it.

    Rule: for a candidate ``m``, take every count ``c`` in ``table`` that is not a multiple of ``m`` and whose
    round-up ``u = ceil(c / m) * m`` is also in the table; the *padding cost* of ``m`` is the median of
    ``ms(u) / ms(c) - 1``. ``m`` passes when its padding cost is at most ``tolerance``. Candidates are tried in
    ascending order and the answer is the last one before the first failure (1 when none passes). Candidates with
    fewer than ``min_samples`` such pairs are skipped: the table cannot judge them.

    How to read it: on hardware whose latency is a stair-step in the channel count (vectorised kernels, blocked
    layouts), the counts inside a step cost the same, so rounding up to the step is free and ``m`` = the step passes.
    On hardware where latency is simply proportional to channels, padding costs about ``m / (2 c)``: with
    ``tolerance=0.02`` and ``c`` around 200, ``m`` up to 8 may pass. Either way the claim is the same and it is what
    the table shows: keeping ``round_up(c, m)`` channels instead of ``c`` costs at most ~``tolerance`` more time.

    Example:
        >>> rows = [(c, 0.1 * math.ceil(c / 8), 0.1 * math.ceil(c / 8) / c) for c in range(16, 65)]
        >>> suggest_round_to(rows)
        8
    """
    ms = {int(row[0]): float(row[1]) for row in table}
    best = 1
    for m in sorted(set(candidates)):
        if m <= 1:
            continue
        costs = [ms[up] / ms[c] - 1 for c in ms if c % m and (up := math.ceil(c / m) * m) in ms and ms[c] > 0]
        if len(costs) < min_samples:
            continue
        if statistics.median(costs) > tolerance:
            break
        best = m
    return best
