"""The same surgery on averaged copies of a model (EMA, SWA): what was removed from the model goes from each copy.

A copy (Lightning's ``AveragedModel.module``, ultralytics' ``ModelEMA.ema``, ...) is a structural twin of the model
or of one of its submodules. After ``graph.prune`` changed the model, :func:`mirror_prune` slices the copy's tensors
with the very indices the model's tensors kept (:class:`~lightning_prune.graph.surgery.ParamChange`) and copies over
every integer module attribute the surgery changed (``out_channels``, ``num_features``, ultralytics ``C2f.c``, ...),
so the copy keeps its own averaged values for the surviving channels. It checks everything before changing anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from lightning_prune.graph import PruneResult

__all__ = ["declared_copies", "mirror_all", "mirror_prune"]


def _relative(name: str, prefix: str) -> str | None:
    if not prefix:
        return name
    if name == prefix:
        return ""
    return name[len(prefix) + 1:] if name.startswith(prefix + ".") else None


def _int_attributes(module: nn.Module) -> dict[str, int]:
    return {key: value for key, value in vars(module).items()
            if isinstance(value, int) and not isinstance(value, bool) and not key.startswith("_")}


def mirror_prune(copy: nn.Module, result: PruneResult, source: nn.Module, prefix: str = "") -> int:
    """Apply the surgery that produced ``result`` on ``source`` to ``copy``, the twin of ``source``'s submodule at
    ``prefix`` (``""``: of ``source`` itself). Returns the number of tensors sliced.

    Raises ``ValueError`` (and leaves ``copy`` unchanged) when ``copy`` is not shaped like ``source`` was.

    Example:
        >>> import copy as copying, torch
        >>> from lightning_prune import DependencyGraph
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1))
        >>> ema = copying.deepcopy(net)
        >>> result = DependencyGraph(net, torch.randn(1, 3, 4, 4)).prune({"0": [0, 5]})
        >>> mirror_prune(ema, result, source=net)
        7
        >>> ema[0].out_channels, ema[1].running_mean.shape, ema(torch.randn(1, 3, 4, 4)).shape
        (6, torch.Size([6]), torch.Size([1, 2, 4, 4]))
    """
    todo: list[tuple[torch.Tensor, object]] = []
    for change in result.changes:
        name = _relative(change.module_name, prefix)
        if name is None:
            continue
        try:
            module = copy.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"the averaged copy has no module '{name}' to prune like the model") from err
        tensor = getattr(module, change.name, None)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"the averaged copy's '{name}' has no tensor '{change.name}' to prune like the model")
        if tuple(tensor.shape) != change.old_shape:
            raise ValueError(f"the averaged copy's '{name}.{change.name}' is shaped {tuple(tensor.shape)}, the model's "
                             f"was {change.old_shape}: it is not a copy of this model")
        todo.append((tensor, change))
    root = source.get_submodule(prefix) if prefix else source
    originals = dict(root.named_modules())
    attributes = []
    for name, module in copy.named_modules():
        original = originals.get(name)
        if original is None:
            continue
        theirs = _int_attributes(original)
        for key, value in _int_attributes(module).items():
            if key in theirs and theirs[key] != value:
                attributes.append((module, key, theirs[key]))
    seen: set[int] = set()
    with torch.no_grad():
        for tensor, change in todo:
            if id(tensor) in seen:  # a tensor shared by two modules is sliced once
                continue
            seen.add(id(tensor))
            tensor.data = change.slice(tensor.data)
            tensor.grad = None
    for module, key, value in attributes:
        setattr(module, key, value)
    return len(seen)


def _holds(copy: nn.Module, name: str | None) -> bool:
    if name is None:
        return False
    try:
        copy.get_submodule(name)
    except AttributeError:
        return False
    return True


def _under(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def mirror_all(copies: Iterable[tuple[nn.Module, str]], result: PruneResult, source: nn.Module,
               attachments: Mapping[str, tuple[str, nn.Module]] | None = None) -> None:
    """:func:`mirror_prune` for every ``(copy, prefix)``.

    With graph ``attachments`` (e.g. distillation projectors, named ``<attachment>.<submodule>`` in ``result``), a
    ``prefix`` inside an attachment's name mirrors that attachment's changes onto ``copy`` (an averaged copy of the
    projector), and every other prefix mirrors the model's changes only.
    """
    attachments = attachments or {}
    attached = [change for change in result.changes if any(_under(change.module_name, a) for a in attachments)]
    own = [change for change in result.changes if not any(change is c for c in attached)]
    for copy, prefix in copies:
        owner = next((a for a in attachments if _under(prefix, a)), None)
        if owner is None:  # a copy of the model; one that also holds the attachments (a deep copy) gets theirs too
            held = [change for change in attached if _holds(copy, _relative(change.module_name, prefix))]
            mirror_prune(copy, PruneResult(result.removed, own + held), source, prefix)
            continue
        changes = [dataclasses.replace(change, module_name=change.module_name[len(owner) + 1:])
                   for change in result.changes if _under(change.module_name, owner)]
        mirror_prune(copy, PruneResult(result.removed, changes), attachments[owner][1], prefix[len(owner) + 1:])


def declared_copies(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """The ``(copy, prefix)`` pairs a module declares with an ``averaged_copies()`` method (e.g. an EMA of one of
    its submodules, ``[(self.ema.module, "model")]``); none without one."""
    declare = getattr(module, "averaged_copies", None)
    if not callable(declare):
        return []
    copies = []
    for item in declare() or ():
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], nn.Module)
                and isinstance(item[1], str)):
            raise ValueError(f"{type(module).__name__}.averaged_copies() must return (module, prefix) pairs, got "
                             f"{item!r}")
        copies.append(item)
    return copies
