"""Measured latency of the model while it is being pruned: a Lightning callback.

A thin shell: :class:`~lightning_prune.profiling.LatencyTracker` measures and keeps the history; this callback maps
Lightning's hooks onto it (fit start, pruning steps, epoch ends), measures on rank 0 only, logs to the trainer's
loggers and puts the history into checkpoints.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks.evaluation import precision_context
from lightning_prune.callbacks.events import PruningStep
from lightning_prune.profiling import LatencyTracker, LayerTime
from lightning_prune.profiling.timing import batched_input

__all__ = ["LatencyProfiler"]


class LatencyProfiler(pl.Callback):
    """Measures the model's real latency at fit start, after every pruning step and every ``every_n_epochs``.

    Each measurement runs :func:`~lightning_prune.profiling.measure_latency` on rank 0 for every backend (eager
    PyTorch, ONNX Runtime and OpenVINO on the CPU; eager and ONNX Runtime on a CUDA GPU) on a fixed input, and logs
    to every logger of the trainer at the current global step:

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
    device and torch's thread count are restored afterwards, so training is not disturbed (its wall time is). The
    input goes through the trainer's precision plugin (``convert_input``; its forward context without autocast), so
    a ``"16-true"``/``"bf16-true"`` module is timed in half precision and a ``"*-mixed"`` one in its own float dtype,
    as deployed.

    If the ONNX export or ONNX Runtime fails mid-training (an op the exporter cannot handle), one warning is issued
    and the ``onnxruntime`` backend is skipped from then on; training goes on.

    Args:
        backends: any of ``"eager"``, ``"onnxruntime"``, ``"openvino"``, ``"eager-cuda"``, ``"onnxruntime-cuda"``
            (default ``["eager"]``). ``"onnxruntime"`` needs ``pip install "lightning-prune[onnx]"``, ``"openvino"``
            also ``"lightning-prune[openvino]"``, the CUDA ones a GPU (checked here). A per-layer breakdown comes
            from eager, ONNX Runtime (CPU) and OpenVINO.
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
        self.tracker = LatencyTracker(backends, warmup=warmup, repeats=repeats, num_threads=num_threads,
                                      per_layer=per_layer, top_layers=top_layers, device=device,
                                      owner=type(self).__name__, warn=rank_zero_warn)
        for name, value, low in (("batch_size", batch_size, 1), ("every_n_epochs", every_n_epochs, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"LatencyProfiler {name} must be an integer >= {low}, got {value!r}")
        if input_shape is not None and (not input_shape or any(int(s) < 1 for s in input_shape)):
            raise ValueError(f"LatencyProfiler input_shape must be a list of positive sizes, got {input_shape}")
        self.backends = self.tracker.backends
        self.batch_size = int(batch_size)
        self.input_shape = [int(s) for s in input_shape] if input_shape is not None else None
        self.every_n_epochs = int(every_n_epochs)
        self._example: Any = None

    # -- the tracker's state, under the names this callback always had --------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        """Every measurement, oldest first (see :attr:`LatencyTracker.history`)."""
        return self.tracker.history

    @property
    def baseline(self) -> dict[str, dict[str, float]]:
        """The first measurement per backend: ``{"ms", "flops", "params"}``."""
        return self.tracker.baseline

    @property
    def last_layers(self) -> dict[str, list[LayerTime]]:
        """The latest per-layer breakdown per backend."""
        return self.tracker.last_layers

    @property
    def active_backends(self) -> list[str]:
        """The backends still measured (a backend whose export or run failed is dropped)."""
        return self.tracker.active_backends

    @property
    def state_key(self) -> str:
        return self._generate_state_key(backends=self.backends, batch_size=self.batch_size,
                                        input_shape=self.input_shape)

    def _resolve_input(self, pl_module: pl.LightningModule, fallback: Any = None) -> Any:
        if self._example is None:
            if self.input_shape is not None:
                self._example = torch.randn(*self.input_shape, generator=torch.Generator().manual_seed(0))
            elif getattr(pl_module, "example_input_array", None) is not None:
                self._example = pl_module.example_input_array
            elif fallback is not None:
                self._example = fallback
            else:
                raise ValueError(
                    "LatencyProfiler needs an example input: set `self.example_input_array` in the LightningModule "
                    "or pass input_shape=[1, 3, H, W]"
                )
        return batched_input(self._example, self.batch_size)

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
        return self.tracker.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)

    # -- measuring and logging ------------------------------------------------------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str = "manual",
                pruning_step: PruningStep | None = None) -> dict[str, float]:
        """Measure now (rank 0 only), log, and return the logged metrics (empty on other ranks)."""
        if not trainer.is_global_zero:
            return {}
        fallback = pruning_step.example_input if pruning_step is not None else None
        example = self._resolve_input(pl_module, fallback)
        precision = getattr(trainer, "precision_plugin", None)
        if precision is not None:  # the module's own dtype: half inputs under "*-true" (no autocast: see below)
            example = precision.convert_input(example)
        with precision_context(precision, pl_module.device):
            metrics = self.tracker.measure(pl_module, example, reason=reason, epoch=trainer.current_epoch,
                                           step=trainer.global_step,
                                           pruning_step=pruning_step.step if pruning_step is not None else None)
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger):
                self._log_tensorboard(logger.experiment, trainer.global_step)
        return metrics

    def _log_tensorboard(self, writer: Any, step: int) -> None:
        table = self.slowest_layers_markdown()
        if table:
            writer.add_text("latency/slowest_layers", table, global_step=step)
        figure = self.figure()
        if figure is not None:
            writer.add_figure("latency/latency_vs_flops", figure, global_step=step)

    def slowest_layers_markdown(self) -> str:
        """The latest per-layer breakdown as a Markdown table per backend (empty without ``per_layer``)."""
        return self.tracker.slowest_layers_markdown()

    def figure(self) -> Any:
        """Latency against FLOPs over :attr:`history`, one line per backend (``None`` without matplotlib)."""
        return self.tracker.figure()
