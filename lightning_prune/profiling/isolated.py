"""Timing isolated layers on a backend, many at once: what the measured cost model
(:mod:`~lightning_prune.pruning.cost_table`) is built from.

A :class:`LayerSpec` describes one conv (+ its activation) at its input size, an :class:`OpSpec` one weightless op
that moves channels (a concatenation, a split, a pooling, a resize, a residual add). :func:`time_layers` times a list
of them with a tiny repeat count:

* eager (CPU or CUDA): each layer is a fresh ``nn.Conv2d`` (+ activation) or op on random inputs; they are run in
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.profiling.backends import is_cuda, ort_providers, require_backend
from lightning_prune.profiling.layers import synchronize
from lightning_prune.profiling.openvino_runtime import openvino_request
from lightning_prune.profiling.timing import intra_op_threads

__all__ = ["ACTIVATIONS", "OP_KINDS", "LayerSpec", "OpSpec", "activation_name", "time_layers"]

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


#: the weightless ops an :class:`OpSpec` can be
OP_KINDS = ("cat", "split", "max_pool2d", "avg_pool2d", "resize", "add", "mul")


@dataclass(frozen=True)
class OpSpec:
    """A weightless op that moves every element of its channels, on inputs of the given shapes (channels on dim 1):
    ``cat`` and ``split`` along channels, ``max_pool2d``/``avg_pool2d``, ``resize`` (nearest or bilinear), an
    element-wise ``add``/``mul`` of two tensors. ``params`` are what the op needs besides its inputs (pooling
    window, output size, piece sizes).

    Example:
        >>> spec = OpSpec("cat", ((1, 4, 8, 8), (1, 2, 8, 8)))
        >>> spec.channels, spec.key()
        (6, 'cat:1x4x8x8+1x2x8x8')
        >>> OpSpec.from_dict(spec.to_dict()) == spec
        True
    """

    kind: str
    input_shapes: tuple[tuple[int, ...], ...]
    params: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"unknown op kind {self.kind!r}; one of {', '.join(OP_KINDS)}")
        object.__setattr__(self, "input_shapes", tuple(tuple(int(v) for v in shape) for shape in self.input_shapes))

    @property
    def channels(self) -> int:
        """The channels it moves: the output's (a concatenation's sum, the input's for the others)."""
        return sum(shape[1] for shape in self.input_shapes) if self.kind == "cat" else self.input_shapes[0][1]

    def key(self) -> str:
        """A stable text key (for caches)."""
        shapes = "+".join("x".join(map(str, shape)) for shape in self.input_shapes)
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind}:{shapes}" + (f"[{extra}]" if extra else "")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return {"kind": self.kind, "input_shapes": [list(shape) for shape in self.input_shapes],
                "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpSpec:
        """The inverse of :meth:`to_dict`."""
        return cls(data["kind"], tuple(tuple(shape) for shape in data["input_shapes"]), dict(data.get("params", {})))

    def function(self) -> Callable[..., Any]:
        """The op as a function of its input tensors (eager)."""
        p = self.params
        if self.kind == "cat":
            return lambda *xs: torch.cat(xs, 1)
        if self.kind == "split":
            return lambda x: torch.split(x, list(p["sizes"]), 1)
        if self.kind == "max_pool2d":
            return lambda x: F.max_pool2d(x, p["kernel"], p["stride"], p["padding"], p.get("dilation", 1),
                                          p.get("ceil_mode", False))
        if self.kind == "avg_pool2d":
            return lambda x: F.avg_pool2d(x, p["kernel"], p["stride"], p["padding"], p.get("ceil_mode", False),
                                          p.get("count_include_pad", True))
        if self.kind == "resize":
            corners = p.get("align_corners", False) if p.get("mode") == "bilinear" else None
            return lambda x: F.interpolate(x, size=list(p["size"]), mode=p.get("mode", "nearest"),
                                           align_corners=corners)
        return (lambda a, b: a * b) if self.kind == "mul" else (lambda a, b: a + b)

    def inputs(self, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Random inputs of the right shapes."""
        return [torch.randn(*shape, device=device) for shape in self.input_shapes]

    def onnx_nodes(self, prefix: str) -> tuple[list[Any], list[Any]]:
        """ONNX nodes reading ``<prefix>_x<j>`` and writing ``<prefix>_y<k>``, and their constant inputs."""
        from onnx import helper, numpy_helper

        p, xs = self.params, [f"{prefix}_x{j}" for j in range(len(self.input_shapes))]
        outputs = self._output_count()
        ys = [f"{prefix}_y{k}" for k in range(outputs)]
        consts: list[Any] = []
        if self.kind == "cat":
            node = helper.make_node("Concat", xs, ys, name=f"{prefix}_cat", axis=1)
        elif self.kind == "split":
            consts.append(numpy_helper.from_array(np.asarray(p["sizes"], np.int64), f"{prefix}_sizes"))
            node = helper.make_node("Split", [xs[0], f"{prefix}_sizes"], ys, name=f"{prefix}_split", axis=1)
        elif self.kind in ("max_pool2d", "avg_pool2d"):
            extra: dict[str, Any] = {"kernel_shape": list(p["kernel"]), "strides": list(p["stride"]),
                                     "pads": list(p["padding"]) * 2, "ceil_mode": int(p.get("ceil_mode", False))}
            if self.kind == "max_pool2d":
                extra["dilations"] = list(p.get("dilation", [1, 1]))
            else:
                extra["count_include_pad"] = int(p.get("count_include_pad", True))
            op = "MaxPool" if self.kind == "max_pool2d" else "AveragePool"
            node = helper.make_node(op, xs, ys, name=f"{prefix}_pool", **extra)
        elif self.kind == "resize":
            shape = self.input_shapes[0]
            consts.append(numpy_helper.from_array(np.asarray([*shape[:2], *p["size"]], np.int64), f"{prefix}_size"))
            if p.get("mode", "nearest") == "nearest":
                extra = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
            else:
                extra = {"mode": "linear", "coordinate_transformation_mode":
                         "align_corners" if p.get("align_corners") else "pytorch_half_pixel"}
            node = helper.make_node("Resize", [xs[0], "", "", f"{prefix}_size"], ys, name=f"{prefix}_resize", **extra)
        else:
            node = helper.make_node("Mul" if self.kind == "mul" else "Add", xs, ys, name=f"{prefix}_{self.kind}")
        return [node], consts

    def output_shapes(self) -> list[tuple[int, ...]]:
        """The shapes of its outputs (it runs once on zeros)."""
        with torch.no_grad():
            out = self.function()(*[torch.zeros(*shape) for shape in self.input_shapes])
        return [tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out])]

    def _output_count(self) -> int:
        return len(self.params["sizes"]) if self.kind == "split" else 1


#: what :func:`time_layers` times
Spec = LayerSpec | OpSpec


def time_layers(specs: Sequence[Spec], backend: str = "eager", *, repeats: int = 3, num_threads: int = 1,
                seed: int = 0) -> list[float]:
    """Time in ms of each layer (or op) of ``specs`` on ``backend``: the fastest of ``repeats`` runs (see the module
    docstring for how).

    Args:
        specs: the layers and ops; timed together (one graph for ONNX Runtime / OpenVINO), so keep the list to a
            few dozen.
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


def _runner(spec: Spec, device: torch.device) -> tuple[Callable[..., Any], list[torch.Tensor]]:
    if isinstance(spec, OpSpec):
        return spec.function(), spec.inputs(device)
    return spec.module(device), [spec.input(device)]


def _time_eager(specs: Sequence[Spec], device: torch.device, repeats: int, num_threads: int) -> list[float]:
    layers = [_runner(spec, device) for spec in specs]
    times: list[list[float]] = [[] for _ in specs]
    with intra_op_threads(num_threads), torch.inference_mode():
        for round_index in range(repeats + 1):
            for index, (module, xs) in enumerate(layers):
                synchronize(device)
                start = time.perf_counter()
                module(*xs)
                synchronize(device)
                if round_index:
                    times[index].append((time.perf_counter() - start) * 1e3)
    return [min(t) for t in times]


def _input_shapes(spec: Spec) -> list[tuple[int, ...]]:
    if isinstance(spec, OpSpec):
        return list(spec.input_shapes)
    return [(spec.batch, spec.in_channels, *spec.input_hw)]


def _input_names(index: int, spec: Spec) -> list[str]:
    if isinstance(spec, OpSpec):
        return [f"b{index}_x{j}" for j in range(len(spec.input_shapes))]
    return [f"b{index}_x"]


def _onnx_graph(specs: Sequence[Spec]) -> Any:
    """One ONNX model whose ``i``-th branch (nodes named ``b<i>_...``) is ``specs[i]`` on its own inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inputs, outputs, weights = [], [], [], []
    for i, spec in enumerate(specs):
        name = f"b{i}"
        if isinstance(spec, OpSpec):
            op_nodes, consts = spec.onnx_nodes(name)
            nodes += op_nodes
            weights += consts
            inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape))
                       for n, shape in zip(_input_names(i, spec), spec.input_shapes)]
            outputs += [helper.make_tensor_value_info(f"{name}_y{k}", TensorProto.FLOAT, list(shape))
                        for k, shape in enumerate(spec.output_shapes())]
            continue
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


def _time_graph(specs: Sequence[Spec], backend: str, repeats: int, num_threads: int) -> list[float]:
    model = _onnx_graph(specs)
    feed = {name: np.random.default_rng(i).standard_normal(shape).astype(np.float32)
            for i, spec in enumerate(specs) for name, shape in zip(_input_names(i, spec), _input_shapes(spec))}
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
    request = openvino_request(path, num_threads, perf_count=True)
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
