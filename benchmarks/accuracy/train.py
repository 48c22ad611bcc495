"""Training, in the child process of one stage: the data set, pretraining, an arm's pruning and fine-tuning or a
smaller model from scratch, and the measured result of each."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from _harness import one_line

from .arms import _arm_callbacks, _cost_table_facts
from .config import LATENCY_SIZE, SCRATCH_ARMS, Config
from .models import _yaml_at_width, identical_sibling_run, shared_latency_match, sibling_model


def _data_root(workdir: Path) -> Path:
    # one data set for every seed: seed folders live below the work directory, the data beside them
    return (workdir.parent if workdir.name.startswith("seed") else workdir) / "data"


def make_data(cfg: Config, workdir: Path) -> None:
    from lightning_prune.data.synthetic import make_synthetic_dataset

    root = _data_root(workdir)
    root.parent.mkdir(parents=True, exist_ok=True)
    # per-seed invocations may run in parallel on one work directory: one writes the data set, the others wait
    with open(root.parent / "data.lock", "w") as lock:
        with contextlib.suppress(ImportError, OSError):
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "data.yaml").is_file():
            make_synthetic_dataset(root, cfg.num_train, cfg.num_val, cfg.imgsz, cfg.data_seed,
                                   num_test=cfg.num_test)


def _datamodule(cfg: Config, workdir: Path) -> Any:
    from lightning_prune.integrations.ultralytics import YOLODataModule

    return YOLODataModule(synthetic=True, synthetic_root=str(_data_root(workdir)), imgsz=cfg.imgsz,
                          synthetic_num_train=cfg.num_train, synthetic_num_val=cfg.num_val,
                          synthetic_num_test=cfg.num_test, batch_size=cfg.batch_size, seed=cfg.seed)


def _trainer(cfg: Config, epochs: int, callbacks: list[Any]) -> Any:
    from lightning.pytorch import Trainer

    return Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   callbacks=callbacks, deterministic=False)


def _validate(trainer: Any, module: Any, datamodule: Any) -> dict[str, float]:
    """Every reported number reads the held-out ``test`` split (selection and probes read ``val``)."""
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return {"map50_95": float(metrics["test/mAP50-95"]), "map50": float(metrics["test/mAP50"])}


def run_pretrain(cfg: Config, workdir: Path) -> dict[str, Any]:
    from lightning.pytorch import seed_everything

    from lightning_prune.integrations.ultralytics import YOLOModule

    seed_everything(cfg.seed, verbose=False)
    module = YOLOModule(cfg.model, nc=3, imgsz=cfg.imgsz, lr=cfg.pretrain_lr, warmup_epochs=1.0)
    datamodule = _datamodule(cfg, workdir)
    trainer = _trainer(cfg, cfg.pretrain_epochs, [])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    result = {"fit_s": fit_s, **_validate(trainer, module, datamodule), "key": cfg.pretrain_key()}
    torch.save(module.model, workdir / "pretrained.pt")
    return result


def run_scratch(arm: str, cfg: Config, workdir: Path) -> dict[str, Any]:
    """A smaller model trained from scratch with the pruning arms' whole budget (pretraining + fine-tuning)."""
    from lightning.pytorch import seed_everything

    from lightning_prune import count_flops, count_params
    from lightning_prune.integrations.ultralytics import YOLOModule

    seed_everything(cfg.seed, verbose=False)
    extra: dict[str, Any] = {}
    if arm == "sibling-scratch":
        model: Any = sibling_model(cfg, 1.0 - cfg.target)
        extra["width_multiple"] = model.sibling_width
    elif arm == "sibling-latency-scratch":
        match = shared_latency_match(cfg, workdir)
        extra["latency_match"] = {k: v for k, v in match.items() if k not in ("config", "pruned_shapes")}
        extra["width_multiple"] = float(match["chosen"])
        model = _yaml_at_width(cfg.model, extra["width_multiple"], seed=cfg.seed)
        same = identical_sibling_run(model, cfg, workdir)
        if same is not None:
            return {**same, **extra}
    else:
        model = f"{arm.removesuffix('-scratch')}.yaml"
    module = YOLOModule(model, nc=3, imgsz=cfg.imgsz, lr=cfg.pretrain_lr, warmup_epochs=1.0)
    datamodule = _datamodule(cfg, workdir)
    trainer = _trainer(cfg, cfg.pretrain_epochs + cfg.finetune_epochs, [])
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    final = module.model.eval()
    x = torch.zeros(1, 3, cfg.imgsz, cfg.imgsz)
    result = {**_validate(trainer, module, datamodule), **extra, "fit_s": fit_s, "flops": count_flops(final, x),
              "flops_base": count_flops(final, x), "flops_640": count_flops(final, torch.zeros(1, 3, LATENCY_SIZE,
                                                                                              LATENCY_SIZE)),
              "params": count_params(final), "zeroed_filters": 0.0}
    torch.save(final, workdir / f"arm-{arm}.pt")
    return result


def run_arm(arm: str, cfg: Config, workdir: Path) -> dict[str, Any]:
    if arm in SCRATCH_ARMS:
        return run_scratch(arm, cfg, workdir)
    from lightning.pytorch import seed_everything

    from lightning_prune import count_flops, count_params
    from lightning_prune.integrations.ultralytics import YOLOModule

    seed_everything(cfg.seed, verbose=False)
    model = torch.load(workdir / "pretrained.pt", weights_only=False)
    # Lightning's ModelPruning masks through torch.nn.utils.prune, whose pruned modules cannot be deep-copied:
    # YOLOModule's EMA cannot follow them, so that arm fine-tunes without an EMA (noted in its row)
    use_ema = arm != "modelpruning"
    module = YOLOModule(model, nc=3, imgsz=cfg.imgsz, lr=cfg.finetune_lr, warmup_epochs=0.0, ema=use_ema)
    datamodule = _datamodule(cfg, workdir)
    x = torch.zeros(1, 3, cfg.imgsz, cfg.imgsz)
    base_flops = count_flops(copy.deepcopy(module.model).eval(), x)
    callbacks, extra = _arm_callbacks(arm, cfg, module, workdir)
    trainer = _trainer(cfg, cfg.finetune_epochs, callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    metrics = _validate(trainer, module, datamodule)
    extra.update(_cost_table_facts(callbacks))
    final = module.model.eval()
    from _peers import zeroed_filter_fraction

    result = {
        **metrics, **extra, "fit_s": fit_s, "ema": use_ema,
        "flops": count_flops(final, x), "flops_base": base_flops,
        "flops_640": count_flops(final, torch.zeros(1, 3, LATENCY_SIZE, LATENCY_SIZE)),
        "params": count_params(final), "zeroed_filters": zeroed_filter_fraction(final),
    }
    torch.save(final, workdir / f"arm-{arm}.pt")
    return result


def child_main(stage: str, cfg: Config, workdir: Path, result_file: Path) -> int:
    torch.set_num_threads(cfg.threads)
    try:
        result = run_pretrain(cfg, workdir) if stage == "pretrain" else run_arm(stage, cfg, workdir)
        result["ok"] = True
    except Exception as err:  # noqa: BLE001 - recorded as the arm's one-line cause
        import traceback

        traceback.print_exc()
        result = {"ok": False, "error": one_line(err)}
    result["phase"] = stage  # the harness names it in a failure's cause
    result_file.write_text(json.dumps(result))
    return 0 if result["ok"] else 1
