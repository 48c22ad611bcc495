"""Plain records of what a latency measurement found (no measuring here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["LatencyResult", "LayerTime"]


class LayerTime(NamedTuple):
    """Time of one conv layer inside a forward pass.

    Attributes:
        name: the module's qualified name in the measured model (for ONNX Runtime: the ONNX node name when it cannot
            be matched to a module).
        op_type: the module class (eager) or the ONNX Runtime kernel (``Conv``, ``FusedConv``, ...).
        ms: median time of the layer per forward pass, in milliseconds.
        share: ``ms`` divided by the median time of the whole forward in the same (instrumented) passes.

    Example:
        >>> LayerTime("backbone.0", "Conv2d", 1.5, 0.25).share
        0.25
    """

    name: str
    op_type: str
    ms: float
    share: float


@dataclass
class LatencyResult:
    """What :func:`~lightning_prune.profiling.measure_latency` measured.

    Attributes:
        backend: ``"eager"`` or ``"onnxruntime"``.
        median_ms, iqr_ms: median and interquartile range of the single-call times.
        times_ms: every timed call, in the order it ran.
        num_threads: the intra-op thread count used.
        batch_size: the batch size of the input that was timed.
        layers: conv layers, slowest first, when ``per_layer=True`` (``None`` otherwise). They come from separate,
            instrumented passes (forward hooks for eager, ONNX Runtime's profiler), so they are for ranking and shares,
            not to be added up against ``median_ms``.

    Example:
        >>> result = LatencyResult("eager", 2.0, 0.1, [2.0, 2.1], 1, 1, [LayerTime("0", "Conv2d", 1.0, 0.5)])
        >>> result.conv_share, [layer.name for layer in result.slowest(1)]
        (0.5, ['0'])
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
