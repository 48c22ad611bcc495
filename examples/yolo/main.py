"""Train a YOLO detector with Lightning, prune it iteratively to half its FLOPs, and report what pruning cost.

    YOLO_OFFLINE=1 python examples/yolo/main.py fit --config examples/yolo/quick.yaml

What happens:

1. **A trained base.** With ``--base_epochs N`` (``quick.yaml``: set), the model is first trained from its YAML for
   ``N`` epochs without pruning (ultralytics' loss, mosaic, EMA) and saved under ``--base_dir``, named after
   everything that shaped it; a later run with the same settings reuses it (and says so).
2. **Pruning.** ``fit`` runs the config's trainer: ``IterativePruningCallback`` prunes at the scheduled epochs
   (sensitivity probes read the ``val`` split) and the epochs in between fine-tune.
3. **The report.** mAP50-95 on the held-out ``test`` split before and after, FLOPs, parameters and latency at
   ``--report_imgsz`` (640) batch 1 in eager PyTorch and ONNX Runtime (BatchNorm fused, interleaved rounds), printed
   and written to TensorBoard as text (``report``); the pruned detector is saved for ultralytics with
   :func:`~lightning_prune.integrations.ultralytics.save_yolo` (``--save_yolo``, default ``<log dir>/pruned.pt``).

The data set is the deterministic synthetic shapes set (generated on first use), so nothing is downloaded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from lightning_prune import count_flops, count_params  # noqa: E402
from lightning_prune.integrations.ultralytics import (  # noqa: E402
    YOLODataModule,
    YOLOModule,
    build_yolo_model,
    save_yolo,
)

BASE_FORMAT = 1  # bump when the base training recipe changes, so old bases are not reused


def _quiet_trainer(**kwargs: Any) -> Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    return Trainer(**{**options, **kwargs})


def test_map(module: YOLOModule, datamodule: YOLODataModule) -> float:
    """mAP50-95 of the module's EMA model on the ``test`` split (``val`` when the set has none)."""
    metrics = _quiet_trainer().test(module, datamodule=datamodule, verbose=False)[0]
    return float(metrics["test/mAP50-95"])


def base_key(config: dict[str, Any]) -> str:
    """A short hash of everything that shapes the trained base (model, data, base recipe, seed)."""
    model = {k: v for k, v in config["model"].items() if k not in ("lr", "warmup_epochs")}
    data = {k: v for k, v in config["data"].items() if k not in ("num_workers", "pin_memory")}
    recipe = {"format": BASE_FORMAT, "model": model, "data": data, "seed": config.get("seed_everything"),
              "epochs": config["base_epochs"], "lr": config["base_lr"], "warmup": config["base_warmup_epochs"]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]


def latency_ms(models: dict[str, torch.nn.Module], imgsz: int, backend: str) -> dict[str, float] | str:
    """Median latency per model at ``imgsz`` batch 1 (BatchNorm fused; interleaved rounds), or why it failed."""
    from lightning_prune.profiling import compare_latency

    fused = {}
    for name, model in models.items():
        model = copy.deepcopy(model).cpu().float().eval()
        fused[name] = model.fuse(verbose=False) if hasattr(model, "fuse") else model
    try:
        results = compare_latency(fused, torch.zeros(1, 3, imgsz, imgsz), backend, rounds=3, warmup=2, repeats=5)
    except Exception as err:  # e.g. onnxruntime not installed: report it, keep the rest of the report
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return {name: result.median_ms for name, result in results.items()}


