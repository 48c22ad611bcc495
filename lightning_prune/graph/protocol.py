"""What the tracer and the op handlers know of each other, and nothing more.

:mod:`~lightning_prune.graph.tracer` (the ``TorchFunctionMode`` that runs the forward) and
:mod:`~lightning_prune.graph.ops` (how each torch operation moves channel labels) import neither each other: the op
handlers type against :class:`Tracer`, the tracer calls whatever :class:`OpTable` it is given, and
:mod:`~lightning_prune.graph.trace` puts the two together (the module :mod:`~lightning_prune.graph.ops` is an
:class:`OpTable`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from lightning_prune.graph.labels import LabelForest
from lightning_prune.graph.records import ChannelInfo, TraceResult

__all__ = ["Handler", "OpTable", "Tracer"]


class Tracer(Protocol):
    """The tracer as an op handler sees it: where the forward is, the labels, and how to bind, produce or pin them."""

    result: TraceResult
    forest: LabelForest
    #: channel counts read through ``x.shape``/``x.size()``, per module: (count, labels)
    shape_reads: dict[str, list[tuple[int, np.ndarray]]]

    @property
    def where(self) -> str:
        """Name of the innermost module now running (``<model>`` for the top level)."""

    @property
    def current_module(self) -> torch.nn.Module:
        """The innermost module now running."""

    def block_name(self, base: str) -> str:
        """A unique producer-block name derived from ``base``."""

    def owner(self, tensor: Any) -> tuple[str, str, torch.nn.Module] | None:
        """(module name, attribute name, module) of a model parameter or buffer; ``None`` for other tensors."""

    def bind(self, tensor: torch.Tensor, dim: int, labels: np.ndarray, role: str) -> bool:
        """Bind ``dim`` of a model parameter/buffer to ``labels``; ``False`` when ``tensor`` is not the model's."""

    def produce(self, weight: torch.Tensor, dim: int) -> np.ndarray:
        """Labels of the channels ``weight`` produces along ``dim``."""

    def pin(self, obj: Any, reason: str, override: bool = False) -> None:
        """Pin the channels of every labelled tensor in ``obj``."""

    def consume(self, info: ChannelInfo) -> None:
        """A layer mixes these channels (they must stay exactly zero under masking)."""


#: ``handler(tracer, name, func, args, kwargs, out)``: moves the labels of one operation's inputs onto ``out``
Handler = Callable[[Tracer, str, Any, tuple, dict, Any], None]


class OpTable(Protocol):
    """The op handlers as the tracer sees them (:mod:`lightning_prune.graph.ops` is one)."""

    #: the names of the ops that reshape a tensor (views of per-channel parameters stay bound through them)
    RESHAPES: tuple[str, ...]

    def op_name(self, func: Any) -> str:
        """A normalised name of a torch function (``Tensor.__iadd__`` -> ``add``)."""

    def handle(self, tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Propagate labels for one operation the tracer has already run."""
