"""FLOPs and parameter counts: the package's one cost model.

Whole-model FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`; the per-layer FLOPs the dependency
graph records while tracing (and from which it predicts what a plan removes) come from the same formulas of
:mod:`torch.utils.flop_counter` (:func:`conv_flops`, :func:`linear_flops`), so the two always agree on a layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, mm_flop

from lightning_prune.utils.model import call_model, eval_mode

__all__ = ["conv_flops", "count_flops", "count_params", "linear_flops"]


def conv_flops(x_shape: Sequence[int], weight_shape: Sequence[int], out_shape: Sequence[int],
               transposed: bool = False) -> int:
    """FLOPs of one (transposed) convolution as :class:`~torch.utils.flop_counter.FlopCounterMode` counts them.

    Shapes are batched (``(N, C, *spatial)``); an unbatched input (``(C, *spatial)``) counts as a batch of one.

    Example:
        >>> conv_flops((1, 3, 10, 10), (8, 3, 3, 3), (1, 8, 8, 8))
        27648
        >>> conv_flops((3, 10, 10), (8, 3, 3, 3), (8, 8, 8))
        27648
    """
    spatial = len(weight_shape) - 2
    x_shape, out_shape = list(x_shape), list(out_shape)
    if len(x_shape) == spatial + 1:
        x_shape, out_shape = [1, *x_shape], [1, *out_shape]
    return int(conv_flop_count(x_shape, list(weight_shape), out_shape, transposed))


def linear_flops(x_shape: Sequence[int], weight_shape: Sequence[int]) -> int:
    """FLOPs of ``F.linear`` (the matrix product; the bias is not counted, as in ``FlopCounterMode``).

    Example:
        >>> linear_flops((2, 5, 4), (3, 4))
        240
    """
    rows = math.prod(x_shape[:-1])
    out_features, in_features = weight_shape
    return int(mm_flop((rows, in_features), (in_features, out_features)))


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """FLOPs of one eval-mode forward on ``example_inputs`` (a multiply-add counts as 2), as counted by
    :class:`torch.utils.flop_counter.FlopCounterMode`. The model's training flags are restored.

    Example:
        >>> import torch
        >>> count_flops(torch.nn.Conv2d(3, 8, 3, bias=False), torch.randn(1, 3, 10, 10))
        27648
    """
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        call_model(model, example_inputs)
    return int(counter.get_total_flops())


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once).

    Example:
        >>> import torch
        >>> count_params(torch.nn.Linear(4, 2))
        10
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
