"""Measured latency of whole forwards: :func:`measure_latency` and the interleaved :func:`compare_latency`.

Everything here measures a model in eval mode (eager: under :func:`torch.inference_mode`) with a fixed thread
count, after warm-up runs, and reports the median and interquartile range of single-call times (never the mean: one
preempted call would move it). The model's training flags (per module) and torch's thread count are restored.

Backends (:data:`BACKENDS`):

* ``"eager"``: ``model(example_input)`` timed with :class:`torch.utils.benchmark.Timer` (which synchronises CUDA).
* ``"onnxruntime"``: the model exported to a temporary directory and ``InferenceSession.run`` timed on the CPU (see
  :mod:`lightning_prune.profiling.onnx_runtime`); ``"onnxruntime-cuda"`` the same on ONNX Runtime's CUDA provider.
* ``"openvino"``: the exported ONNX model compiled by OpenVINO for its ``CPU`` device (latency hint, one stream).
* ``"eager-cuda"``: eager on ``cuda`` (the model is moved there for the measurement and back).

See :mod:`lightning_prune.profiling.backends` for what each needs.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Measurement, Timer

from lightning_prune.profiling.backends import (
    BACKENDS,
    check_backend,
    ort_providers,
    require_backend,
)
from lightning_prune.profiling.layers import EagerLayerTimer, LayerTimer
from lightning_prune.profiling.onnx_runtime import (
    OrtLayerTimer,
    export_to_directory,
    ort_feed,
    ort_session,
)
from lightning_prune.profiling.openvino_runtime import OpenVinoLayerTimer, openvino_request
from lightning_prune.profiling.results import LatencyResult, LayerTime
from lightning_prune.utils.model import call_model, eval_mode, model_device
from lightning_prune.utils.tree import iter_tensors, map_tensors

#: the backends with a per-layer breakdown (``per_layer=True`` is ignored, ``layers`` stays ``None``, elsewhere).
PER_LAYER_BACKENDS = ("eager", "eager-cuda", "onnxruntime", "openvino")

__all__ = ["BACKENDS", "PER_LAYER_BACKENDS", "batch_size_of", "batched_input", "check_backend", "compare_latency",
           "measure_latency", "openvino_request",
           "intra_op_threads"]

def batched_input(example_input: Any, batch_size: int | None) -> Any:
    """``example_input`` with every tensor's first sample repeated ``batch_size`` times along dim 0 (``None``: as
    it is).

    Example:
        >>> import torch
        >>> batched_input({"x": torch.zeros(1, 3)}, 4)["x"].shape
        torch.Size([4, 3])
    """
    if batch_size is None:
        return example_input
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def repeat(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        return t[:1].repeat(batch_size, *([1] * (t.dim() - 1)))

    return map_tensors(example_input, repeat)


def batch_size_of(example_input: Any) -> int:
    """The first dim of the first non-scalar tensor in ``example_input`` (1 when there is none).

    Example:
        >>> import torch
        >>> batch_size_of((torch.zeros(3, 2), torch.zeros(5)))
        3
    """
    tensors = [t for t in iter_tensors(example_input) if t.dim() > 0]
    return int(tensors[0].shape[0]) if tensors else 1


@contextlib.contextmanager
def intra_op_threads(num_threads: int) -> Iterator[None]:
    """``torch.set_num_threads(num_threads)`` inside the block, the previous count restored on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _time_calls(fn: Callable[[], Any], warmup: int, repeats: int, num_threads: int, label: str) -> Measurement:
    """``warmup`` untimed calls, then ``repeats`` single calls, each timed by :class:`torch.utils.benchmark.Timer`."""
    for _ in range(warmup):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads, label=label)
    return Measurement.merge([timer.timeit(number=1) for _ in range(repeats)])[0]


@dataclass
class _Prepared:
    """A model ready to be timed: ``run()`` is one forward; ``layer_timer()`` starts a per-layer breakdown."""

    run: Callable[[], Any]
    layer_timer: Callable[[], LayerTimer]
    batch_size: int


@contextlib.contextmanager
def _prepare(model: nn.Module, example_input: Any, backend: str, threads: int,
             batch_size: int | None) -> Iterator[_Prepared]:
    """Eval mode (restored on exit) and, for the exported backends, the exported model's session in a temporary
    directory; ``eager-cuda`` moves the model to the GPU and back."""
    original = model_device(model)
    device = torch.device("cuda") if backend == "eager-cuda" else original
    inputs = map_tensors(batched_input(example_input, batch_size), lambda t: t.to(device))
    with eval_mode(model):
        if backend in ("eager", "eager-cuda"):
            if device != original:
                model.to(device)
            try:
                yield _Prepared(lambda: call_model(model, inputs), lambda: EagerLayerTimer(model, inputs, device),
                                batch_size_of(inputs))
            finally:
                if device != original:
                    model.to(original)
            return
        with tempfile.TemporaryDirectory(prefix="lightning_prune_ort_") as directory:
            exported = export_to_directory(model, inputs, directory)
            feed = ort_feed(exported, inputs)
            if backend == "openvino":
                request = openvino_request(exported.path, threads)
                yield _Prepared(lambda: request.infer(feed), lambda: OpenVinoLayerTimer(exported, feed, threads),
                                batch_size_of(inputs))
                return
            session = ort_session(exported.path, threads, providers=ort_providers(backend))
            yield _Prepared(lambda: session.run(None, feed),
                            lambda: OrtLayerTimer(exported, feed, threads, directory), batch_size_of(inputs))


def compare_latency(models: dict[str, nn.Module], example_input: Any, backend: str = "eager", *, rounds: int = 5,
                    warmup: int = 3, repeats: int = 10, num_threads: int | None = None,
                    batch_size: int | None = None, per_layer: bool = False) -> dict[str, LatencyResult]:
    """Latency of several models on the same input, measured interleaved: ``rounds`` rounds of ``A, B, C, ...``,
    each round starting one model later (``B, C, ..., A``) so that none always runs right after the same one.

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
    require_backend(backend)
    if repeats < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"need repeats >= 1, rounds >= 1 and warmup >= 0, got repeats={repeats}, rounds={rounds}, "
                         f"warmup={warmup}")
    threads = int(num_threads) if num_threads else torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    timed: dict[str, list[Measurement]] = {name: [] for name in models}
    layers: dict[str, list[LayerTime] | None] = dict.fromkeys(models)
    with intra_op_threads(threads), contextlib.ExitStack() as stack:
        prepared = {name: stack.enter_context(_prepare(model, example_input, backend, threads, batch_size))
                    for name, model in models.items()}
        with torch.inference_mode() if backend.startswith("eager") else contextlib.nullcontext():
            names = list(prepared)
            for round_index in range(rounds):
                shift = round_index % len(names)  # each model leads in turn: no model always follows the same one
                for name in names[shift:] + names[:shift]:
                    runner = prepared[name]
                    label = f"{name} [{backend}]"
                    timed[name].append(_time_calls(runner.run, warmup if round_index == 0 else 0, repeats, threads,
                                                   label))
            if per_layer and backend in PER_LAYER_BACKENDS:
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

        Per layer (each conv, by module name):

        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        >>> result = measure_latency(net, torch.randn(1, 3, 32, 32), repeats=5, per_layer=True)
        >>> result.backend, len(result.times_ms), result.median_ms > 0
        ('eager', 5, True)
        >>> sorted(layer.name for layer in result.layers)
        ['0', '2']
    """
    return compare_latency({"model": model}, example_input, backend, rounds=1, warmup=warmup, repeats=repeats,
                           num_threads=num_threads, batch_size=batch_size, per_layer=per_layer)["model"]
