"""Architectures from a YAML: ultralytics' narrower sibling at the pruned models' FLOPs or at their measured
latency (one match shared by the seeds), a sibling run taken instead of a duplicate, and the merged arms'
architectures rebuilt for timing."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _common import yolo_at_width
from torch import nn

from .config import LATENCY_MATCH_ARM, LATENCY_SIZE, MODEL_FREE_ARMS, Config
from .latency import _fused


def _yaml_at_width(name: str, width: float | None, seed: int) -> nn.Module:
    """``name``'s detection model (3 classes, random init) at ``width_multiple`` ``width``: ultralytics' own
    narrower sibling. YAMLs with a ``scales`` table (yolov8n) go through ``yolo_at_width``; a YAML with a plain
    ``width_multiple`` (``lightning_prune/models/yolov7-tiny.yaml``) gets that key replaced."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    from lightning_prune.integrations.ultralytics import resolve_model_yaml

    path = resolve_model_yaml(name)
    parsed = yaml_model_load(path)
    if parsed.get("scales"):
        return yolo_at_width(name, width, nc=3, seed=seed)
    parsed = copy.deepcopy(parsed)
    if width is not None:
        parsed["width_multiple"] = width
    torch.manual_seed(seed)
    return DetectionModel(parsed, nc=3, verbose=False)


def _base_width(name: str) -> float:
    from ultralytics.nn.tasks import yaml_model_load

    from lightning_prune.integrations.ultralytics import resolve_model_yaml

    parsed = yaml_model_load(resolve_model_yaml(name))
    if parsed.get("scales"):
        return float(parsed["scales"][parsed.get("scale") or next(iter(parsed["scales"]))][1])
    return float(parsed.get("width_multiple", 1.0))


def sibling_model(cfg: Config, flops_ratio: float) -> nn.Module:
    """ultralytics' own narrower sibling of ``cfg.model``: the same YAML at the smaller ``width_multiple`` (channel
    counts stay multiples of 8, as ultralytics rounds them) whose FLOPs at the training input are closest to
    ``flops_ratio`` of the base model's — what a user would train instead of pruning."""
    from lightning_prune import count_flops

    x = torch.zeros(1, 3, cfg.imgsz, cfg.imgsz)
    base_width = _base_width(cfg.model)

    def build(width: float) -> nn.Module:
        return _yaml_at_width(cfg.model, width, seed=cfg.seed)

    reference = count_flops(build(base_width).eval(), x)
    widths = [base_width * k / 40 for k in range(12, 41)]
    best = min(widths, key=lambda w: abs(count_flops(build(w).eval(), x) / reference - flops_ratio))
    model = build(best)
    model.sibling_width = best
    return model


def sibling_at_latency(cfg: Config, pruned_file: Path, coarse: tuple[int, int] = (2, 2),
                       fine: tuple[int, int] = (6, 5), finalists: int = 3) -> dict[str, Any]:
    """The ``width_multiple`` of ultralytics' narrower sibling of ``cfg.model`` whose *measured* latency is closest
    to the pruned model saved in ``pruned_file``. Every distinct channel configuration of the base YAML at a smaller
    width with 0.5–1.5× the pruned model's FLOPs is timed interleaved with the pruned model (BatchNorm fused, 640 px,
    batch 1, eager and ONNX Runtime; ``coarse`` = (rounds, calls per round)); the ``finalists`` nearest to it are
    timed again, longer (``fine``), and the one whose geometric-mean latency ratio over the two backends is nearest
    1 wins. Returns ``{"chosen": width, "ratios": {width: {backend: ratio}}, "coarse": ...}`` (widths as text)."""
    from lightning_prune import count_flops
    from lightning_prune.profiling import compare_latency

    if not pruned_file.is_file():
        raise FileNotFoundError(f"sibling-latency-scratch matches the measured latency of {LATENCY_MATCH_ARM}'s model: "
                                f"run that arm first ({pruned_file} is missing)")
    pruned = torch.load(pruned_file, weights_only=False).eval()
    x = torch.zeros(1, 3, cfg.imgsz, cfg.imgsz)
    base_width = _base_width(cfg.model)
    pruned_flops = count_flops(pruned, x)
    widths: dict[int, float] = {}  # parameter count (one per channel configuration) -> the widest width giving it
    for k in range(40, 5, -1):
        width = base_width * k / 40
        model = _yaml_at_width(cfg.model, width, seed=cfg.seed).eval()
        if 0.5 <= count_flops(model, x) / pruned_flops <= 1.5:
            widths.setdefault(sum(p.numel() for p in model.parameters()), width)
    if not widths:
        raise ValueError(f"no width_multiple of {cfg.model} has 0.5-1.5x the FLOPs of {LATENCY_MATCH_ARM}'s model")
    example = torch.randn(1, 3, LATENCY_SIZE, LATENCY_SIZE)
    reference = _fused(pruned)

    def timed(names: list[str], rounds: int, repeats: int) -> dict[str, dict[str, float]]:
        models = {"pruned": reference, **{n: _fused(_yaml_at_width(cfg.model, float(n), seed=cfg.seed))
                                          for n in names}}
        ratios: dict[str, dict[str, float]] = {n: {} for n in names}
        for backend in ("eager", "onnxruntime"):
            results = compare_latency(models, example, backend, rounds=rounds, repeats=repeats,
                                      num_threads=cfg.threads)
            for n in names:
                ratios[n][backend] = results[n].median_ms / results["pruned"].median_ms
        return ratios

    def off(ratio: dict[str, float]) -> float:  # the geometric-mean ratio's distance from 1, in log space
        return abs(sum(math.log(r) for r in ratio.values()) / len(ratio))

    first = timed([f"{w:.5f}" for w in widths.values()], *coarse)
    near = sorted(first, key=lambda n: off(first[n]))[:finalists]
    second = timed(near, *fine)
    return {"chosen": min(second, key=lambda n: off(second[n])), "ratios": second, "coarse": first,
            "timing": {"coarse": list(coarse), "fine": list(fine)}}


