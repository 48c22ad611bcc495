"""Per-layer latency curves: one conv layer timed *in isolation* at sampled widths, the measurements a per-group
latency model (:mod:`lightning_prune.pruning.cost_table`) is built from. Nothing here reads a dependency graph.

Each layer is timed at sampled widths along each axis pruning can change (up to ``points`` widths, from an eighth of
the width to all of it, multiples of 1/2/4/8/16 by size: :func:`sample_widths`), the other axis at its current width,
with a tiny repeat count (the fastest of ``repeats`` runs after a warm-up: on a shared machine a preempted call only
adds time), and each curve made non-decreasing (:func:`monotone`). A layer's latency at ``(c_in, c_out)`` is then
the separable interpolation ``T0 · r_in(c_in) · r_out(c_out)`` (``r`` the measured curves relative to the current
width ``T0``, linear in between samples), which keeps ``1 - a·b`` for a layer losing fractions of both sides, as
FLOPs do (:meth:`LayerCurve.ms`). A weightless op (a concatenation, a pooling) is timed once at its current size and
taken to scale with the share of its channels that stays (:class:`OpCost`).
"""

from __future__ import annotations

import bisect
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_prune.profiling.backends import is_cuda
from lightning_prune.profiling.isolated import LayerSpec, OpSpec, activation_name, time_layers
from lightning_prune.utils.model import call_model, eval_mode

__all__ = ["LayerCurve", "OpCost", "checked_count", "checked_time", "device_name", "discover_layers",
           "measure_curve", "monotone", "sample_widths"]


