"""Prune YOLOv8n iteratively inside ultralytics' own trainer (``YOLO.train``), on the synthetic shapes set.

    YOLO_OFFLINE=1 python examples/yolo/ultralytics_trainer.py                  # a few minutes on 2 CPU cores
    YOLO_OFFLINE=1 python examples/yolo/ultralytics_trainer.py --epochs 40 --imgsz 160 --schedule 20 25 30

What happens:

1. The deterministic synthetic shapes set (YOLO format, with its ``data.yaml``) is written on first use.
2. :func:`~lightning_prune.integrations.ultralytics.add_pruning` registers the pruning callbacks on
   ``YOLO("yolov8n.yaml")``; ``model.train(...)`` trains from scratch with ultralytics' optimizer, LR schedule, EMA
   and mosaic, and prunes at the start of each ``--schedule`` epoch (the paper's sensitivity analysis reads the
   validator's mAP50-95 on the first validation batches) until ``--target`` of the FLOPs are gone.
3. ``best.pt`` is reloaded with ``YOLO(path)`` — the pruned architecture — validated, and exported to ONNX.

With ``--interrupt`` the run stops after the first pruning epoch's checkpoint and is resumed from ``last.pt`` with
``train(resume=True)``, which continues the schedule. Nothing is downloaded. On a few minutes of CPU training the
detector is barely trained (mAP near 0), so the sensitivity probes cannot tell groups apart yet; train longer
before the first step (``--schedule``) for a meaningful choice.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402

from lightning_prune.data import make_synthetic_dataset  # noqa: E402
from lightning_prune.integrations.ultralytics import add_pruning  # noqa: E402
from lightning_prune.utils.files import user_cache_dir  # noqa: E402


class _Interrupt(Exception):
    pass


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--schedule", type=int, nargs="+", default=[2, 3, 4], help="0-based epochs to prune at")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the FLOPs to remove")
    parser.add_argument("--strategy", default="sensitivity", choices=["sensitivity", "uniform", "global"])
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--imgsz", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-val", type=int, default=16)
    parser.add_argument("--data-root", default=None, help="synthetic set folder (default: in the per-user cache)")
    parser.add_argument("--project", default="runs/lightning_prune", help="ultralytics' run folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--interrupt", action="store_true", help="stop after the first step, then resume")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 2))

    from ultralytics import YOLO

    root = Path(args.data_root) if args.data_root else user_cache_dir(
        "data", f"ultralytics-shapes-{args.imgsz}px-{args.num_train}-{args.num_val}")
    data = make_synthetic_dataset(root, num_train=args.num_train, num_val=args.num_val, imgsz=args.imgsz) / "data.yaml"

    model = YOLO(args.model)
    options = dict(schedule=args.schedule, target=args.target, strategy=args.strategy, criterion=args.criterion)
    pruning = add_pruning(model, **options)
    train = dict(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device,
                 workers=0, plots=False, project=str(Path(args.project).resolve()), name="prune", exist_ok=True)
    if args.interrupt:
        def interrupt(trainer) -> None:
            if trainer.epoch == args.schedule[0]:
                raise _Interrupt

        model.add_callback("on_model_save", interrupt)
        try:
            model.train(**train)
        except _Interrupt:
            last = Path(train["project"]) / "prune" / "weights" / "last.pt"
            print(f"\ninterrupted after epoch {args.schedule[0]}; resuming from {last}\n")
            model = YOLO(str(last))
            pruning = add_pruning(model, **options)
            model.train(resume=True)
    else:
        model.train(**train)

    weights = Path(train["project"]) / "prune" / "weights" / "best.pt"
    best = YOLO(str(weights))
    metrics = best.val(data=str(data), imgsz=args.imgsz, batch=args.batch, device=args.device, plots=False,
                       workers=0, project=train["project"], name="val", exist_ok=True)
    onnx = None if args.no_export else best.export(format="onnx", imgsz=args.imgsz, simplify=False,
                                                  device=args.device)
    summary = {"flops_ratio": pruning.flops_ratio, "steps": [r.epoch for r in pruning.results],
               "history": len(pruning.history), "best": str(weights), "mAP50-95": float(metrics.box.map),
               "onnx": str(onnx) if onnx else None}
    print("\nlightning_prune inside ultralytics' trainer:")
    for result in pruning.results:
        print("  " + result.summary("mAP50-95"))
    ratio = summary["flops_ratio"]
    print(f"  FLOPs at {args.imgsz} px: {ratio:.1%} of the unpruned model's; best.pt mAP50-95 "
          f"{summary['mAP50-95']:.4f}; {weights}" + (f"; ONNX {onnx}" if onnx else ""))
    return summary


if __name__ == "__main__":
    main()
