"""Shared helpers of the ultralytics integration: optional imports, model checks, no font downloads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["INSTALL_HINT", "is_detection_model", "no_font_download", "one_line", "require_pil", "require_ultralytics"]

INSTALL_HINT = 'pip install "lightning-prune[yolo]"'


def require_ultralytics() -> Any:
    """Import and return the ``ultralytics`` package, or raise a one-line ImportError saying how to install it."""
    try:
        import ultralytics
    except ImportError as err:
        raise ImportError(f"this needs ultralytics (AGPL-3.0), which is not installed: {INSTALL_HINT}") from err
    return ultralytics


def require_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(f"reading images needs Pillow, which is not installed: {INSTALL_HINT}") from err
    return Image



def is_detection_model(model: Any) -> bool:
    layers = getattr(model, "model", None)
    return isinstance(model, nn.Module) and isinstance(layers, nn.Sequential) and hasattr(layers[-1], "stride")



@contextlib.contextmanager
def no_font_download() -> Iterator[None]:
    """ultralytics' data set check fetches Arial.ttf for plots; validation here makes no plots, so skip it."""
    import ultralytics.data.utils as data_utils

    original = data_utils.check_font
    data_utils.check_font = lambda *args, **kwargs: None
    try:
        yield
    finally:
        data_utils.check_font = original


def one_line(err: BaseException | str) -> str:
    """An exception (or text) as one line: ultralytics' messages span lines and carry emojis and colour codes."""
    import re

    text = str(err) if str(err) else type(err).__name__
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # ANSI colours
    text = "".join(ch for ch in text if ch.isascii() or ch.isalnum() or ch in "−×≥≤")
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    return "; ".join(parts) if parts else type(err).__name__
