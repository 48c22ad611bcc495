"""Reaching a measured latency budget by pruning FLOPs: latency saturates, so the controller learns how much latency
a removed FLOP buys on this backend and asks for correspondingly more.

Example:
    >>> control = LatencyController(baseline_ms=10.0, target=0.5)
    >>> goal = control.step_goal(latency_ms=10.0, remaining=1)
    >>> goal, control.flops_budget(flops=100.0, latency_ms=10.0, goal_ms=goal)
    (5.0, 50.0)
    >>> control.observe(flops_before=100.0, latency_before=10.0, flops_after=50.0, latency_after=8.0)
    >>> round(control.efficiency, 2), control.needs_correction(8.0, goal)
    (0.5, True)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LatencyController"]


@dataclass
class LatencyController:
    """Latency goals per step and the FLOPs budgets that should meet them.

    Args:
        baseline_ms: latency of the unpruned model.
        target: fraction of ``baseline_ms`` to remove by the end of the schedule.
        tolerance: relative excess over the goal accepted without a correction.
        efficiency: latency fraction removed per FLOPs fraction removed (learned; clipped to [0.5, 1.5] so one
            noisy reading cannot gut the model).
    """

    baseline_ms: float
    target: float
    tolerance: float = 0.05
    efficiency: float = 1.0

    def step_goal(self, latency_ms: float, remaining: int) -> float:
        """This step's latency goal: what is left to the final goal, spread evenly over ``remaining`` steps."""
        final = self.baseline_ms * (1.0 - self.target)
        return latency_ms - (latency_ms - final) / max(int(remaining), 1)

    def flops_budget(self, flops: float, latency_ms: float, goal_ms: float, cap: float = 0.9) -> float:
        """FLOPs to remove to go from ``latency_ms`` to ``goal_ms``, at most ``cap`` of ``flops``."""
        wanted = max(0.0, 1.0 - goal_ms / latency_ms) if latency_ms > 0 else 0.0
        return flops * min(cap, wanted / self.efficiency)

    def observe(self, flops_before: float, latency_before: float, flops_after: float, latency_after: float) -> None:
        """Learn the efficiency from one prune (ignored when either cost did not fall)."""
        if flops_after < flops_before and latency_after < latency_before:
            observed = (1 - latency_after / latency_before) / (1 - flops_after / flops_before)
            self.efficiency = float(min(1.5, max(0.5, observed)))

    def needs_correction(self, latency_ms: float, goal_ms: float) -> bool:
        """Whether ``latency_ms`` misses ``goal_ms`` by more than the tolerance."""
        return latency_ms > goal_ms * (1.0 + self.tolerance)
