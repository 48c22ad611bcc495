"""Measured latency of the model while it is being pruned: a Lightning callback."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks.events import PruningStep
from lightning_prune.profiling.flops import count_flops, count_params
from lightning_prune.profiling.latency import (
    BACKENDS,
    LatencyResult,
    LayerTime,
    _batched,
    _device,
    _map_tensors,
    measure_latency,
    require_onnx,
)

__all__ = ["LatencyProfiler"]

log = logging.getLogger(__name__)

_REASON_LABELS = {"fit_start": "start", "pruning_step": "p", "epoch_end": "e"}


class LatencyProfiler(pl.Callback):
    """Measures the model's real latency at fit start, after every pruning step and every ``every_n_epochs``.

    Each measurement runs :func:`~lightning_prune.profiling.measure_latency` on rank 0 for every backend (eager
    PyTorch, ONNX Runtime on the CPU) on a fixed input, and logs to every logger of the trainer at the current global
    step:

    * ``latency/<backend>_ms``: median latency of one forward, in milliseconds;
    * ``latency/<backend>_speedup``: baseline latency (the first measurement, normally at fit start) ÷ this one;
    * ``latency/flops`` and ``latency/params``: the model's cost at the same moment (FLOPs of the timed input).

    On a :class:`~lightning.pytorch.loggers.TensorBoardLogger` it also draws latency against FLOPs over all
    measurements (``latency/latency_vs_flops``; needs matplotlib) and writes a table of the slowest conv layers
    (``latency/slowest_layers``). Every measurement is appended to :attr:`history`, which is saved in checkpoints
    with the baseline, so a resumed run keeps computing speedups against the unpruned model.

    Pruning steps are heard through ``on_pruning_step`` (see :mod:`lightning_prune.callbacks.events`): put this
    callback next to :class:`~lightning_prune.callbacks.IterativePruningCallback` in ``trainer.callbacks``.

    The model is measured in eval mode under ``torch.inference_mode()``; every module's training flag, the model's
    device and torch's thread count are restored afterwards, so training is not disturbed (its wall time is).

    If the ONNX export or ONNX Runtime fails mid-training (an op the exporter cannot handle), one warning is issued
    and the ``onnxruntime`` backend is skipped from then on; training goes on.

    Args:
        backends: any of ``"eager"`` and ``"onnxruntime"`` (default ``["eager"]``). ``"onnxruntime"`` needs
            ``pip install "lightning-prune[onnx]"`` (checked here).
        batch_size: the batch size to time: the input's first sample is repeated along dim 0.
        input_shape: full shape of the input tensor to time, e.g. ``[1, 3, 640, 640]`` (random values, fixed seed);
            default: ``pl_module.example_input_array``.
        warmup, repeats: untimed and timed forwards per measurement and backend.
        num_threads: intra-op threads while timing (default: torch's current setting).
        every_n_epochs: also measure at the end of every n-th training epoch; 0: only at fit start and after pruning
            steps.
        per_layer: time each conv layer too (for the slowest-layers table); costs extra forwards.
        top_layers: rows of the slowest-layers table.
        device: where to time eager runs, e.g. ``"cpu"`` while training on a GPU (the model is moved there and back);
            default: where the model is.

    Example:
        >>> import torch, lightning.pytorch as pl
        >>> from torch import nn
        >>> class Tiny(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
        ...         self.example_input_array = torch.randn(1, 3, 16, 16)
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def training_step(self, batch, batch_idx):
        ...         return self(batch).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.01)
        >>> profiler = LatencyProfiler(repeats=3, every_n_epochs=1)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, callbacks=[profiler], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.randn(2, 3, 16, 16), batch_size=1))
        >>> [(row["reason"], row["backend"], row["speedup"] > 0) for row in profiler.history]
        [('fit_start', 'eager', True), ('epoch_end', 'eager', True)]
    """

    def __init__(
        self,
        backends: list[str] | None = None,
        batch_size: int = 1,
        input_shape: list[int] | None = None,
        warmup: int = 3,
        repeats: int = 20,
        num_threads: int | None = None,
        every_n_epochs: int = 0,
        per_layer: bool = True,
        top_layers: int = 10,
        device: str | None = None,
    ) -> None:
        if isinstance(backends, str):
            backends = [backends]
        backends = ["eager"] if backends is None else [str(b) for b in backends]
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or not backends:
            raise ValueError(f"LatencyProfiler backends must be some of {', '.join(BACKENDS)}, got {backends}")
        if "onnxruntime" in backends:
            require_onnx()
        for name, value, low in (("batch_size", batch_size, 1), ("warmup", warmup, 0), ("repeats", repeats, 1),
                                 ("every_n_epochs", every_n_epochs, 0), ("top_layers", top_layers, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"LatencyProfiler {name} must be an integer >= {low}, got {value!r}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"LatencyProfiler num_threads must be >= 1, got {num_threads}")
        if input_shape is not None and (not input_shape or any(int(s) < 1 for s in input_shape)):
            raise ValueError(f"LatencyProfiler input_shape must be a list of positive sizes, got {input_shape}")
        self.backends = list(dict.fromkeys(backends))
        self.batch_size = int(batch_size)
        self.input_shape = [int(s) for s in input_shape] if input_shape is not None else None
        self.warmup = int(warmup)
        self.repeats = int(repeats)
        self.num_threads = num_threads
        self.every_n_epochs = int(every_n_epochs)
        self.per_layer = bool(per_layer)
        self.top_layers = int(top_layers)
        self.device = device
        #: every measurement, oldest first: dicts with ``epoch``, ``step`` (global step), ``reason`` (``fit_start``,
        #: ``pruning_step``, ``epoch_end``), ``pruning_step`` (its index or None), ``backend``, ``ms``, ``iqr_ms``,
        #: ``speedup``, ``flops``, ``params``.
        self.history: list[dict[str, Any]] = []
        #: the first measurement per backend: ``{"ms", "flops", "params"}``.
        self.baseline: dict[str, dict[str, float]] = {}
        #: the latest per-layer breakdown per backend.
        self.last_layers: dict[str, list[LayerTime]] = {}
        self._skipped: set[str] = set()
        self._example: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(backends=self.backends, batch_size=self.batch_size,
                                        input_shape=self.input_shape)

    @property
    def active_backends(self) -> list[str]:
        """The backends still measured (a backend whose export or run failed is dropped)."""
        return [b for b in self.backends if b not in self._skipped]

    # -- input ----------------------------------------------------------------------------------------------------
    def _resolve_input(self, pl_module: pl.LightningModule, fallback: Any = None) -> Any:
        if self._example is None:
            if self.input_shape is not None:
                generator = torch.Generator().manual_seed(0)
                self._example = torch.randn(*self.input_shape, generator=generator)
            elif getattr(pl_module, "example_input_array", None) is not None:
                self._example = pl_module.example_input_array
            elif fallback is not None:
                self._example = fallback
            else:
                raise ValueError(
                    "LatencyProfiler needs an example input: set `self.example_input_array` in the LightningModule "
                    "or pass input_shape=[1, 3, H, W]"
                )
        return _batched(self._example, self.batch_size)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resolve_input(pl_module)  # every rank: a missing input is an error everywhere
        self.measure(trainer, pl_module, reason="fit_start")

    def on_pruning_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: PruningStep) -> None:
        self.measure(trainer, pl_module, reason="pruning_step", pruning_step=step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.measure(trainer, pl_module, reason="epoch_end")

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": dict(self.baseline), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.baseline = dict(state_dict.get("baseline", {}))
        # measurements taken before the state arrived (strategies that restore after setup) stay, after the old ones
        self.history = list(state_dict.get("history", [])) + [row for row in self.history
                                                               if row not in state_dict.get("history", [])]

    # -- measuring --------------------------------------------------------------------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str = "manual",
                pruning_step: PruningStep | None = None) -> dict[str, float]:
        """Measure now (rank 0 only), log, and return the logged metrics (empty on other ranks)."""
        if not trainer.is_global_zero:
            return {}
        fallback = pruning_step.example_input if pruning_step is not None else None
        example = self._resolve_input(pl_module, fallback)
        original = _device(pl_module)
        target = torch.device(self.device) if self.device is not None else original
        moved = target != original
        if moved:
            pl_module.to(target)
        try:
            example = _map_tensors(example, lambda t: t.to(target))
            flops = count_flops(pl_module, example)
            params = count_params(pl_module)
            results: dict[str, LatencyResult] = {}
            for backend in self.active_backends:
                result = self._measure_backend(pl_module, example, backend)
                if result is not None:
                    results[backend] = result
        finally:
            if moved:
                pl_module.to(original)
        metrics: dict[str, float] = {}
        for backend, result in results.items():
            base = self.baseline.setdefault(backend, {"ms": result.median_ms, "flops": flops, "params": params})
            speedup = base["ms"] / result.median_ms if result.median_ms > 0 else float("nan")
            metrics[f"latency/{backend}_ms"] = result.median_ms
            metrics[f"latency/{backend}_speedup"] = speedup
            if result.layers is not None:
                self.last_layers[backend] = result.layers
            self.history.append({
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "reason": reason,
                "pruning_step": pruning_step.step if pruning_step is not None else None,
                "backend": backend,
                "ms": result.median_ms,
                "iqr_ms": result.iqr_ms,
                "speedup": speedup,
                "flops": flops,
                "params": params,
            })
        metrics["latency/flops"] = float(flops)
        metrics["latency/params"] = float(params)
        self._log(trainer, metrics)
        return metrics

    def _measure_backend(self, pl_module: pl.LightningModule, example: Any, backend: str) -> LatencyResult | None:
        try:
            return measure_latency(pl_module, example, backend, warmup=self.warmup, repeats=self.repeats,
                                   num_threads=self.num_threads, per_layer=self.per_layer)
        except Exception as err:
            if backend == "eager":
                raise
            self._skipped.add(backend)
            cause = (str(err).strip().splitlines() or [""])[0][:300]
            rank_zero_warn(f"LatencyProfiler: the {backend} backend failed ({type(err).__name__}: {cause}); "
                           f"it is skipped from now on, training goes on")
            return None

    # -- logging --------------------------------------------------------------------------------------------------
    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger):
                self._log_tensorboard(logger.experiment, trainer.global_step)

    def _log_tensorboard(self, writer: Any, step: int) -> None:
        table = self.slowest_layers_markdown()
        if table:
            writer.add_text("latency/slowest_layers", table, global_step=step)
        figure = self.figure()
        if figure is not None:
            writer.add_figure("latency/latency_vs_flops", figure, global_step=step)

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
