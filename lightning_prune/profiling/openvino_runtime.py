"""OpenVINO on the CPU: the compiled request the ``"openvino"`` latency backend times, and its per-node profile.

OpenVINO's CPU plugin reports, with ``PERF_COUNT``, the time every node of the compiled graph took in the last
inference: the convolutions (each fused with its activation, named ``<onnx conv>/WithoutBiases``), and also what no
conv table sees — the layout reorders between blocked and plain layouts, concatenations, the head's box decoding.
:class:`OpenVinoLayerTimer` takes the median over several runs of each conv node and turns them into
:class:`~lightning_prune.profiling.results.LayerTime` rows named after the modules (the same protocol as the eager
and ONNX Runtime timers, for ``per_layer=True``).

Example (needs the ``openvino`` extra):
    >>> import tempfile, torch
    >>> from lightning_prune.profiling.onnx_runtime import export_to_directory, ort_feed
    >>> net, x = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()), torch.randn(1, 3, 16, 16)
    >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
    ...     exported = export_to_directory(net, x, d)
    ...     timer = OpenVinoLayerTimer(exported, ort_feed(exported, x), num_threads=1)
    ...     for record in (False, True, True):
    ...         timer.step(record)
    ...     print([layer.name for layer in timer.finish()])
    ['0']
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lightning_prune.profiling.backends import openvino_core
from lightning_prune.profiling.results import LayerTime

if TYPE_CHECKING:
    from lightning_prune.profiling.onnx_runtime import ExportedModel

__all__ = ["CONV_NODE_TYPES", "OpenVinoLayerTimer", "module_of_node", "openvino_request"]

#: OpenVINO node types that are convolutions (a depthwise conv is a ``GroupConvolution``)
CONV_NODE_TYPES = ("Convolution", "GroupConvolution", "Deconvolution", "GroupDeconvolution")


def openvino_request(path: str, threads: int, perf_count: bool = False) -> Any:
    """An OpenVINO infer request for the ONNX file at ``path``, compiled for ``CPU`` with ``threads`` inference
    threads, one stream and the latency hint (per-node profiling with ``perf_count``)."""
    core = openvino_core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
              "INFERENCE_PRECISION_HINT": "f32"}
    if perf_count:
        config["PERF_COUNT"] = "YES"
    return core.compile_model(core.read_model(path), "CPU", config).create_infer_request()


def module_of_node(node: str, names: Mapping[str, str], keys: Sequence[str] | None = None) -> str | None:
    """The module an OpenVINO conv node belongs to: its ONNX node (the name up to OpenVINO's ``/WithoutBiases``
    suffix, or any recorded ONNX name it starts with) looked up in :func:`~lightning_prune.profiling.onnx_runtime.
    export_onnx`'s names. ``None`` for a node no module owns.

    Example:
        >>> module_of_node("/m/0/Conv/WithoutBiases", {"/m/0/Conv": "backbone.0"})
        'backbone.0'
        >>> module_of_node("input_0_abcd_acdb_/m/0/Conv/WithoutBiases", {"/m/0/Conv": "backbone.0"}) is None
        True
    """
    stem = node.split("/WithoutBiases")[0]
    if stem in names:
        return names[stem]
    for key in keys if keys is not None else sorted(names, key=len, reverse=True):
        if stem.startswith(key + "/") or stem.startswith(key + "_"):
            return names[key]
    return None


class OpenVinoLayerTimer:
    """Conv nodes' median time per inference from OpenVINO's per-node profile (a separate, ``PERF_COUNT`` request
    compiled like the timed one), named after their modules; conv nodes no module owns keep their node name.
    ``share`` is a layer's time over the median wall time of the same profiled inferences."""

    def __init__(self, exported: ExportedModel, feed: dict[str, Any], num_threads: int) -> None:
        self.exported, self.feed = exported, feed
        self.request = openvino_request(exported.path, num_threads, perf_count=True)
        self._times: dict[str, list[float]] = {}
        self._kinds: dict[str, str] = {}
        self._walls: list[float] = []

    def step(self, record: bool = True) -> None:
        """One profiled inference (not counted when ``record`` is False)."""
        start = time.perf_counter()
        self.request.infer(self.feed)
        wall = (time.perf_counter() - start) * 1e3
        if record:
            self._walls.append(wall)
            for info in self.request.get_profiling_info():
                self._times.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1e3)
                self._kinds[info.node_name] = info.node_type

    def finish(self) -> list[LayerTime]:
        """The conv layers' median times and shares over the recorded inferences, slowest first."""
        total = statistics.median(self._walls) if self._walls else 0.0
        keys = sorted(self.exported.names, key=len, reverse=True)
        per_layer: dict[str, float] = {}
        kinds: dict[str, str] = {}
        for node, values in self._times.items():
            node_type = self._kinds[node]
            if node_type not in CONV_NODE_TYPES:
                continue
            layer = module_of_node(node, self.exported.names, keys) or node
            per_layer[layer] = per_layer.get(layer, 0.0) + statistics.median(values)
            kinds[layer] = node_type
        rows = [LayerTime(layer, kinds[layer], ms, min(ms / total, 1.0) if total else 0.0)
                for layer, ms in per_layer.items()]
        return sorted(rows, key=lambda layer: -layer.ms)
