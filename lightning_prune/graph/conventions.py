"""Output conventions of well-known model families, so their graphs pin only what really is an output.

Kept free of imports from those families (ultralytics is an optional, AGPL-licensed extra): models are recognised
by the module their class is defined in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["default_output_filter", "drop_keys"]


def drop_keys(*keys: str) -> Callable[[Any], Any]:
    """An output filter that removes dict entries named ``keys`` at any depth.

    Example:
        >>> drop_keys("feats")({"boxes": 1, "feats": [2, 3]})
        {'boxes': 1}
    """

    def strip(output: Any) -> Any:
        if isinstance(output, dict):
            return {k: strip(v) for k, v in output.items() if k not in keys}
        if isinstance(output, (list, tuple)):
            return type(output)(strip(v) for v in output) if not hasattr(output, "_fields") else output
        return output

    return strip


def default_output_filter(model: nn.Module) -> Callable[[Any], Any]:
    """The part of ``model``'s output whose channels must keep their shape.

    ultralytics heads return their input feature maps under ``"feats"`` next to the predictions; the loss reads only
    their spatial sizes, so those channels stay prunable (also when the model is wrapped, e.g. in a LightningModule
    that returns its output). Every other model: the whole output.
    """
    if any(type(module).__module__.startswith("ultralytics.") for module in model.modules()):
        return drop_keys("feats")  # an ultralytics model, or a LightningModule wrapping one
    return lambda output: output
