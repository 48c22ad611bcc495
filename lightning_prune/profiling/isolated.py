"""Timing isolated layers on a backend, many at once: what the measured cost model
(:mod:`~lightning_prune.profiling.cost_table`) is built from.

A :class:`LayerSpec` describes one conv (+ its activation) at its input size. :func:`time_layers` times a list of
them with a tiny repeat count:

* eager (CPU or CUDA): each layer is a fresh ``nn.Conv2d`` (+ activation) on a random input; the layers are run in
  round-robin order ``repeats`` times after one warm-up round, each call timed on its own (CUDA synchronised);
* ONNX Runtime and OpenVINO: the layers become the independent branches of *one* ONNX graph (built directly with
  ``onnx.helper``, no export), run ``repeats`` times with the backend's per-node profiler on; each branch's time is
  the sum of the kernels named after it (layout reorders at the branch edges, which a whole model does not pay per
  layer, are left out).

Example:
    >>> spec = LayerSpec(4, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, (16, 16), "silu")
    >>> times = time_layers([spec, spec.with_channels(4, 4)], "eager", repeats=2)
    >>> len(times), all(t > 0 for t in times)
    (2, True)
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_prune.profiling.backends import is_cuda, openvino_core, ort_providers, require_backend
from lightning_prune.profiling.layers import synchronize
from lightning_prune.profiling.timing import intra_op_threads

__all__ = ["ACTIVATIONS", "LayerSpec", "activation_name", "time_layers"]

#: activations a spec can carry (``None``: none), as module classes.
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU,
                                           "hardswish": nn.Hardswish, "sigmoid": nn.Sigmoid}


def activation_name(module: Any) -> str | None:
    """The :data:`ACTIVATIONS` key of ``module`` (``None`` for anything else, e.g. ``nn.Identity``).

    Example:
        >>> activation_name(nn.SiLU()), activation_name(nn.Identity())
        ('silu', None)
    """
    for name, kind in ACTIVATIONS.items():
        if type(module) is kind:
            return name
    return None


@dataclass(frozen=True)
class LayerSpec:
    """A 2-d convolution (and the activation right after it) at its input size, batch ``batch``."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool
    input_hw: tuple[int, int]
    act: str | None = None
    batch: int = 1

    @property
    def depthwise(self) -> bool:
        """``groups == in_channels == out_channels > 1``: pruning one side prunes the other."""
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def output_hw(self) -> tuple[int, int]:
        """The spatial size of the output."""
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in  # type: ignore[return-value]
                     zip(self.input_hw, self.kernel_size, self.stride, self.padding, self.dilation))

    def with_channels(self, in_channels: int, out_channels: int) -> LayerSpec:
        """The same layer with other channel counts (a depthwise conv keeps ``groups`` equal to them).

        Example:
            >>> LayerSpec(8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8, False, (4, 4)).with_channels(5, 5).groups
            5
        """
        if self.depthwise:
            width = min(in_channels, out_channels)
            return replace(self, in_channels=width, out_channels=width, groups=width)
        return replace(self, in_channels=int(in_channels), out_channels=int(out_channels))

    def key(self) -> str:
        """A stable text key (for caches).

        Example:
            >>> LayerSpec(3, 16, (3, 3), (2, 2), (1, 1), (1, 1), 1, False, (640, 640), "silu").key()
            'c3x16k3x3s2x2p1x1d1x1g1b0@640x640n1silu'
        """
        k, s, p, d = ("x".join(map(str, v)) for v in (self.kernel_size, self.stride, self.padding, self.dilation))
        return (f"c{self.in_channels}x{self.out_channels}k{k}s{s}p{p}d{d}g{self.groups}b{int(self.bias)}"
                f"@{self.input_hw[0]}x{self.input_hw[1]}n{self.batch}{self.act or ''}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        """The inverse of :meth:`to_dict`."""
        fields = dict(data)
        for name in ("kernel_size", "stride", "padding", "dilation", "input_hw"):
            fields[name] = tuple(int(v) for v in fields[name])
        return cls(**fields)

    def module(self, device: torch.device | str = "cpu") -> nn.Module:
        """A fresh conv (+ activation) with random weights, in eval mode."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias, device=device)
        layers = [conv] + ([ACTIVATIONS[self.act]()] if self.act else [])
        return nn.Sequential(*layers).eval()

    def input(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """A random input of the right shape."""
        return torch.randn(self.batch, self.in_channels, *self.input_hw, device=device)


def time_layers(specs: Sequence[LayerSpec], backend: str = "eager", *, repeats: int = 3, num_threads: int = 1,
                seed: int = 0) -> list[float]:
    """Median time in ms of each layer of ``specs`` on ``backend`` (see the module docstring for how).

    Args:
        specs: the layers; timed together (one graph for ONNX Runtime / OpenVINO), so keep the list to a few dozen.
        backend: one of :data:`~lightning_prune.profiling.backends.BACKENDS`.
        repeats: timed runs per layer after one warm-up run.
        num_threads: intra-op threads (1: steadiest on a shared machine).
    """
    require_backend(backend)
    if repeats < 1 or num_threads < 1:
        raise ValueError(f"need repeats >= 1 and num_threads >= 1, got {repeats} and {num_threads}")
    if not specs:
        return []
    torch.manual_seed(seed)
    if backend in ("eager", "eager-cuda"):
        return _time_eager(specs, torch.device("cuda" if is_cuda(backend) else "cpu"), repeats, num_threads)
    return _time_graph(specs, backend, repeats, num_threads)


def _time_eager(specs: Sequence[LayerSpec], device: torch.device, repeats: int, num_threads: int) -> list[float]:
    layers = [(spec.module(device), spec.input(device)) for spec in specs]
    times: list[list[float]] = [[] for _ in specs]
    with intra_op_threads(num_threads), torch.inference_mode():
        for round_index in range(repeats + 1):
            for index, (module, x) in enumerate(layers):
                synchronize(device)
                start = time.perf_counter()
                module(x)
                synchronize(device)
                if round_index:
                    times[index].append((time.perf_counter() - start) * 1e3)
    return [min(t) for t in times]


def _onnx_graph(specs: Sequence[LayerSpec]) -> Any:
    """One ONNX model whose ``i``-th branch (nodes named ``b<i>_...``) is ``specs[i]`` on its own input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inputs, outputs, weights = [], [], [], []
    for i, spec in enumerate(specs):
        name = f"b{i}"
        inputs.append(helper.make_tensor_value_info(f"{name}_x", TensorProto.FLOAT,
                                                    [spec.batch, spec.in_channels, *spec.input_hw]))
        shape = [spec.out_channels, spec.in_channels // spec.groups, *spec.kernel_size]
        weights.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, f"{name}_w"))
        conv_inputs = [f"{name}_x", f"{name}_w"]
        if spec.bias:
            weights.append(numpy_helper.from_array(np.zeros(spec.out_channels, np.float32), f"{name}_b"))
            conv_inputs.append(f"{name}_b")
        pads = [spec.padding[0], spec.padding[1], spec.padding[0], spec.padding[1]]
        last = f"{name}_conv_out" if spec.act else f"{name}_y"
        nodes.append(helper.make_node("Conv", conv_inputs, [last], name=f"{name}_conv", group=spec.groups,
                                      kernel_shape=list(spec.kernel_size), strides=list(spec.stride), pads=pads,
                                      dilations=list(spec.dilation)))
        if spec.act == "silu":
            nodes.append(helper.make_node("Sigmoid", [last], [f"{name}_sig"], name=f"{name}_sigmoid"))
            nodes.append(helper.make_node("Mul", [last, f"{name}_sig"], [f"{name}_y"], name=f"{name}_mul"))
        elif spec.act:
            op = {"relu": "Relu", "leaky_relu": "LeakyRelu", "hardswish": "HardSwish", "sigmoid": "Sigmoid"}[spec.act]
            extra = {"alpha": 0.01} if op == "LeakyRelu" else {}
            nodes.append(helper.make_node(op, [last], [f"{name}_y"], name=f"{name}_act", **extra))
        outputs.append(helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                     [spec.batch, spec.out_channels, *spec.output_hw]))
    graph = helper.make_graph(nodes, "isolated_layers", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    return model


def _branch_of(node_name: str, count: int) -> int | None:
    """The branch index a (possibly fused or renamed) kernel belongs to: its name starts with ``b<i>_``."""
    stem = node_name.split("/", 1)[0]
    if not stem.startswith("b"):
        return None
    head = stem[1:].split("_", 1)[0]
    if not head.isdigit() or int(head) >= count:
        return None
    return int(head)


def _time_graph(specs: Sequence[LayerSpec], backend: str, repeats: int, num_threads: int) -> list[float]:
    model = _onnx_graph(specs)
    feed = {f"b{i}_x": np.random.default_rng(i).standard_normal(
        (spec.batch, spec.in_channels, *spec.input_hw)).astype(np.float32) for i, spec in enumerate(specs)}
    per_run: list[list[float]] = [[] for _ in specs]
    with tempfile.TemporaryDirectory(prefix="lightning_prune_layers_") as directory:
        path = os.path.join(directory, "layers.onnx")
        with open(path, "wb") as file:
            file.write(model.SerializeToString())
        if backend == "openvino":
            return _time_openvino(path, feed, len(specs), repeats, num_threads)
        from lightning_prune.profiling.onnx_runtime import ort_session

        session = ort_session(path, num_threads, profile_prefix=os.path.join(directory, "profile"),
                              providers=ort_providers(backend))
        for _ in range(repeats + 1):
            session.run(None, feed)
        import json

        with open(session.end_profiling()) as file:
            events = json.load(file)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    import bisect

    sums: list[dict[int, float]] = [{} for _ in specs]
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        branch = _branch_of(name[: -len("_kernel_time")], len(specs))
        run = bisect.bisect_right(starts, event["ts"]) - 1
        if branch is None or run < 1:
            continue
        sums[branch][run] = sums[branch].get(run, 0.0) + float(event["dur"]) / 1e3
    for branch, runs in enumerate(sums):
        per_run[branch] = list(runs.values())
    return [min(t) if t else float("nan") for t in per_run]


def _time_openvino(path: str, feed: dict[str, np.ndarray], count: int, repeats: int, num_threads: int) -> list[float]:
    core = openvino_core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(num_threads),
              "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"}
    request = core.compile_model(core.read_model(path), "CPU", config).create_infer_request()
    per_run: list[list[float]] = [[] for _ in range(count)]
    for run in range(repeats + 1):
        request.infer(feed)
        if not run:
            continue
        sums = [0.0] * count
        for info in request.get_profiling_info():
            if info.node_type == "Reorder":  # layout changes at the branch edges: an artefact of isolation
                continue
            branch = _branch_of(info.node_name, count)
            if branch is not None:
                sums[branch] += info.real_time.total_seconds() * 1e3
        for branch, value in enumerate(sums):
            if value > 0:  # a run whose profile has no executed kernel for the branch says nothing
                per_run[branch].append(value)
    return [min(t) if t else float("nan") for t in per_run]
