"""What one pruning run is asked to do: a validated, plain configuration shared by every front-end.

The choices are ``Literal`` types, so LightningCLI/jsonargparse lists them in ``--help`` and rejects a typo before
anything runs; :class:`PruningConfig` re-checks them for plain Python callers and names the bad value in one line.

Example:
    >>> config = PruningConfig(schedule=[1, 3], target=0.4, strategy="uniform")
    >>> config.schedule, config.target_metric
    ([1, 3], 'flops')
    >>> PruningConfig(strategy="magic")
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'magic'; choose one of sensitivity, uniform, global
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from lightning_prune.importance import CRITERIA
from lightning_prune.pruning.schedule import parse_schedule

__all__ = ["Cost", "CriterionName", "LatencyBackend", "Mode", "PruningConfig", "Strategy", "TargetMetric", "choices"]

Strategy = Literal["sensitivity", "uniform", "global"]
TargetMetric = Literal["flops", "params", "latency"]
Mode = Literal["max", "min"]
LatencyBackend = Literal["eager", "onnxruntime", "openvino", "eager-cuda", "onnxruntime-cuda"]
Cost = Literal["flops", "params", "latency"]
Allocation = Literal["threshold", "knapsack", "measured"]
CriterionName = Literal["l2", "l2_largest", "l1", "l1_largest", "bn_scale", "bn_scale_l1", "random", "taylor"]


def choices(kind: Any) -> tuple[str, ...]:
    """The values a ``Literal`` alias allows.

    Example:
        >>> choices(Mode)
        ('max', 'min')
    """
    return tuple(get_args(kind))


def _check_choice(name: str, value: Any, kind: Any) -> None:
    allowed = choices(kind)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


@dataclass
class PruningConfig:
    """Everything the iterative loop needs to know besides the model and how to evaluate it.

    Args:
        schedule: epochs at whose start a pruning step runs (``[1, 3, 5]``), one epoch, or
            ``{"start": 1, "stop": 9, "every": 2}`` (stop exclusive). Stored as a sorted list.
        target: fraction of ``target_metric`` removed by the end of the schedule, ``0 < target < 1``.
        target_metric: ``"flops"`` (at the example input), ``"params"``, or ``"latency"`` (measured).
        strategy: ``"sensitivity"`` (the paper), ``"uniform"`` or ``"global"``.
        criterion: a name of :data:`lightning_prune.importance.CRITERIA` or a callable ``(group, model) -> scores``.
        mode: ``"max"`` if a higher evaluated metric is better, ``"min"`` otherwise.
        sensitivity_rates: fractions of a group each probe masks.
        exponent: ``k`` in the paper's ``Δcost × metric^k``.
        params_layers, flops_layers: the paper's ``N`` and ``M``.
        ignore: module names, prefixes or ``fnmatch`` patterns whose groups are never pruned.
        round_to: keep each group's channel count a multiple of this (where the group is that large).
        min_channels: never keep fewer channels in a group.
        seed: seeds the ``random`` criterion.
        latency_backend, latency_repeats, latency_corrections, latency_tolerance: for ``target_metric="latency"``.
        remeasure_fraction: share of the sensitivity probes measured a second time, on other batches, when the
            pruner has a ``remeasure`` evaluation: those nearest the paper's selection cut (the sensitivity cost is
            then at most ``1 + remeasure_fraction`` times the probes' cost).
        cost: what selection scores and rounds by: ``"flops"``, ``"params"`` or ``"latency"`` — a measured
            per-group latency table on ``latency_backend`` (:func:`~lightning_prune.profiling.build_cost_table`):
            the paper's value becomes ``Δlatency × metric^k``, and every strategy keeps each group at a width where
            the backend is fast instead of one global ``round_to``; with ``target_metric="latency"`` the budget is
            then in the table's predicted milliseconds. Default: the target's own metric (``"flops"`` for a latency
            target: the budget is converted through the observed latency-per-FLOP efficiency).
        cost_table_dir: where measured cost tables are cached (``None``: not cached on disk).
        max_rate: the largest share of any one group a single step removes (``1.0``: no cap). Latency-aware
            ``global`` selection (``cost="latency"``) weighs importance against what a channel costs on the
            backend and would otherwise empty the slowest groups first; ``0.5`` keeps half of every group per step.
        max_total_rate: the largest share of any one group's *original* width (when the pruner was made) the
            whole run removes, over all steps and latency corrections (``1.0``: no cap; Torch-Pruning's
            ``max_pruning_ratio``). ``max_rate`` alone compounds: ``0.5`` per step over three steps and two
            corrections can leave a group 1/32 of its width — latency-aware selection empties the high-resolution
            early layers that way (YOLOv8n's first conv to 1 channel, and its mAP to ~0, in
            ``benchmarks/accuracy.py``).
        allocation: how latency-aware ``global`` selection (``cost="latency"``) spends a FLOPs or params budget:
            ``"threshold"`` (one threshold on importance per predicted ms saved per FLOP) or ``"knapsack"`` (step by
            step along each group's measured curve, see :func:`~lightning_prune.selection.knapsack_counts`) or
            ``"measured"``: both, each at the table's fast widths and at those that are multiples of 8 and of 16
            channels, with ``max_rate`` and the lower per-group caps 0.75 and 0.5, the knapsack also on cost alone
            (:func:`~lightning_prune.pruning.strategies.allocation_candidates`), applied to copies of the
            model whose deployed forms are timed interleaved on ``latency_backend``, the three fastest timed again;
            the fastest is pruned (:func:`~lightning_prune.pruning.measured_choice.fastest_plan`). It catches what
            the table, timing each layer alone, cannot see (layout reorders between layers, fusions) at the price
            of one short measurement per step (3–5 minutes for YOLOv8n at 640 px on 2 CPU cores).
        latency_proxies: for ``allocation="measured"``: other backends whose cost tables propose extra candidates
            (their knapsack allocations at multiples of 8 and 16 channels, each per-group cap), timed on
            ``latency_backend`` with the rest — where a backend's layers timed alone rank unlike its compiled model,
            a related backend's table can rank them better. ``None``: the default of
            :data:`~lightning_prune.pruning.strategies.PROXY_BACKENDS` (eager PyTorch and ONNX Runtime for
            OpenVINO, none elsewhere); ``[]``: none. A proxy whose packages are missing is skipped.
    """

    schedule: Sequence[int] | dict[str, int] | int = (1,)
    target: float = 0.5
    target_metric: TargetMetric = "flops"
    strategy: Strategy = "sensitivity"
    criterion: CriterionName | Callable[..., Any] = "l1"
    mode: Mode = "max"
    sensitivity_rates: Sequence[float] = (0.25, 0.5, 0.75)
    exponent: float = 20.0
    params_layers: int = 6
    flops_layers: int = 5
    ignore: Sequence[str] = field(default_factory=tuple)
    round_to: int = 1
    min_channels: int = 1
    seed: int = 0
    latency_backend: LatencyBackend = "eager"
    latency_repeats: int = 20
    latency_corrections: int = 2
    latency_tolerance: float = 0.05
    remeasure_fraction: float = 0.2
    cost: Cost | None = None
    cost_table_dir: str | None = None
    max_rate: float = 1.0
    allocation: Allocation = "threshold"
    max_total_rate: float = 1.0
    latency_proxies: Sequence[LatencyBackend] | None = None

    def __post_init__(self) -> None:
        self.schedule = parse_schedule(self.schedule)
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) \
                or not 0.0 < float(self.target) < 1.0:
            raise ValueError(f"target must be a fraction strictly between 0 and 1, got {self.target!r}")
        self.target = float(self.target)
        _check_choice("target_metric", self.target_metric, TargetMetric)
        _check_choice("strategy", self.strategy, Strategy)
        _check_choice("mode", self.mode, Mode)
        _check_choice("latency_backend", self.latency_backend, LatencyBackend)
        if self.cost is not None:
            _check_choice("cost", self.cost, Cost)
        _check_choice("allocation", self.allocation, Allocation)
        if not callable(self.criterion) and self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)} or a "
                             "callable")
        rates = [float(r) for r in self.sensitivity_rates]
        if not rates or any(not 0.0 < r < 1.0 for r in rates):
            raise ValueError(f"sensitivity_rates must be fractions strictly between 0 and 1, got "
                             f"{self.sensitivity_rates!r}")
        self.sensitivity_rates = tuple(rates)
        for name in ("round_to", "min_channels", "latency_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
            setattr(self, name, int(getattr(self, name)))
        if int(self.latency_corrections) < 0:
            raise ValueError(f"latency_corrections must be >= 0, got {self.latency_corrections!r}")
        if not float(self.latency_tolerance) >= 0.0:
            raise ValueError(f"latency_tolerance must be >= 0, got {self.latency_tolerance!r}")
        self.exponent = float(self.exponent)
        self.params_layers, self.flops_layers = int(self.params_layers), int(self.flops_layers)
        self.ignore = tuple(self.ignore)
        self.seed = int(self.seed)
        self.latency_corrections = int(self.latency_corrections)
        self.latency_tolerance = float(self.latency_tolerance)
        if not 0.0 <= float(self.remeasure_fraction) <= 1.0:
            raise ValueError(f"remeasure_fraction must be between 0 and 1, got {self.remeasure_fraction!r}")
        self.remeasure_fraction = float(self.remeasure_fraction)
        if isinstance(self.max_rate, bool) or not 0.0 < float(self.max_rate) <= 1.0:
            raise ValueError(f"max_rate must be a fraction in (0, 1], got {self.max_rate!r}")
        self.max_rate = float(self.max_rate)
        if isinstance(self.max_total_rate, bool) or not 0.0 < float(self.max_total_rate) <= 1.0:
            raise ValueError(f"max_total_rate must be a fraction in (0, 1], got {self.max_total_rate!r}")
        self.max_total_rate = float(self.max_total_rate)
        if self.latency_proxies is not None:
            if isinstance(self.latency_proxies, str):
                raise ValueError(f"latency_proxies must be a list of backends, got the string {self.latency_proxies!r}")
            for proxy in self.latency_proxies:
                _check_choice("latency_proxies", proxy, LatencyBackend)
            self.latency_proxies = tuple(p for p in dict.fromkeys(self.latency_proxies) if p != self.latency_backend)

    @property
    def selection_cost(self) -> Literal["flops", "params", "latency"]:
        """What selection scores and rounds by: :attr:`cost`, or the budget's own metric (:attr:`cost_key`)."""
        return self.cost if self.cost is not None else self.cost_key

    @property
    def latency_budget(self) -> bool:
        """Whether each step's budget is in predicted milliseconds: a latency target with ``cost="latency"``."""
        return self.target_metric == "latency" and self.cost == "latency"

    @property
    def cost_key(self) -> Literal["flops", "params"]:
        """The cost selection budgets in: parameters for a parameter target, else FLOPs (latency is budgeted in
        FLOPs through the observed latency-per-FLOP efficiency)."""
        return "params" if self.target_metric == "params" else "flops"
