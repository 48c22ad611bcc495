"""The paper's iterative loop inside ``Trainer.fit``: sensitivity → select → prune, then training fine-tunes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_prune.callbacks.evaluation import ValidationProbe
from lightning_prune.callbacks.events import PruningStep, notify_pruning_step
from lightning_prune.callbacks.reporting import log_scalars, log_step_figures
from lightning_prune.checkpoint import CHECKPOINT_KEY, example_input_for, replay_history
from lightning_prune.graph import DependencyGraph, Group
from lightning_prune.importance import CRITERIA, channel_scores
from lightning_prune.profiling import count_flops, count_params
from lightning_prune.selection import global_counts, plan_from_counts, score_probes, sensitivity_counts, uniform_counts
from lightning_prune.sensitivity import Probe, analyze_sensitivity, removal_count
from lightning_prune.surgery import ParamChange

__all__ = ["IterativePruningCallback"]

log = logging.getLogger(__name__)

STRATEGIES = ("sensitivity", "uniform", "global")
TARGET_METRICS = ("flops", "params", "latency")


class IterativePruningCallback(Callback):
    r"""Prune filter groups at scheduled epochs; the epochs in between fine-tune.

    At fit start the model's concat-aware dependency graph is built from ``example_input`` (default:
    ``pl_module.example_input_array``) and its summary printed. At the start of every epoch in ``schedule`` one pruning
    step runs: the budget left to reach ``target`` is spread over the remaining steps, channels are chosen by
    ``strategy`` and ``criterion``, and removed physically. Training then simply continues — that is the fine-tuning.

    Args:
        schedule: epochs at whose start a pruning step happens, e.g. ``[1, 3, 5]``; or ``{"start": 1, "stop": 9,
            "every": 2}`` (stop exclusive).
        target: fraction of ``target_metric`` removed by the end of the schedule, ``0 < target < 1``.
        target_metric: ``"flops"`` (default; at the example input), ``"params"``, or ``"latency"`` (measured with
            ``latency_backend`` at fit start and after every step; FLOPs budgets are derived from the latency
            budget with the latency-per-FLOP efficiency observed so far, and the final step prunes more, up to
            ``latency_corrections`` times, until the measured latency meets the target).
        strategy: ``"sensitivity"`` (the paper: probe every group at ``sensitivity_rates`` by masking, score
            ``Δcost × metric^exponent``, take the top ``params_layers`` groups by parameters ∪ top ``flops_layers``
            by FLOPs at their best rate, then more if the step's budget needs it); ``"uniform"`` (the same fraction of
            every group); ``"global"`` (one threshold on per-group-normalised importance).
        criterion: which channels of a group go first — ``l2``, ``l2_largest``, ``l1``, ``l1_largest``,
            ``bn_scale``, ``bn_scale_l1``, ``random``, ``taylor`` — or a callable ``(group, model) -> scores``
            (lowest pruned first).
        monitor: validation metric the probes read (as logged by the module, e.g. ``"val/mAP50-95"``); required by
            the sensitivity strategy; with any strategy it is logged before and after each prune.
        mode: ``"max"`` if higher ``monitor`` is better, ``"min"`` otherwise.
        sensitivity_rates: fractions of a group each probe masks.
        sensitivity_batches: validation batches per probe (and per before/after measurement).
        exponent: ``k`` in the paper's ``metric^k`` (a steep penalty on accuracy loss).
        params_layers, flops_layers: the paper's ``N`` and ``M``.
        ignore: module names (or prefixes, or ``fnmatch`` patterns) whose groups are never pruned.
        round_to: keep each group's channel count a multiple of this (where the group is that large).
        min_channels: never keep fewer channels in a group.
        example_input: input to trace the model with; a tensor, or a shape such as ``[1, 3, 640, 640]``.
        seed: seeds the ``random`` criterion.
        verbose: print the graph summary and each step's plan (rank 0).
        latency_backend, latency_repeats, latency_corrections, latency_tolerance: for ``target_metric="latency"``:
            ``"eager"`` or ``"onnxruntime"``, timed calls per measurement, extra prunes allowed on the final step,
            and by how much (relative) the final latency may exceed the goal before one is made.

    Example::

        from lightning.pytorch import Trainer
        from lightning_prune.callbacks import IterativePruningCallback

        pruning = IterativePruningCallback(schedule=[1, 3, 5], target=0.5, strategy="sensitivity",
                                           criterion="l1", monitor="val/mAP50-95")
        Trainer(max_epochs=8, callbacks=[pruning]).fit(model, datamodule)

    The same from a LightningCLI YAML::

        trainer:
          callbacks:
            - class_path: lightning_prune.callbacks.IterativePruningCallback
              init_args: {schedule: [1, 3, 5], target: 0.5, monitor: val/mAP50-95}
    """

    def __init__(
        self,
        schedule: list[int] | dict[str, int] = (1,),
        target: float = 0.5,
        target_metric: str = "flops",
        strategy: str = "sensitivity",
        criterion: str | Callable[..., Any] = "l1",
        monitor: str | None = None,
        mode: str = "max",
        sensitivity_rates: Sequence[float] = (0.25, 0.5, 0.75),
        sensitivity_batches: int = 4,
        exponent: float = 20.0,
        params_layers: int = 6,
        flops_layers: int = 5,
        ignore: Sequence[str] = (),
        round_to: int = 1,
        min_channels: int = 1,
        example_input: Any = None,
        seed: int = 0,
        verbose: bool = True,
        latency_backend: str = "eager",
        latency_repeats: int = 20,
        latency_corrections: int = 2,
        latency_tolerance: float = 0.05,
    ) -> None:
        super().__init__()
        self.schedule = _parse_schedule(schedule)
        if not isinstance(target, (int, float)) or not 0.0 < float(target) < 1.0:
            raise ValueError(f"target must be a fraction strictly between 0 and 1, got {target!r}")
        if target_metric not in TARGET_METRICS:
            raise ValueError(f"unknown target_metric {target_metric!r}; choose one of {', '.join(TARGET_METRICS)}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if not callable(criterion) and criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)} or a callable")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if strategy == "sensitivity" and not monitor:
            raise ValueError("strategy 'sensitivity' needs `monitor`: the validation metric its probes read")
        rates = [float(r) for r in sensitivity_rates]
        if not rates or any(not 0.0 < r < 1.0 for r in rates):
            raise ValueError(f"sensitivity_rates must be fractions strictly between 0 and 1, got {sensitivity_rates!r}")
        for name, value in (("sensitivity_batches", sensitivity_batches), ("round_to", round_to),
                            ("min_channels", min_channels)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        self.target = float(target)
        self.target_metric = target_metric
        self.strategy = strategy
        self.criterion = criterion
        self.monitor = monitor
        self.mode = mode
        self.sensitivity_rates = tuple(rates)
        self.sensitivity_batches = int(sensitivity_batches)
        self.exponent = float(exponent)
        self.params_layers = int(params_layers)
        self.flops_layers = int(flops_layers)
        self.ignore = tuple(ignore)
        self.round_to = int(round_to)
        self.min_channels = int(min_channels)
        self.example_input = example_input
        self.seed = int(seed)
        self.verbose = verbose
        if target_metric == "latency":
            from lightning_prune.profiling.latency import BACKENDS, require_onnx

            if latency_backend not in BACKENDS:
                raise ValueError(f"unknown latency_backend {latency_backend!r}; choose one of {', '.join(BACKENDS)}")
            if latency_backend == "onnxruntime":
                require_onnx()
        self.latency_backend = latency_backend
        self.latency_repeats = int(latency_repeats)
        self.latency_corrections = int(latency_corrections)
        self.latency_tolerance = float(latency_tolerance)
        self._latency_efficiency = 1.0
        self._last_latency: float | None = None

        self.history: list[dict[str, Any]] = []  # one entry per completed step: epoch, step, plan, costs, metrics
        self.baseline: dict[str, float] = {}
        self.graph: DependencyGraph | None = None
        self._example: Any = None
        self._architecture_restored = False

    # -- Lightning state ------------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(schedule=self.schedule, target=self.target, strategy=self.strategy)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "baseline": self.baseline, "example_input_shape": self._example_shape(),
                "latency_efficiency": self._latency_efficiency}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.baseline = dict(state_dict.get("baseline", {}))
        self._latency_efficiency = float(state_dict.get("latency_efficiency", 1.0))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # a top-level, plain-typed record, so `load_pruned` needs neither the callback nor weights_only=False
        checkpoint[CHECKPOINT_KEY] = {"history": self.history, "example_input_shape": self._example_shape()}

    def _example_shape(self) -> list[int] | None:
        example = self._example if self._example is not None else self.example_input
        return list(example.shape) if isinstance(example, torch.Tensor) else None

    # -- hooks ----------------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            late = [epoch for epoch in self.schedule if epoch >= max_epochs]
            if late:
                raise ValueError(f"pruning schedule epoch {late[0]} is not below max_epochs={max_epochs}")
        # Lightning loads a resumed checkpoint's weights right after `setup`, through the module's
        # `on_load_checkpoint` hook: rebuild the pruned architecture there, before the state dict is loaded.
        original = pl_module.on_load_checkpoint

        def restore_architecture(checkpoint: dict[str, Any]) -> Any:
            record = checkpoint.get(CHECKPOINT_KEY) or {}
            history = record.get("history", [])
            if history and not self._architecture_restored:
                example = self._resolve_example(pl_module, record.get("example_input_shape"))
                replay_history(pl_module, history, example)
                self.history = list(history)
                self._architecture_restored = True
            return original(checkpoint)

        pl_module.on_load_checkpoint = restore_architecture

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _remove_restore_patch(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        _remove_restore_patch(pl_module)  # Lightning skips `teardown` when fit raises

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _remove_restore_patch(pl_module)  # checkpoint weights are loaded by now; keep the module picklable
        self._example = self._resolve_example(pl_module)
        self.graph = DependencyGraph(pl_module, self._example)
        if self.verbose:
            rank_zero_info(self.graph.summary())
        if not self.baseline:
            self.baseline = {"flops": float(count_flops(pl_module, self._example)),
                             "params": float(count_params(pl_module))}
        if self.target_metric == "latency" and "latency" not in self.baseline:
            self.baseline["latency"] = self._latency(pl_module)
        if self.monitor and self._pending_steps(trainer):
            values = ValidationProbe.from_trainer(trainer, pl_module, self.sensitivity_batches).run()
            if self.monitor not in values:
                logged = ", ".join(sorted(values)) or "nothing"
                raise ValueError(f"monitor {self.monitor!r} is never logged by the module's validation "
                                 f"(it logs: {logged})")
        self._check_reachable(pl_module)
        if callable(self.criterion) and self._pending_steps_any():
            for group in self._candidates():  # a custom criterion's mistakes show now, not after training started
                channel_scores(group, pl_module, self.criterion)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch in self.schedule and epoch not in {entry["epoch"] for entry in self.history}:
            self._prune_step(trainer, pl_module, epoch)

    # -- the step -------------------------------------------------------------------------------------------------
    def _pending_steps(self, trainer: Trainer) -> list[int]:
        done = {entry["epoch"] for entry in self.history}
        return [epoch for epoch in self.schedule if epoch not in done and epoch >= trainer.current_epoch]

    def _resolve_example(self, pl_module: LightningModule, shape: Sequence[int] | None = None) -> Any:
        example = self.example_input
        if isinstance(example, (list, tuple)) and example and all(isinstance(v, int) for v in example):
            example = torch.zeros(*example)
        example = example_input_for(pl_module, example, shape)
        return _to_device(example, pl_module.device)

    def _candidates(self) -> list[Group]:
        return [group for group in self.graph.prunable_groups if not self._ignored(group)]

    def _ignored(self, group: Group) -> bool:
        from fnmatch import fnmatchcase

        modules = {group.name, *(member.module for member in group.producers)}
        for pattern in self.ignore:
            for module in modules:
                if module == pattern or module.startswith(pattern + ".") or fnmatchcase(module, pattern):
                    return True
        return False

    def _current_cost(self, pl_module: LightningModule) -> float:
        """Current FLOPs, or parameters for a parameter target (latency targets are checked on FLOPs)."""
        if self.target_metric == "params":
            return float(count_params(pl_module))
        return float(count_flops(pl_module, self._example))

    def _check_reachable(self, pl_module: LightningModule) -> None:
        if not self._pending_steps_any():
            return
        groups = self._candidates()
        if not groups:
            raise ValueError("no prunable group is left to reach the target (all pinned or ignored); "
                             "see the graph summary for reasons")
        most = {g.name: list(range(removal_count(g, 1.0, self.round_to, self.min_channels))) for g in groups}
        removable = self.graph.estimate_removal({k: v for k, v in most.items() if v})
        # latency falls at most as fast as FLOPs, so a latency target must be reachable in FLOPs too
        metric_key = "params" if self.target_metric == "params" else "flops"
        removable = removable[1 if metric_key == "params" else 0]
        baseline = self.baseline[metric_key]
        reachable = (baseline - self._current_cost(pl_module) + removable) / baseline
        if reachable < self.target:
            raise ValueError(f"target {self.target:.0%} of {self.target_metric} is unreachable: pruning every "
                             f"prunable group to its minimum removes at most {reachable:.0%}")

    def _pending_steps_any(self) -> bool:
        done = {entry["epoch"] for entry in self.history}
        return any(epoch not in done for epoch in self.schedule)

    def _prune_step(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        step = len({entry["step"] for entry in self.history}) + 1
        remaining = max(len(self._pending_steps(trainer)), 1)
        flops_before, params_before = count_flops(pl_module, self._example), count_params(pl_module)
        probe = ValidationProbe.from_trainer(trainer, pl_module, self.sensitivity_batches) if self.monitor else None
        local_before = probe.run().get(self.monitor) if probe else None
        metric_before = _broadcast(trainer, local_before)

        if self.target_metric == "latency":
            latency_before = self._latency(pl_module)
            latency_goal = latency_before - (latency_before - self.baseline["latency"] * (1 - self.target)) / remaining
            budget = self._flops_budget_for_latency(flops_before, latency_before, latency_goal)
        else:
            cost_before = flops_before if self.target_metric == "flops" else params_before
            budget = (cost_before - self.baseline[self.target_metric] * (1.0 - self.target)) / remaining

        widths_before = _conv_widths(pl_module)
        plan, probes, picks = self._select(trainer, pl_module, budget, self.strategy, step, probe, metric_before,
                                           local_before)
        self._apply(trainer, plan)
        plans = [plan]
        if self.target_metric == "latency":
            plans += self._correct_latency(trainer, pl_module, step, flops_before, latency_before, latency_goal,
                                           final=remaining == 1)

        flops_after, params_after = count_flops(pl_module, self._example), count_params(pl_module)
        metric_after = _broadcast(trainer, probe.run().get(self.monitor)) if probe else None
        for index, applied in enumerate(plans):
            entry = {"epoch": epoch, "step": step, "plan": applied, "flops": flops_after, "params": params_after,
                     "metric_before": metric_before, "metric_after": metric_after}
            if self.target_metric == "latency":
                entry["latency_ms"] = self._last_latency
            if index:
                entry["correction"] = index
            self.history.append(entry)
        merged = {name: channels for applied in plans for name, channels in applied.items()}
        self._report(trainer, pl_module, {**self.history[-1], "plan": merged}, flops_before, params_before, probes,
                     picks, widths_before)
        notify_pruning_step(trainer, pl_module, PruningStep(
            step=step, epoch=epoch, plan=merged, flops_before=flops_before, flops_after=flops_after,
            params_before=params_before, params_after=params_after,
            baseline_flops=int(self.baseline["flops"]), baseline_params=int(self.baseline["params"]),
            metric_before=metric_before, metric_after=metric_after, example_input=self._example,
        ), sender=self)

    def _select(self, trainer: Trainer, pl_module: LightningModule, budget: float, strategy: str, step: int,
                probe: ValidationProbe | None, metric_before: float | None,
                local_before: float | None) -> tuple[dict[str, list[int]], list[Probe], list[Any]]:
        """The plan removing ``budget`` (FLOPs, or parameters for a parameter target) with ``strategy``."""
        metric_key = "params" if self.target_metric == "params" else "flops"
        groups = self._candidates()
        rng = np.random.default_rng(self.seed + step)
        if self.criterion == "taylor":
            _accumulate_gradients(trainer, pl_module, self.sensitivity_batches)
        scores = {g.name: channel_scores(g, pl_module, self.criterion, rng) for g in groups}
        if self.criterion == "taylor":
            pl_module.zero_grad(set_to_none=True)
        ranking = {name: np.argsort(values, kind="stable") for name, values in scores.items()}
        probes: list[Probe] = []
        picks: list[Any] = []
        if budget <= 0 or not groups:
            counts: dict[str, int] = {}
        elif strategy == "uniform":
            counts = uniform_counts(self.graph, groups, ranking, budget, metric_key, self.round_to, self.min_channels)
        elif strategy == "global":
            counts = global_counts(self.graph, groups, scores, ranking, budget, metric_key, self.round_to,
                                   self.min_channels)
        else:
            scale = metric_before / local_before if local_before else 1.0
            probes = self._probe(trainer, pl_module, probe, groups, ranking, step, scale)
            scored = score_probes(probes, metric_before, self.mode, self.exponent)
            counts, picks = sensitivity_counts(self.graph, groups, ranking, scored, budget, metric_key,
                                               self.params_layers, self.flops_layers, self.round_to,
                                               self.min_channels)
        return _broadcast(trainer, plan_from_counts(ranking, counts)), probes, picks

    def _apply(self, trainer: Trainer, plan: dict[str, list[int]]) -> None:
        """Prune ``plan`` (outside any DDP wrapper) and slice the optimizers' state along."""
        distributed = _unwrap_distributed(trainer)
        try:
            result = self.graph.prune(plan)
        finally:
            if distributed:
                _wrap_distributed(trainer)
        _slice_optimizer_states(trainer, result.changes)

    # -- latency targets -------------------------------------------------------------------------------------------
    def _latency(self, pl_module: LightningModule) -> float:
        from lightning_prune.profiling.latency import measure_latency

        self._last_latency = measure_latency(pl_module, self._example, self.latency_backend,
                                             repeats=self.latency_repeats).median_ms
        return self._last_latency

    def _flops_budget_for_latency(self, flops: float, latency: float, goal: float, cap: float = 0.9) -> float:
        """FLOPs to remove so that latency drops to ``goal``, by the latency-per-FLOP efficiency seen so far
        (latency saturates: removing x % of FLOPs often removes less than x % of time). At most ``cap`` of
        ``flops``: CPU timings are noisy, and one noisy reading must not gut the model."""
        wanted = max(0.0, 1.0 - goal / latency) if latency > 0 else 0.0
        return flops * min(cap, wanted / self._latency_efficiency)

    def _correct_latency(self, trainer: Trainer, pl_module: LightningModule, step: int, flops_before: float,
                         latency_before: float, goal: float, final: bool) -> list[dict[str, list[int]]]:
        """Measure after the prune, learn the efficiency, and on the final step prune more until the goal holds."""
        plans = []
        flops_now, latency_now = float(count_flops(pl_module, self._example)), self._latency(pl_module)
        for attempt in range(self.latency_corrections + 1):
            if flops_now < flops_before and latency_now < latency_before:
                observed = (1 - latency_now / latency_before) / (1 - flops_now / flops_before)
                self._latency_efficiency = float(min(1.5, max(0.5, observed)))
            if not final or latency_now <= goal * (1 + self.latency_tolerance) or attempt == self.latency_corrections:
                break
            # corrections are cheap re-selections: the importance-based global strategy stands in for probes
            strategy = "global" if self.strategy == "sensitivity" else self.strategy
            budget = self._flops_budget_for_latency(flops_now, latency_now, goal, cap=0.25)
            plan, _, _ = self._select(trainer, pl_module, budget, strategy, step, None, None, None)
            if not plan:
                break
            self._apply(trainer, plan)
            plans.append(plan)
            flops_before, latency_before = flops_now, latency_now
            flops_now, latency_now = float(count_flops(pl_module, self._example)), self._latency(pl_module)
        return plans

    def _probe(self, trainer: Trainer, pl_module: LightningModule, probe: ValidationProbe, groups: list[Group],
               ranking: dict[str, np.ndarray], step: int, scale: float) -> list[Probe]:
        """Probe this rank's share of (group, rate) tasks and gather everyone's. Each rank validates on its own
        data shard, so its metrics are rescaled by rank 0's unpruned metric over its own (``scale``)."""
        from tqdm.auto import tqdm

        rank, world = trainer.global_rank, trainer.world_size

        def progress(tasks: list) -> Any:
            return tqdm(tasks, desc=f"pruning step {step}: sensitivity", leave=False,
                        disable=not (self.verbose and trainer.is_global_zero))

        def evaluate() -> float:
            return probe.run()[self.monitor]

        mine = analyze_sensitivity(self.graph, evaluate, groups, ranking, self.sensitivity_rates, self.round_to,
                                   self.min_channels, shard=(rank, world), progress=progress)
        if world <= 1:
            return mine
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, [{**p.to_dict(), "metric": p.metric * scale} for p in mine])
        probes = [Probe(**item) for part in gathered for item in part]
        order = {(g.name, r): i for i, g in enumerate(groups) for r in self.sensitivity_rates}
        return sorted(probes, key=lambda p: order.get((p.group, p.rate), 0))

    def _report(self, trainer: Trainer, pl_module: LightningModule, entry: dict[str, Any], flops_before: int,
                params_before: int, probes: list[Probe], picks: list[Any], widths_before: dict[str, int]) -> None:
        baseline = self.baseline
        scalars = {
            "pruning/step": float(entry["step"]),
            "pruning/flops": float(entry["flops"]),
            "pruning/params": float(entry["params"]),
            "pruning/flops_ratio": entry["flops"] / baseline["flops"],
            "pruning/params_ratio": entry["params"] / baseline["params"],
        }
        if entry.get("latency_ms") is not None:
            scalars["pruning/latency_ms"] = float(entry["latency_ms"])
            scalars["pruning/latency_ratio"] = entry["latency_ms"] / baseline["latency"]
        if entry["metric_before"] is not None:
            scalars["pruning/metric_before"] = float(entry["metric_before"])
        if entry["metric_after"] is not None:
            scalars["pruning/metric_after"] = float(entry["metric_after"])
        log_scalars(trainer, scalars)
        removed = sum(len(v) for v in entry["plan"].values())
        summary = (f"pruning step {entry['step']} (epoch {entry['epoch']}): removed {removed} channels in "
                   f"{len(entry['plan'])} groups; FLOPs {flops_before / 1e9:.3f} -> {entry['flops'] / 1e9:.3f} G "
                   f"({scalars['pruning/flops_ratio']:.1%} of baseline), params {params_before:,} -> "
                   f"{entry['params']:,}")
        if entry["metric_before"] is not None:
            summary += f"; {self.monitor} {entry['metric_before']:.4f} -> {entry['metric_after']:.4f}"
        if self.verbose:
            rank_zero_info(summary)
        log_step_figures(trainer, entry, self.graph, probes, picks, widths_before, _conv_widths(pl_module),
                         self.monitor)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _parse_schedule(schedule: Any) -> list[int]:
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


