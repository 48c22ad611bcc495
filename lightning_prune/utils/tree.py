"""The package's one walker over nested containers of tensors (tuples, lists, dicts, output dataclasses).

Every module that needs to find or transform the tensors inside a model input or output (the tracer, the graph's
output checks, latency measurement, the ONNX export) goes through these two functions, so they all agree on what
counts as "inside".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["iter_tensors", "map_tensors"]


def _is_record(obj: Any) -> bool:
    """A plain object holding outputs by attribute (e.g. a dataclass of outputs), not a module or a tensor."""
    return (hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, torch.Tensor, type))
            and not callable(obj))


def iter_tensors(obj: Any, attributes: bool = False) -> Iterator[torch.Tensor]:
    """Tensors in ``obj`` and in the tuples, lists and dicts nested in it, depth first (dicts in insertion order).

    Args:
        obj: anything; a tensor yields itself, other leaves yield nothing.
        attributes: also look into the attributes of plain objects (e.g. a dataclass a model returns), not into
            modules.

    Example:
        >>> import torch
        >>> [t.shape[0] for t in iter_tensors((torch.zeros(1), {"a": [torch.zeros(2)], "b": 3}))]
        [1, 2]
    """
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_tensors(item, attributes)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_tensors(item, attributes)
    elif attributes and _is_record(obj):
        for item in vars(obj).values():
            if isinstance(item, (torch.Tensor, list, tuple, dict)):
                yield from iter_tensors(item, attributes)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with every tensor ``t`` in its tuples, lists and dicts replaced by ``fn(t)``; containers keep their
    type (named tuples and ``torch.Size`` included), other leaves are returned as they are.

    Example:
        >>> import torch
        >>> map_tensors({"x": torch.ones(2), "n": 3, "ys": (torch.zeros(1),)}, lambda t: t + 1)
        {'x': tensor([2., 2.]), 'n': 3, 'ys': (tensor([1.]),)}
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        items = [map_tensors(item, fn) for item in obj]
        if hasattr(obj, "_fields"):  # a named tuple
            return type(obj)(*items)
        return type(obj)(items) if type(obj) is not tuple else tuple(items)
    if isinstance(obj, list):
        return [map_tensors(item, fn) for item in obj]
    if isinstance(obj, dict):
        return {key: map_tensors(value, fn) for key, value in obj.items()}
    return obj