def sample_widths(size: int, points: int = 16) -> list[int]:
    """The widths a layer axis (or group) of ``size`` channels is measured at: multiples of the smallest power of
    two that keeps at most ``points`` samples, from about an eighth of ``size`` up, and ``size`` itself.

    Example:
        >>> sample_widths(16)
        [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
        >>> sample_widths(100)
        [16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 100]
        >>> sample_widths(1)
        [1]
    """
    if size < 1:
        raise ValueError(f"a width must be >= 1, got {size}")
    low = max(1, size // 8)
    step = 1
    while len(range(math.ceil(low / step) * step, size + 1, step)) > max(points - 1, 1):
        step *= 2
    widths = set(range(max(step, math.ceil(low / step) * step), size + 1, step))
    return sorted(widths | {size})


def monotone(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence (least squares; pool-adjacent-violators).

    A wider layer is never really faster than a narrower one *for the choice*: where a measurement says so (noise,
    or a backend that is slow at an odd width), the narrower width is never worth keeping, and pooling the two says
    exactly that, while a plateau's widest width stays the one to keep.

    Example:
        >>> monotone([1.0, 3.0, 2.0, 4.0])
        [1.0, 2.5, 2.5, 4.0]
    """
    blocks: list[list[float]] = []  # [sum, count]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def _interp(xs: Sequence[int], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear interpolation; below the first sample, proportional to ``x`` towards zero."""
    if x >= xs[-1]:
        return ys[-1]
    if x <= xs[0]:
        return ys[0] * max(x, 0.0) / xs[0]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def checked_count(value: Any, what: str, minimum: int = 0) -> int:
    """``value`` as an int of at least ``minimum`` (JSON integers only: no floats, no booleans)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def checked_time(value: Any, what: str) -> float:
    """``value`` as a finite, non-negative time in ms."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite time >= 0 ms, got {value!r}")
    return float(value)


def _curve(widths: Any, times: Any, what: str) -> tuple[list[int], list[float]]:
    """A sampled curve: ascending widths >= 1 and as many finite, non-negative times."""
    if not isinstance(widths, list) or not isinstance(times, list):
        raise ValueError(f"{what}: widths and times must be lists")
    if len(widths) != len(times):
        raise ValueError(f"{what}: {len(widths)} widths but {len(times)} times")
    out_widths = [checked_count(w, f"{what} width", 1) for w in widths]
    if any(a >= b for a, b in zip(out_widths, out_widths[1:])):
        raise ValueError(f"{what}: widths must ascend, got {out_widths}")
    return out_widths, [checked_time(t, f"{what} time") for t in times]


@dataclass
class LayerCurve:
    """One conv layer's measured latency along the axes pruning can change.

    Attributes:
        spec: the layer as it is now.
        full_ms: its time at the current widths.
        out_widths, out_ms: sampled output widths (input at its current width) and their times (empty: fixed).
        in_widths, in_ms: the same along the input width (empty for fixed inputs and depthwise convs).
    """

    spec: LayerSpec
    full_ms: float
    out_widths: list[int] = field(default_factory=list)
    out_ms: list[float] = field(default_factory=list)
    in_widths: list[int] = field(default_factory=list)
    in_ms: list[float] = field(default_factory=list)

    def ms(self, in_channels: float, out_channels: float) -> float:
        """Predicted time at the given widths (separable, interpolated).

        Example:
            >>> spec = LayerSpec(8, 8, (1, 1), (1, 1), (0, 0), (1, 1), 1, False, (4, 4))
            >>> LayerCurve(spec, 2.0, [4, 8], [1.0, 2.0], [4, 8], [1.5, 2.0]).ms(4, 4)
            0.75
        """
        if self.full_ms <= 0:
            return 0.0
        if self.spec.depthwise:
            width = min(in_channels, out_channels)
            return _interp(self.out_widths, self.out_ms, width) if self.out_widths else self.full_ms
        r_out = _interp(self.out_widths, self.out_ms, out_channels) / self.full_ms if self.out_widths else 1.0
        r_in = _interp(self.in_widths, self.in_ms, in_channels) / self.full_ms if self.in_widths else 1.0
        return self.full_ms * r_out * r_in

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "full_ms": self.full_ms, "out_widths": self.out_widths,
                "out_ms": self.out_ms, "in_widths": self.in_widths, "in_ms": self.in_ms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerCurve:
        """The curve :meth:`to_dict` described; ``ValueError`` for lists of different lengths, widths that do not
        ascend, times that are not finite and non-negative."""
        spec = LayerSpec.from_dict(data["spec"])
        out_widths, out_ms = _curve(data["out_widths"], data["out_ms"], "out curve")
        in_widths, in_ms = _curve(data["in_widths"], data["in_ms"], "in curve")
        return cls(spec, checked_time(data["full_ms"], "full_ms"), out_widths, out_ms, in_widths, in_ms)


@dataclass
class OpCost:
    """One weightless op's measured time at its current size; it scales with the share of its channels that stays.

    Example:
        >>> OpCost(OpSpec("add", ((1, 8, 4, 4), (1, 8, 4, 4))), 0.5).ms(4)
        0.25
    """

    spec: OpSpec
    full_ms: float

    def ms(self, channels: float) -> float:
        """Predicted time when ``channels`` of its channels stay."""
        total = self.spec.channels
        return self.full_ms * max(min(channels / total, 1.0), 0.0) if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "full_ms": self.full_ms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpCost:
        return cls(OpSpec.from_dict(data["spec"]), checked_time(data["full_ms"], "full_ms"))


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _activation_after(model: nn.Module, name: str, module: nn.Module) -> str | None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if getattr(parent, "conv", None) is module:
        return activation_name(getattr(parent, "act", None))
    if isinstance(parent, nn.Sequential):
        names = [n for n, _ in parent.named_children()]
        for follower in list(parent.children())[names.index(child) + 1:]:
            if isinstance(follower, nn.modules.batchnorm._BatchNorm):
                continue
            return activation_name(follower)
    return None


def discover_layers(model: nn.Module, example_inputs: Any) -> dict[str, LayerSpec]:
    """Every ``nn.Conv2d`` the forward on ``example_inputs`` calls, as a :class:`LayerSpec` (first call).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.SiLU())
        >>> spec = discover_layers(net, torch.randn(1, 3, 9, 9))["0"]
        >>> spec.in_channels, spec.out_channels, spec.input_hw, spec.act
        (3, 4, (9, 9), 'silu')
    """
    specs: dict[str, LayerSpec] = {}
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros":
            continue

        def hook(m: nn.Conv2d, args: Any, name: str = name) -> None:
            if name in specs or not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 4:
                return
            x = args[0]
            kernel, dilation = _pair(m.kernel_size), _pair(m.dilation)
            if isinstance(m.padding, str):
                padding = (0, 0) if m.padding == "valid" else tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
            else:
                padding = _pair(m.padding)
            specs[name] = LayerSpec(m.in_channels, m.out_channels, kernel, _pair(m.stride), padding,  # type: ignore
                                    dilation, m.groups, m.bias is not None, (int(x.shape[2]), int(x.shape[3])),
                                    _activation_after(model, name, m), int(x.shape[0]))

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return specs


def device_name(backend: str) -> str:
    if is_cuda(backend) and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_curve(spec: LayerSpec, axes: set[str], backend: str, repeats: int = 5, num_threads: int = 1,
                  points: int = 16) -> LayerCurve:
    """Time ``spec`` alone at its current widths and at :func:`sample_widths` along each axis of ``axes``
    (``"in"``, ``"out"``), each curve made non-decreasing (:func:`monotone`) and ending at the current width's time."""
    out_widths = sample_widths(spec.out_channels, points) if "out" in axes else []
    in_widths = sample_widths(spec.in_channels, points) if "in" in axes and not spec.depthwise else []
    batch = [spec] + [spec.with_channels(spec.in_channels, w) for w in out_widths if w != spec.out_channels]
    batch += [spec.with_channels(w, spec.out_channels) for w in in_widths if w != spec.in_channels]
    # a backend that reports no kernel for a layer (fused into another) spends nothing on it: never NaN in a table
    times = [float(t) if math.isfinite(t) and t >= 0 else 0.0
             for t in time_layers(batch, backend, repeats=repeats, num_threads=num_threads)]
    full = times[0]
    rest = iter(times[1:])
    out_ms = monotone([full if w == spec.out_channels else next(rest) for w in out_widths])
    in_ms = monotone([full if w == spec.in_channels else next(rest) for w in in_widths])
    # the current width's time, as the fitted curves see it (both end there)
    ends = [curve[-1] for curve in (out_ms, in_ms) if curve]
    full = sum(ends) / len(ends) if ends else full
    out_ms = [min(v, full) for v in out_ms[:-1]] + [full] if out_ms else []
    in_ms = [min(v, full) for v in in_ms[:-1]] + [full] if in_ms else []
    return LayerCurve(spec, full, out_widths, out_ms, in_widths, in_ms)
