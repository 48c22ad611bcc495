"""What each arm trains. An arm is a model to start from, an ultralytics training, and (for the pruning arms) the
pruning and distillation set on the model before it trains.

``ARMS`` lists every arm of the comparison, in the order ``train`` runs a seed's arms.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.prune_vs_small.config import LENGTHS, PROTOCOL, PRUNING, Protocol, TrainConfig


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison.

    Attributes:
        name: folder and table name.
        summary: one line for the report.
        train: the training's configuration (its ``extra`` may name files of other arms, resolved at run time).
        start: ``"base-yaml"``, ``"small-yaml"`` (random init from the YAML) or ``"base-weights"`` (the same seed's
            finished base).
        needs: arms of the same seed that must have finished first.
        setup: called with the ultralytics ``YOLO`` model and a context dict before ``train`` (adds pruning).
    """

    name: str
    summary: str
    train: TrainConfig
    start: str
    needs: tuple[str, ...] = ()
    setup: Callable[[Any, dict], None] | None = field(default=None, compare=False)
    spec: dict = field(default_factory=dict)  # the arm's own settings, part of its digest
    #: measures latency while it trains (its cost tables, at its pruning steps): ``train`` keeps every other training
    #: stopped until its last pruning step, since a latency read beside another training is biased (time slices
    #: stretch the longer model's runs more than the shorter one's)
    alone: bool = field(default=False, compare=False)


