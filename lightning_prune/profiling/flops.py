"""FLOPs and parameter counts (``torch.utils.flop_counter``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.graph.tracer import call_model, eval_mode

__all__ = ["count_flops", "count_params"]


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