def _to_device(example: Any, device: torch.device) -> Any:
    if isinstance(example, torch.Tensor):
        return example.to(device)
    if isinstance(example, (list, tuple)):
        return type(example)(_to_device(item, device) for item in example)
    if isinstance(example, dict):
        return {key: _to_device(value, device) for key, value in example.items()}
    return example


def _broadcast(trainer: Trainer, value: Any) -> Any:
    """Rank 0's value everywhere, so every rank prunes identically."""
    if trainer.world_size > 1:
        return trainer.strategy.broadcast(value, src=0)
    return value


def _conv_widths(module: torch.nn.Module) -> dict[str, int]:
    return {name: m.out_channels for name, m in module.named_modules() if isinstance(m, torch.nn.modules.conv._ConvNd)}


def _slice_optimizer_states(trainer: Trainer, changes: list[ParamChange]) -> None:
    """Bring optimizer state (SGD momentum, Adam moments, ...) along with the surviving channels."""
    for optimizer in trainer.optimizers:
        for change in changes:
            state = optimizer.state.get(change.tensor)
            if not state:
                continue
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and tuple(value.shape) == change.old_shape:
                    state[key] = change.slice(value)


def _remove_restore_patch(pl_module: LightningModule) -> None:
    if "on_load_checkpoint" in vars(pl_module):
        del pl_module.on_load_checkpoint