class PruneYOLOCLI(LightningCLI):
    """LightningCLI that trains (or reuses) a base model first and reports and saves the pruned detector after."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--save_yolo", type=str | None, default=None,
                            help="where to write the ultralytics checkpoint after fit (default: <log dir>/pruned.pt)")
        parser.add_argument("--base_epochs", type=int, default=0,
                            help="train the model this many epochs without pruning before fit (0: start from the "
                                 "model as built)")
        parser.add_argument("--base_lr", type=float, default=0.002, help="peak learning rate of the base training")
        parser.add_argument("--base_warmup_epochs", type=float, default=1.0, help="warm-up of the base training")
        parser.add_argument("--base_dir", type=str, default="lightning_logs/bases",
                            help="where trained bases are kept and reused from")
        parser.add_argument("--report", type=bool, default=True,
                            help="measure and print the before/after report after fit")
        parser.add_argument("--report_imgsz", type=int, default=640, help="image size of the latency report")
        parser.add_argument("--report_backends", type=list[str], default=["eager", "onnxruntime"],
                            help="latency backends of the report")
        parser.add_argument("--distill", type=bool, default=False,
                            help="distil from the trained base while pruning and fine-tuning (ultralytics' "
                                 "distillation loss; the teacher is the base file, rebuilt from it on reload)")
        parser.link_arguments("data.imgsz", "model.imgsz")

    # -- before fit: the trained base --------------------------------------------------------------------------------
    def before_fit(self) -> None:
        config = self.config[self.subcommand]
        self.started = time.perf_counter()
        self.base_model: torch.nn.Module | None = None
        self.before: dict[str, Any] = {}
        epochs = int(config.get("base_epochs") or 0)
        module, data = self.model, self.datamodule
        if epochs > 0:
            path = Path(config["base_dir"]) / f"base-{base_key(config)}.pt"
            if path.is_file():
                weights = build_yolo_model(path).state_dict()
                module.model.load_state_dict(weights)
                print(f"reusing the trained base from an earlier run: {path} (delete it to train it again)")
                self.before["base"] = f"reused {path}"
            else:
                print(f"training the base model: {epochs} epochs from {module.hparams.model}, no pruning")
                start = time.perf_counter()
                self._train_base(module, data, epochs, float(config["base_lr"]), float(config["base_warmup_epochs"]))
                path = save_yolo(module, path, data=data.data_yaml)
                minutes = (time.perf_counter() - start) / 60
                print(f"trained base saved: {path} ({minutes:.1f} min)")
                self.before["base"] = f"trained now ({epochs} epochs, {minutes:.1f} min), saved to {path}"
            if module.ema is not None:
                module.ema.reset(module.model)  # the pruning run starts its own EMA from the base
            if config.get("distill"):
                module.set_teacher(str(path))
                print(f"distilling from the trained base {path} while pruning and fine-tuning")
                self.before["distill"] = str(path)
        elif config.get("distill"):
            module.set_teacher(True)
            self.before["distill"] = "the model as built"
        if config.get("report"):
            self.base_model = copy.deepcopy(module.model).eval()
            self.before["test_map"] = test_map(module, data)
            print(f"unpruned model: test mAP50-95 {self.before['test_map']:.3f}")
        self.fit_started = time.perf_counter()

    def _train_base(self, module: YOLOModule, data: YOLODataModule, epochs: int, lr: float, warmup: float) -> None:
        saved = dict(module.hparams)
        module.hparams.lr, module.hparams.warmup_epochs = lr, warmup
        logger = self.trainer.logger
        base_logger = (TensorBoardLogger(logger.save_dir, name=f"{logger.name}_base")
                       if isinstance(logger, TensorBoardLogger) else False)
        trainer = Trainer(max_epochs=epochs, accelerator=self.trainer.accelerator, devices=1, logger=base_logger,
                          enable_checkpointing=False, num_sanity_val_steps=0, check_val_every_n_epoch=epochs,
                          log_every_n_steps=self.trainer.log_every_n_steps,
                          enable_progress_bar=self.trainer.progress_bar_callback is not None)
        trainer.fit(module, datamodule=data)
        module.hparams.update(saved)
        if module.ema is not None:  # the base is the EMA model, as ultralytics' best.pt
            module.model.load_state_dict(module.ema.ema.state_dict())

    # -- after fit: save and report ------------------------------------------------------------------------------------
    def after_fit(self) -> None:
        config = self.config[self.subcommand]
        self.fit_minutes = (time.perf_counter() - self.fit_started) / 60
        target = config.get("save_yolo")
        if target is None:
            target = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "pruned.pt"
        if not self.trainer.is_global_zero:
            return
        path = save_yolo(self.model, target, data=getattr(self.datamodule, "data_yaml", None))
        print(f"pruned detector saved for ultralytics: {path}  (ultralytics.YOLO('{path}'))")
        if config.get("report") and self.base_model is not None:
            report = self.report(path, int(config["report_imgsz"]), list(config["report_backends"]))
            print(report)
            logger = self.trainer.logger
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("report", report.replace("\n", "  \n"), self.trainer.global_step)
                logger.experiment.flush()

    def report(self, saved: Path, imgsz: int, backends: list[str]) -> str:
        """The before/after table (Markdown), measured now."""
        module, data = self.model, self.datamodule
        assert self.base_model is not None
        pruned = copy.deepcopy(module.export_model()).eval()
        after_map = test_map(module, data)
        x = torch.zeros(1, 3, imgsz, imgsz)
        flops = {"unpruned": count_flops(self.base_model, x), "pruned": count_flops(pruned, x)}
        params = {"unpruned": count_params(self.base_model), "pruned": count_params(pruned)}
        before_map = float(self.before["test_map"])
        rows = [
            "| | unpruned | pruned | change |",
            "|---|--:|--:|--:|",
            f"| test mAP50-95 | {before_map:.3f} | {after_map:.3f} | "
            f"{after_map / before_map if before_map > 0 else float('nan'):.3f}× |",
            f"| GFLOPs @{imgsz} | {flops['unpruned'] / 1e9:.2f} | {flops['pruned'] / 1e9:.2f} | "
            f"{100 * (flops['pruned'] / flops['unpruned'] - 1):+.1f} % |",
            f"| parameters (M) | {params['unpruned'] / 1e6:.2f} | {params['pruned'] / 1e6:.2f} | "
            f"{100 * (params['pruned'] / params['unpruned'] - 1):+.1f} % |",
        ]
        models = {"unpruned": self.base_model, "pruned": pruned}
        for backend in backends:
            label = {"eager": "eager PyTorch", "onnxruntime": "ONNX Runtime"}.get(backend, backend)
            measured = latency_ms(models, imgsz, backend)
            if isinstance(measured, str):
                rows.append(f"| {label} ms @{imgsz} batch 1 | – | – | not measured ({measured}) |")
            else:
                rows.append(f"| {label} ms @{imgsz} batch 1 | {measured['unpruned']:.1f} | {measured['pruned']:.1f} "
                            f"| {measured['unpruned'] / measured['pruned']:.2f}× faster |")
        minutes = (time.perf_counter() - self.started) / 60
        lines = [
            "## Pruning report",
            "",
            f"- Base: {self.before.get('base', 'the model as built (no base training)')}",
            f"- Distillation: {'from ' + self.before['distill'] if 'distill' in self.before else 'off'}",
            f"- Test split: {data.config.splits.get('test', data.config.splits['val']) if data.config else '?'} "
            f"(sensitivity probes read val); mAP of the EMA weights, ultralytics-style NMS (conf 0.001, IoU 0.7)",
            f"- Threads: {torch.get_num_threads()}; latency: median of 3 interleaved rounds × 5 calls, BatchNorm fused",
            "",
            *rows,
            "",
            f"- Pruned mAP50-95 is {after_map / before_map if before_map > 0 else float('nan'):.1%} of the unpruned "
            f"model's",
            f"- Pruned detector: {saved} (ultralytics.YOLO(path) loads, predicts, validates and exports it)",
            f"- Wall time: {minutes:.1f} min, of which pruning and fine-tuning {self.fit_minutes:.1f} min "
            f"({self.trainer.current_epoch} epochs)",
        ]
        return "\n".join(lines)


def main(args: list[str] | None = None) -> PruneYOLOCLI:
    return PruneYOLOCLI(YOLOModule, YOLODataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
