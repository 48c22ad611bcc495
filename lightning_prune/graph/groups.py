"""Coupled channel groups: the units a pruning plan talks about.

A *group* is a set of producers whose channels must be pruned together (an ``add`` of two convs, the halves of a
``chunk``, a depthwise conv and the conv feeding it). Channel ``k`` of a group is one class of the label forest;
its *members* are all parameter dimensions that hold that channel somewhere: the producers' filters, the norms after
them, and every consumer's input slice, at whatever offset a ``cat`` put it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lightning_prune.graph.labels import UnionFind
from lightning_prune.graph.records import OUTPUT_REASON, Role, TraceResult

__all__ = ["Group", "Member", "build_groups"]


@dataclass(frozen=True, eq=False)
class Member:
    """One parameter (or buffer) dimension holding some of a group's channels.

    ``channels[i]`` is the group channel stored at index ``i`` of ``dim`` of ``<module>.<param>``, or -1 where that
    index belongs to another group (a consumer of a concatenation holds several groups side by side).
    """

    module: str
    param: str
    dim: int
    role: str
    channels: np.ndarray

    def indices(self, channels: list[int] | np.ndarray) -> np.ndarray:
        """Indices along :attr:`dim` that hold any of the given group channels."""
        return np.nonzero(np.isin(self.channels, np.asarray(channels)))[0]

    def __repr__(self) -> str:
        held = int((self.channels >= 0).sum())
        return f"Member({self.module}.{self.param}, dim={self.dim}, role={self.role}, {held}/{len(self.channels)})"


@dataclass(eq=False)
class Group:
    """Channels that can only be pruned together.

    Attributes:
        name: stable name, the module that first produces these channels (e.g. ``"model.2.cv1.conv"``).
        size: number of channels (prunable units) in the group.
        prunable: False when something in the model forbids removing these channels.
        reason: why the group is pinned (None when prunable).
        exact: True when zeroing the producers (:meth:`DependencyGraph.masked`) gives exactly the pruned model's
            output; False when an op with ``f(0) != 0`` (e.g. ``sigmoid``) lies between producer and consumer.
        note: why :attr:`exact` is False.
        members: every parameter dimension that holds these channels.
        flops_share: fraction of the traced conv/linear FLOPs that would go if all of the group's channels went
            (a layer keeping fractions ``a`` of its inputs and ``b`` of its outputs keeps ``a·b`` of its FLOPs).
    """

    name: str
    size: int
    prunable: bool
    reason: str | None
    exact: bool
    note: str | None
    members: list[Member] = field(repr=False)
    flops_share: float = 0.0
    roots: np.ndarray = field(default=None, repr=False)  # label-forest class of each channel

    @property
    def producers(self) -> list[Member]:
        """Members that create the channels (conv/linear filters, norm γ/β): what importance criteria score."""
        return [m for m in self.members if m.role == Role.PRODUCER]


def build_groups(result: TraceResult) -> list[Group]:
    """Turn a channel trace into groups, in trace order."""
    forest = result.forest
    n = len(forest)
    roots = np.fromiter((forest.find(i) for i in range(n)), dtype=np.int64, count=n)

    # producer blocks that share a class belong to one group
    blocks = forest.blocks
    block_sets = UnionFind(len(blocks))
    first_block_of_root: dict[int, int] = {}
    for b, (_, labels) in enumerate(blocks):
        for r in np.unique(roots[labels]).tolist():
            other = first_block_of_root.setdefault(r, b)
            if other != b:
                block_sets.unite(other, b)

    group_of_root = np.full(n, -1, dtype=np.int64)
    channel_of_root = np.full(n, -1, dtype=np.int64)
    order: list[int] = []  # group index -> lead block
    index_of_lead: dict[int, int] = {}
    class_roots: list[list[int]] = []
    for b, (_, labels) in enumerate(blocks):
        lead = block_sets.find(b)
        g = index_of_lead.get(lead)
        if g is None:
            g = index_of_lead[lead] = len(order)
            order.append(lead)
            class_roots.append([])
        for r in roots[labels].tolist():
            if group_of_root[r] < 0:
                group_of_root[r] = g
                channel_of_root[r] = len(class_roots[g])
                class_roots[g].append(r)

    members: list[list[Member]] = [[] for _ in order]
    for binding in result.bindings.values():
        binding_roots = roots[binding.labels]
        owners = group_of_root[binding_roots]
        for g in np.unique(owners).tolist():
            channels = np.where(owners == g, channel_of_root[binding_roots], -1)
            members[g].append(Member(binding.module_name, binding.name, binding.dim, binding.role, channels))

    pinned = _first_reason_per_root(forest.pins, roots)
    inexact = _first_reason_per_root(forest.inexact, roots)
    shares = _flops_shares(result, roots, group_of_root, len(order))

    groups: list[Group] = []
    seen: dict[str, int] = {}
    for g, lead in enumerate(order):
        base = blocks[lead][0]
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        group_roots = np.asarray(class_roots[g], dtype=np.int64)
        reason = next((pinned[r] for r in class_roots[g] if r in pinned), None)
        if reason is None and not any(m.role == Role.PRODUCER for m in members[g]):
            reason = "no parameter produces these channels"
        if reason is None and len(group_roots) < 2:
            widest = max((int((m.channels >= 0).sum()) for m in members[g]), default=1)
            reason = "a single channel" if widest < 2 else (
                f"a single channel: couplings (adds, lock-step splits, block reshapes) tie all {widest} channels of "
                "its widest member into one unit")
        note = next((inexact[r] for r in class_roots[g] if r in inexact), None)
        groups.append(Group(name, len(group_roots), reason is None, reason, note is None, note, members[g],
                            shares[g], group_roots))
    return groups


def _first_reason_per_root(reasons: dict[int, str], roots: np.ndarray) -> dict[int, str]:
    per_root: dict[int, str] = {}
    for label, reason in reasons.items():
        root = int(roots[label])
        if root not in per_root or reason == OUTPUT_REASON:  # the plainest reason wins
            per_root[root] = reason
    return per_root


def _flops_shares(result: TraceResult, roots: np.ndarray, group_of_root: np.ndarray, count: int) -> list[float]:
    shares = np.zeros(count)
    calls = result.cost_calls()
    total = sum(call.flops for call in calls) or 1
    for call in calls:
        # a layer keeping fractions a (inputs) and b (outputs) keeps a*b of its FLOPs
        kept_in = np.ones(count)
        kept_out = np.ones(count)
        for labels, kept in ((call.in_labels, kept_in), (call.out_labels, kept_out)):
            if labels is None or len(labels) == 0:
                continue
            owners, counts = np.unique(group_of_root[roots[labels]], return_counts=True)
            kept[owners] -= counts / len(labels)
        touched = (kept_in < 1) | (kept_out < 1)
        shares[touched] += call.flops * (1.0 - kept_in[touched] * kept_out[touched])
    return (shares / total).tolist()
