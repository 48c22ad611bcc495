"""What one pruning run is asked to do: a validated, plain configuration shared by every front-end.

:class:`PruningConfig` holds the everyday fields (schedule, target, strategy, criterion, ...) and three groups of
expert knobs: :class:`SensitivityConfig` (the paper's sensitivity analysis), :class:`LatencyConfig` (measured
latency: targets, the latency cost model, allocations) and :class:`Limits` (caps on what a step or the run
removes). Nested dataclasses, so LightningCLI/jsonargparse read them from YAML (``sensitivity: {batches: 2}``) and
list them in ``--help``; the choices are ``Literal`` types. Rules across fields raise one line.

Example:
    >>> config = PruningConfig(schedule=[1, 3], target=0.4, strategy="uniform")
    >>> config.schedule, config.target_metric, config.sensitivity.batches
    ([1, 3], 'flops', 4)
    >>> PruningConfig(strategy="magic")
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'magic'; choose one of sensitivity, uniform, global
    >>> PruningConfig(strategy="uniform", latency=LatencyConfig(cost="latency", allocation="knapsack"))
    Traceback (most recent call last):
    ...
    ValueError: allocation 'knapsack' applies to strategy 'global' only (got strategy 'uniform')
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from lightning_prune.pruning.importance import CRITERIA
from lightning_prune.pruning.schedule import parse_schedule

__all__ = ["Allocation", "Cost", "CriterionName", "LatencyBackend", "LatencyConfig", "Limits", "Mode", "PruningConfig",
           "SensitivityConfig", "Strategy", "TargetMetric", "choices", "configure", "front_end_config"]

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


def _fraction(name: str, value: Any, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not ((0.0 < value if low_open else 0.0 <= value) and value <= 1.0):
        raise ValueError(f"{name} must be a fraction in {'(' if low_open else '['}0, 1], got {value!r}")
    return value


def _at_least(name: str, value: Any, low: int, field_name: str | None = None) -> int:
    if isinstance(value, bool) or int(value) < low:
        where = f" ({field_name})" if field_name else ""
        raise ValueError(f"{name} must be at least {low}{where}, got {value!r}")
    return int(value)


@dataclass
class SensitivityConfig:
    """The paper's sensitivity analysis (``strategy="sensitivity"``): expert knobs.

    Args:
        rates: fractions of a group each probe masks (the paper: 25, 50 and 75 %).
        batches: validation batches each probe (and each before/after measurement) reads, in every front-end.
        exponent: ``k`` in the paper's ``Δcost × metric^k``.
        params_layers, flops_layers: the paper's ``N`` (top groups by parameters saved) and ``M`` (by FLOPs saved).
        remeasure_fraction: share of the probes measured a second time, on other batches, when the front-end has a
            second evaluation: those nearest the selection cut (at most ``1 + remeasure_fraction`` times the cost).
        mode: ``"max"`` if a higher monitored metric is better, ``"min"`` otherwise.
    """

    rates: Sequence[float] = (0.25, 0.5, 0.75)
    batches: int = 4
    exponent: float = 20.0
    params_layers: int = 6
    flops_layers: int = 5
    remeasure_fraction: float = 0.2
    mode: Mode = "max"

    def __post_init__(self) -> None:
        rates = [float(r) for r in self.rates]
        if not rates or any(not 0.0 < r < 1.0 for r in rates):
            raise ValueError(f"sensitivity_rates must be fractions strictly between 0 and 1 (sensitivity.rates), "
                             f"got {self.rates!r}")
        self.rates = tuple(rates)
        self.batches = _at_least("sensitivity_batches", self.batches, 1, "sensitivity.batches")
        self.exponent = float(self.exponent)
        self.params_layers = _at_least("params_layers", self.params_layers, 0)
        self.flops_layers = _at_least("flops_layers", self.flops_layers, 0)
        self.remeasure_fraction = _fraction("remeasure_fraction", self.remeasure_fraction, low_open=False)
        _check_choice("mode", self.mode, Mode)


@dataclass
class LatencyConfig:
    """Measured latency: for ``target_metric="latency"`` and for latency-aware selection (``cost="latency"``).

    Args:
        backend: where latency is measured: eager PyTorch, ONNX Runtime or OpenVINO, on CPU or CUDA.
        repeats: timed calls per latency reading.
        corrections: extra pruning rounds on the last step until a latency target is met.
        tolerance: how close to a latency target is close enough (a fraction of it).
        cost: what selection scores and rounds by: ``"latency"`` — a measured per-group latency table on
            ``backend`` (the paper's value becomes ``Δlatency × metric^k``, and every strategy keeps each group at
            a width where the backend is fast); ``"flops"``/``"params"``; ``None``: the target's own metric
            (FLOPs for a latency target, converted through the observed latency-per-FLOP efficiency).
        table_dir: where measured cost tables are cached (``None``: not on disk).
        allocation: how latency-aware ``global`` selection spends its budget: ``"threshold"`` (one threshold on
            importance per predicted ms saved per FLOP), ``"knapsack"`` (along each group's measured curve) or
            ``"measured"`` (both, at several fast widths and caps, pruned on copies whose deployed forms are
            timed on ``backend``; the fastest wins). Needs ``strategy="global"`` and ``cost="latency"``.
        proxies: for ``allocation="measured"``: other backends whose cost tables propose extra candidates
            (``None``: eager and ONNX Runtime for OpenVINO, none elsewhere; ``[]``: none).
    """

    backend: LatencyBackend = "eager"
    repeats: int = 20
    corrections: int = 2
    tolerance: float = 0.05
    cost: Cost | None = None
    table_dir: str | None = None
    allocation: Allocation = "threshold"
    proxies: Sequence[LatencyBackend] | None = None

    def __post_init__(self) -> None:
        _check_choice("latency_backend", self.backend, LatencyBackend)
        if self.cost is not None:
            _check_choice("cost", self.cost, Cost)
        _check_choice("allocation", self.allocation, Allocation)
        self.repeats = _at_least("latency_repeats", self.repeats, 1, "latency.repeats")
        self.corrections = _at_least("latency_corrections", self.corrections, 0, "latency.corrections")
        if isinstance(self.tolerance, bool) or not float(self.tolerance) >= 0.0:
            raise ValueError(f"latency_tolerance must be >= 0 (latency.tolerance), got {self.tolerance!r}")
        self.tolerance = float(self.tolerance)
        if self.proxies is not None:
            if isinstance(self.proxies, str):
                raise ValueError(f"latency_proxies must be a list of backends (latency.proxies), got the string "
                                 f"{self.proxies!r}")
            for proxy in self.proxies:
                _check_choice("latency_proxies", proxy, LatencyBackend)
            self.proxies = tuple(p for p in dict.fromkeys(self.proxies) if p != self.backend)


@dataclass
class Limits:
    """Caps on what pruning removes.

    Args:
        max_rate: the largest share of any one group a single step removes (``1.0``: no cap). Latency-aware
            ``global`` selection would otherwise empty the slowest groups first; ``0.5`` keeps half of every group
            per step.
        max_total_rate: the largest share of any group's original width the whole run removes, over all steps and
            latency corrections (``1.0``: no cap; Torch-Pruning's ``max_pruning_ratio``). ``max_rate`` alone
            compounds over steps.
        min_channels: never keep fewer channels in a group.
    """

    max_rate: float = 1.0
    max_total_rate: float = 1.0
    min_channels: int = 1

    def __post_init__(self) -> None:
        self.max_rate = _fraction("max_rate", self.max_rate)
        self.max_total_rate = _fraction("max_total_rate", self.max_total_rate)
        self.min_channels = _at_least("min_channels", self.min_channels, 1)


#: old flat keyword -> (group, field) of the nested configuration (flat keywords are deprecated)
FLAT_KEYWORDS: dict[str, tuple[str, str]] = {
    "sensitivity_rates": ("sensitivity", "rates"),
    "sensitivity_batches": ("sensitivity", "batches"),
    "exponent": ("sensitivity", "exponent"),
    "params_layers": ("sensitivity", "params_layers"),
    "flops_layers": ("sensitivity", "flops_layers"),
    "remeasure_fraction": ("sensitivity", "remeasure_fraction"),
    "mode": ("sensitivity", "mode"),
    "latency_backend": ("latency", "backend"),
    "latency_repeats": ("latency", "repeats"),
    "latency_corrections": ("latency", "corrections"),
    "latency_tolerance": ("latency", "tolerance"),
    "cost": ("latency", "cost"),
    "cost_table_dir": ("latency", "table_dir"),
    "allocation": ("latency", "allocation"),
    "latency_proxies": ("latency", "proxies"),
    "max_rate": ("limits", "max_rate"),
    "max_total_rate": ("limits", "max_total_rate"),
    "min_channels": ("limits", "min_channels"),
}
_GROUPS = {"sensitivity": SensitivityConfig, "latency": LatencyConfig, "limits": Limits}


@dataclass
class PruningConfig:
    """Everything the iterative loop needs to know besides the model and how to evaluate it.

    Args:
        schedule: epochs at whose start a pruning step runs (``[1, 3, 5]``), one epoch, or
            ``{"start": 1, "stop": 9, "every": 2}`` (stop exclusive). Stored as a sorted list.
        target: fraction of ``target_metric`` removed by the end of the schedule, ``0 < target < 1``.
        target_metric: ``"flops"`` (at the example input), ``"params"``, or ``"latency"`` (measured on
            ``latency.backend``).
        strategy: ``"sensitivity"`` (the paper), ``"uniform"`` or ``"global"``.
        criterion: which channels of a group go first: a name of :data:`lightning_prune.importance.CRITERIA` or a
            callable ``(group, model) -> scores``.
        ignore: module names, prefixes or ``fnmatch`` patterns whose groups are never pruned.
        round_to: keep each group's channel count a multiple of this (where the group is that large).
        seed: seeds the ``random`` criterion.
        sensitivity: the paper's sensitivity analysis (:class:`SensitivityConfig`).
        latency: measured latency (:class:`LatencyConfig`); ``None``: defaults, used only by a latency target.
        limits: caps on what a step and the run remove (:class:`Limits`).

    Rules across fields (one ``ValueError`` each): ``allocation`` other than ``"threshold"`` needs
    ``strategy="global"`` and ``cost="latency"``.
    """

    schedule: Sequence[int] | dict[str, int] | int = (1,)
    target: float = 0.5
    target_metric: TargetMetric = "flops"
    strategy: Strategy = "sensitivity"
    criterion: CriterionName | Callable[..., Any] = "l1"
    ignore: Sequence[str] = field(default_factory=tuple)
    round_to: int = 1
    seed: int = 0
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    latency: LatencyConfig | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.schedule = parse_schedule(self.schedule)
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) \
                or not 0.0 < float(self.target) < 1.0:
            raise ValueError(f"target must be a fraction strictly between 0 and 1, got {self.target!r}")
        self.target = float(self.target)
        _check_choice("target_metric", self.target_metric, TargetMetric)
        _check_choice("strategy", self.strategy, Strategy)
        if not callable(self.criterion) and self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)} or a "
                             "callable")
        self.ignore = (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore)
        self.round_to = _at_least("round_to", self.round_to, 1)
        self.seed = int(self.seed)
        for name, kind in _GROUPS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):  # plain dicts from Python callers; YAML gets the dataclasses
                value = kind(**value)
                setattr(self, name, value)
            if not (value is None and name == "latency") and not isinstance(value, kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
        latency = self.latency_settings
        if latency.allocation != "threshold" and (self.strategy != "global" or latency.cost != "latency"):
            problem = (f"strategy 'global' only (got strategy {self.strategy!r})" if self.strategy != "global"
                       else "latency-aware selection only: set latency cost='latency'")
            raise ValueError(f"allocation {latency.allocation!r} applies to {problem}")

    @property
    def latency_settings(self) -> LatencyConfig:
        """:attr:`latency`, or the defaults where it is ``None``."""
        return self.latency if self.latency is not None else _DEFAULT_LATENCY

    # -- read-only views the loop reads: the old flat names, answered from their groups ---------------------------
    def __getattr__(self, name: str) -> Any:
        """``config.max_rate``, ``config.latency_backend``, ... (every name of :data:`FLAT_KEYWORDS`): read-only
        views of the grouped fields, so the loop reads one name per setting wherever it lives."""
        spec = FLAT_KEYWORDS.get(name)
        if spec is None or "sensitivity" not in self.__dict__:  # unknown, or asked before __init__ ran (unpickling)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        group, field_name = spec
        value = getattr(self.latency_settings if group == "latency" else getattr(self, group), field_name)
        return tuple(value) if isinstance(value, list) else value

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


_DEFAULT_LATENCY = LatencyConfig()
_TOP_LEVEL = {f.name for f in dataclasses.fields(PruningConfig)}
_FIELDS_INIT = PruningConfig.__init__


def _init_accepting_flat_keywords(self: PruningConfig, *args: Any, **kwargs: Any) -> None:
    """The dataclass ``__init__``, also taking the deprecated flat keywords (mapped into their groups)."""
    flat = {key: kwargs.pop(key) for key in list(kwargs) if key in FLAT_KEYWORDS}
    for key, value in flat.items():
        group, name = FLAT_KEYWORDS[key]
        warnings.warn(f"PruningConfig({key}=...) is deprecated: use {group}={_GROUPS[group].__name__}({name}=...)",
                      DeprecationWarning, stacklevel=2)
        base = kwargs.get(group)
        values = dict(base) if isinstance(base, Mapping) else dataclasses.asdict(base) if base is not None else {}
        values[name] = value
        kwargs[group] = values
    _FIELDS_INIT(self, *args, **kwargs)


_init_accepting_flat_keywords.__signature__ = inspect.signature(_FIELDS_INIT)  # what jsonargparse and help() show
_init_accepting_flat_keywords.__doc__ = _FIELDS_INIT.__doc__
PruningConfig.__init__ = _init_accepting_flat_keywords


def configure(config: PruningConfig | None = None, *, where: str = "PruningConfig", stacklevel: int = 3,
              **settings: Any) -> PruningConfig:
    """A :class:`PruningConfig` from ``config`` (default: the defaults) with ``settings`` applied: top-level
    fields, whole groups (``sensitivity=SensitivityConfig(...)`` or a dict of its fields), or the old flat
    keywords (``sensitivity_batches=2``, ``latency_backend="onnxruntime"``, ``max_rate=0.5``, ...), which still
    work for this release with a ``DeprecationWarning`` naming the new spelling. ``sensitivity=None`` and
    ``limits=None`` leave those groups as they are.

    Example:
        >>> configure(schedule=[2], sensitivity={"batches": 2}).sensitivity.batches
        2
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     configure(max_rate=0.5).limits.max_rate, str(caught[0].message)
        (0.5, 'PruningConfig(max_rate=...) is deprecated: use limits=Limits(max_rate=...)')
    """
    config = config if config is not None else PruningConfig()
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    unknown = []
    for key, value in settings.items():
        if value is None and key in ("sensitivity", "limits"):  # None: the defaults (a front-end's unset group)
            continue
        if key in _TOP_LEVEL:
            top[key] = value
        elif key in FLAT_KEYWORDS:
            group, name = FLAT_KEYWORDS[key]
            kind = _GROUPS[group].__name__
            warnings.warn(f"{where}({key}=...) is deprecated: use {group}={kind}({name}=...)", DeprecationWarning,
                          stacklevel=stacklevel)
            groups.setdefault(group, {})[name] = value
        else:
            unknown.append(key)
    if unknown:
        raise TypeError(f"{where} got unknown setting(s) {', '.join(map(repr, unknown))}")
    for group, values in groups.items():
        base = top.get(group, getattr(config, group))
        if isinstance(base, Mapping):
            base = _GROUPS[group](**base)
        base = base if base is not None else _GROUPS[group]()
        top[group] = dataclasses.replace(base, **values)
    return dataclasses.replace(config, **top) if top else dataclasses.replace(config)


def front_end_config(config: PruningConfig | None, settings: Mapping[str, Any], front_end: Callable[..., Any],
                     deprecated: Mapping[str, Any], where: str) -> PruningConfig:
    """The configuration a front-end (callback, ``add_pruning``) was given: ``config`` (or the defaults) with its
    own ``settings`` applied — all of them without ``config``, only those changed from the defaults of
    ``front_end``'s signature with it — and the ``deprecated`` flat keywords (warned about by :func:`configure`)."""
    if config is not None and not isinstance(config, PruningConfig):
        raise ValueError(f"{where}: config must be a PruningConfig, got {type(config).__name__}")
    if config is not None:
        defaults = {name: p.default for name, p in inspect.signature(front_end).parameters.items()}
        settings = {k: v for k, v in settings.items() if not _same(v, defaults.get(k))}
    return configure(config, where=where, stacklevel=4, **settings, **deprecated)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a is b or a == b
