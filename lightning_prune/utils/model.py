"""Calling a model the way the whole package does, and running it in eval mode without disturbing it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["call_model", "eval_mode", "model_device", "shapes_fit"]


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


def shapes_fit(model: torch.nn.Module, state_dict: Mapping[str, Any], *, same_keys: bool = False) -> bool:
    """Whether ``model``'s tensors have the shapes of ``state_dict``'s: those of the names both have (entries that
    are no tensors pass), or with ``same_keys`` every one, and ``model.state_dict()`` has exactly its keys.

    Example:
        >>> state = torch.nn.Linear(2, 3).state_dict()
        >>> shapes_fit(torch.nn.Linear(2, 3), state), shapes_fit(torch.nn.Linear(2, 4), state)
        (True, False)
        >>> shapes_fit(torch.nn.Linear(2, 3), {"weight": state["weight"]}, same_keys=True)
        False
    """
    if same_keys:
        own = model.state_dict()
        if own.keys() != state_dict.keys():
            return False
    else:
        own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return all(tuple(own[name].shape) == tuple(value.shape) for name, value in state_dict.items()
               if name in own and isinstance(value, torch.Tensor))
