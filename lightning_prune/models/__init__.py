"""Model definitions shipped with ``lightning_prune``.

This folder holds model-architecture YAML files in the ultralytics model-YAML
dialect (for example ``yolov7-tiny.yaml``). They are plain data files: this module
only locates them and never imports ultralytics, so the package core stays
importable without it. Build a model from one of them with ultralytics itself::

    from ultralytics.nn.tasks import DetectionModel

    from lightning_prune.models import model_yaml

    model = DetectionModel(str(model_yaml("yolov7-tiny")), nc=80)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["available_model_yamls", "model_yaml"]

_MODELS_DIR = Path(__file__).resolve().parent
_SUFFIXES = (".yaml", ".yml")


def available_model_yamls() -> list[str]:
    """Return the sorted names (file stems) of the model YAMLs shipped in this folder.

    Example:
        >>> "yolov7-tiny" in available_model_yamls()
        True
    """
    return sorted(
        p.stem for p in _MODELS_DIR.iterdir() if p.is_file() and p.suffix in _SUFFIXES
    )


def model_yaml(name: str) -> Path:
    """Return the path of a model YAML shipped with ``lightning_prune``.

    Args:
        name: Model name, with or without the ``.yaml``/``.yml`` suffix,
            e.g. ``"yolov7-tiny"``.

    Returns:
        Absolute path to the YAML file.

    Raises:
        FileNotFoundError: If no shipped YAML has that name; the message lists
            the available names.

    Example:
        >>> model_yaml("yolov7-tiny").name
        'yolov7-tiny.yaml'
    """
    stem = name
    for suffix in _SUFFIXES:
        stem = stem.removesuffix(suffix)
    if (
        stem and Path(stem).name == stem
    ):  # a bare name: no directory parts, no path traversal
        for candidate_suffix in _SUFFIXES:
            path = _MODELS_DIR / f"{stem}{candidate_suffix}"
            if path.is_file():
                return path
    available = ", ".join(available_model_yamls()) or "(none)"
    raise FileNotFoundError(
        f"No model YAML named {name!r} in {_MODELS_DIR}; available: {available}"
    )
