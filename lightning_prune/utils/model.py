"""Calling a model the way the whole package does, and running it in eval mode without disturbing it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["call_model", "eval_mode", "model_device"]


def call_model(model: torch.nn.Module, example_inputs: Any) -> Any:
    """``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple or list, ``model(inputs)`` otherwise.

    Example:
        >>> import torch
        >>> call_model(torch.nn.Identity(), torch.ones(1)).tolist()
        [1.0]
    """
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block; on exit every module gets its own training flag back (one added meanwhile keeps
    its own).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.BatchNorm1d(2).eval())
        >>> with eval_mode(net):
        ...     [m.training for m in net.modules()]
        [False, False, False]
        >>> [m.training for m in net.modules()]
        [True, True, False]
    """
    modes = {name: module.training for name, module in model.named_modules()}
    model.eval()
    try:
        yield
    finally:
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any).

    Example:
        >>> model_device(torch.nn.Linear(2, 2)).type
        'cpu'
    """
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
