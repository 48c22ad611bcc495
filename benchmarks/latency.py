#!/usr/bin/env python
"""Speedup efficiency of structured pruning: does −50 % FLOPs give 2× speed on a real backend?

Run from the repository root::

    YOLO_OFFLINE=1 python benchmarks/latency.py          # YOLOv8n + YOLO11n, writes benchmarks/results/latency.md
    YOLO_OFFLINE=1 python benchmarks/latency.py --models yolov8n --imgsz 320 --rounds 3 --out /tmp/latency.md

For every model (ultralytics, built from its YAML with random weights, nothing downloaded) three variants are timed:

* **original**: the model as built;
* **pruned**: uniform L1 pruning: every prunable group of ``lightning_prune.DependencyGraph`` loses the same fraction
  of its channels (the lowest-L1 ones, ``lightning_prune.pruning.importance.lowest_channels``), the fraction found
  by bisection on ``count_flops`` until the FLOPs ratio is ``--target`` ± ``--tol`` (bisection runs at 160 px: conv
  FLOPs scale with H·W, so the ratio is the same at 640 px; the table shows the ratio counted at ``--imgsz``);
* **pruned_r8**: the same, but every group keeps a multiple of 8 channels (its kept count rounded to the nearest
  multiple, fraction found by bisection again): does channel-count granularity explain a loss of efficiency?
* **sibling**: ultralytics' own narrower model: the same YAML with the scale's ``width_multiple`` lowered (bisection
  on it) until FLOPs are as close as channel rounding allows to ``--target``: the "perfect uniform pruner" reference
  (every channel count a multiple of 8, as designed, but the head's minimum widths do not shrink).

Every variant has its BatchNorms folded into the convs with ultralytics' ``fuse()`` (as ultralytics' export does)
before timing. Each backend (eager PyTorch; ONNX Runtime, CPUExecutionProvider, exported once per variant with the
TorchScript-based exporter) times the three variants with ``lightning_prune.profiling.compare_latency``: interleaved
rounds (original, pruned, sibling, original, ...), ``--repeats`` single calls per variant and round after one warm-up,
``torch.set_num_threads(--threads)`` / ``intra_op_num_threads``, batch 1, float32, pooled median. Then a per-layer
breakdown (forward hooks for eager, ONNX Runtime's profiler) of each variant.

* latency ratio = variant median / original median; speedup = 1 / latency ratio;
* FLOPs reduction = original FLOPs / variant FLOPs; **efficiency** = speedup / FLOPs reduction (1.0: time fell
  exactly as much as FLOPs; below 1: part of the FLOPs saving did not turn into time);
* for every pruned variant with efficiency < ``--efficiency-floor`` (0.9), its slowest conv layers with their own
  FLOPs ratio, latency ratio and efficiency, and the time outside conv layers (activations, concat, split,
  upsample, the Detect head's decoding), which does not shrink with FLOPs counted on convs;
* a timing block during which other processes used more than ``--max-others`` CPU cores is re-run (the machine
  this was written on is shared; 2-thread eager PyTorch slows down many-fold when a third thread competes);
* the original model's slowest conv timed alone at every output-channel count from half to all
  (``channel_speed_table``) with ``suggest_round_to``'s answer per backend.

This is a benchmark, not a test: absolute times depend on the machine and on whatever else runs on it (the header
records the load average before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from _common import yolo_at_width
from _harness import command_line
from _harness import cpu_name as _cpu
from _harness import dist_version as _version

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything

import torch  # noqa: E402
from torch import nn  # noqa: E402

from lightning_prune import DependencyGraph, count_flops  # noqa: E402
from lightning_prune.profiling import (  # noqa: E402
    BACKENDS,
    ChannelSpeed,
    LatencyResult,
    channel_speed_table,
    compare_latency,
    suggest_round_to,
)
from lightning_prune.pruning.importance import lowest_channels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "latency.md"
TRACE_SIZE = 64  # input side for building dependency graphs
SEARCH_SIZE = 160  # input side for the FLOPs bisections
VARIANTS = ("original", "pruned", "pruned_r8", "sibling")
PER_LAYER_CAVEAT = (
    "Per-layer times come from separate instrumented passes (forward hooks; ONNX Runtime's profiler), `--repeats` per "
    "variant after the timed rounds, interleaved the same way but with fewer samples than the totals above: a burst "
    "of other processes during them shows up as a layer that got *slower* after pruning. Trust the totals above; use "
    "these rows for where the time is, and compare with a second run before reading much into a single layer."
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- models ---------------------------------------------------------------------------------------------------------
def build(name: str, width: float | None = None) -> nn.Module:
    """An ultralytics detection model from its YAML (random init), optionally with another ``width_multiple``."""
    return yolo_at_width(f"{name}.yaml", width).eval()


def uniform_plan(graph: DependencyGraph, model: nn.Module, fraction: float,
                 round_to: int = 1) -> dict[str, list[int]]:
    """The lowest-L1 ``fraction`` of every prunable group (at least one channel left); with ``round_to``, the count
    kept is rounded to the nearest multiple of it (at least one multiple, never more than the group has)."""
    plan = {}
    for group in graph.prunable_groups:
        count = min(group.size - 1, int(round(group.size * fraction)))
        if round_to > 1:
            keep = group.size - count
            keep = min(group.size, max(round_to, int(round(keep / round_to)) * round_to))
            count = group.size - keep
        if count > 0:
            plan[group.name] = lowest_channels(group, model, count, "l1")
    return plan


def pruned_copy(base: nn.Module, fraction: float, round_to: int = 1) -> nn.Module:
    model = copy.deepcopy(base)
    graph = DependencyGraph(model, torch.randn(1, 3, TRACE_SIZE, TRACE_SIZE))
    graph.prune(uniform_plan(graph, model, fraction, round_to))
    return model


def bisect(evaluate: Any, low: float, high: float, target: float, tol: float, decreasing: bool,
           iterations: int = 14) -> tuple[float, float]:
    """``x`` in ``[low, high]`` with ``evaluate(x)`` within ``tol`` of ``target`` (or the closest one tried)."""
    best = (math.inf, low, math.nan)
    for _ in range(iterations):
        if high - low < 1e-3:  # inside a step of the function: the target is not reachable exactly
            break
        mid = (low + high) / 2
        value = evaluate(mid)
        best = min(best, (abs(value - target), mid, value))
        if abs(value - target) <= tol:
            break
        if (value > target) == decreasing:
            low = mid
        else:
            high = mid
    return best[1], best[2]


def make_variants(name: str, target: float, tol: float) -> dict[str, Any]:
    base = build(name)
    x_search = torch.randn(1, 3, SEARCH_SIZE, SEARCH_SIZE)
    base_flops = count_flops(base, x_search)

    def pruned_ratio(fraction: float, round_to: int = 1) -> float:
        ratio = count_flops(pruned_copy(base, fraction, round_to), x_search) / base_flops
        log(f"  {name}: prune fraction {fraction:.4f} (kept counts rounded to {round_to}) -> FLOPs ratio {ratio:.4f}")
        return ratio

    fraction, _ = bisect(pruned_ratio, 0.0, 0.9, target, tol, decreasing=True)
    fraction_r8, _ = bisect(lambda f: pruned_ratio(f, 8), 0.0, 0.9, target, tol, decreasing=True)

    _, base_width, _ = base.yaml["scales"][base.yaml["scale"]]

    def sibling_ratio(width: float) -> float:
        ratio = count_flops(build(name, width), x_search) / base_flops
        log(f"  {name}: width_multiple {width:.4f} -> FLOPs ratio {ratio:.4f}")
        return ratio

    width, _ = bisect(sibling_ratio, base_width * 0.3, base_width, target, tol, decreasing=False)
    return {
        "models": {"original": base, "pruned": pruned_copy(base, fraction),
                   "pruned_r8": pruned_copy(base, fraction_r8, 8), "sibling": build(name, width)},
        "fraction": fraction,
        "fraction_r8": fraction_r8,
        "width": width,
        "base_width": base_width,
    }


def conv_stats(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Per conv module: FLOPs of one forward on ``x`` (2 × MACs, no bias) and in→out channels."""
    stats: dict[str, dict[str, Any]] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Conv2d, args: Any, output: torch.Tensor) -> None:
            kh, kw = module.kernel_size
            flops = 2 * output.numel() * (module.in_channels // module.groups) * kh * kw
            entry = stats.setdefault(name, {"flops": 0, "channels": f"{module.in_channels}→{module.out_channels}",
                                            "in_hw": tuple(args[0].shape[-2:])})
            entry["flops"] += flops

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return stats


# -- measuring ------------------------------------------------------------------------------------------------------
def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


class OthersCpu:
    """CPU time used by *other* processes during a block, in cores (machine busy time minus this process's)."""

    def __init__(self) -> None:
        self.cores = math.nan

    @staticmethod
    def _busy() -> float:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return math.nan
        user, nice, system, idle, iowait, irq, softirq, steal = values
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> OthersCpu:
        times = os.times()
        self._start = (self._busy(), times.user + times.system, time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        times = os.times()
        busy, own, wall = self._busy(), times.user + times.system, time.monotonic()
        elapsed = wall - self._start[2]
        if elapsed > 0:
            self.cores = max(0.0, ((busy - self._start[0]) - (own - self._start[1])) / elapsed)


def quiet_block(what: str, measure: Any, args: argparse.Namespace) -> tuple[Any, float, int]:
    """Run ``measure()``; while other processes used more than ``--max-others`` cores meanwhile, wait
    ``--cooldown`` s and run it again (at most ``--retries`` times). Returns the least disturbed attempt, the other
    processes' CPU use during it (cores) and the number of attempts."""
    best: tuple[float, Any] | None = None
    attempts = 0
    for attempts in range(1, args.retries + 2):
        with OthersCpu() as others:
            value = measure()
        log(f"  {what}: other processes used {others.cores:.2f} cores meanwhile (attempt {attempts})")
        if best is None or not others.cores >= best[0]:
            best = (others.cores, value)
        if not others.cores > args.max_others:
            break
        if attempts <= args.retries:
            time.sleep(args.cooldown)
    return best[1], best[0], attempts


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    log(f"{name}: building variants (target FLOPs ratio {args.target} ± {args.tol})")
    made = make_variants(name, args.target, args.tol)
    models = {key: model.fuse(verbose=False).eval() for key, model in made["models"].items()}
    x = torch.randn(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    flops = {key: count_flops(model, x) for key, model in models.items()}
    convs = {key: conv_stats(model, x) for key, model in models.items()}
    out: dict[str, Any] = {"fraction": made["fraction"], "fraction_r8": made["fraction_r8"], "width": made["width"],
                           "base_width": made["base_width"],
                           "flops": flops, "convs": convs, "backends": {}}
    for backend in args.backends:
        log(f"{name}: timing {backend} ({args.rounds} rounds x {args.repeats} calls per variant, "
            f"{args.threads} threads; load {loadavg()})")
        before = loadavg()
        started = time.perf_counter()

        def measure(backend: str = backend) -> dict[str, LatencyResult]:
            return compare_latency(models, x, backend, rounds=args.rounds, warmup=args.warmup, repeats=args.repeats,
                                   num_threads=args.threads, per_layer=True)

        results, others, attempts = quiet_block(f"{name} {backend}", measure, args)
        out["backends"][backend] = {"results": results, "load": (before, loadavg()), "others": others,
                                    "attempts": attempts, "seconds": time.perf_counter() - started}
        log("  " + ", ".join(f"{key} {r.median_ms:.1f} ms" for key, r in results.items()))
    if args.channel_table:
        out["channel_table"] = channel_table(models["original"], out, args)
    return out


def channel_table(model: nn.Module, out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``channel_speed_table`` of the original model's slowest conv, every count from half to all its outputs;
    three passes in different shuffled orders, the minimum median per count (other processes only add time)."""
    first = next(iter(out["backends"].values()))["results"]["original"]
    name = first.layers[0].name
    conv = model.get_submodule(name)
    in_hw = out["convs"]["original"][name]["in_hw"]
    counts = list(range(max(1, conv.out_channels // 2), conv.out_channels + 1))
    tables = {}
    for backend in args.backends:
        log(f"  channel table of {name} ({backend}, {len(counts)} counts, 3 passes)")
        with OthersCpu() as others:
            passes = [channel_speed_table(conv, in_hw, counts, backend, warmup=args.warmup, repeats=args.repeats * 2,
                                          num_threads=args.threads, seed=seed) for seed in range(3)]
        rows = [ChannelSpeed(c, ms, ms / c) for c, ms in
                ((rows[0].channels, min(r.ms for r in rows)) for rows in zip(*passes))]
        tables[backend] = {"rows": rows, "round_to": suggest_round_to(rows), "others": others.cores}
    return {"layer": name, "conv": conv, "in_hw": in_hw, "tables": tables}


# -- report ---------------------------------------------------------------------------------------------------------
def _round_medians(result: LatencyResult, rounds: int) -> list[float]:
    per = len(result.times_ms) // rounds
    return [statistics.median(result.times_ms[i * per:(i + 1) * per]) for i in range(rounds)]


def variant_rows(name: str, data: dict[str, Any], backend: str) -> list[str]:
    results: dict[str, LatencyResult] = data["backends"][backend]["results"]
    base_ms, base_flops = results["original"].median_ms, data["flops"]["original"]
    block = data["backends"][backend]
    others = f"{block['others']:.2f} ({block['attempts']})"
    rows = []
    for key in VARIANTS:
        r = results[key]
        flops_ratio = data["flops"][key] / base_flops
        latency_ratio = r.median_ms / base_ms
        speedup = 1 / latency_ratio
        efficiency = speedup * flops_ratio
        how = {"original": "", "pruned": f"uniform L1, {data['fraction']:.1%} of each group",
               "pruned_r8": f"uniform L1, {data['fraction_r8']:.1%}, kept counts rounded to ×8",
               "sibling": f"width_multiple {data['width']:.4f} (n: {data['base_width']})"}[key]
        rows.append(
            f"| {name} | {backend} | {key} | {how} | {data['flops'][key] / 1e9:.2f} | {flops_ratio:.3f} "
            f"| {r.median_ms:.1f} ± {r.iqr_ms / 2:.1f} | {latency_ratio:.3f} | {speedup:.2f}× "
            f"| {'—' if key == 'original' else f'{efficiency:.2f}'} | {r.conv_share:.0%} | {others} |"
        )
    return rows


def slow_layer_section(name: str, data: dict[str, Any], backend: str, args: argparse.Namespace,
                       variant: str = "pruned") -> list[str]:
    results: dict[str, LatencyResult] = data["backends"][backend]["results"]
    original, pruned = results["original"], results[variant]
    flops_ratio = data["flops"][variant] / data["flops"]["original"]
    efficiency = original.median_ms / pruned.median_ms * flops_ratio
    if efficiency >= args.efficiency_floor:
        return []
    before = {layer.name: layer for layer in original.layers or []}
    conv_o, conv_p = data["convs"]["original"], data["convs"][variant]
    conv_ms_o = sum(layer.ms for layer in original.layers or [])
    conv_ms_p = sum(layer.ms for layer in pruned.layers or [])
    share_o, share_p = original.conv_share or 0.0, pruned.conv_share or 0.0
    other_o, other_p = original.median_ms * (1 - share_o), pruned.median_ms * (1 - share_p)
    lines = [
        f"### {name}, {backend}: {variant} efficiency {efficiency:.2f} < {args.efficiency_floor}",
        "",
        f"Instrumented passes: conv layers {conv_ms_o:.1f} → {conv_ms_p:.1f} ms (ratio {conv_ms_p / conv_ms_o:.3f}, "
        f"model FLOPs ratio {flops_ratio:.3f}); time outside convs ≈ {other_o:.1f} → {other_p:.1f} ms "
        f"(ratio {other_p / other_o if other_o else math.nan:.3f}; estimated as median × (1 − conv share)).",
        "",
        f"Slowest {args.top} conv layers of {variant}:",
        "",
        "| layer | channels (original → pruned) | ms original | ms pruned | FLOPs ratio | latency ratio | efficiency |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for layer in (pruned.layers or [])[: args.top]:
        old = before.get(layer.name)
        fo, fp = conv_o.get(layer.name, {}).get("flops"), conv_p.get(layer.name, {}).get("flops")
        channels = (f"{conv_o.get(layer.name, {}).get('channels', '?')} → "
                    f"{conv_p.get(layer.name, {}).get('channels', '?')}")
        if old is None or not fo or not fp:
            lines.append(f"| `{layer.name}` | {channels} | — | {layer.ms:.2f} | — | — | — |")
            continue
        f_ratio, l_ratio = fp / fo, layer.ms / old.ms
        lines.append(f"| `{layer.name}` | {channels} | {old.ms:.2f} | {layer.ms:.2f} | {f_ratio:.3f} | {l_ratio:.3f} "
                     f"| {f_ratio / l_ratio:.2f} |")
    return [*lines, ""]


def channel_section(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, data in results.items():
        table = data.get("channel_table")
        if not table:
            continue
        conv, backends = table["conv"], list(table["tables"])
        suggestions = ", ".join(f"{b}: **{t['round_to']}**" for b, t in table["tables"].items())
        lines += [
            f"## Channel-count granularity: {name} `{table['layer']}`",
            "",
            f"The original model's slowest conv (eager per-layer breakdown), {conv.in_channels}→{conv.out_channels}, "
            f"kernel {conv.kernel_size[0]}×{conv.kernel_size[1]}, stride {conv.stride[0]}, input "
            f"{table['in_hw'][0]}×{table['in_hw'][1]}, timed alone (`channel_speed_table`) at every output count from "
            f"half to all; per count the minimum of three passes' medians (shuffled orders; other processes only add "
            f"time). `suggest_round_to` (largest multiple whose round-up costs ≤ 2 % median): {suggestions}. "
            f"Other processes' CPU use meanwhile: "
            + ", ".join(f"{b} {t['others']:.2f} cores" for b, t in table["tables"].items()) + ".",
            "",
            "| out channels | " + " | ".join(f"{b} ms" for b in backends) + " |",
            "|--:|" + "--:|" * len(backends),
        ]
        rows = {b: {row.channels: row.ms for row in t["rows"]} for b, t in table["tables"].items()}
        for count in sorted(rows[backends[0]]):
            label = f"**{count}**" if count % 8 == 0 else str(count)
            lines.append(f"| {label} | " + " | ".join(f"{rows[b][count]:.3f}" for b in backends) + " |")
        lines.append("")
    return lines


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace, command: str, started: str,
           total_s: float, load_start: str) -> str:
    cores = os.cpu_count()
    lines = [
        "# Latency: speedup efficiency of uniform pruning at −50 % FLOPs",
        "",
        f"- Command: `{command}` (from the repository root, total {total_s:.0f} s)",
        f"- Date: {started}",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, onnx {_version('onnx')}, "
        f"onnxruntime {_version('onnxruntime')}, ultralytics {_version('ultralytics')}, "
        f"lightning-prune {_version('lightning-prune')}",
        f"- CPU: {_cpu()}, {cores} cores; {args.threads} threads (`torch.set_num_threads`, ORT "
        f"`intra_op_num_threads`), float32, batch 1, {args.imgsz}×{args.imgsz} input",
        f"- Load average (1/5/15 min) at start: {load_start}; at end: {loadavg()} — the machine is shared, so absolute"
        " times carry that noise; the variants are interleaved so ratios are fair between them",
        f"- Timing: `compare_latency`, {args.rounds} interleaved rounds × {args.repeats} single calls per variant "
        f"(one warm-up of {args.warmup} calls), pooled median ± IQR/2; BN folded (`fuse()`) in every variant",
        f"- Pruned: uniform L1 over every prunable group, fraction by bisection to FLOPs ratio {args.target} ± "
        f"{args.tol} (pruned_r8: kept counts rounded to multiples of 8, closest ratio reachable); sibling: "
        "ultralytics YAML with `width_multiple` by bisection (channels rounded to multiples of 8"
        " by ultralytics, so its ratio lands where rounding allows)",
        "- efficiency = speedup ÷ FLOPs reduction = (original ms / variant ms) × (variant FLOPs / original FLOPs)",
        f"- others' CPU: CPU cores used by other processes during a backend's timing block (`/proc/stat` busy time "
        f"minus this process's); a block where it exceeded {args.max_others} was re-run after {args.cooldown:g} s, at "
        f"most {args.retries} times, keeping the least disturbed attempt (attempts in parentheses)",
        "",
        "| model | backend | variant | how | GFLOPs | FLOPs ratio | median ms ± IQR/2 | latency ratio | speedup "
        "| efficiency | conv share | others' CPU (attempts) |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, data in results.items():
        for backend in data["backends"]:
            lines += variant_rows(name, data, backend)
    lines += ["", f"## Where the time goes when efficiency < {args.efficiency_floor}", "", PER_LAYER_CAVEAT, ""]
    sections = [line for name, data in results.items() for backend in data["backends"]
                for variant in ("pruned", "pruned_r8")
                for line in slow_layer_section(name, data, backend, args, variant)]
    lines += sections or [f"Every pruned variant reached efficiency ≥ {args.efficiency_floor}.", ""]
    lines += channel_section(results)
    lines += ["## Raw", "", "Per-round medians (ms), in the order measured:", ""]
    for name, data in results.items():
        for backend, block in data["backends"].items():
            per_round = {key: _round_medians(r, args.rounds) for key, r in block["results"].items()}
            for key, medians in per_round.items():
                text = ", ".join(f"{ms:.1f}" for ms in medians)
                if key != "original":
                    ratios = [ms / o for ms, o in zip(medians, per_round["original"])]
                    text += (f" (latency ratio per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
                             f"median {statistics.median(ratios):.3f})")
                lines.append(f"- {name} / {backend} / {key}: {text}")
            lines.append(f"- {name} / {backend}: {block['seconds']:.0f} s, load {block['load'][0]} → "
                         f"{block['load'][1]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["yolov8n", "yolo11n"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.5, help="FLOPs ratio to prune to")
    parser.add_argument("--tol", type=float, default=0.01)
    parser.add_argument("--top", type=int, default=8, help="slowest layers listed per low-efficiency variant")
    parser.add_argument("--efficiency-floor", type=float, default=0.9)
    parser.add_argument("--max-others", type=float, default=0.25,
                        help="re-run a timing block when other processes used more CPU cores than this meanwhile")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--cooldown", type=float, default=30.0, help="seconds to wait before a retry")
    parser.add_argument("--no-channel-table", dest="channel_table", action="store_false",
                        help="skip the channel-count table of each model's slowest conv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    command = command_line()
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = loadavg()
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    results = {name: run_model(name, args) for name in args.models}
    text = render(results, args, command, started, time.perf_counter() - t0, load_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