def small_yaml(protocol: Protocol, folder: Path) -> Path:
    """ultralytics' narrower sibling of the base: the base YAML at ``small_width``, written to ``folder``."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = copy.deepcopy(yaml_model_load(protocol.base_model))
    scale = cfg.get("scale") or next(iter(cfg["scales"]))
    depth, _, max_channels = cfg["scales"][scale]
    cfg["scales"] = {scale: [depth, protocol.small_width, max_channels]}
    for key in ("yaml_file", "ch"):
        cfg.pop(key, None)
    path = folder / f"{Path(protocol.base_model).stem}-w{protocol.small_width:g}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def targets(protocol: Protocol, root: Path) -> dict[str, float]:
    """What the pruning arms aim at: the small model's FLOPs share of the base's, and its latency share (ONNX
    Runtime, batch 1, at the deployment size, BatchNorm folded, interleaved with the base).

    Both follow from the two architectures alone (not from either's training), so they are measured once, on the
    models built from their YAML, and kept in ``root/targets.json`` keyed by what decides them: every pruning arm of
    every seed aims at the same numbers (a latency share read beside other trainings varies from run to run).
    """
    import fcntl

    from lightning_prune.utils.files import atomic_write

    key = {"base_model": protocol.base_model, "small_width": protocol.small_width,
           "deploy_imgsz": protocol.deploy_imgsz, "threads": protocol.threads}
    root.mkdir(parents=True, exist_ok=True)
    file = root / "targets.json"
    with (root / ".targets.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two arms starting together measure once
        if file.is_file():
            stored = json.loads(file.read_text())
            if stored.get("key") == key:
                return {k: stored[k] for k in ("flops_keep", "latency_keep")}
        measured = measure_targets(protocol)
        record = {**measured, "key": key, "load_average": os.getloadavg()[0],
                  "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write(file, json.dumps(record, indent=1) + "\n")
    return measured


def measure_targets(protocol: Protocol) -> dict[str, float]:
    """:func:`targets`' measurement: the FLOPs share and the median interleaved ONNX Runtime latency share of the
    small model against the base, both built from their YAML (the small one written to a temporary folder)."""
    import tempfile

    import torch
    from ultralytics.nn.tasks import DetectionModel

    from lightning_prune.data.fashion import CLASS_NAMES
    from lightning_prune.profiling import compare_latency, count_flops, deployed_copy

    size = protocol.deploy_imgsz
    x = torch.zeros(1, 3, size, size)
    nc = len(CLASS_NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        small_cfg = str(small_yaml(protocol, Path(tmp)))
        base = DetectionModel(protocol.base_model, nc=nc, verbose=False).float().eval()
        small = DetectionModel(small_cfg, nc=nc, verbose=False).float().eval()
    flops = count_flops(small, x) / count_flops(base, x)
    timed = compare_latency({"base": deployed_copy(base), "small": deployed_copy(small)}, x, "onnxruntime",
                            rounds=30, repeats=20, num_threads=protocol.threads)
    latency = timed["small"].median_ms / timed["base"].median_ms
    return {"flops_keep": float(flops), "latency_keep": float(latency)}


#: every pruning arm (ours and Torch-Pruning) keeps channel counts in multiples of 8, as a user deploying on ONNX
#: Runtime would: at the small model's FLOPs, uniform L1 pruning of the base with free counts ran 2.5x slower than
#: the small model in ONNX Runtime on this machine, with multiples of 8 1.3x (an exploration, not a result).
ROUND_TO = 8


def pruning_settings(strategy: str, distill: bool, latency: bool = False) -> dict[str, Any]:
    """What a pruning arm asks ``add_pruning`` for, as plain data (part of the arm's digest, so a changed setting
    never reuses a run made with another); the target itself comes from the small model at run time."""
    settings: dict[str, Any] = {"strategy": strategy, "criterion": "l1", "distill": distill,
                                "sensitivity": {"batches": 4}, "round_to": ROUND_TO,
                                "target_metric": "latency" if latency else "flops"}
    if latency:
        settings.update(latency={"backend": "onnxruntime", "cost": "latency"}, limits={"max_total_rate": 0.75})
    return settings


def _pruning(strategy: str, distill: bool, latency: bool = False) -> Callable[[Any, dict], None]:
    """``add_pruning`` on the base for a pruning arm (:func:`pruning_settings`): to the small model's FLOPs share,
    or (``latency``) to its measured ONNX Runtime latency share with the latency cost model; with or without
    distillation from the base."""
    settings = pruning_settings(strategy, distill, latency)

    def setup(model: Any, context: dict) -> None:
        from lightning_prune.integrations.ultralytics import add_pruning
        from lightning_prune.pruning.config import LatencyConfig, Limits, SensitivityConfig

        goal = targets(PROTOCOL, context["out_root"])
        context.update(goal)
        schedule = [epoch for epoch in PRUNING.schedule if epoch < context["epochs"]] or [0]  # shorter smoke runs
        context["schedule"] = schedule
        options: dict[str, Any] = {**settings, "schedule": schedule,
                                   "sensitivity": SensitivityConfig(**settings["sensitivity"])}
        if latency:
            options.update(target=1.0 - goal["latency_keep"], limits=Limits(**settings["limits"]),
                           latency=LatencyConfig(**settings["latency"],
                                                 table_dir=str(context["workdir"] / "cost_tables")))
        else:
            options.update(target=1.0 - goal["flops_keep"])
        context["pruning"] = add_pruning(model, **options)

    return setup


def _torch_pruning(model: Any, context: dict) -> None:
    """Torch-Pruning's MagnitudePruner (L1) on the base, C2f blocks rewritten so it can prune them, one-shot to
    the small model's FLOPs share; the same fine-tuning then trains the rewritten model (a trainer whose
    ``get_model`` hands it over instead of rebuilding the YAML)."""
    import torch

    from benchmarks._peers import split_csp_blocks, tp_prune_to_flops

    goal = targets(PROTOCOL, context["out_root"])
    context.update(goal)
    net = model.model.float()
    split_csp_blocks(net)
    size = PROTOCOL.deploy_imgsz
    context["tp"] = tp_prune_to_flops(net, torch.zeros(1, 3, size, size), target=1.0 - goal["flops_keep"],
                                      round_to=ROUND_TO)
    for p in net.parameters():
        p.requires_grad_(True)
    context["trainer"] = _fixed_model_trainer(net)


def _fixed_model_trainer(net: Any) -> Any:
    from ultralytics.models.yolo.detect import DetectionTrainer

    class FixedModelTrainer(DetectionTrainer):
        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> Any:
            return net

    return FixedModelTrainer


def _arms(protocol: Protocol) -> dict[str, Arm]:
    finetune = dict(epochs=LENGTHS.finetune, close_mosaic=PRUNING.close_mosaic)
    n = LENGTHS.finetune
    spec = {"pruning": dataclasses.asdict(PRUNING)}

    def spec_of(strategy: str, distill: bool, latency: bool = False) -> dict[str, Any]:
        out = {**spec, "setup": pruning_settings(strategy, distill, latency)}
        if distill:  # superseded: runs whose selection counted the distillation projectors as model cost, and
            # runs whose projectors started random (ultralytics' init) although the student starts as its teacher
            out["projectors"] = "not model cost, identity start"
        return out

    small_distill = Arm(
        "small-distill", f"the narrower sibling distilled from the base by ultralytics' distill_model "
        f"({LENGTHS.small} epochs, from scratch)",
        TrainConfig(epochs=LENGTHS.small, extra={"distill_model": "arm:base"}), start="small-yaml", needs=("base",))
    arms = [
        Arm("base", f"{protocol.base_model} from scratch to its plateau ({LENGTHS.base} epochs)",
            TrainConfig(epochs=LENGTHS.base), start="base-yaml"),
        Arm("small", f"the narrower sibling (width {protocol.small_width:g}) from scratch to its plateau "
            f"({LENGTHS.small} epochs)", TrainConfig(epochs=LENGTHS.small), start="small-yaml"),
        small_distill,
        dataclasses.replace(
            small_distill, name="small-distill-dis1",
            summary="small-distill at a sixth of ultralytics' default distillation weight (dis 1.0, not 6.0): is the "
            "default weight why distillation does not help the small model? (asked after small-distill seeds 0 and 1 "
            "fell below the small model from scratch)",
            train=dataclasses.replace(small_distill.train, extra={**small_distill.train.extra, "dis": 1.0})),
        Arm("ours-sens", f"the paper's sensitivity method to the small model's FLOPs, {n} epochs fine-tuning",
            TrainConfig(**finetune), start="base-weights", needs=("base",),
            setup=_pruning("sensitivity", distill=False), spec=spec_of("sensitivity", distill=False)),
        Arm("ours-sens-distill", f"the same, distilled from the base while it fine-tunes ({n} epochs)",
            TrainConfig(**finetune), start="base-weights", needs=("base",),
            setup=_pruning("sensitivity", distill=True), spec=spec_of("sensitivity", distill=True)),
        Arm("ours-latency-distill", f"the paper's method to the small model's measured ONNX Runtime latency "
            f"(latency cost), distilled ({n} epochs)", TrainConfig(**finetune), start="base-weights",
            needs=("base",), setup=_pruning("sensitivity", distill=True, latency=True),
            spec=spec_of("sensitivity", distill=True, latency=True), alone=True),
        Arm("uniform-distill", f"uniform L1 to the small model's FLOPs, distilled ({n} epochs)",
            TrainConfig(**finetune), start="base-weights", needs=("base",),
            setup=_pruning("uniform", distill=True), spec=spec_of("uniform", distill=True)),
        Arm("tp", f"Torch-Pruning MagnitudePruner L1 (C2f rewritten) to the small model's FLOPs, one-shot, the same "
            f"{n} epochs fine-tuning", TrainConfig(**finetune), start="base-weights", needs=("base",),
            setup=_torch_pruning,
            spec={**spec, "setup": {"tool": "torch-pruning", "pruner": "MagnitudePruner", "norm": 1,
                                    "to_flops_in_steps_of": 0.01, "one_shot": True, "round_to": ROUND_TO}}),
    ]
    return {arm.name: arm for arm in arms}


ARMS: dict[str, Arm] = _arms(PROTOCOL)


def arm_digest(arm: Arm, seed: int) -> str:
    """The digest a run of ``arm`` for ``seed`` is stored and reused under: the protocol, the arm's training and
    settings, and the digests of the runs it starts from or learns from (so a revised base never passes its old
    runs' pruned models off as its own)."""
    spec = dict(arm.spec)
    if arm.needs:
        spec["needs"] = {name: arm_digest(ARMS[name], seed) for name in arm.needs}
    return PROTOCOL.digest(arm.name, seed, arm.train, spec)
