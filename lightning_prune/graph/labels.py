"""Channel labels and the disjoint-set forest that couples them.

Every channel of every traced tensor carries an integer *label*. A producer (a conv's output filters, a model
input, ...) allocates a fresh block of labels; operations that must keep two channels in lock-step (an ``add`` of
two feature maps, a shared weight, the equal halves of a ``chunk``) *unite* their labels. After tracing, the
classes of the forest are the prunable units: removing one class removes every channel that carries one of its
labels, wherever that channel lives.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LabelForest"]


class LabelForest:
    """A growable union-find over integer labels, with per-label pins.

    Example:
        >>> forest = LabelForest()
        >>> a = forest.allocate(3, block="conv_a")
        >>> b = forest.allocate(3, block="conv_b")
        >>> forest.unite_arrays(a, b)
        >>> bool(forest.find(int(a[1])) == forest.find(int(b[1])))
        True
    """

    def __init__(self) -> None:
        self._parent: list[int] = []
        self.block_of: list[int] = []  # label -> index into ``blocks``
        self.blocks: list[tuple[str, np.ndarray]] = []  # (block name, its labels), in allocation order
        self.pins: dict[int, str] = {}  # label -> first reason it may not be pruned
        self.inexact: dict[int, str] = {}  # label -> why masking and pruning differ for it

    def __len__(self) -> int:
        return len(self._parent)

    def allocate(self, n: int, block: str) -> np.ndarray:
        """Return ``n`` fresh labels forming one producer block called ``block``."""
        start = len(self._parent)
        labels = np.arange(start, start + n, dtype=np.int64)
        self._parent.extend(range(start, start + n))
        self.block_of.extend([len(self.blocks)] * n)
        self.blocks.append((block, labels))
        return labels

    def find(self, label: int) -> int:
        parent = self._parent
        root = label
        while parent[root] != root:
            root = parent[root]
        while parent[label] != root:  # path compression
            parent[label], label = root, parent[label]
        return root

    def unite(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the older label stays root, so class order follows trace order
            if ra < rb:
                self._parent[rb] = ra
            else:
                self._parent[ra] = rb

    def unite_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Unite ``a[i]`` with ``b[i]`` for every ``i`` (arrays of equal length)."""
        if a is b:
            return
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.unite(x, y)

    def roots(self, labels: np.ndarray) -> np.ndarray:
        """Class root of each label."""
        find = self.find
        return np.fromiter((find(x) for x in labels.tolist()), dtype=np.int64, count=len(labels))

    def pin(self, labels: np.ndarray, reason: str, override: bool = False) -> None:
        """Forbid pruning ``labels``; the first reason is kept unless ``override`` (for the clearest reasons)."""
        for x in labels.tolist():
            if override:
                self.pins[x] = reason
            else:
                self.pins.setdefault(x, reason)

    def mark_inexact(self, labels: np.ndarray, reason: str) -> None:
        for x in labels.tolist():
            self.inexact.setdefault(x, reason)
