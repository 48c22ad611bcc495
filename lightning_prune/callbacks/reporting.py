"""Sending pruning progress to Lightning loggers: scalars to every logger, figures and text where supported."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Trainer

__all__ = ["log_figure", "log_scalars", "log_step_figures", "log_text", "report_step", "step_scalars"]

log = logging.getLogger(__name__)


def log_scalars(trainer: Trainer, metrics: dict[str, float]) -> None:
    """``log_metrics`` on every logger of ``trainer`` at the current global step (loggers are rank-0 only)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def _tensorboard_writers(trainer: Trainer) -> list[Any]:
    from lightning.pytorch.loggers import TensorBoardLogger

    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def log_text(trainer: Trainer, tag: str, text: str) -> None:
    """A Markdown text entry on every TensorBoard logger."""
    for writer in _tensorboard_writers(trainer):
        writer.add_text(tag, text, global_step=trainer.global_step)


def log_figure(trainer: Trainer, tag: str, figure: Any) -> None:
    for writer in _tensorboard_writers(trainer):
        writer.add_figure(tag, figure, global_step=trainer.global_step, close=False)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: pruning figures are skipped")
        return None
    return plt


def step_scalars(result: Any) -> dict[str, float]:
    """The scalars one pruning step logs. ``pruning/probe_metric_*`` is the monitored metric on the probe batches
    (``sensitivity_batches`` validation batches), not on the full validation set."""
    scalars = {
        "pruning/step": float(result.step),
        "pruning/flops": float(result.flops_after),
        "pruning/params": float(result.params_after),
        "pruning/flops_ratio": result.flops_ratio,
        "pruning/params_ratio": result.params_ratio,
    }
    if result.latency_after is not None:
        scalars["pruning/latency_ms"] = float(result.latency_after)
        scalars["pruning/latency_ratio"] = result.latency_after / result.baseline["latency"]
    if result.metric_before is not None:
        scalars["pruning/probe_metric_before"] = float(result.metric_before)
    if result.metric_after is not None:
        scalars["pruning/probe_metric_after"] = float(result.metric_after)
    return scalars


def report_step(trainer: Trainer, result: Any, graph: Any, monitor: str | None) -> None:
    """Scalars to every logger; plan table and figures to TensorBoard."""
    log_scalars(trainer, step_scalars(result))
    log_step_figures(trainer, result, graph, monitor)


def log_step_figures(trainer: Trainer, result: Any, graph: Any, monitor: str | None) -> None:
    """Plan table (text), sensitivity curves and per-layer widths (figures) of one pruning step
    (a :class:`~lightning_prune.pruning.StepResult`)."""
    writers = _tensorboard_writers(trainer)
    if not writers:
        return
    step = result.step
    sizes = {group.name: group.size for group in graph.groups}
    picked = set(result.picks)
    rows = ["| group | removed | kept | paper pick |", "|---|---:|---:|:---:|"]
    for name, channels in result.plan.items():
        kept = sizes.get(name, 0)
        rows.append(f"| `{name}` | {len(channels)} | {kept} | {'✓' if name in picked else ''} |")
    log_text(trainer, f"pruning/plan_step_{step}", "\n".join(rows))
    if getattr(result, "candidates_ms", None):  # allocation="measured": each candidate's time on the backend
        rows = ["| allocation | ms (median) | chosen |", "|---|---:|:---:|"]
        rows += [f"| `{name}` | {ms:.2f} | {'✓' if name == result.allocation else ''} |"
                 for name, ms in sorted(result.candidates_ms.items(), key=lambda item: item[1])]
        log_text(trainer, f"pruning/allocation_step_{step}", "\n".join(rows))

    plt = _pyplot()
    if plt is None:
        return
    if result.probes:
        figure, axis = plt.subplots(figsize=(8, 5))
        curves: dict[str, list[tuple[float, float]]] = {}
        for probe in result.probes:
            curves.setdefault(probe.group, []).append((probe.rate, probe.metric))
        for name, points in curves.items():
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", linewidth=1.5 if name in picked
                      else 0.6, alpha=1.0 if name in picked else 0.4, label=name if name in picked else None)
        axis.set_xlabel("pruning rate of the group")
        axis.set_ylabel(monitor or "metric")
        axis.set_title(f"Sensitivity, step {step} (highlighted: the paper's picks)")
        if picked:
            axis.legend(fontsize=6, loc="lower left")
        figure.tight_layout()
        log_figure(trainer, "pruning/sensitivity", figure)
        plt.close(figure)
    widths_before, widths_after = result.widths_before, result.widths_after
    names = list(widths_before)
    figure, axis = plt.subplots(figsize=(max(8, len(names) * 0.12), 4))
    axis.bar(range(len(names)), [widths_before[n] for n in names], color="lightgray", label="before")
    axis.bar(range(len(names)), [widths_after.get(n, 0) for n in names], color="tab:blue", label="after")
    axis.set_xlabel("conv layer (model order)")
    axis.set_ylabel("output channels")
    axis.set_title(f"Channel widths, step {step}")
    axis.legend()
    figure.tight_layout()
    log_figure(trainer, "pruning/widths", figure)
    plt.close(figure)
