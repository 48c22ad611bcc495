"""Parity with ultralytics' own trainer: YOLOModule + YOLODataModule vs ``YOLO("yolov8n.yaml").train(...)``.

Both train YOLOv8n from its YAML (random init) on the same synthetic shapes set, image size, batch size, epochs and
recipe (AdamW, warm-up, cosine LR, mosaic closed for the last epochs, EMA, gradient clipping); both final models are
scored by ultralytics' own validator on the held-out ``test`` split. The Lightning model is also scored by
``YOLOModule``'s torchmetrics mAP on the same split, to show the two metrics agree on the same model.

    python benchmarks/yolo_parity.py                   # writes benchmarks/results/yolo_parity.{md,json}
    python benchmarks/yolo_parity.py --epochs 3 --num-train 32 --out /tmp/parity   # a smoke run

Where ultralytics' trainer and this recipe cannot be told to do the same, ultralytics' is matched: its warm-up
lasts at least 100 iterations (so ours is set to the same number of iterations), and its nominal batch size
``nbs`` is set to the batch size (no gradient accumulation, unscaled weight decay) on its side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import cpu_name, dist_version  # noqa: E402
from _harness import command_line, git_rev  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: what this benchmark runs: the revision is reported clean when none of these has uncommitted changes
RUN_PATHS = [*(f"lightning_prune/integrations/ultralytics/{name}.py" for name in
               ("__init__", "build", "common", "data", "ema", "export", "module", "validation")),
             "lightning_prune/data", "lightning_prune/checkpoint.py", "benchmarks/yolo_parity.py"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-train", type=int, default=384)
    parser.add_argument("--num-val", type=int, default=48)
    parser.add_argument("--num-test", type=int, default=96)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="ultralytics' meaning (>= 100 iterations)")
    parser.add_argument("--close-mosaic", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for yolo_parity.md/json")
    return parser.parse_args(argv)


def _warmup_iterations(args: argparse.Namespace) -> int:
    batches = -(-args.num_train // args.batch)
    return max(round(args.warmup_epochs * batches), 100) if args.warmup_epochs > 0 else 0


def run_lightning(args: argparse.Namespace, data_yaml: Path, seed: int, workdir: Path) -> dict[str, Any]:
    import lightning.pytorch as pl

    from lightning_prune.integrations.ultralytics import YOLODataModule, YOLOModule, save_yolo

    pl.seed_everything(seed, verbose=False)
    batches = -(-args.num_train // args.batch)
    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=args.imgsz, optimizer="AdamW", lr=args.lr, momentum=0.9,
                        weight_decay=5e-4, warmup_epochs=_warmup_iterations(args) / batches, scheduler="cosine",
                        lrf=0.01)
    data = YOLODataModule(str(data_yaml), imgsz=args.imgsz, batch_size=args.batch, close_mosaic=args.close_mosaic,
                          seed=seed)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(module, data)
    fit_s = time.perf_counter() - start
    ours = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = ours.test(module, data, verbose=False)[0]
    weights = save_yolo(module, workdir / f"lightning-seed{seed}.pt", data=data_yaml)
    return {"fit_s": fit_s, "weights": str(weights), "torchmetrics": {"mAP50-95": float(metrics["test/mAP50-95"]),
                                                                      "mAP50": float(metrics["test/mAP50"])}}


def run_ultralytics(args: argparse.Namespace, data_yaml: Path, seed: int, workdir: Path) -> dict[str, Any]:
    from ultralytics import YOLO

    from lightning_prune.integrations.ultralytics.common import no_font_download

    start = time.perf_counter()
    with no_font_download():
        YOLO("yolov8n.yaml").train(
            data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu", workers=0,
            optimizer="AdamW", lr0=args.lr, lrf=0.01, cos_lr=True, momentum=0.9, weight_decay=5e-4,
            warmup_epochs=args.warmup_epochs, warmup_bias_lr=0.0, warmup_momentum=0.9, nbs=args.batch,
            close_mosaic=args.close_mosaic, seed=seed, deterministic=False, amp=False, plots=False, val=False,
            project=str(workdir), name=f"ultralytics-seed{seed}", exist_ok=True, verbose=False)
    fit_s = time.perf_counter() - start
    torch.set_num_threads(args.threads)  # ultralytics' device selection resets the thread count
    return {"fit_s": fit_s, "weights": str(workdir / f"ultralytics-seed{seed}" / "weights" / "last.pt")}


def _score(weights: str, data_yaml: Path, imgsz: int) -> dict[str, float]:
    from lightning_prune.integrations.ultralytics import ultralytics_val_metrics

    return ultralytics_val_metrics(weights, data_yaml, imgsz=imgsz, batch=16, split="test")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    from lightning_prune.data.synthetic import make_synthetic_dataset

    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lp-parity-"))
    data_yaml = make_synthetic_dataset(workdir / "shapes", args.num_train, args.num_val, args.imgsz, 0,
                                       num_test=args.num_test) / "data.yaml"
    runs = []
    for seed in args.seeds:
        lightning = run_lightning(args, data_yaml, seed, workdir)
        theirs = run_ultralytics(args, data_yaml, seed, workdir)
        lightning["ultralytics_validator"] = _score(lightning["weights"], data_yaml, args.imgsz)
        theirs["ultralytics_validator"] = _score(theirs["weights"], data_yaml, args.imgsz)
        runs.append({"seed": seed, "lightning": lightning, "ultralytics": theirs})
        print(json.dumps(runs[-1], indent=1), flush=True)
    result = {
        # clean = no uncommitted change in what this benchmark runs (other engineers' work elsewhere does not count)
        "command": command_line(), "git": git_rev(RUN_PATHS),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {name: dist_version(name) for name in ("torch", "lightning", "ultralytics", "torchmetrics")},
        "python": platform.python_version(), "machine": f"{cpu_name()}, {os.cpu_count()} cores, CPU only",
        "threads": args.threads, "total_min": (time.perf_counter() - started) / 60,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out",)},
        "warmup_iterations": _warmup_iterations(args), "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "yolo_parity.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "yolo_parity.md").write_text(render(result))
    print(render(result))
    return result


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    rows, gaps, agree = [], [], []
    for run in result["runs"]:
        ours, theirs = run["lightning"], run["ultralytics"]
        a, b = ours["ultralytics_validator"]["mAP50-95"], theirs["ultralytics_validator"]["mAP50-95"]
        gaps.append(100 * (a - b))
        agree.append(100 * (ours["torchmetrics"]["mAP50-95"] - a))
        rows.append(f"| {run['seed']} | {a:.3f} ({ours['ultralytics_validator']['mAP50']:.3f}) | "
                    f"{b:.3f} ({theirs['ultralytics_validator']['mAP50']:.3f}) | {gaps[-1]:+.1f} | "
                    f"{ours['torchmetrics']['mAP50-95']:.3f} ({ours['torchmetrics']['mAP50']:.3f}) | "
                    f"{agree[-1]:+.2f} | {ours['fit_s'] / 60:.1f} / {theirs['fit_s'] / 60:.1f} |")
    mean_gap = sum(gaps) / len(gaps)
    verdict = "within" if all(abs(g) <= 2.0 for g in gaps) else "NOT within"
    lines = [
        "# Parity with ultralytics' trainer: YOLOModule vs `YOLO(\"yolov8n.yaml\").train(...)`",
        "",
        f"- Command: `{result['command']}` (from the repository root; total {result['total_min']:.0f} min)",
        f"- Date: {result['date']}; git {result['git']} (clean: no uncommitted change in the integration, the data "
        "module or this script)",
        f"- Versions: python {result['python']}, " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- Machine: {result['machine']}, `torch.set_num_threads({result['threads']})`",
        f"- Data: the synthetic shapes set (seed 0), {cfg['num_train']} train / {cfg['num_val']} val / "
        f"{cfg['num_test']} test images at {cfg['imgsz']} px, 3 classes",
        f"- Recipe, both sides: YOLOv8n from its YAML (random init), {cfg['epochs']} epochs, batch {cfg['batch']}, "
        f"AdamW lr {cfg['lr']} (momentum 0.9, weight decay 5e-4 on weights), linear warm-up over "
        f"{result['warmup_iterations']} iterations (ultralytics' minimum of 100), cosine decay to 0.01×, "
        f"ultralytics' default augmentation with mosaic closed for the last {cfg['close_mosaic']} epochs, EMA "
        "(decay 0.9999, tau 2000), gradient-norm clipping at 10; ultralytics with `nbs` = batch (no accumulation)",
        "- Score: ultralytics' validator (`YOLO(path).val(split=\"test\", rect=False)`, conf 0.001, IoU 0.7) on each "
        "side's final EMA weights; torchmetrics: `YOLOModule`'s own test loop on the same model and split",
        "",
        "| seed | Lightning: mAP50-95 (mAP50) | ultralytics trainer: mAP50-95 (mAP50) | gap (points) | "
        "Lightning, torchmetrics mAP50-95 (mAP50) | torchmetrics − validator (points) | fit min (Lightning / "
        "ultralytics) |",
        "|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
        "",
        "## Verdict",
        "",
        f"- YOLOModule is {verdict} 2 mAP50-95 points of ultralytics' trainer (mean gap {mean_gap:+.1f} points; "
        "positive: Lightning higher).",
        f"- torchmetrics and ultralytics' validator differ by at most {max(abs(a) for a in agree):.2f} points on the "
        "same model.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
