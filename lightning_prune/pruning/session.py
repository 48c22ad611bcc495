"""One pruning run as a front-end drives it (the Lightning callback, ultralytics' trainer): what both do the same way,
around :class:`~lightning_prune.pruning.IterativePruner`, imports neither Lightning nor ultralytics.

A front-end keeps only its hooks and what is really its own (how it probes, its checkpoints, its trainer's
conventions); :class:`PruningSession` owns the rest: the configuration, the pruner once created, the state before it
exists (a resumed run's history and baseline), whether a step is due, the check that the monitored metric exists,
the progress bar over the probes, the checks before training, the step and its summary line, and the plain-data
record of it all (the pruner's state, the example input's shape, the settings a resumed run compares with).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from lightning_prune.pruning.config import PruningConfig
from lightning_prune.pruning.pruner import IterativePruner
from lightning_prune.pruning.result import StepResult
from lightning_prune.pruning.schedule import pending_epochs

__all__ = ["PruningSession", "SessionViews", "front_end_settings"]

_FIELDS = tuple(field.name for field in dataclasses.fields(PruningConfig))


def front_end_settings(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~lightning_prune.pruning.PruningConfig` fields among a front-end's ``arguments`` (its
    ``locals()``), for :func:`~lightning_prune.pruning.config.front_end_config`."""
    return {name: arguments[name] for name in _FIELDS if name in arguments}


def _empty_state() -> dict[str, Any]:
    return {"history": [], "baseline": {}}


def _steps(history: Sequence[Mapping[str, Any]]) -> str:
    steps = len({entry.get("step") for entry in history})
    return f"{steps} pruning step{'s' * (steps != 1)}"


