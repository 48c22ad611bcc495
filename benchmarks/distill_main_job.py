#!/usr/bin/env python
"""Does distillation help the main job? The main job's recipe (``examples/yolo/quick.yaml``: YOLOv8n, synthetic
shapes, -50 % FLOPs in two sensitivity steps, 10 epochs) with and without ``--distill true`` (the teacher: the trained
base), for several seeds; test mAP50-95 on the held-out split.

    YOLO_OFFLINE=1 python benchmarks/distill_main_job.py                  # seeds 0 1 2 -> benchmarks/results/
    YOLO_OFFLINE=1 python benchmarks/distill_main_job.py --seeds 0 --out /tmp/dmj.md

Each seed trains (or reuses, under ``--workdir``) its own base once; both arms of a seed start from that base, so
the per-seed differences are paired. The verdict follows the project's rule: distillation helps only when the mean
gain exceeds both arms' seed spreads (max - min); otherwise it is a tie.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| test mAP50-95 \| ([0-9.]+) \| ([0-9.]+) \|")
WALL = re.compile(r"of which pruning and fine-tuning ([0-9.]+) min")


def run(seed: int, distill: bool, workdir: Path) -> dict[str, float]:
    name = f"seed{seed}-{'distill' if distill else 'plain'}"
    cmd = [sys.executable, "examples/yolo/main.py", "fit", "--config", "examples/yolo/quick.yaml",
           f"--seed_everything={seed}", f"--distill={str(distill).lower()}", f"--base_dir={workdir / 'bases'}",
           f"--trainer.default_root_dir={workdir}", f"--trainer.logger.init_args.save_dir={workdir}",
           f"--trainer.logger.init_args.name={name}", f"--save_yolo={workdir / name}.pt",
           "--report_backends=[eager]"]
    env = {**_env(), "YOLO_OFFLINE": "1", "PYTHONPATH": str(REPO)}  # this checkout's library, not an installed one
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    (workdir / f"{name}.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {out.returncode}); see {workdir / name}.log")
    for line in out.stdout.splitlines():
        match = ROW.match(line.strip())
        if match:
            before, after = float(match.group(1)), float(match.group(2))
    wall = WALL.search(out.stdout)
    return {"before": before, "after": after, "fit_minutes": float(wall.group(1)) if wall else float("nan")}


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/distill_main_job"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "distill_main_job.md")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "lightning_prune", "examples"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    results: dict[str, dict[int, dict[str, float]]] = {"plain": {}, "distill": {}}
    for seed in args.seeds:
        for distill in (False, True):
            results["distill" if distill else "plain"][seed] = run(seed, distill, args.workdir)
            print(seed, distill, results["distill" if distill else "plain"][seed], flush=True)
    plain = [results["plain"][s]["after"] for s in args.seeds]
    distilled = [results["distill"][s]["after"] for s in args.seeds]
    gain = statistics.mean(distilled) - statistics.mean(plain)
    spread = max(max(plain) - min(plain), max(distilled) - min(distilled))
    verdict = ("distillation helps" if gain > spread else "distillation hurts" if -gain > spread
               else "a tie: the difference is inside the seed spread")
    lines = [
        "# The main job with and without distillation",
        "",
        f"`python benchmarks/distill_main_job.py --seeds {' '.join(map(str, args.seeds))}` at {revision[:7]}"
        f"{' (uncommitted changes)' if dirty else ''}, {dt.date.today().isoformat()}; recipe "
        "`examples/yolo/quick.yaml` (YOLOv8n, synthetic shapes, −50 % FLOPs in two sensitivity steps, 10 epochs), "
        "distillation from the trained base with ultralytics' loss (`--distill true`). Test mAP50-95 on the held-out "
        "split; both arms of a seed start from the same base.",
        "",
        "| seed | base | pruned, plain | pruned, distilled | distilled − plain | fit min plain | fit min distilled |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for s in args.seeds:
        p, d = results["plain"][s], results["distill"][s]
        lines.append(f"| {s} | {p['before']:.3f} | {p['after']:.3f} | {d['after']:.3f} | "
                     f"{d['after'] - p['after']:+.3f} | {p['fit_minutes']:.1f} | {d['fit_minutes']:.1f} |")
    lines += ["", f"Mean: plain {statistics.mean(plain):.3f}, distilled {statistics.mean(distilled):.3f} "
              f"(gain {gain:+.3f}, largest seed spread {spread:.3f}). **Verdict: {verdict}.**", ""]
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps({"revision": revision, "dirty": dirty, "seeds": args.seeds,
                                                        "results": results, "gain": gain, "spread": spread,
                                                        "verdict": verdict}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
