"""Importance criteria: which channels of a group to prune first.

The paper's reference code numbers seven criteria 0-6; we name them, and add first-order Taylor:

=================  ======================================================================
``l2``             smallest L2 norm of the producing filters first (reference 0)
``l2_largest``     largest L2 norm first (reference 1)
``l1``             smallest L1 norm first (reference 2)
``l1_largest``     largest L1 norm first (reference 3)
``bn_scale``       smallest BatchNorm scale ``|γ|`` first (reference 4)
``bn_scale_l1``    smallest ``|γ| · L1`` first (reference 5)
``random``         random order (reference 6)
``taylor``         smallest ``Σ |w · ∂L/∂w|`` first (needs gradients on the parameters)
=================  ======================================================================

A criterion maps a :class:`~lightning_prune.graph.Group` to one score per channel; **low scores are pruned first**.
A callable ``(group, model) -> sequence of floats`` works wherever a name does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from lightning_prune.graph.groups import Group, Member

__all__ = ["CRITERIA", "Criterion", "channel_scores", "lowest_channels"]

CRITERIA = ("l2", "l2_largest", "l1", "l1_largest", "bn_scale", "bn_scale_l1", "random", "taylor")
Criterion = str | Callable[[Group, nn.Module], Sequence[float]]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm)


def _tensor(model: nn.Module, member: Member) -> torch.Tensor:
    return getattr(model.get_submodule(member.module), member.param)


def _is_norm_member(model: nn.Module, member: Member) -> bool:
    return isinstance(model.get_submodule(member.module), _NORMS)


def _per_channel(group: Group, model: nn.Module, members: list[Member],
                 reduce: Callable[[torch.Tensor, int], torch.Tensor]) -> np.ndarray:
    """Sum ``reduce(tensor, dim)`` (one value per index along ``dim``) into group channels."""
    scores = np.zeros(group.size)
    for member in members:
        tensor = _tensor(model, member)
        values = reduce(tensor.detach().float(), member.dim).cpu().numpy()
        held = member.channels >= 0
        np.add.at(scores, member.channels[held], values[held])
    return scores


def _norm_over_other_dims(p: float) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def reduce(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        moved = tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)
        return moved.norm(p=p, dim=1) ** p  # sum of |w|^p, so several members add up like one long filter

    return reduce


def _weights(group: Group, model: nn.Module) -> list[Member]:
    return [m for m in group.producers if m.param == "weight" and not _is_norm_member(model, m)]


def _norm_scales(group: Group, model: nn.Module) -> list[Member]:
    return [m for m in group.producers if m.param == "weight" and _is_norm_member(model, m)]


def channel_scores(group: Group, model: nn.Module, criterion: Criterion = "l1",
                   generator: np.random.Generator | None = None) -> np.ndarray:
    """One score per channel of ``group``; channels with the lowest scores are pruned first.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_prune import DependencyGraph
        >>> net = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.Conv2d(3, 1, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([2.0, -1.0, 3.0]).view(3, 1, 1, 1))
        >>> group = DependencyGraph(net, torch.randn(1, 1, 4, 4)).group("0")
        >>> channel_scores(group, net, "l1").tolist()
        [2.0, 1.0, 3.0]
        >>> channel_scores(group, net, "l1_largest").tolist()
        [-2.0, -1.0, -3.0]
    """
    if callable(criterion):
        scores = np.asarray(criterion(group, model), dtype=np.float64)
        if scores.shape != (group.size,):
            raise ValueError(f"criterion returned {scores.shape} scores for group '{group.name}' of {group.size}")
        return scores
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)} or pass a callable")
    if criterion == "random":
        return (generator or np.random.default_rng()).random(group.size)
    if criterion == "taylor":
        members = group.producers
        missing = [m for m in members if _tensor(model, m).grad is None]
        if not members or missing:
            raise ValueError(f"criterion 'taylor' needs gradients on the producers of group '{group.name}'")

        def taylor(tensor_and_grad: torch.Tensor, dim: int) -> torch.Tensor:
            return tensor_and_grad.movedim(dim, 0).reshape(tensor_and_grad.shape[dim], -1).abs().sum(dim=1)

        scores = np.zeros(group.size)
        for member in members:
            tensor = _tensor(model, member)
            values = taylor((tensor.detach() * tensor.grad).float(), member.dim).cpu().numpy()
            held = member.channels >= 0
            np.add.at(scores, member.channels[held], values[held])
        return scores
    base, _, largest = criterion.partition("_largest")
    if base in ("l1", "l2"):
        scores = _per_channel(group, model, _weights(group, model), _norm_over_other_dims(1.0 if base == "l1" else 2.0))
        if base == "l2":
            scores = np.sqrt(scores)
        return -scores if criterion.endswith("_largest") else scores
    scales = _norm_scales(group, model)
    if not scales:  # no norm in the group: |γ| is undefined, fall back to the filters' L1 norm
        return channel_scores(group, model, "l1")
    gamma = _per_channel(group, model, scales, lambda t, dim: t.abs())
    if criterion == "bn_scale":
        return gamma
    return gamma * channel_scores(group, model, "l1")


def lowest_channels(group: Group, model: nn.Module, count: int, criterion: Criterion = "l1",
                    generator: np.random.Generator | None = None) -> list[int]:
    """The ``count`` channels of ``group`` to prune first under ``criterion`` (sorted ascending).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_prune import DependencyGraph
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 1, 1))
        >>> graph = DependencyGraph(net, torch.randn(1, 1, 4, 4))
        >>> len(lowest_channels(graph.group("0"), net, 2))
        2
    """
    if count <= 0:
        return []
    scores = channel_scores(group, model, criterion, generator)
    return sorted(np.argsort(scores, kind="stable")[:count].tolist())