class PruningSession:
    """The configuration, the pruner and the state of one front-end's pruning run.

    Args:
        config: the run's settings; ``None`` prunes nothing (no step is ever due).
        monitor: the metric the probes read (a front-end's name for it), or ``None``.

    Attributes:
        pruner: the :class:`~lightning_prune.pruning.IterativePruner`, from :meth:`start` on (until :meth:`release`).
        state: before the pruner exists (and after :meth:`release`), what it will start from: ``history``,
            ``baseline`` and, from a checkpoint, ``latency_efficiency`` and ``original_sizes``.
        example: the input the pruner traced (set by :meth:`start`, or by the front-end before it).
        results: the :class:`~lightning_prune.pruning.StepResult` of every :meth:`step`.
        saved_settings: the settings of the checkpoint :meth:`load_state_dict` read, until :meth:`begin`.
        recovered: the state a front-end rebuilt from a checkpoint holding no state of its own, until :meth:`begin`.
    """

    def __init__(self, config: PruningConfig | None, monitor: str | None = None) -> None:
        self.config = config
        self.monitor = monitor
        self.pruner: IterativePruner | None = None
        self.state: dict[str, Any] = _empty_state()
        self.example: Any = None
        self.results: list[StepResult] = []
        self.saved_settings: dict[str, Any] | None = None
        self.recovered: dict[str, Any] | None = None

    # -- plain views ----------------------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        """One plain entry per applied plan: the pruner's, or the state's before it exists."""
        return self.pruner.history if self.pruner is not None else self.state["history"]

    @property
    def baseline(self) -> dict[str, float]:
        """The unpruned model's costs: the pruner's, or the state's before it exists."""
        return self.pruner.baseline if self.pruner is not None else self.state["baseline"]

    def reset(self) -> None:
        """A new run: no pruner, no state, no results."""
        self.pruner, self.state, self.results = None, _empty_state(), []
        self.saved_settings = self.recovered = None

    # -- the schedule ---------------------------------------------------------------------------------------------
    def pending(self, epoch: int | None = None) -> list[int]:
        """Scheduled epochs still to prune at (from ``epoch`` on, when given); before the pruner exists, those the
        state's history has not pruned at."""
        if self.pruner is not None:
            return self.pruner.pending(epoch)
        if self.config is None:
            return []
        done = [entry["epoch"] for entry in self.state["history"] if entry.get("epoch") is not None]
        return pending_epochs(self.config.schedule, done, epoch)

    def due(self, epoch: int) -> bool:
        """Whether the pruner exists and a step is scheduled at ``epoch`` that has not run."""
        return self.pruner is not None and self.pruner.due(epoch)

    # -- checks ---------------------------------------------------------------------------------------------------
    def check_monitor(self, values: Mapping[str, Any], absent: str, verb: str, required: bool | None = None) -> bool:
        """Whether the probes' ``values`` hold :attr:`monitor`. Where they do not and it is ``required`` (by default:
        where the strategy is ``"sensitivity"``, whose probes read it), ``ValueError``, one line: ``monitor <name>
        is <absent> (it <verb>: <the keys of values>)``."""
        if self.monitor in values:
            return True
        if required is None:
            required = self.config is not None and self.config.strategy == "sensitivity"
        if required:
            listed = ", ".join(sorted(values)) or "nothing"
            raise ValueError(f"monitor {self.monitor!r} is {absent} (it {verb}: {listed})")
        return False

    # -- the run --------------------------------------------------------------------------------------------------
    def progress(self, show: bool) -> Callable[[Sequence[Any]], Any]:
        """The progress bar over a step's sensitivity probes (shown with ``show``)."""

        def progress(tasks: Sequence[Any]) -> Any:
            from tqdm.auto import tqdm

            step = (self.pruner.steps_done + 1) if self.pruner is not None else 1
            return tqdm(tasks, desc=f"pruning step {step}: sensitivity", leave=False, disable=not show)

        return progress

    def start(self, model: torch.nn.Module, example: Any, epoch: int, *, show_progress: bool,
              log: Callable[[str], Any] | None = None, **collaborators: Any) -> IterativePruner:
        """Create the pruner on ``model`` traced at ``example`` (``collaborators``: :class:`~lightning_prune.pruning.
        IterativePruner`'s keywords: ``evaluate``, ``accumulate_gradients``, ...), give it the state kept so far,
        ``log`` the graph's summary, and check the configuration against the model when a step is still to come
        from ``epoch`` on."""
        self.example = example
        self.pruner = IterativePruner(model, example, self.config, progress=self.progress(show_progress),
                                      **collaborators)
        if self.state["history"] or self.state["baseline"]:
            self.pruner.load_state_dict(self.state)
        if log is not None:
            log(self.pruner.graph.summary())
        if self.pruner.pending(epoch):
            self.pruner.check()
        return self.pruner

    def step(self, epoch: int, *, optimizers: Iterable[torch.optim.Optimizer] = (),
             copies: Iterable[tuple[torch.nn.Module, str]] = ()) -> StepResult:
        """One pruning step at ``epoch`` (see :meth:`due`), kept in :attr:`results`."""
        result = self.pruner.step(epoch, optimizers=optimizers, copies=copies)
        self.results.append(result)
        return result

    def summary(self, result: StepResult) -> str:
        """A step's summary line, naming the monitored metric."""
        return result.summary(self.monitor or "metric")

    def release(self) -> None:
        """Keep the plain history and baseline, drop the pruner (and with it the model)."""
        if self.pruner is not None:
            self.state = {"history": list(self.pruner.history), "baseline": dict(self.pruner.baseline)}
        self.pruner = None

    # -- state ----------------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The settings a resumed run compares with those its checkpoint was written under (plain data)."""
        config = self.config
        criterion = config.criterion if isinstance(config.criterion, str) else \
            getattr(config.criterion, "__qualname__", type(config.criterion).__name__)
        return {"schedule": list(config.schedule), "target": config.target, "target_metric": config.target_metric,
                "strategy": config.strategy, "criterion": criterion, "cost": config.cost,
                "max_rate": config.max_rate, "max_total_rate": config.max_total_rate,
                "ignore": list(config.ignore), "round_to": config.round_to, "min_channels": config.min_channels}

    def pruner_state(self) -> dict[str, Any]:
        """The pruner's state (plain data), or the state kept before it exists."""
        if self.pruner is not None:
            return self.pruner.state_dict()
        return {**self.state, "history": list(self.state["history"]), "baseline": dict(self.state["baseline"])}

    def example_shape(self, fallback: Any = None) -> list[int] | None:
        """The shape of :attr:`example` (else of ``fallback``), when it is a tensor."""
        example = self.example if self.example is not None else fallback
        return list(example.shape) if isinstance(example, torch.Tensor) else None

    def state_dict(self, example_fallback: Any = None) -> dict[str, Any]:
        """:meth:`pruner_state` with the example input's shape and the :meth:`settings`."""
        return {**self.pruner_state(), "example_input_shape": self.example_shape(example_fallback),
                "settings": self.settings()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Keep what :meth:`state_dict` (or the pruner's) returned, for the pruner (at once, where it exists), and
        the settings it was written under for :meth:`begin`."""
        self.state = {"history": list(state_dict.get("history", [])),
                      "baseline": dict(state_dict.get("baseline", {})),
                      "latency_efficiency": float(state_dict.get("latency_efficiency", 1.0)),
                      "original_sizes": dict(state_dict.get("original_sizes", {}))}
        self.saved_settings = state_dict.get("settings")
        if self.pruner is not None:
            self.pruner.load_state_dict(self.state)

    def begin(self, name: str, warn: Callable[[str], Any]) -> None:
        """A new run on the state kept so far: the pruner of an earlier run, if any, is dropped (:meth:`start` makes
        the next). A resumed run continues the recorded history and the original baseline under the current
        settings (one ``warn``-ing when they changed from :attr:`saved_settings`), or the :attr:`recovered` state
        when the checkpoint held none of ``name`` (the front-end); a ``target_metric="latency"`` it never measured
        is refused."""
        self.pruner = None
        recovered, saved = self.recovered, self.saved_settings
        self.recovered = self.saved_settings = None
        if recovered is not None and not self.state["history"]:
            self.state = {**self.state, **recovered}
            warn(f"the checkpoint holds no state of {name}: its pruning record's {_steps(recovered['history'])} "
                 "are kept, and the baseline is the unpruned module's (measured before the record was replayed)")
        history = self.state["history"]
        if not history:
            return
        changes = [f"{key} {saved[key]!r} -> {value!r}" for key, value in self.settings().items()
                   if isinstance(saved, dict) and key in saved and saved[key] != value]
        if self.config.target_metric == "latency" and "latency" not in self.state["baseline"]:
            raise ValueError(f"{name} cannot resume with target_metric='latency': the run being resumed never "
                             "measured the original model's latency (resume with its target_metric)")
        if changes:
            warn(f"{name} resumed with changed settings ({'; '.join(changes)}): the {_steps(history)} already taken "
                 "and the original model's baseline are kept, and the scheduled epochs left prune toward the new "
                 "settings")


class SessionViews:
    """What a front-end holding a :class:`PruningSession` at ``session`` shows of it (a mixin)."""

    session: PruningSession

    @property
    def config(self) -> PruningConfig | None:
        """The run's settings (``None``: prune nothing)."""
        return self.session.config

    @property
    def pruner(self) -> IterativePruner | None:
        """The :class:`~lightning_prune.pruning.IterativePruner` while a run has one."""
        return self.session.pruner
