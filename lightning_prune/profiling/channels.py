"""Channel-count speed tables: how a conv's latency steps with its output channels, and the multiple to round pruned
channel counts up to (``round_to``) that costs almost nothing."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from lightning_prune.profiling.timing import check_backend, measure_latency

__all__ = ["ChannelSpeed", "channel_speed_table", "suggest_round_to"]


class ChannelSpeed(NamedTuple):
    """One row of :func:`channel_speed_table`."""

    channels: int
    ms: float
    ms_per_channel: float


def _conv_with(conv: nn.Conv2d, out_channels: int) -> nn.Conv2d:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and not depthwise and out_channels % conv.groups:
        raise ValueError(f"{out_channels} output channels is not a multiple of groups={conv.groups}")
    in_channels = out_channels if depthwise else conv.in_channels
    return nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     out_channels if depthwise else conv.groups, conv.bias is not None, conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)


def channel_speed_table(conv: nn.Conv2d, input_hw: Sequence[int], channels: Sequence[int] | None = None,
                        backend: str = "eager", *, batch_size: int = 1, warmup: int = 3, repeats: int = 20,
                        num_threads: int | None = None, seed: int = 0) -> list[ChannelSpeed]:
    """Time a stand-alone copy of ``conv`` at several output-channel counts.

    Each count gets a fresh ``nn.Conv2d`` like ``conv`` (same input channels, kernel, stride, padding, bias; a
    depthwise conv also shrinks its input) fed a random ``(batch_size, in_channels, *input_hw)`` input. Counts are
    measured in a shuffled order (``seed``) so slow drift of the machine does not line up with channel count.

    Args:
        conv: the layer to study (only its hyper-parameters are used).
        input_hw: the spatial size of its input, ``(H, W)``.
        channels: counts to time; default every count from ``out_channels // 2`` to ``out_channels`` (from 1 when
            ``out_channels <= 64``) — where pruning to a multiple matters.
        backend, batch_size, warmup, repeats, num_threads: as for :func:`measure_latency`.

    Returns:
        rows ``(channels, ms, ms_per_channel)`` sorted by channel count; feed them to :func:`suggest_round_to`.

    Example:
        >>> import torch
        >>> rows = channel_speed_table(torch.nn.Conv2d(8, 16, 3), (8, 8), channels=[4, 8], repeats=3)
        >>> [row.channels for row in rows]
        [4, 8]
    """
    check_backend(backend)
    if len(input_hw) != 2:
        raise ValueError(f"input_hw must be (H, W), got {tuple(input_hw)}")
    out = conv.out_channels
    if channels is None:
        channels = range(1 if out <= 64 else out // 2, out + 1)
    counts = sorted({int(c) for c in channels})
    if not counts or counts[0] < 1:
        raise ValueError(f"channel counts must be >= 1, got {list(channels)}")
    order = counts[:]
    random.Random(seed).shuffle(order)
    ms: dict[int, float] = {}
    for count in order:
        layer = _conv_with(conv, count)
        x = torch.randn(batch_size, layer.in_channels, *input_hw, device=conv.weight.device, dtype=conv.weight.dtype)
        result = measure_latency(layer, x, backend, warmup=warmup, repeats=repeats, num_threads=num_threads)
        ms[count] = result.median_ms
    return [ChannelSpeed(c, ms[c], ms[c] / c) for c in counts]


def suggest_round_to(table: Sequence[ChannelSpeed | tuple[int, float, float]], tolerance: float = 0.02,
                     candidates: Sequence[int] = (1, 2, 4, 8, 16, 32), min_samples: int = 3) -> int:
    """The largest multiple to round pruned channel counts *up* to while paying almost nothing for it.

    Rule: for a candidate ``m``, take every count ``c`` in ``table`` that is not a multiple of ``m`` and whose
    round-up ``u = ceil(c / m) * m`` is also in the table; the *padding cost* of ``m`` is the median of
    ``ms(u) / ms(c) - 1``. ``m`` passes when its padding cost is at most ``tolerance``. Candidates are tried in
    ascending order and the answer is the last one before the first failure (1 when none passes). Candidates with
    fewer than ``min_samples`` such pairs are skipped: the table cannot judge them.

    How to read it: on hardware whose latency is a stair-step in the channel count (vectorised kernels, blocked
    layouts), the counts inside a step cost the same, so rounding up to the step is free and ``m`` = the step passes.
    On hardware where latency is simply proportional to channels, padding costs about ``m / (2 c)``: with
    ``tolerance=0.02`` and ``c`` around 200, ``m`` up to 8 may pass. Either way the claim is the same and it is what
    the table shows: keeping ``round_up(c, m)`` channels instead of ``c`` costs at most ~``tolerance`` more time.

    Example:
        >>> rows = [(c, 0.1 * math.ceil(c / 8), 0.1 * math.ceil(c / 8) / c) for c in range(16, 65)]
        >>> suggest_round_to(rows)
        8
    """
    ms = {int(row[0]): float(row[1]) for row in table}
    best = 1
    for m in sorted(set(candidates)):
        if m <= 1:
            continue
        costs = [ms[up] / ms[c] - 1 for c in ms if c % m and (up := math.ceil(c / m) * m) in ms and ms[c] > 0]
        if len(costs) < min_samples:
            continue
        if statistics.median(costs) > tolerance:
            break
        best = m
    return best
