"""A latency history for a model that changes (is pruned) over time: the core of
:class:`~lightning_prune.callbacks.LatencyProfiler`, free of Lightning.

:class:`LatencyTracker` measures a model's cost (FLOPs, parameters) and latency on every configured backend, keeps the
first measurement per backend as the baseline (so speedups are always against the unpruned model), appends one row
per backend to :attr:`LatencyTracker.history`, drops a backend that fails (ONNX export of an op it cannot handle)
after one warning, and renders the slowest-layers table and the latency-vs-FLOPs figure.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lightning_prune.profiling.backends import require_backend
from lightning_prune.profiling.flops import count_flops, count_params
from lightning_prune.profiling.results import LatencyResult, LayerTime
from lightning_prune.profiling.timing import BACKENDS, measure_latency
from lightning_prune.utils.model import model_device
from lightning_prune.utils.tree import map_tensors

__all__ = ["LatencyTracker"]

log = logging.getLogger(__name__)

_REASON_LABELS = {"fit_start": "start", "pruning_step": "p", "epoch_end": "e"}


class LatencyTracker:
    """Measure a model again and again; keep the baseline, the history and the latest per-layer breakdown.

    Args:
        backends: any of :data:`~lightning_prune.profiling.BACKENDS` (``"eager"``, ``"onnxruntime"``, ``"openvino"``,
            ``"eager-cuda"``, ``"onnxruntime-cuda"``); what each needs is checked here.
        warmup, repeats, num_threads, per_layer: as for :func:`~lightning_prune.profiling.measure_latency`.
        top_layers: rows of :meth:`slowest_layers_markdown`.
        device: where to time eager runs (the model is moved there and back); default: where the model is.
        owner: the name used in error messages and warnings (e.g. the callback's class name).
        warn: how a failing backend is reported once (default :func:`warnings.warn`).

    Example:
        >>> import torch
        >>> tracker = LatencyTracker(repeats=2, per_layer=False)
        >>> net = torch.nn.Conv2d(3, 8, 3)
        >>> metrics = tracker.measure(net, torch.randn(1, 3, 16, 16), reason="start")
        >>> sorted(metrics), tracker.history[0]["speedup"]
        (['latency/eager_ms', 'latency/eager_speedup', 'latency/flops', 'latency/params'], 1.0)
    """

    def __init__(self, backends: Sequence[str] | str | None = None, *, warmup: int = 3, repeats: int = 20,
                 num_threads: int | None = None, per_layer: bool = True, top_layers: int = 10,
                 device: str | None = None, owner: str = "LatencyTracker",
                 warn: Callable[[str], Any] | None = None) -> None:
        if isinstance(backends, str):
            backends = [backends]
        backends = ["eager"] if backends is None else [str(b) for b in backends]
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or not backends:
            raise ValueError(f"{owner} backends must be some of {', '.join(BACKENDS)}, got {backends}")
        for backend in backends:
            require_backend(backend)
        for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1), ("top_layers", top_layers, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"{owner} {name} must be an integer >= {low}, got {value!r}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"{owner} num_threads must be >= 1, got {num_threads}")
        self.backends = list(dict.fromkeys(backends))
        self.warmup, self.repeats, self.num_threads = int(warmup), int(repeats), num_threads
        self.per_layer, self.top_layers, self.device = bool(per_layer), int(top_layers), device
        self.owner = owner
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
        #: every measurement, oldest first: dicts with ``epoch``, ``step``, ``reason``, ``pruning_step`` (its index or
        #: None), ``backend``, ``ms``, ``iqr_ms``, ``speedup``, ``flops``, ``params``.
        self.history: list[dict[str, Any]] = []
        #: the first measurement per backend: ``{"ms", "flops", "params"}``.
        self.baseline: dict[str, dict[str, float]] = {}
        #: the latest per-layer breakdown per backend.
        self.last_layers: dict[str, list[LayerTime]] = {}
        self.skipped: set[str] = set()

    @property
    def active_backends(self) -> list[str]:
        """The backends still measured (a backend whose export or run failed is dropped)."""
        return [b for b in self.backends if b not in self.skipped]

    def measure(self, model: nn.Module, example_input: Any, *, reason: str = "manual", epoch: int = 0,
                step: int = 0, pruning_step: int | None = None) -> dict[str, float]:
        """Measure ``model`` now on every active backend; append to :attr:`history`; return the metrics to log
        (``latency/<backend>_ms``, ``latency/<backend>_speedup``, ``latency/flops``, ``latency/params``)."""
        original = model_device(model)
        target = torch.device(self.device) if self.device is not None else original
        moved = target != original
        if moved:
            model.to(target)
        try:
            example = map_tensors(example_input, lambda t: t.to(target))
            flops, params = count_flops(model, example), count_params(model)
            results: dict[str, LatencyResult] = {}
            for backend in self.active_backends:
                result = self._measure_backend(model, example, backend)
                if result is not None:
                    results[backend] = result
        finally:
            if moved:
                model.to(original)
        metrics: dict[str, float] = {}
        for backend, result in results.items():
            base = self.baseline.setdefault(backend, {"ms": result.median_ms, "flops": flops, "params": params})
            speedup = base["ms"] / result.median_ms if result.median_ms > 0 else float("nan")
            metrics[f"latency/{backend}_ms"] = result.median_ms
            metrics[f"latency/{backend}_speedup"] = speedup
            if result.layers is not None:
                self.last_layers[backend] = result.layers
            self.history.append({"epoch": epoch, "step": step, "reason": reason, "pruning_step": pruning_step,
                                 "backend": backend, "ms": result.median_ms, "iqr_ms": result.iqr_ms,
                                 "speedup": speedup, "flops": flops, "params": params})
        metrics["latency/flops"] = float(flops)
        metrics["latency/params"] = float(params)
        return metrics

    def _measure_backend(self, model: nn.Module, example: Any, backend: str) -> LatencyResult | None:
        try:
            return measure_latency(model, example, backend, warmup=self.warmup, repeats=self.repeats,
                                   num_threads=self.num_threads, per_layer=self.per_layer)
        except Exception as err:
            if backend.startswith("eager"):
                raise
            self.skipped.add(backend)
            cause = (str(err).strip().splitlines() or [""])[0][:300]
            self.warn(f"{self.owner}: the {backend} backend failed ({type(err).__name__}: {cause}); "
                      f"it is skipped from now on, training goes on")
            return None

    # -- state --------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Baseline and history as plain data (for checkpoints)."""
        return {"baseline": dict(self.baseline), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; rows measured before it arrived stay, after the restored ones."""
        old = list(state_dict.get("history", []))
        self.baseline = dict(state_dict.get("baseline", {}))
        self.history = old + [row for row in self.history if row not in old]

    # -- rendering ----------------------------------------------------------------------------------------------------
    def slowest_layers_markdown(self) -> str:
        """The latest per-layer breakdown as a Markdown table per backend (empty without ``per_layer``)."""
        parts = []
        for backend, layers in self.last_layers.items():
            if not layers or not self.top_layers:
                continue
            rows = [f"**{backend}**: conv layers take {sum(layer.share for layer in layers):.0%} of the forward", "",
                    "| layer | op | ms | share |", "|---|---|---:|---:|"]
            rows += [f"| `{layer.name}` | {layer.op_type} | {layer.ms:.3f} | {layer.share:.1%} |"
                     for layer in layers[: self.top_layers]]
            parts.append("\n".join(rows))
        return "\n\n".join(parts)

    def figure(self) -> Any:
        """Latency against FLOPs over :attr:`history`, one line per backend (``None`` without matplotlib)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            log.debug("matplotlib is not installed: no latency figure")
            return None
        figure = Figure(figsize=(6, 4), layout="tight")
        axes = figure.subplots()
        for backend in self.backends:
            rows = [row for row in self.history if row["backend"] == backend]
            if not rows:
                continue
            xs = [row["flops"] / 1e9 for row in rows]
            ys = [row["ms"] for row in rows]
            axes.plot(xs, ys, marker="o", label=backend)
            for x, y, row in zip(xs, ys, rows):
                label = _REASON_LABELS.get(row["reason"], row["reason"])
                if row["reason"] == "pruning_step":
                    label += str(row["pruning_step"])
                elif row["reason"] == "epoch_end":
                    label += str(row["epoch"])
                axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axes.set_xlabel("GFLOPs per forward")
        axes.set_ylabel("latency (ms, median)")
        axes.set_title("latency vs FLOPs")
        axes.grid(True, alpha=0.3)
        if axes.lines:
            axes.legend()
        return figure
