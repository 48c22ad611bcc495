"""Latency measurement: every model BatchNorm-fused and timed interleaved in one ``compare_latency`` run per
backend, and the speed sweep of untrained YOLOv8n copies."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from .arms import _uniform_plan
from .config import LATENCY_SIZE, SWEEP_TARGETS, Config, log


def _fresh_yolov8n() -> nn.Module:
    """The untrained YOLOv8n (3 classes, seed 0) of the speed sweep."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()


def _fused(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval()
    fuse = getattr(model, "fuse", None)  # ultralytics' BN folding, as its export does
    return (fuse(verbose=False) if callable(fuse) else model).eval()


def speed_sweep(cfg: Config) -> dict[str, nn.Module]:
    """Untrained YOLOv8n pruned to each sweep target by ours (uniform L1, also with ``round_to=8``) and Torch-Pruning:
    speed does not depend on the weights, so these give more points for the speedup-vs-FLOPs plot."""
    from _peers import split_csp_blocks, tp_prune_to_flops

    x = torch.zeros(1, 3, cfg.imgsz, cfg.imgsz)
    models = {}
    for target in SWEEP_TARGETS:
        for name, round_to in (("ours-uniform", 1), ("ours-uniform-r8", 8)):
            model = _fresh_yolov8n()
            graph, _, plan = _uniform_plan(model, x, target, round_to)
            graph.prune(plan)
            models[f"sweep {name} −{target:.0%}"] = model
        model = _fresh_yolov8n()
        split_csp_blocks(model)
        try:
            tp_prune_to_flops(model, x, target)
            models[f"sweep tp-magnitude −{target:.0%}"] = model
        except Exception as err:  # noqa: BLE001 - a sweep point is optional
            log(f"  sweep: Torch-Pruning at −{target:.0%} failed: {type(err).__name__}: {err}")
    return models


def measure_latency_all(arm_models: dict[str, nn.Module], cfg: Config) -> dict[str, Any]:
    from lightning_prune.profiling import compare_latency

    x = torch.randn(1, 3, LATENCY_SIZE, LATENCY_SIZE)
    fused = {name: _fused(model) for name, model in arm_models.items()}
    out: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    for backend in ("eager", "onnxruntime"):
        log(f"latency, {backend}: {len(fused)} models interleaved ...")
        try:
            results = compare_latency(fused, x, backend, rounds=cfg.latency_rounds, repeats=cfg.latency_repeats,
                                      num_threads=cfg.threads)
            out[backend] = {name: {"median_ms": r.median_ms, "iqr_ms": r.iqr_ms} for name, r in results.items()}
        except Exception as err:  # noqa: BLE001 - the table says which backend could not be measured
            out[backend] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            log(f"  {backend} failed: {out[backend]['error']}")
    out["loadavg_after"] = os.getloadavg()
    return out