def _shape_signature(model: nn.Module) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(_shapes(model)).encode()).hexdigest()[:16]


def shared_latency_match(cfg: Config, seed_dir: Path) -> dict[str, Any]:
    """The latency match every seed shares, so that all seeds train one architecture (the report times the first
    seed's models): measured once, against this seed's ``ours-sensitivity`` model when no match exists yet, and kept
    in ``<workdir>/sibling-latency-match.json`` with the configuration (bar the seed) and the matched model's shapes;
    a later seed takes its width while that model file is unchanged."""
    path = seed_dir.parent / "sibling-latency-match.json"
    key = {k: v for k, v in asdict(cfg).items() if k != "seed"}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        match = json.loads(path.read_text())
        matched = Path(match["pruned_file"])
        if match["config"] == key and matched.is_file() and _shape_signature(
                torch.load(matched, weights_only=False)) == match["pruned_shapes"]:
            return match
    pruned_file = seed_dir / f"arm-{LATENCY_MATCH_ARM}.pt"
    match = sibling_at_latency(cfg, pruned_file)
    match.update(reference_arm=LATENCY_MATCH_ARM, reference_seed=cfg.seed, config=key,
                 pruned_file=str(pruned_file), pruned_shapes=_shape_signature(torch.load(pruned_file,
                                                                                       weights_only=False)))
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(match))
    os.replace(temporary, path)
    return match


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def identical_sibling_run(model: nn.Module, cfg: Config, workdir: Path) -> dict[str, Any] | None:
    """This seed's ``sibling-scratch`` result when it trained exactly ``model``'s architecture (every parameter
    shape equal) with this configuration: training it again would repeat that run, so its result and model are
    taken (marked ``same_run_as``, with the revision it trained at)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        old = json.loads((workdir / "result-sibling-scratch.json").read_text())
        trained = workdir / "arm-sibling-scratch.pt"
        if not (old.get("ok") and old.get("config") == asdict(cfg) and trained.is_file()):
            return None
        theirs = _yaml_at_width(cfg.model, float(old["width_multiple"]), seed=cfg.seed)
        if _shapes(theirs) != _shapes(model):
            return None
        import shutil

        shutil.copyfile(trained, workdir / "arm-sibling-latency-scratch.pt")
        kept = {k: v for k, v in old.items() if k not in ("config", "git", "reused", "reused_from", "phase", "ok",
                                                           "wall_s", "other_load")}
        return {**kept, "same_run_as": "sibling-scratch", "trained_at": old.get("git")}
    return None


def _config_of(result: dict[str, Any], default: Config) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    saved = result.get("config")
    return Config(**{k: v for k, v in saved.items() if k in known}) if isinstance(saved, dict) else default


def rebuild_architecture(arm: str, result: dict[str, Any], default: Config) -> nn.Module:
    """A merged arm's architecture where it does not depend on training (``REBUILDABLE_ARMS``), random init (speed
    does not depend on the weights): ``unpruned`` and ``modelpruning`` (masks only) are the base YAML,
    ``sibling-scratch`` the base YAML at the ``width_multiple`` its result records (recomputed as the run did when
    it is not recorded), ``yolo11n``/``yolo26n-scratch`` their YAMLs, as ``run_scratch`` builds them."""
    from lightning_prune.integrations.ultralytics import build_yolo_model

    cfg = _config_of(result, default)
    torch.manual_seed(cfg.seed)
    if arm in ("unpruned", "modelpruning"):
        return build_yolo_model(cfg.model, 3).eval()
    if arm == "sibling-scratch":
        width = result.get("width_multiple")
        model = _yaml_at_width(cfg.model, float(width), seed=cfg.seed) if width else sibling_model(cfg,
                                                                                                   1.0 - cfg.target)
        return model.eval()
    if arm == "sibling-latency-scratch" and result.get("width_multiple"):
        return _yaml_at_width(cfg.model, float(result["width_multiple"]), seed=cfg.seed).eval()
    if arm in MODEL_FREE_ARMS:
        return build_yolo_model(f"{arm.removesuffix('-scratch')}.yaml", 3).eval()
    raise ValueError(f"{arm}'s architecture depends on its training: it cannot be rebuilt")
