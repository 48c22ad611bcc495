"""The plain record one pruning step returns (and the history entries checkpoints carry)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StepResult", "compose_plans"]


def compose_plans(plans: Sequence[Mapping[str, Sequence[int]]], sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Plans applied one after the other, as one plan in the channel indices of the first one's model.

    Later plans index the channels that survived the earlier ones; ``sizes`` are the groups' sizes before the first.

    Example:
        >>> compose_plans([{"a": [0, 1]}, {"a": [0], "b": [2]}], {"a": 4, "b": 3})
        {'a': [0, 1, 2], 'b': [2]}
    """
    alive = {name: list(range(size)) for name, size in sizes.items()}
    removed: dict[str, set[int]] = {}
    for plan in plans:
        for name, channels in plan.items():
            if name not in alive:
                raise ValueError(f"plan names group '{name}', which had no size before the first plan")
            survivors = alive[name]
            gone = {survivors[i] for i in channels}
            removed.setdefault(name, set()).update(gone)
            alive[name] = [c for c in survivors if c not in gone]
    return {name: sorted(channels) for name, channels in removed.items() if channels}


@dataclass
class StepResult:
    """What one call of :meth:`IterativePruner.step` did.

    Attributes:
        step: 1-based index of the step.
        epoch: the epoch it ran at (``None`` when the caller gave none).
        plan: every channel removed in this step, per group, in the group's indices before the step (corrections
            included; see :func:`compose_plans`).
        plans: the plans in the order they were applied (the first from the strategy, then latency corrections).
        flops_before, flops_after, params_before, params_after: model cost around the step.
        baseline: the unpruned model's costs (``flops``, ``params`` and, for latency targets, ``latency``).
        metric_before, metric_after: what ``evaluate()`` returned around the step (``None`` without it).
        latency_before, latency_after: measured latency in ms (latency targets only).
        probes: the sensitivity probes (``Probe`` records), empty for other strategies.
        picks: the groups the paper's selection picked.
        widths_before, widths_after: output channels of every conv, around the step.
        allocation: the candidate ``allocation="measured"`` chose (e.g. ``"knapsack/16"``), else ``None``.
        candidates_ms: what it measured: every candidate's median latency (ms) on the backend.
    """

    step: int
    epoch: int | None
    plan: dict[str, list[int]]
    plans: list[dict[str, list[int]]]
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    baseline: dict[str, float]
    metric_before: float | None = None
    metric_after: float | None = None
    latency_before: float | None = None
    latency_after: float | None = None
    probes: list[Any] = field(default_factory=list, repr=False)
    picks: list[str] = field(default_factory=list)
    widths_before: dict[str, int] = field(default_factory=dict, repr=False)
    widths_after: dict[str, int] = field(default_factory=dict, repr=False)
    allocation: str | None = None
    candidates_ms: dict[str, float] = field(default_factory=dict)

    @property
    def removed_channels(self) -> int:
        return sum(len(channels) for channels in self.plan.values())

    @property
    def flops_ratio(self) -> float:
        """FLOPs left, as a fraction of the unpruned model's."""
        return self.flops_after / self.baseline["flops"]

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.baseline["params"]

    def history_entries(self) -> list[dict[str, Any]]:
        """One plain entry per applied plan (what checkpoints store and :func:`replay_history` replays)."""
        entries = []
        for index, applied in enumerate(self.plans):
            entry: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "plan": applied,
                                     "flops": int(self.flops_after), "params": int(self.params_after),
                                     "metric_before": self.metric_before, "metric_after": self.metric_after}
            if self.latency_after is not None:
                entry["latency_ms"] = float(self.latency_after)
            if index:
                entry["correction"] = index
            elif self.allocation is not None:
                entry["allocation"] = self.allocation
            entries.append(entry)
        return entries

    def summary(self, metric_name: str = "metric") -> str:
        """One line for a log."""
        text = (f"pruning step {self.step}" + (f" (epoch {self.epoch})" if self.epoch is not None else "")
                + f": removed {self.removed_channels} channels in {len(self.plan)} groups; FLOPs "
                f"{self.flops_before / 1e9:.3f} -> {self.flops_after / 1e9:.3f} G ({self.flops_ratio:.1%} of "
                f"baseline), params {self.params_before:,} -> {self.params_after:,}")
        if self.latency_after is not None and self.latency_before is not None:
            text += f"; latency {self.latency_before:.2f} -> {self.latency_after:.2f} ms"
        if self.allocation is not None:
            text += f"; allocation {self.allocation} (fastest of {max(len(self.candidates_ms), 1)} measured)"
        if self.metric_before is not None and self.metric_after is not None:
            text += f"; {metric_name} {self.metric_before:.4f} -> {self.metric_after:.4f}"
        return text
