"""Optimizer state follows the surviving channels: SGD momentum, Adam moments, ... are sliced, never reset."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lightning_prune.graph.surgery import ParamChange

__all__ = ["slice_optimizer_state"]


def slice_optimizer_state(optimizers: Iterable[torch.optim.Optimizer], changes: Iterable[ParamChange]) -> int:
    """Slice every per-parameter state tensor shaped like a pruned parameter's old shape; returns how many were
    sliced. Parameters keep their identity through surgery, so ``param_groups`` need no change.

    Example:
        >>> import torch
        >>> from lightning_prune import DependencyGraph
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1))
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        >>> net(torch.randn(1, 3, 4, 4)).sum().backward(); optimizer.step()
        >>> result = DependencyGraph(net, torch.randn(1, 3, 4, 4)).prune({"0": [0]})
        >>> slice_optimizer_state([optimizer], result.changes)
        3
        >>> optimizer.state[net[0].weight]["momentum_buffer"].shape
        torch.Size([3, 3, 1, 1])
    """
    changes = list(changes)
    sliced = 0
    for optimizer in optimizers:
        for change in changes:
            state = optimizer.state.get(change.tensor)
            if not state:
                continue
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and tuple(value.shape) == change.old_shape:
                    state[key] = change.slice(value)
                    sliced += 1
    return sliced
