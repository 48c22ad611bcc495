"""Channel labels and the disjoint-set forest that couples them.

Every channel of every traced tensor carries an integer *label*. A producer (a conv's output filters, a model
input, ...) allocates a fresh block of labels; operations that must keep two channels in lock-step (an ``add`` of
two feature maps, a shared weight, the equal halves of a ``chunk``) *unite* their labels. After tracing, the
classes of the forest are the prunable units: removing one class removes every channel that carries one of its
labels, wherever that channel lives.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LabelForest", "UnionFind"]


class UnionFind:
    """A growable disjoint-set forest over ``0..n-1`` (path compression; the smaller index stays root, so class
    order follows insertion order). The package's one union-find: labels and producer blocks both use it.

    Example:
        >>> sets = UnionFind(4)
        >>> sets.unite(3, 1)
        >>> sets.find(3), sets.find(2), len(sets)
        (1, 2, 4)
    """

    def __init__(self, n: int = 0) -> None:
        self._parent: list[int] = list(range(n))

    def __len__(self) -> int:
        return len(self._parent)

    def add(self, n: int) -> int:
        """Add ``n`` singletons; return the first new index."""
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return start

    def find(self, x: int) -> int:
        parent = self._parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def unite(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self._parent[rb] = ra
            else:
                self._parent[ra] = rb


class LabelForest(UnionFind):
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
        super().__init__()
        self.block_of: list[int] = []  # label -> index into ``blocks``
        self.blocks: list[tuple[str, np.ndarray]] = []  # (block name, its labels), in allocation order
        self.pins: dict[int, str] = {}  # label -> first reason it may not be pruned
        self.inexact: dict[int, str] = {}  # label -> why masking and pruning differ for it

    def allocate(self, n: int, block: str) -> np.ndarray:
        """Return ``n`` fresh labels forming one producer block called ``block``."""
        start = self.add(n)
        labels = np.arange(start, start + n, dtype=np.int64)
        self.block_of.extend([len(self.blocks)] * n)
        self.blocks.append((block, labels))
        return labels

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
