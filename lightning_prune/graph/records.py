"""Plain records the tracer leaves behind: what each traced tensor's channels are, and which parameter
dimensions carry which channel labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["ChannelInfo", "Binding", "LayerCall", "SplitRecord", "Role"]


class Role:
    """What a parameter dimension does with its channels.

    ``PRODUCER`` dimensions are zeroed by :meth:`DependencyGraph.masked` (conv filters, biases, norm γ/β, per-channel
    parameters added or multiplied in); ``CONSUMER`` dimensions are conv/linear input slices; ``STAT`` dimensions are
    norm running statistics. All of them are sliced by pruning.
    """

    PRODUCER = "producer"
    CONSUMER = "consumer"
    STAT = "stat"


@dataclass
class ChannelInfo:
    """Attached to a tensor during tracing: along ``dim`` its channels carry ``labels``.

    ``taint`` is None while masking a channel's producers is guaranteed to leave it exactly zero; otherwise it names
    the first operation that can turn a masked zero into something else (e.g. ``sigmoid``, ``x + 1``).
    """

    dim: int
    labels: np.ndarray
    taint: str | None = None


@dataclass
class Binding:
    """Dimension ``dim`` of ``module.<name>`` (a parameter or buffer) carries ``labels`` along its indices."""

    module_name: str
    module: torch.nn.Module
    name: str
    dim: int
    labels: np.ndarray
    role: str

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.name)


@dataclass
class LayerCall:
    """One conv/linear application: its FLOPs and the labels of its input and output channels."""

    module_name: str
    flops: int
    in_labels: np.ndarray | None
    out_labels: np.ndarray | None


@dataclass
class SplitRecord:
    """An equal split of channels (``chunk``/``split``) inside ``module``; ``attrs`` are its integer attributes
    that equal the piece size (e.g. ultralytics ``C2f.c``) and must follow it when channels are pruned."""

    module: torch.nn.Module | None
    attrs: list[str]
    piece_labels: np.ndarray
    extra: dict = field(default_factory=dict)
