"""Plain records the tracer leaves behind: what each traced tensor's channels are, and which parameter
dimensions carry which channel labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lightning_prune.graph.labels import LabelForest

__all__ = ["OUTPUT_REASON", "ChannelInfo", "Binding", "LayerCall", "OpCall", "SplitRecord", "Role", "TraceResult",
           "channel_info", "set_channel_info"]

OUTPUT_REASON = "reaches the model output"

_ATTR = "_lightning_prune_channels"  # where a traced tensor carries its ChannelInfo


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
class OpCall:
    """One weightless op that moves every element of its channels (a concatenation or split along channels, a
    pooling, a resize, a residual add): its kind, the shapes it reads, what it needs to be re-run on its own, and the
    labels of the channels it moves (its cost scales with how many of them stay). What the latency cost model
    (:mod:`~lightning_prune.pruning.cost_table`) times beside the convolutions."""

    kind: str
    module_name: str
    input_shapes: list[tuple[int, ...]]
    params: dict
    labels: np.ndarray


@dataclass
class SplitRecord:
    """An equal split of channels (``chunk``/``split``) inside ``module``; ``attrs`` are the integer attributes its
    class's code passes as split sizes and that equal the piece size (e.g. ultralytics ``C2f.c``): they follow the
    piece size when channels are pruned. No other attribute is ever touched. The same record serves a channel slice
    bounded by an attribute (``x[:, :self.k]``: ``piece_labels`` are the channels before the bound) and, with
    ``extra = {"sequence_attrs": [...], "pieces": [...]}``, uneven pieces sized by a list attribute."""

    module: torch.nn.Module | None
    attrs: list[str]
    piece_labels: np.ndarray
    extra: dict = field(default_factory=dict)


class TraceResult:
    """Everything one trace learned: the label forest, parameter bindings, layer calls and splits."""

    def __init__(self) -> None:
        self.forest = LabelForest()
        self.bindings: dict[tuple[int, int], Binding] = {}
        self.layer_calls: list[LayerCall] = []
        self.op_calls: list[OpCall] = []
        self.splits: list[SplitRecord] = []
        self.op_count = 0
        self.output_shapes: list[tuple[int, ...]] = []
        self.build_seconds = 0.0
        #: names of the attachments' modules (``<attachment>.<submodule>``): traced so that pruning slices them, but
        #: training-only, so never part of the model's cost
        self.attached_names: frozenset[str] = frozenset()

    def cost_calls(self) -> list[LayerCall]:
        """The model's own conv/linear calls: what its FLOPs are counted from (the attachments' calls left out)."""
        return [call for call in self.layer_calls if call.module_name not in self.attached_names]


def channel_info(obj: object) -> ChannelInfo | None:
    """The :class:`ChannelInfo` a traced tensor carries (``None`` for anything else)."""
    return getattr(obj, _ATTR, None) if isinstance(obj, torch.Tensor) else None


def set_channel_info(tensor: torch.Tensor, info: ChannelInfo | None) -> None:
    """Attach ``info`` to ``tensor`` (``None``: remove what it carries)."""
    if info is None:
        if hasattr(tensor, _ATTR):
            delattr(tensor, _ATTR)
        return
    setattr(tensor, _ATTR, info)
