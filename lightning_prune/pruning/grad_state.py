"""Autograd state that outlives a prune: the gradient accumulators of the pruned parameters.

A training loop that keeps the last batch's ``loss`` alive (ultralytics' epoch loop does, so does a plain loop
with ``loss`` in scope) keeps its autograd graph, and with it each parameter's ``AccumulateGrad`` node, which
remembers the unpruned shape; autograd reuses a live node, so the first ``backward`` after a prune would fail.
Assigning ``.data`` of another dtype makes torch drop the cached node (it does so for dtype and device changes, not
for shape changes); the data is then put back. Parameters keep their identity, so optimizers still hold them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["release_grad_accumulators"]


def release_grad_accumulators(tensors: Iterable[torch.Tensor]) -> int:
    """Let the next backward create fresh gradient accumulators for ``tensors`` (the parameters among them);
    returns how many were released.

    Example:
        >>> import torch
        >>> from lightning_prune import DependencyGraph
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1))
        >>> x = torch.randn(1, 3, 4, 4)
        >>> loss = net(x).sum()  # an old graph, still alive
        >>> result = DependencyGraph(net, x).prune({"0": [0]})
        >>> release_grad_accumulators(change.tensor for change in result.changes)  # weight+bias of 0, weight of 1
        3
        >>> net(x).sum().backward()
        >>> net[0].weight.grad.shape
        torch.Size([3, 3, 1, 1])
    """
    released = 0
    seen: set[int] = set()
    with torch.no_grad():
        for tensor in tensors:
            if not isinstance(tensor, nn.Parameter) or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            data = tensor.data
            other = torch.float64 if data.dtype != torch.float64 else torch.float32
            tensor.data = data.new_empty(0, dtype=other)
            tensor.data = data
            released += 1
    return released
