#!/usr/bin/env python
"""What distillation costs per training step: time and peak memory of ``YOLOModule`` training steps with and
without ``distill=True`` (ultralytics' loss: one teacher forward under ``no_grad`` per batch, plus the projectors).

    YOLO_OFFLINE=1 python benchmarks/distill_cost.py            # -> benchmarks/results/distill_cost.md
    YOLO_OFFLINE=1 python benchmarks/distill_cost.py --model yolov8s.yaml --imgsz 160 --steps 20 --rounds 3

Each measurement runs in a fresh process (peak RSS is per process), the two modes alternate for ``--rounds``
rounds, and the medians are reported; one torch thread unless ``--threads``. The teacher is a frozen copy of the
student (same size: the main job's and the benchmark's setting, where the teacher is the unpruned model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from lightning_prune.integrations.ultralytics import YOLOModule

    module = YOLOModule(args.model, nc=10, imgsz=args.imgsz, distill=args.distill, ema=False)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.train()
    images = torch.rand(args.batch, 3, args.imgsz, args.imgsz)
    n = 4 * args.batch
    batch = {"img": images, "batch_idx": torch.arange(args.batch).repeat_interleave(4).float(),
             "cls": torch.randint(0, 10, (n, 1)).float(), "bboxes": torch.rand(n, 4) * 0.4 + 0.3}
    times, cpu = [], []
    for step in range(args.steps + 2):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = module.training_step(dict(batch), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:  # warm-up
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step_s": statistics.median(times), "cpu_s": statistics.median(cpu), "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--distill", type=lambda v: v == "true", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distill_cost.md")
    args = parser.parse_args()
    if args.distill is not None:
        return child(args)
    measured: dict[str, list[dict[str, float]]] = {"plain": [], "distill": []}
    for _ in range(args.rounds):
        for mode in ("plain", "distill"):
            cmd = [sys.executable, __file__, "--model", args.model, "--imgsz", str(args.imgsz), "--batch",
                   str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads), "--distill",
                   "true" if mode == "distill" else "false"]
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                                 env={**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
                                      "PYTHONPATH": str(REPO)})
            if out.returncode != 0:
                raise SystemExit(f"{mode} failed: {out.stderr.strip().splitlines()[-1]}")
            measured[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    step = {m: statistics.median(r["step_s"] for r in v) for m, v in measured.items()}
    cpu = {m: statistics.median(r["cpu_s"] for r in v) for m, v in measured.items()}
    peak = {m: statistics.median(r["peak_mb"] for r in v) for m, v in measured.items()}
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "lightning_prune", "benchmarks"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    lines = [
        "# What distillation costs per training step",
        "",
        f"`python benchmarks/distill_cost.py --model {args.model} --imgsz {args.imgsz} --batch {args.batch} "
        f"--steps {args.steps} --rounds {args.rounds} --threads {args.threads}` at {revision[:7]}"
        f"{' (uncommitted changes)' if dirty else ''}, {dt.date.today().isoformat()}, CPU, {args.threads} thread(s). "
        "`YOLOModule.training_step` + backward + AdamW step; teacher: a frozen copy of the student; each mode in "
        "fresh processes, alternating, medians.",
        "",
        "| | plain | distilled | extra |",
        "|---|--:|--:|--:|",
        f"| CPU seconds per step | {cpu['plain']:.3f} | {cpu['distill']:.3f} | "
        f"{100 * (cpu['distill'] / cpu['plain'] - 1):+.0f} % |",
        f"| wall seconds per step | {step['plain']:.3f} | {step['distill']:.3f} | "
        f"{100 * (step['distill'] / step['plain'] - 1):+.0f} % |",
        f"| peak RSS (MB) | {peak['plain']:.0f} | {peak['distill']:.0f} | {peak['distill'] - peak['plain']:+.0f} MB |",
        "",
        "CPU seconds (process time, one thread) are what a step costs whatever else the machine runs; wall seconds "
        "also carry the machine's load. Per epoch the extra time is the same share (the data pipeline aside, which "
        "distillation does not touch).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps({"revision": revision, "dirty": dirty, "args": vars(args) |
                                                        {"out": str(args.out)}, "measured": measured}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
