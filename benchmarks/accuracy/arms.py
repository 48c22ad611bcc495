"""What each pruning arm does during fine-tuning: our callback's settings per arm, Torch-Pruning's steps and
Lightning's ``ModelPruning`` at the scheduled epochs, and the proof a ``cost="latency"`` arm used its table."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ARMS, LATENCY_SIZE, LATENCY_TARGET_MAX_TOTAL, MATCHED_FLOPS_TARGET, Config


def _uniform_plan(model: nn.Module, example: torch.Tensor, target: float,
                  round_to: int = 1) -> tuple[Any, dict[str, int], dict[str, list[int]]]:
    """``ours-uniform`` in one step: the graph, the channel count per prunable group and the plan (lowest L1 first,
    ranked as the callback ranks) that remove ``target`` of the traced FLOPs."""
    from lightning_prune import DependencyGraph
    from lightning_prune.pruning.allocation import uniform_counts
    from lightning_prune.pruning.counts import plan_from_counts
    from lightning_prune.pruning.sensitivity import rank_channels

    graph = DependencyGraph(model, example)
    groups = graph.prunable_groups
    ranking = rank_channels(groups, model, "l1")
    counts = uniform_counts(graph, groups, ranking, target * graph.traced_flops, round_to=round_to)
    return graph, counts, plan_from_counts(ranking, counts)


def _uniform_fraction(model: nn.Module, cfg: Config) -> float:
    """The fraction of prunable channels ``ours-uniform`` removes for the whole target (on a copy)."""
    graph, counts, _ = _uniform_plan(copy.deepcopy(model).eval(), torch.zeros(1, 3, cfg.imgsz, cfg.imgsz),
                                     cfg.target)
    return sum(counts.values()) / sum(g.size for g in graph.prunable_groups)


def _cost_table_dir(workdir: Path) -> Path:
    """Measured latency tables, shared by the seeds (beside the seed folders, like the data)."""
    return (workdir.parent if workdir.name.startswith("seed") else workdir) / "cost_tables"


def _onnx_latency_callback(cfg: Config, workdir: Path, latency_repeats: int | None = None,
                           **settings: Any) -> Any:
    """An ``IterativePruningCallback`` of ours with ``cost="latency"`` on ONNX Runtime: the L1 criterion, the
    schedule and target of ``cfg``, the graph traced and the table measured at the deployment input (cached beside
    the seed folders, shared by the seeds), ``latency_repeats`` timed calls per latency reading, and ``settings`` on
    top."""
    from lightning_prune.callbacks import IterativePruningCallback
    from lightning_prune.pruning import LatencyConfig

    table_dir = _cost_table_dir(workdir)
    table_dir.mkdir(parents=True, exist_ok=True)
    latency = LatencyConfig(backend="onnxruntime", cost="latency", table_dir=str(table_dir),
                            **({} if latency_repeats is None else {"repeats": latency_repeats}))
    return IterativePruningCallback(schedule=cfg.schedule, target=cfg.target, criterion="l1", latency=latency,
                                    example_input=[1, 3, LATENCY_SIZE, LATENCY_SIZE], verbose=False, **settings)


def _arm_callbacks(arm: str, cfg: Config, module: Any, workdir: Path) -> tuple[list[Any], dict[str, Any]]:
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import ModelPruning

    from lightning_prune.callbacks import IterativePruningCallback
    from lightning_prune.pruning import Limits, SensitivityConfig

    example = torch.zeros(1, 3, cfg.imgsz, cfg.imgsz)
    if arm == "unpruned":
        return [], {}
    if arm == "ours-sensitivity-latency":
        # the paper's method scored by measured latency: graph traced and table measured at the deployment size
        # (FLOPs ratios, and so the FLOPs target, are the same as at the training size)
        return [_onnx_latency_callback(cfg, workdir, strategy="sensitivity", monitor="val/mAP50-95",
                                       sensitivity=SensitivityConfig(batches=cfg.sensitivity_batches))], {}
    if arm == "ours-latency-target":
        return [_onnx_latency_callback(cfg, workdir, target_metric="latency", strategy="global",
                                       limits=Limits(max_rate=0.5, max_total_rate=LATENCY_TARGET_MAX_TOTAL),
                                       latency_repeats=10)], {}
    if arm == "ours-sensitivity-latency-target":
        return [_onnx_latency_callback(cfg, workdir, target_metric="latency", strategy="sensitivity",
                                       monitor="val/mAP50-95",
                                       sensitivity=SensitivityConfig(batches=cfg.sensitivity_batches),
                                       limits=Limits(max_total_rate=LATENCY_TARGET_MAX_TOTAL),
                                       latency_repeats=10)], {}
    if arm == "ours-uniform-70":
        return [IterativePruningCallback(schedule=cfg.schedule, target=MATCHED_FLOPS_TARGET, strategy="uniform",
                                         criterion="l1", verbose=False)], {"flops_target": MATCHED_FLOPS_TARGET}
    if arm.startswith("ours-"):
        strategy, _, rounding = arm.removeprefix("ours-").partition("-r")
        return [IterativePruningCallback(schedule=cfg.schedule, target=cfg.target, strategy=strategy, criterion="l1",
                                         monitor="val/mAP50-95",
                                         sensitivity=SensitivityConfig(batches=cfg.sensitivity_batches),
                                         round_to=int(rounding or 1), verbose=False)], {}
    if arm == "tp-magnitude":
        from _peers import split_csp_blocks, tp_prune_to_flops, tp_pruner, tp_step_keeping_params

        rewritten = split_csp_blocks(module.model)
        probe = copy.deepcopy(module.model).eval()
        found = tp_prune_to_flops(probe, example, cfg.target)
        ratio, schedule = found["ratio"], list(cfg.schedule)

        class TorchPruningSteps(Callback):
            """Torch-Pruning's iterative steps at the scheduled epochs' start (the optimizer keeps its params)."""

            def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
                model = pl_module.model
                was_training = model.training
                self.pruner = tp_pruner(model.eval(), example, ratio, len(schedule))
                model.train(was_training)

            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                if trainer.current_epoch in schedule:
                    tp_step_keeping_params(self.pruner, pl_module.model, trainer.optimizers[0])

        return [TorchPruningSteps()], {"tp_ratio": ratio, "csp_blocks_rewritten": rewritten}
    if arm == "modelpruning":
        from _peers import modelpruning_targets

        fraction = _uniform_fraction(module.model, cfg)
        # ln_structured prunes a fraction of the channels still unpruned: k equal steps reach `fraction` in all
        step = 1.0 - (1.0 - fraction) ** (1.0 / len(cfg.schedule))
        schedule = set(cfg.schedule)

        class ModelPruningAtEpochStart(ModelPruning):
            """Lightning's ModelPruning prunes at an epoch's end; this steps it at the scheduled epochs' start, like
            the other arms (epoch ``e``'s end is epoch ``e + 1``'s start; epoch 0 is pruned before it begins)."""

            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                if trainer.current_epoch == 0 and 0 in schedule:
                    self.apply_pruning(step)

        callback = ModelPruningAtEpochStart(
            "ln_structured", parameters_to_prune=modelpruning_targets(module.model),
            amount=lambda epoch: step if epoch + 1 in schedule else 0.0, use_global_unstructured=False,
            pruning_dim=0, pruning_norm=1, use_lottery_ticket_hypothesis=False, make_pruning_permanent=True)
        return [callback], {"channel_fraction": fraction, "step_amount": step}
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def _cost_table_facts(callbacks: list[Any]) -> dict[str, Any]:
    """For a ``cost="latency"`` arm: proof that the measured table was built and used (raises if it was not)."""
    for callback in callbacks:
        pruner = getattr(callback, "pruner", None)
        config = getattr(pruner, "config", None)  # Torch-Pruning's callback holds a pruner without one
        if config is None or getattr(config, "selection_cost", None) != "latency":
            continue
        table = pruner.last_cost_table  # read only: what was measured
        if table is None:
            raise RuntimeError("cost='latency' arm finished without building a latency cost table")
        steps = len(callback.history)
        if not steps:
            raise RuntimeError("cost='latency' arm applied no pruning plan")
        return {"cost_table": {"backend": table.backend, "input_shape": list(table.input_shape),
                               "layers": len(table.layers), "last_build_s": table.build_seconds,
                               "last_measured": table.measured, "last_reused": table.reused,
                               "cached_files": len(list(Path(table.cache_dir).glob("*"))) if table.cache_dir
                               else 0},
                "pruning_plans": steps,
                **({"latency_target": {"baseline_ms": pruner.baseline.get("latency"),
                                       "last_ms": callback.history[-1].get("latency_ms")}}
                   if config.target_metric == "latency" else {})}
    return {}
