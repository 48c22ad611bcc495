"""Data sets for examples, tests and benchmarks, in YOLO format: the deterministic synthetic shapes set
(:mod:`~lightning_prune.data.synthetic`, the main job's default) and Fashion-MNIST scenes with real image content
(:mod:`~lightning_prune.data.fashion`, needs Debian's ``dataset-fashion-mnist`` files).

Only numpy is needed. Names are imported on first use, so ``python -m lightning_prune.data.synthetic`` runs cleanly.

Example:
    >>> from lightning_prune.data import CLASS_NAMES
    >>> CLASS_NAMES
    ('circle', 'square', 'triangle')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_prune.data.fashion import FashionMnistMissing, make_fashion_dataset
    from lightning_prune.data.synthetic import CLASS_NAMES, draw_synthetic_image, make_synthetic_dataset

__all__ = ["CLASS_NAMES", "FashionMnistMissing", "draw_synthetic_image", "make_fashion_dataset",
           "make_synthetic_dataset"]
_FASHION = {"FashionMnistMissing", "make_fashion_dataset"}


def __getattr__(name: str) -> Any:
    if name in _FASHION:
        from lightning_prune.data import fashion

        return getattr(fashion, name)
    if name in __all__:
        from lightning_prune.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