def _unwrap_distributed(trainer: Trainer) -> bool:
    """Drop the DDP wrapper before surgery. Its reducer keeps each parameter's gradient accumulator alive, and
    those remember the old shapes; a fresh wrapper after surgery builds new ones. True if there was one."""
    import gc

    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if not isinstance(strategy.model, DistributedDataParallel):
        return False
    strategy.model = strategy.lightning_module
    gc.collect()
    return True


def _wrap_distributed(trainer: Trainer) -> None:
    strategy = trainer.strategy
    strategy.model = strategy._setup_model(strategy.lightning_module)
    register_hooks = getattr(strategy, "_register_ddp_hooks", None)
    if register_hooks is not None:
        register_hooks()


def _accumulate_gradients(trainer: Trainer, pl_module: LightningModule, num_batches: int) -> None:
    """Gradients for the ``taylor`` criterion: a few training batches, forward + backward, no optimizer step."""
    import itertools

    from lightning_prune.callbacks.evaluation import captured_logs

    loader = trainer.train_dataloader
    if loader is None:
        raise ValueError("criterion 'taylor' needs the train dataloader to compute gradients")
    pl_module.zero_grad(set_to_none=True)
    training = pl_module.training
    pl_module.eval()  # eval mode: these passes must not move BatchNorm running statistics
    try:
        with captured_logs(pl_module):
            for index, batch in enumerate(itertools.islice(iter(loader), num_batches)):
                batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                output = pl_module.training_step(batch, index)
                loss = output["loss"] if isinstance(output, dict) else output
                loss.backward()
    finally:
        pl_module.train(training)
