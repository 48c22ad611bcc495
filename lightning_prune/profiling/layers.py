"""Per-layer timing in eager PyTorch: each conv module's time per forward, from forward hooks.

(ONNX Runtime's per-kernel times come from its own profiler: :class:`~lightning_prune.profiling.onnx_runtime.
OrtLayerTimer`; OpenVINO's from its per-node profile: :class:`~lightning_prune.profiling.openvino_runtime.
OpenVinoLayerTimer`.) The timers share one small protocol, :class:`LayerTimer`: ``step()`` runs one instrumented pass,
``finish()`` returns :class:`~lightning_prune.profiling.results.LayerTime` rows, slowest first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from lightning_prune.profiling.results import LayerTime
from lightning_prune.utils.model import call_model

__all__ = ["EagerLayerTimer", "LayerTimer", "synchronize"]


class LayerTimer(Protocol):
    """What :func:`~lightning_prune.profiling.compare_latency` drives for ``per_layer=True``."""

    def step(self, record: bool = True) -> None: ...

    def finish(self) -> list[LayerTime]: ...


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (nothing to do elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EagerLayerTimer:
    """Conv modules' median time per forward, from pre/post forward hooks (CUDA synchronised around each).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1))
        >>> timer = EagerLayerTimer(net, torch.randn(1, 3, 16, 16), torch.device("cpu"))
        >>> for index in range(3):
        ...     timer.step(record=index > 0)
        >>> sorted(layer.name for layer in timer.finish())
        ['0', '2']
    """

    def __init__(self, model: nn.Module, example_input: Any, device: torch.device) -> None:
        self.model, self.example_input, self.device = model, example_input, device
        self.convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
        self.per_layer: dict[str, list[float]] = {name: [] for name, _ in self.convs}
        self.totals: list[float] = []
        self._starts: dict[int, float] = {}
        self._current: dict[str, float] = {}

    def _pre(self, module: nn.Module, args: Any) -> None:
        synchronize(self.device)
        self._starts[id(module)] = time.perf_counter()

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            synchronize(self.device)
            elapsed = time.perf_counter() - self._starts.pop(id(module))
            self._current[name] = self._current.get(name, 0.0) + elapsed

        return hook

    def step(self, record: bool = True) -> None:
        """One instrumented forward; its times are kept when ``record`` (warm-up passes are not)."""
        handles = []
        for name, module in self.convs:
            handles += [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post(name))]
        self._current.clear()
        try:
            synchronize(self.device)
            start = time.perf_counter()
            call_model(self.model, self.example_input)
            synchronize(self.device)
            total = time.perf_counter() - start
        finally:
            for handle in handles:
                handle.remove()
        if record:
            self.totals.append(total)
            for name, seconds in self._current.items():
                self.per_layer[name].append(seconds)

    def finish(self) -> list[LayerTime]:
        """Median time and share of each conv over the recorded passes, slowest first."""
        if not self.totals:
            return []
        total = statistics.median(self.totals)
        kinds = {name: type(module).__name__ for name, module in self.convs}
        layers = [LayerTime(name, kinds[name], statistics.median(times) * 1e3, statistics.median(times) / total)
                  for name, times in self.per_layer.items() if times]
        return sorted(layers, key=lambda layer: -layer.ms)
