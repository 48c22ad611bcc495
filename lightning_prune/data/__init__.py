"""Data sets for examples and tests: a deterministic synthetic shapes detection set in YOLO format.

Only numpy is needed. Names are imported on first use, so ``python -m lightning_prune.data.synthetic`` runs cleanly.

Example:
    >>> from lightning_prune.data import CLASS_NAMES
    >>> CLASS_NAMES
    ('circle', 'square', 'triangle')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_prune.data.synthetic import CLASS_NAMES, draw_synthetic_image, make_synthetic_dataset

__all__ = ["CLASS_NAMES", "draw_synthetic_image", "make_synthetic_dataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lightning_prune.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
