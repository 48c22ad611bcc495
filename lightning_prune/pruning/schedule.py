"""When pruning steps happen, and how much of the budget each one takes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["parse_schedule", "pending_epochs", "step_budget"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def parse_schedule(schedule: Any) -> list[int]:
    """A sorted list of epochs from a list, a single epoch, or a ``start``/``stop``/``every`` dict.

    Example:
        >>> parse_schedule([5, 1, 3]), parse_schedule(2), parse_schedule({"start": 1, "stop": 7, "every": 2})
        ([1, 3, 5], [2], [1, 3, 5])
        >>> parse_schedule([1, 1])
        Traceback (most recent call last):
        ...
        ValueError: schedule repeats an epoch: [1, 1]
    """
    if isinstance(schedule, dict):
        unknown = set(schedule) - {"start", "stop", "every"}
        if unknown or "stop" not in schedule:
            raise ValueError(f"a schedule dict takes start, stop and every (stop required), got {sorted(schedule)}")
        values = {"start": 0, "every": 1, **schedule}
        bad = {k: v for k, v in values.items() if not _is_int(v)}
        if bad or values["every"] < 1:
            raise ValueError(f"schedule start/stop/every must be whole numbers (every >= 1), got {schedule!r}")
        epochs = list(range(values["start"], values["stop"], values["every"]))
    elif _is_int(schedule):
        epochs = [int(schedule)]
    elif isinstance(schedule, (list, tuple)) and all(_is_int(epoch) for epoch in schedule):
        epochs = [int(epoch) for epoch in schedule]
    else:
        raise ValueError(f"schedule must be a list of epochs or a start/stop/every dict, got {schedule!r}")
    if not epochs:
        raise ValueError("the pruning schedule is empty")
    if any(epoch < 0 for epoch in epochs):
        raise ValueError(f"schedule epochs must be >= 0, got {epochs}")
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"schedule repeats an epoch: {epochs}")
    return sorted(epochs)


def pending_epochs(schedule: Iterable[int], done: Iterable[int], epoch: int | None = None) -> list[int]:
    """Scheduled epochs not pruned yet (from ``epoch`` on, when given).

    Example:
        >>> pending_epochs([1, 3, 5], done=[1]), pending_epochs([1, 3, 5], done=[1], epoch=4)
        ([3, 5], [5])
    """
    finished = set(done)
    return [e for e in schedule if e not in finished and (epoch is None or e >= epoch)]


def step_budget(current: float, baseline: float, target: float, remaining: int) -> float:
    """Cost this step removes: what is left to reach ``baseline × (1 − target)``, spread evenly over ``remaining``
    steps (this one included).

    Example:
        >>> step_budget(current=100.0, baseline=100.0, target=0.5, remaining=2)
        25.0
    """
    return (current - baseline * (1.0 - target)) / max(int(remaining), 1)
