"""Old import paths that keep working for one release: a module (or a package's name) that moved answers from its
new home and warns with a :class:`DeprecationWarning` naming it, at the line that used the old path.

A module that moved leaves a shim at its old path::

    \"\"\"Deprecated: moved to :mod:`lightning_prune.pruning.importance`.\"\"\"
    from lightning_prune.utils.deprecation import moved_names, moving

    __getattr__ = moved_names(__name__, moving(["CRITERIA", "channel_scores"], "lightning_prune.pruning.importance"))

The new homes are named as strings and imported on first use, so a shim ties no layer to another.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["moved_names", "moving"]


def moving(names: Iterable[str], module: str) -> dict[str, str]:
    """``{name: module}`` for every name of ``names``: the table :func:`moved_names` takes.

    Example:
        >>> moving(["a", "b"], "pkg.new")
        {'a': 'pkg.new', 'b': 'pkg.new'}
    """
    return dict.fromkeys(names, module)


def moved_names(old: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``old`` (a module's ``__name__``) that answers each name of ``moved`` from
    the module it maps to, with a :class:`DeprecationWarning` at the caller's line; other names raise
    ``AttributeError`` as usual.

    Example:
        >>> import warnings
        >>> getattr_ = moved_names("old.place", moving(["dumps"], "json"))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     getattr_("dumps")([1])
        '[1]'
        >>> print(caught[0].message)
        old.place.dumps is deprecated and goes in the next release: import it from json
        >>> getattr_("loads")
        Traceback (most recent call last):
        ...
        AttributeError: module 'old.place' has no attribute 'loads'
    """
    table = dict(moved)

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} is deprecated and goes in the next release: import it from {target}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(target), name)

    return __getattr__
