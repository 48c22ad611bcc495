#!/usr/bin/env python
"""Coverage: how much of each model can each tool prune, at a fixed per-group ratio, and does it stay correct?

Run from the repository root::

    python benchmarks/coverage.py                    # whole zoo -> benchmarks/results/coverage.{md,json}
    python benchmarks/coverage.py --models resnext50_32x4d dpn68 --tools ours --out /tmp/cov.md

A wide zoo of models no one here tuned the tracer to (torchvision, timm and ultralytics; random weights, nothing
downloaded; 1x3x224x224, ``--side``), each pruned once at the same per-group channel ratio (``--ratio``, 0.3):

* ``ours``: ``DependencyGraph(model, x)``; 30 % of every prunable group by L1 filter score (``lowest_channels``;
  ``size - int(size * 0.7)`` channels, Torch-Pruning's rounding, so both tools cut the same counts);
  ``graph.prune(plan, verify=True)``. Recorded: graph build time and one plain forward's time (the build runs one
  real forward, so it cannot be faster than that), groups prunable, ``graph.prunable_flops_share`` (the FLOPs-weighted
  share of conv/linear channel dims pruning can reach), the most costly pins with their reasons, FLOPs before and
  after, and the masked-vs-pruned oracle (largest |Δ| between outputs under ``graph.masked(plan)`` and after
  ``graph.prune(plan)``, eval mode; value-dependent selections such as RT-DETR's ``topk`` replayed from the masked
  forward, as ``prune`` itself checks).
* ``tp``: Torch-Pruning's ``MagnitudePruner`` (L1) at ``pruning_ratio=--ratio`` in one step, output layers ignored as
  in its examples (``_peers.tp_pruner``), then one forward (it must still run and keep the output shapes).

FLOPs are ``lightning_prune.count_flops`` (``torch.utils.flop_counter``) for every tool alike. Each (model, tool)
pair runs in its own child process under a wall-time and memory limit (``_harness.run_child``); a crash, a hang
or a broken forward is that pair's recorded failure, with its one-line cause and the phase it happened in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _harness import REPO, Recorder, command_line, cpu_name, dist_version, git_rev, one_line, run_child

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything

DEFAULT_OUT = REPO / "benchmarks" / "results" / "coverage.md"
TOOLS = ("ours", "tp")
# the code the numbers depend on: a clean benchmark run has no uncommitted changes there
CODE_PATHS = ["lightning_prune/graph", "lightning_prune/utils",
              "lightning_prune/profiling/flops.py", "lightning_prune/pruning/importance.py", "benchmarks/coverage.py"]
MODELS: dict[str, str] = {
    "resnet50": "torchvision",
    "resnext50_32x4d": "torchvision",
    "regnet_x_400mf": "torchvision",
    "regnet_y_400mf": "torchvision",
    "mobilenet_v3_small": "torchvision",
    "shufflenet_v2_x1_0": "torchvision",
    "convnext_tiny": "torchvision",
    "efficientnet_b0": "torchvision",
    "dpn68": "timm",
    "skresnet18": "timm",
    "mixnet_s": "timm",
    "nf_resnet26": "timm",
    "convnext_atto": "timm",
    "repvgg_a0": "timm",
    "cspdarknet53": "timm",
    "yolov8n": "ultralytics",
    "yolo11n": "ultralytics",
    "rtdetr-l": "ultralytics",
}


def build(name: str):  # noqa: ANN201
    """A zoo model with random weights, in eval mode."""
    import torch

    torch.manual_seed(0)
    family = MODELS[name]
    if family == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval()
    if family == "timm":
        import timm

        return timm.create_model(name, pretrained=False).eval()
    from ultralytics import RTDETR, YOLO

    return (RTDETR if name.startswith("rtdetr") else YOLO)(f"{name}.yaml").model.eval()


def removed(size: int, ratio: float) -> int:
    """Channels to remove from a group of ``size`` at ``ratio``, rounded as Torch-Pruning rounds (it keeps
    ``int(size * (1 - ratio))``), so both tools cut the same counts."""
    return min(size - 1, size - int(size * (1 - ratio)))


def _outputs(model, x):  # noqa: ANN001, ANN202
    import torch

    from lightning_prune.graph.conventions import default_output_filter
    from lightning_prune.utils import iter_tensors

    with torch.no_grad():
        output = default_output_filter(model)(model(x))
    return [t.detach().clone() for t in iter_tensors(output, attributes=True) if t.is_floating_point()]


def worker(tool: str, name: str, result_file: str, args: argparse.Namespace) -> int:
    rec = Recorder(result_file, tool=tool, model=name, phase="import", ok=False)
    try:
        import torch

        from lightning_prune import count_flops

        torch.set_num_threads(args.threads)
        rec.set(phase="build model")
        model = build(name)
        x = torch.randn(1, 3, args.side, args.side, generator=torch.Generator().manual_seed(1))
        rec.set(phase="count FLOPs")
        flops0 = count_flops(model, x)
        shapes0 = [tuple(t.shape) for t in _outputs(model, x)]
        rec.set(flops_before=flops0)
        if tool == "ours":
            from lightning_prune import DependencyGraph
            from lightning_prune.pruning.importance import lowest_channels

            with torch.no_grad():
                model(x)
                start = time.perf_counter()
                model(x)
                rec.set(forward_s=time.perf_counter() - start)
            rec.set(phase="build graph")
            start = time.perf_counter()
            graph = DependencyGraph(model, x)
            pins: dict[str, float] = {}
            for group in graph.groups:
                if not group.prunable and group.reason not in ("model input", "reaches the model output"):
                    pins[group.reason] = pins.get(group.reason, 0.0) + group.flops_share
            rec.set(build_s=time.perf_counter() - start, groups=len(graph.groups),
                    prunable=len(graph.prunable_groups), share=graph.prunable_flops_share,
                    pins=sorted(pins.items(), key=lambda item: -item[1])[:3], phase="select")
            plan = {g.name: lowest_channels(g, model, removed(g.size, args.ratio), "l1") for g in graph.prunable_groups
                    if removed(g.size, args.ratio) > 0}
            from lightning_prune.graph.replay import SelectionReplay

            replay = SelectionReplay()  # value-dependent selections (RT-DETR's topk) as in the graph's own check
            with graph.masked(plan), replay:
                expected = _outputs(model, x)
            rec.set(phase="prune")
            graph.prune(plan, verify=True)
            with replay.replaying():
                actual = _outputs(model, x)
            rec.set(oracle=max((float((a - e).abs().max()) for a, e in zip(actual, expected) if a.numel()),
                               default=0.0))
        else:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from _peers import tp_pruner

            rec.set(phase="tp pruner")
            pruner = tp_pruner(model, x, args.ratio, 1)
            rec.set(phase="tp step")
            pruner.step()
            actual = _outputs(model, x)
        rec.set(phase="check outputs")
        shapes = [tuple(t.shape) for t in actual]
        if shapes != shapes0:
            raise ValueError(f"output shapes changed from {shapes0} to {shapes}")
        rec.set(phase="count FLOPs after", flops_after=count_flops(model, x))
        rec.set(phase="done", ok=True)
        return 0
    except BaseException as err:  # every failure is a result
        rec.set(error=one_line(err))
        return 1


def render(results: dict[str, dict[str, dict]], args: argparse.Namespace, header: list[str]) -> str:
    lines = ["# Coverage: what each tool prunes at the same per-group ratio", "", *header, "",
             "| model | family | ours: groups prunable | ours: reachable share | ours FLOPs ×after | ours oracle "
             "max \\|Δ\\| | ours build s (fwd s) | TP FLOPs ×after | most costly pin (ours) |",
             "|---|---|--:|--:|--:|--:|--:|--:|---|"]
    failures = []
    for name, tools in results.items():
        ours, tp = tools.get("ours", {}), tools.get("tp", {})

        def ratio(data: dict) -> str:
            if data.get("ok"):
                return f"{data['flops_after'] / data['flops_before']:.2f}"
            return "fail" if data else "—"

        pins = ours.get("pins") or []
        pin = f"{pins[0][1]:.0%} FLOPs: {pins[0][0][:140]}" if pins else ""
        build_s = f"{ours['build_s']:.2f} ({ours['forward_s']:.2f})" if "build_s" in ours else "—"
        share = f"{ours['share']:.0%}" if "share" in ours else "—"
        groups = f"{ours['prunable']}/{ours['groups']}" if "groups" in ours else "—"
        oracle = f"{ours['oracle']:.1e}" if "oracle" in ours else "—"
        lines.append(f"| {name} | {MODELS[name]} | {groups} | {share} | {ratio(ours)} | {oracle} | {build_s} | "
                     f"{ratio(tp)} | {pin.replace('|', '/')} |")
        for tool, data in tools.items():
            if data and not data.get("ok"):
                failures.append(f"- {name}, {tool}: {data.get('error', '?')}")
    lines += ["", "## Failures", "", *(failures or ["- none"]), "", "## Verdict", ""]
    both = [(n, t["ours"], t["tp"]) for n, t in results.items()
            if t.get("ours", {}).get("ok") and t.get("tp", {}).get("ok")]
    behind = [f"{n} (ours ×{o['flops_after'] / o['flops_before']:.2f}, TP ×{p['flops_after'] / p['flops_before']:.2f})"
              for n, o, p in both if o["flops_after"] / o["flops_before"] > p["flops_after"] / p["flops_before"] + 0.02]
    ours_ok = sum(1 for t in results.values() if t.get("ours", {}).get("ok"))
    tp_ok = sum(1 for t in results.values() if t.get("tp", {}).get("ok"))
    lines.append(f"- Runs that end with a working, smaller model: ours {ours_ok}/{len(results)}, Torch-Pruning "
                 f"{tp_ok}/{len(results)}.")
    lines.append("- Where both run, ours removes at least as many FLOPs (within 2 points) on "
                 f"{len(both) - len(behind)}/{len(both)} models" + (f"; fewer on {', '.join(behind)}." if behind
                                                                    else "."))
    lines.append("- Torch-Pruning has no masked-vs-pruned oracle and prunes channels under channels-last LayerNorm "
                 "and weight standardisation, where removing a channel changes the kept ones (ours pins them, with "
                 "the reason in the last column): a lower ×after there is not like for like.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--ratio", type=float, default=0.3, help="channel ratio removed from every group (0.3)")
    parser.add_argument("--side", type=int, default=224, help="input side (224)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per child (2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="wall-time limit per child, seconds (300)")
    parser.add_argument("--mem-gb", type=float, default=8.0, help="RSS limit per child, GB (8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown table (JSON next to it)")
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "MODEL", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        tool, name, result_file = args.worker
        return worker(tool, name, result_file, args)
    started = time.monotonic()
    revision = git_rev(CODE_PATHS)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="coverage_") as workdir:
        for name in args.models:
            for tool in args.tools:
                result_file, log = Path(workdir) / f"{tool}-{name}.json", Path(workdir) / f"{tool}-{name}.log"
                cmd = [sys.executable, __file__, "--worker", tool, name, str(result_file), "--ratio", str(args.ratio),
                       "--side", str(args.side), "--threads", str(args.threads)]
                data, _, _ = run_child(cmd, result_file, log, args.timeout, args.mem_gb, args.threads,
                                       {"tool": tool, "model": name})
                results.setdefault(name, {})[tool] = data
                print(f"{name:>20} {tool:>4}: {'ok' if data.get('ok') else data.get('error')}", flush=True)
    header = [
        f"- Command: `{command_line(sys.argv if argv is None else [__file__, *argv])}` (from the repository root, "
        f"total {time.monotonic() - started:.0f} s)",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; revision {revision} (checked for changes "
        f"under {', '.join(CODE_PATHS)})",
        f"- Versions: torch {dist_version('torch')}, torchvision {dist_version('torchvision')}, timm "
        f"{dist_version('timm')}, ultralytics {dist_version('ultralytics')}, torch-pruning "
        f"{dist_version('torch-pruning')}",
        f"- CPU: {cpu_name()}, {args.threads} torch threads per child; the machine was shared with other work, so "
        "build and forward seconds are inflated alike (the build includes one real forward)",
        f"- Input 1x3x{args.side}x{args.side}, random weights, eval mode; every tool prunes {args.ratio:.0%} of the "
        "channels of every group it can prune (`size - int(size * (1 - ratio))`, Torch-Pruning's rounding), once, "
        "by L1 filter score; FLOPs: `lightning_prune.count_flops` (×after = after / before)",
        "- *reachable share*: `DependencyGraph.prunable_flops_share` (FLOPs-weighted share of conv/linear channel "
        "dims that prunable groups reach); *most costly pin*: the reason pinning the largest share of FLOPs (model "
        "input and outputs left out)",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, args, header))
    args.out.with_suffix(".json").write_text(json.dumps({"header": header, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
