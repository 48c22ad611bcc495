"""Build YOLOv8n from its YAML (random init), print its channel dependency graph, and prune ~30 % of every
prunable group by L1 norm. Prints FLOPs and parameters before and after and checks the pruned model still runs.

    YOLO_OFFLINE=1 python examples/prune_yolov8n.py [--model yolov8n.yaml] [--ratio 0.3] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402

from lightning_prune import DependencyGraph, count_flops, count_params  # noqa: E402
from lightning_prune.pruning.importance import lowest_channels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n.yaml", help="ultralytics model YAML (built with random init)")
    parser.add_argument("--ratio", type=float, default=0.3, help="fraction of each prunable group to remove")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--criterion", default="l1")
    args = parser.parse_args()

    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(args.model).model.eval()
    example = torch.randn(1, 3, args.imgsz, args.imgsz)
    flops_before, params_before = count_flops(model, example), count_params(model)

    graph = DependencyGraph(model, example)
    print(graph.summary())
    plan = {
        group.name: lowest_channels(group, model, int(group.size * args.ratio), args.criterion)
        for group in graph.prunable_groups
    }
    result = graph.prune(plan)
    flops_after, params_after = count_flops(model, example), count_params(model)
    with torch.no_grad():
        model(example)

    removed = sum(len(channels) for channels in result.removed.values())
    print(f"\npruned {removed} channels in {len(result.removed)} groups ({args.ratio:.0%} of each, {args.criterion})")
    print(f"GFLOPs  {flops_before / 1e9:8.2f} -> {flops_after / 1e9:8.2f}  ({flops_after / flops_before:.1%})")
    print(f"params  {params_before:8,d} -> {params_after:8,d}  ({params_after / params_before:.1%})")


if __name__ == "__main__":
    main()
