"""Attachments: modules outside a model that read one of its module's outputs (e.g. distillation projectors).

The graph traces them with the model, so their input channels are consumers like any other: pruning a channel of
the output they read slices their input weights at the same index, and the masked == pruned check covers their
outputs too. The channels they produce are pinned (their width is fixed by what they are compared with).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune import DependencyGraph
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    >>> projector = nn.Conv2d(8, 16, 1)             # reads the ReLU's output, maps it to a teacher's 16 channels
    >>> graph = DependencyGraph(net, torch.randn(1, 3, 8, 8), attachments={"proj": ("1", projector)})
    >>> _ = graph.prune({"0": [0, 1, 2]})
    >>> net[2].in_channels, projector.in_channels, projector.out_channels
    (5, 5, 16)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

__all__ = ["ATTACHMENT_REASON", "Attachments", "attached_modules", "check_attachments", "run_attachments"]

Attachments = Mapping[str, tuple[str, nn.Module]]
"""attachment name -> (name of the model's module whose output it reads, the attachment module)."""

ATTACHMENT_REASON = "produced by an attachment outside the model (its width is fixed by what it is compared with)"


def attached_modules(attachments: Attachments | None) -> list[tuple[str, nn.Module]]:
    """Every submodule of every attachment, named ``<attachment>.<submodule>`` (the attachment itself: its name)."""
    named = []
    for name, (_, module) in (attachments or {}).items():
        for sub, child in module.named_modules(remove_duplicate=False):
            named.append((f"{name}.{sub}" if sub else name, child))
    return named


def check_attachments(model: nn.Module, attachments: Attachments | None) -> None:
    """``ValueError`` naming the attachment whose source is not a module of ``model`` (or that is not a module)."""
    for name, spec in (attachments or {}).items():
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], nn.Module)):
            raise ValueError(f"attachment {name!r} must be (source module name, nn.Module), got {spec!r}")
        try:
            model.get_submodule(spec[0])
        except AttributeError:
            raise ValueError(f"attachment {name!r} reads module {spec[0]!r}, which the model does not have") from None


@contextlib.contextmanager
def run_attachments(model: nn.Module, attachments: Attachments | None, sink: list[Any]) -> Iterator[None]:
    """Inside the block, every forward of ``model`` runs each attachment on its source module's output and appends
    the attachment's output to ``sink`` (in the order the sources run)."""
    handles = []
    for _, (source, module) in (attachments or {}).items():
        def hook(_mod: nn.Module, _args: Any, output: Any, module: nn.Module = module) -> None:
            sink.append(module(output))

        handles.append(model.get_submodule(source).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
