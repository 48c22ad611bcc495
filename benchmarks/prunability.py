#!/usr/bin/env python
"""Prunability: can each tool take −50 % FLOPs out of each zoo model, and what is left afterwards?

Run from the repository root::

    python benchmarks/prunability.py                  # whole zoo -> benchmarks/results/prunability.{md,json}
    python benchmarks/prunability.py --models resnet50 yolov8n --tools ours-uniform tp --out /tmp/prun.md

Every tool is asked for −50 % FLOPs (``--target``), or for its closest knob, on every zoo model (random weights,
nothing downloaded): torchvision classifiers at 1x3x224x224 and ultralytics detectors (detect, seg, pose) at
1x3x320x320 (``--det-side``; conv FLOPs scale with H·W, so the ratios hold at 640 px). The tools:

* ``ours-uniform``: ``lightning_prune``: ``DependencyGraph(model, x)``, L1 filter scores (``channel_scores``),
  ``uniform_counts`` (the same fraction of every prunable group, bisected on ``graph.estimate_removal`` until the
  plan removes ``target`` × the model's FLOPs), ``plan_from_counts``, ``graph.prune(plan, verify=True)``: what
  ``IterativePruningCallback(target=0.5, strategy="uniform", criterion="l1")`` does in a single step. No
  model-specific code.
* ``ours-global``: the same with ``global_counts`` (one threshold on the L1 scores normalised per group).
* ``tp``: Torch-Pruning's ``MagnitudePruner`` (L1), output head ignored, its ``iterative_steps`` idiom raising the
  per-layer channel ratio in 1 % steps until FLOPs ≤ target (``_peers.tp_prune_to_flops``), on the model as built.
* ``tp-split``: the same after ``_peers.split_csp_blocks`` rewrote ultralytics' ``C2f``/``C3k2``/``C2PSA`` blocks
  so their ``chunk``/``split`` becomes two convs: model-rewriting code a Torch-Pruning user has to write (its YOLOv8
  example does). Ultralytics models only.
* ``modelpruning``: Lightning's ``ModelPruning`` callback, ``ln_structured`` L1 over filters at a per-layer amount of
  ``1 - sqrt(1 - target)`` (0.293: removing that fraction of both a conv's inputs and outputs halves its FLOPs), made
  permanent. It only zeroes filters behind masks: FLOPs, parameters and latency do not change, and the table says so.

Each (model, tool) pair runs in its own child process (``--worker TOOL MODEL``) under a wall-time (``--timeout``)
and a memory limit (``--mem-gb``: ``RLIMIT_AS`` plus the parent polling the child's RSS), one after the other, so a
hang or runaway allocation is that pair's recorded failure and the table still gets written. Every failure is listed
with its one-line cause, the phase it happened in and the source line that raised.

What a worker records (``torch.set_num_threads(--threads)``, model in eval mode, fixed random input):

* FLOPs (``lightning_prune.count_flops``, i.e. ``torch.utils.flop_counter`` at the input, every tool alike) and
  parameters (``count_params``) before and after;
* the tool's wall time and CPU time, and its peak RSS above the RSS just before it started (``_harness.PeakRSS``);
  ours: graph build + selection + ``prune`` (with its own verification forwards); Torch-Pruning: pruner construction
  + steps + the FLOPs counts between steps (their share is recorded as ``count_s``); ModelPruning: masking + making
  it permanent;
* output shapes: every output tensor of an eval-mode forward (ultralytics: the predictions ``out[0]`` — with seg's
  prototype masks — and the head's boxes/scores/mask-coefficient/keypoint entries; the ``feats`` entries are the
  head's *input* feature maps and not outputs, as in ``lightning_prune``'s own output filter) must keep its shape;
  the largest |Δ| against the unpruned output is recorded as information (pruning changes outputs);
* ours only, the masked-vs-pruned oracle: outputs under ``graph.masked(plan)`` vs outputs after ``graph.prune(plan)``,
  their largest |Δ| (``prune(verify=True)`` also checks this itself and rolls back on a mismatch).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _harness import (
    REPO,
    ZOO,
    PeakRSS,
    Recorder,
    build_model,
    busy_cpu_s,
    command_line,
    cpu_name,
    dist_version,
    git_rev,
    limit_memory,
    mb,
    one_line,
    peak_rss,
    run_child,
)

DEFAULT_OUT = REPO / "benchmarks" / "results" / "prunability.md"
MODELS = ("resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0", "yolov5nu", "yolov8n", "yolo11n",
          "yolov8n-seg", "yolov8n-pose", "yolo11n-seg", "yolo11n-pose")
TOOLS = ("ours-uniform", "ours-global", "tp", "tp-split", "modelpruning")
OURS = ("ours-uniform", "ours-global")
TOOL_NAMES = {
    "ours-uniform": "lightning_prune, uniform",
    "ours-global": "lightning_prune, global",
    "tp": "Torch-Pruning",
    "tp-split": "Torch-Pruning + C2f/C2PSA rewrite",
    "modelpruning": "Lightning ModelPruning",
}
REACHED_TOL = 0.005  # FLOPs after ≤ (1 - target + this) × before counts as having reached the target


def applies(tool: str, name: str) -> bool:
    """``tp-split`` is a rewrite of ultralytics blocks: it has nothing to do on the classifiers."""
    return tool != "tp-split" or ZOO[name] == "ultralytics"


# ---------------------------------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------------------------------
class Meter:
    """Wall time, CPU time, other processes' CPU and peak RSS over one or more timed segments of a tool's work.

    ``peak`` is the peak RSS above the RSS at the start of the first segment, so what an earlier segment left
    allocated (a dependency graph) counts in a later segment's peak."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.others = 0.0
        self.peak = 0
        self._base: int | None = None

    @contextlib.contextmanager
    def segment(self) -> Iterator[None]:
        with PeakRSS() as mem:
            if self._base is None:
                self._base = mem.base
            busy, cpu, start = busy_cpu_s(), time.process_time(), time.perf_counter()
            yield
            wall, used = time.perf_counter() - start, time.process_time() - cpu
            self.wall += wall
            self.cpu += used
            self.others += busy_cpu_s() - busy - used
        self.peak = max(self.peak, mem.base + mem.peak - self._base)

    def fields(self) -> dict[str, float]:
        load = max(0.0, self.others / self.wall) if self.wall > 0 else 0.0
        return {"tool_s": self.wall, "tool_cpu_s": self.cpu, "tool_peak": self.peak, "tool_load": load,
                "mem_method": PeakRSS.method}


def outputs(model, x) -> list:  # noqa: ANN001
    """The output tensors of one eval-mode forward, as ``lightning_prune`` compares them (ultralytics: without the
    ``feats`` entries, which are the head's inputs)."""
    import torch

    from lightning_prune.graph.conventions import default_output_filter
    from lightning_prune.utils.tree import iter_tensors

    model.eval()
    with torch.no_grad():
        out = model(x)
    return [t.detach().clone() for t in iter_tensors(default_output_filter(model)(out)) if t.is_floating_point()]


def max_abs_diff(before: list, after: list) -> float | None:
    """Largest |a - b| over same-shaped output pairs (``None`` when no pair has the same shape)."""
    diffs = [float((a - b).abs().max()) for a, b in zip(before, after) if a.shape == b.shape and a.numel()]
    return max(diffs) if diffs else None


def max_rel_diff(before: list, after: list) -> float | None:
    """Largest |a - b| / max|a| over same-shaped output pairs: each output tensor against its own scale."""
    diffs = [float((a - b).abs().max() / a.abs().max()) for a, b in zip(before, after)
             if a.shape == b.shape and a.numel() and float(a.abs().max()) > 0]
    return max(diffs) if diffs else None


def error_site(err: BaseException) -> dict[str, str]:
    """``where``: ``file:line in function`` of the frame that raised (paths shortened to the package or the
    repository); when that is outside this repository, ``called_from``/``code``: the last line of the repository's
    code that led there."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return {}

    def short(frame: traceback.FrameSummary) -> str:
        path = frame.filename
        if "site-packages/" in path:
            path = path.split("site-packages/", 1)[1]
        elif path.startswith(str(REPO)):
            path = os.path.relpath(path, REPO)
        return f"{path}:{frame.lineno} in {frame.name}"

    ours = [f for f in frames if f.filename.startswith(str(REPO))]
    site = {"where": short(frames[-1])}
    if ours and ours[-1] is not frames[-1]:
        site.update(called_from=short(ours[-1]), code=(ours[-1].line or "").strip())
    return site


def calibrate_batchnorm(model, side: int, batches: int = 2, batch: int = 2) -> None:  # noqa: ANN001
    """Set every BatchNorm's running statistics from train-mode forwards on random images (cumulative average).

    With random weights and fresh statistics (mean 0, var 1) activations shrink layer after layer and an eval-mode
    output hardly depends on the weights (MobileNetV2's logits are ~1e-9; a YOLO's predictions are its anchors): a
    masked-vs-pruned comparison would then pass trivially. Calibrated, every BN normalises its input again."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, side, side))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def run_ours(model, x, rec: Recorder, target: float, flops_before: int, strategy: str) -> Meter:  # noqa: ANN001
    import numpy as np

    from lightning_prune import DependencyGraph
    from lightning_prune.pruning.allocation import global_counts, uniform_counts
    from lightning_prune.pruning.counts import plan_from_counts
    from lightning_prune.pruning.importance import channel_scores

    meter = Meter()
    with meter.segment():
        rec.set(phase="graph build")
        graph = DependencyGraph(model, x)
        rec.set(phase="selection")
        groups = graph.prunable_groups
        scores = {g.name: channel_scores(g, model, "l1") for g in groups}
        ranking = {name: np.argsort(values, kind="stable") for name, values in scores.items()}
        budget = target * flops_before  # as IterativePruningCallback: FLOPs to remove, estimated on the trace
        if strategy == "uniform":
            counts = uniform_counts(graph, groups, ranking, budget, "flops")
        else:
            counts = global_counts(graph, groups, scores, ranking, budget, "flops")
        plan = plan_from_counts(ranking, counts)
    est_flops, est_params = graph.estimate_removal(plan)
    sizes = {g.name: g.size for g in groups}
    rec.set(groups=len(graph.groups), prunable=len(groups), planned=len(plan),
            planned_exact=sum(graph[name].exact for name in plan), build_s=graph.build_seconds,
            channels_removed=sum(len(v) for v in plan.values()) / max(1, sum(sizes.values())),
            group_fraction_max=max((len(v) / sizes[k] for k, v in plan.items()), default=0.0),
            estimated_flops_removed=est_flops, estimated_params_removed=est_params, traced_flops=graph.traced_flops)
    rec.set(phase="masked forward (oracle reference, not timed)")
    with graph.masked(plan):
        masked = outputs(model, x)
    rec.set(phase="prune(plan, verify=True)")
    with meter.segment():
        graph.prune(plan, verify=True)
    rec.set(phase="forward after pruning (oracle)")
    pruned = outputs(model, x)
    rec.set(oracle_max_abs=max_abs_diff(masked, pruned), oracle_max_rel=max_rel_diff(masked, pruned),
            oracle_shapes_ok=[list(t.shape) for t in masked] == [list(t.shape) for t in pruned])
    return meter


def run_tp(model, x, rec: Recorder, target: float, split: bool, base: list) -> Meter:  # noqa: ANN001
    import _peers

    from lightning_prune import count_flops

    meter = Meter()
    if split:
        rec.set(phase="split_csp_blocks rewrite")
        with meter.segment():
            rewritten = _peers.split_csp_blocks(model)
        rec.set(rewritten_blocks=rewritten, rewrite_s=meter.wall, phase="forward after rewrite (not timed)")
        rec.set(rewrite_max_abs=max_abs_diff(base, outputs(model, x)))
    counted = [0.0, 0]
    make_pruner = _peers.tp_pruner

    # the phase a failure or a kill happened in: FLOPs are counted once before the pruner is built and once after
    # every step (tp_prune_to_flops looks tp_pruner up in its module, so wrapping it here sees the construction end)
    def flops(m) -> int:  # noqa: ANN001
        start = time.perf_counter()
        value = count_flops(m, x)
        counted[0] += time.perf_counter() - start
        counted[1] += 1
        rec.data.update(count_s=counted[0], steps_done=counted[1] - 1)
        rec.set(phase="Torch-Pruning: MagnitudePruner construction (dependency graph + groups)" if counted[1] == 1
                else f"Torch-Pruning: pruner.step() {counted[1]}")
        return value

    def pruner(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        built = make_pruner(*args, **kwargs)
        rec.set(phase="Torch-Pruning: pruner.step() 1")
        return built

    rec.set(phase="Torch-Pruning: FLOPs before")
    _peers.tp_pruner = pruner
    try:
        with meter.segment():
            info = _peers.tp_prune_to_flops(model, x, target=target, flops=flops)
    finally:
        _peers.tp_pruner = make_pruner
    rec.set(tp_ratio=info["ratio"], tp_steps=info["steps"])
    return meter


def run_modelpruning(model, rec: Recorder, target: float) -> Meter:  # noqa: ANN001
    from _peers import modelpruning_apply, zeroed_filter_fraction

    amount = 1.0 - math.sqrt(1.0 - target)
    meter = Meter()
    rec.set(phase="ModelPruning ln_structured + make_pruning_permanent", mp_amount=amount)
    with meter.segment():
        modelpruning_apply(model, amount)
    rec.set(zeroed_filters=zeroed_filter_fraction(model))
    return meter


def worker(tool: str, name: str, result_file: str, args: argparse.Namespace) -> int:
    limit_memory(args.mem_gb)
    rec = Recorder(result_file, tool=tool, model=name, phase="import", ok=False)
    try:
        import torch

        from lightning_prune import count_flops, count_params

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        rec.set(phase="build model")
        model = build_model(name).eval()
        side = args.det_side if ZOO[name] == "ultralytics" else args.cls_side
        rec.set(phase="BatchNorm calibration")
        calibrate_batchnorm(model, side)
        x = torch.randn(1, 3, side, side)
        rec.set(phase="unpruned FLOPs, params and outputs")
        flops0, params0 = count_flops(model, x), count_params(model)
        base = outputs(model, x)
        rec.set(input=f"1x3x{side}x{side}", flops_before=flops0, params_before=params0,
                shapes_before=[list(t.shape) for t in base])
        rec.set(phase=f"import {TOOL_NAMES[tool]}")  # imported before timing: import time is not pruning time
        if tool in OURS:
            meter = run_ours(model, x, rec, args.target, flops0, tool.split("-")[1])
        elif tool in ("tp", "tp-split"):
            import torch_pruning  # noqa: F401

            meter = run_tp(model, x, rec, args.target, tool == "tp-split", base)
        else:
            import lightning.pytorch  # noqa: F401

            meter = run_modelpruning(model, rec, args.target)
        rec.set(**meter.fields())
        rec.set(phase="forward of the result")
        after = outputs(model, x)
        rec.set(phase="FLOPs and params of the result")
        flops1, params1 = count_flops(model, x), count_params(model)
        shapes = [list(t.shape) for t in after]
        shapes_ok = shapes == rec.data["shapes_before"]
        rec.set(flops_after=flops1, params_after=params1, shapes_after=shapes, shapes_ok=shapes_ok,
                max_abs_vs_unpruned=max_abs_diff(base, after),
                unpruned_scale=max((float(t.abs().max()) for t in base if t.numel()), default=0.0))
        if not shapes_ok:
            raise ValueError(f"output shapes changed from {rec.data['shapes_before']} to {shapes}")
        rec.set(ok=True, phase="done")
        return 0
    except BaseException as err:  # noqa: BLE001 - every failure is recorded with its cause
        root = err  # an error raised while handling another one (memory exhausted, say): the first one is the cause
        while root.__context__ is not None and not root.__suppress_context__:
            root = root.__context__
        error, site = one_line(root), error_site(root)
        if root is not err:
            error += f"; then, while handling it: {one_line(err)}"
        if isinstance(root, MemoryError):
            error += (f" (the {args.mem_gb:g} GB address-space limit, RLIMIT_AS, was hit; peak RSS "
                      f"{peak_rss() / 2**30:.1f} GB)")
        traceback.clear_frames(err.__traceback__)  # let what the failed tool allocated go before writing the result
    gc.collect()
    rec.set(error=error, **site, ok=False)
    return 1


# ---------------------------------------------------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------------------------------------------------
def run_pair(tool: str, name: str, args: argparse.Namespace, workdir: Path) -> dict:
    result_file = workdir / f"{tool}-{name}.json"
    log = workdir / f"{tool}-{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, name, "--result-file", str(result_file),
           "--target", str(args.target), "--mem-gb", str(args.mem_gb), "--threads", str(args.threads),
           "--cls-side", str(args.cls_side), "--det-side", str(args.det_side)]
    data, _, _ = run_child(cmd, result_file, log, args.timeout, args.mem_gb, args.threads,
                           {"tool": tool, "model": name})
    return data


def contention_limit(threads: int) -> float:
    """Other processes' load (cores) above which a child's timing competes with them for CPU: more than the cores
    it leaves free, with a quarter core of slack."""
    return max(0.5, (os.cpu_count() or 1) - threads + 0.25)


def _pct(num: float | None, den: float | None, digits: int = 1) -> str:
    if num is None or not den:
        return "—"
    return f"{100 * num / den:.{digits}f} %"


def _sci(value: float | None) -> str:
    if value is None:
        return "—"
    return "0" if value == 0 else f"{value:.1e}"


def flops_ratio(r: dict) -> float | None:
    if r.get("flops_after") is None or not r.get("flops_before"):
        return None
    return r["flops_after"] / r["flops_before"]


def reached(r: dict, target: float) -> bool:
    ratio = flops_ratio(r)
    return bool(r.get("ok")) and ratio is not None and ratio <= 1.0 - target + REACHED_TOL


def cell(r: dict | None, limit: float, target: float) -> str:
    if r is None:
        return "n/a"
    if not r.get("ok"):
        err = r.get("error", "?")
        killed = err.startswith(("timeout", "RSS", "worker died"))
        kind = err.split(" (", 1)[0] if killed else re.split(r"[:(;]", err)[0]
        return f"✗ {kind.strip()}"
    mark = "✓" if r.get("shapes_ok") else "✗ shapes"
    flag = " ⚠" if r.get("tool_load", 0) > limit or r.get("other_load", 0) > limit else ""
    note = " (no block to rewrite: as tp)" if r.get("rewritten_blocks") == 0 else ""
    flops = _pct(r.get("flops_after"), r.get("flops_before"))
    if r.get("tool") != "modelpruning" and not reached(r, target):
        flops = f"**{flops}**"
    return (f"{mark} {flops} · "
            f"{_pct(r.get('params_after'), r.get('params_before'))} · {r['tool_s']:.2f} s{flag} · "
            f"{mb(r['tool_peak'])} MB{note}")


def render(results: dict[str, dict[str, dict]], meta: dict) -> str:
    """The Markdown results file, from the results and the run's settings in ``meta`` alone (so a saved JSON file can
    be rendered again: ``--render``)."""
    args = argparse.Namespace(
        threads=meta["threads"], target=meta["target"], timeout=meta["timeout_s"], mem_gb=meta["mem_gb"],
        cls_side=meta["inputs"]["classifiers"], det_side=meta["inputs"]["ultralytics"],
        tools=meta.get("tools") or [t for t in TOOLS if any(t in pair for pair in results.values())])
    limit = contention_limit(args.threads)
    tools = [t for t in TOOLS if t in args.tools]
    loads = [r.get("other_load", 0.0) for pair in results.values() for r in pair.values()]
    load_text = f"median {statistics.median(loads):.2f}, max {max(loads):.2f} cores" if loads else "—"
    busy = loads and statistics.median(loads) > 0.5
    amount = 1.0 - math.sqrt(1.0 - args.target)
    lines = [
        f"# Prunability: −{100 * args.target:g} % FLOPs on a model zoo — lightning_prune vs Torch-Pruning vs Lightning "
        "ModelPruning",
        "",
        f"- Command: `{meta['command']}` (from the repository root, total {meta['total_s']:.0f} s)",
        f"- Date: {meta['date']}",
        f"- Versions: {meta['versions']} (git {meta['git']})",
        f"- Machine: {meta['cpu']}, {meta['cores']} cores; CPU only, float32; every child runs with "
        f"`torch.set_num_threads({args.threads})`. Other processes used {load_text} while the children ran"
        + (" (another workload was running on the machine at the same time)" if busy else "")
        + f"; a child whose timed work ran while they used > {limit:g} cores, i.e. more than the cores it left "
        "free, is flagged ⚠: its time is inflated.",
        f"- Limits per (model, tool) child process: {args.timeout:g} s wall time, {args.mem_gb:g} GB "
        "(RLIMIT_AS + parent RSS polling); each pair in its own process, one after the other.",
        f"- Inputs: 1x3x{args.cls_side}x{args.cls_side} for the torchvision classifiers (`weights=None`), "
        f"1x3x{args.det_side}x{args.det_side} for the ultralytics models (from their YAML, random weights); eval "
        "mode; FLOPs are `lightning_prune.count_flops` (`torch.utils.flop_counter`) at that input for every tool.",
        "- BatchNorm statistics: before anything is measured, every model's BN running statistics are set from two "
        "train-mode forwards of 2 random images each (cumulative average). With random weights and fresh "
        "statistics the signal dies out layer by layer (MobileNetV2's logits are ~1e-9, a YOLO's predictions are "
        "its anchors), so outputs would hardly depend on the weights and the oracle below would pass trivially. "
        "Every tool gets the same model (seeded), input and statistics.",
        f"- Target: FLOPs ≤ {100 * (1 - args.target):g} % of the unpruned model's; *reached* means ≤ "
        f"{100 * (1 - args.target + REACHED_TOL):.1f} %.",
        "",
        "Tools and how each was driven:",
        "",
        "- **ours-uniform** (lightning_prune): `DependencyGraph(model, x)` → L1 filter scores (`channel_scores(group, "
        "model, \"l1\")`) → `uniform_counts` (the same fraction of every prunable group, bisected on "
        f"`graph.estimate_removal` to remove {100 * args.target:g} % of the FLOPs) → `plan_from_counts` → "
        "`graph.prune(plan, verify=True)`. This is one step of `IterativePruningCallback(target=0.5, "
        "strategy=\"uniform\")`. No model-specific code.",
        "- **ours-global**: the same with `global_counts` (one threshold on the L1 scores normalised per group).",
        "- **tp** (Torch-Pruning): `tp.pruner.MagnitudePruner` with `MagnitudeImportance(p=1)`, the output head in "
        "`ignored_layers`, `iterative_steps=90` up to a ratio of 0.9 (1 % of channels per step), stopping at the first "
        "step whose FLOPs are under the target (`benchmarks/_peers.py: tp_prune_to_flops`), on the model as built.",
        "- **tp-split** (ultralytics only): the same after `split_csp_blocks` rewrote every `C2f`/`C3k2`/`C2PSA` so "
        "its `chunk`/`split` becomes two convs — **a model rewrite the Torch-Pruning user has to write** (its YOLOv8 "
        "example does the same); its time is in the tool's time.",
        f"- **modelpruning** (Lightning `ModelPruning`): `ln_structured`, L1 over filters (`dim=0`), amount "
        f"{amount:.3f} per layer (= 1 − √{1 - args.target:g}: that fraction off a conv's inputs and outputs would "
        "halve its FLOPs), output layers left alone, applied once and made permanent. **Masks only: zeroed filters "
        "stay in the model, so FLOPs, parameters and latency do not change.**",
        "",
        "Each cell: ✓ (ran, and every output tensor kept its shape) or ✗ (the failure's type; causes below), then "
        "FLOPs after (**bold**: the target was not reached) · parameters after (% of the unpruned model) · wall "
        "time of the tool's work · its peak memory. "
        "Time: ours = graph build + selection + `prune` (including its verification forwards); Torch-Pruning = pruner "
        "construction + steps + the FLOPs counts between steps; ModelPruning = masking + making it permanent. Peak "
        "memory: peak RSS above the RSS just before the tool started (VmHWM reset, MB = 2^20 bytes). *Oracle*: for "
        "ours, the largest |Δ| between the outputs under `graph.masked(plan)` and after `graph.prune(plan)` "
        "(u = uniform, g = global; rel = |Δ| / max |output| per output tensor, the largest); `prune(verify=True)` "
        "itself rejects and rolls back a plan whose pruned outputs differ (rtol 1e-3, atol 1e-4 × the output's "
        "scale).",
        "",
        "| model | input | GFLOPs | params M | " + " | ".join(tools) + " | oracle max \\|Δ\\| (ours) |",
        "|---|---|--:|--:|" + "---|" * len(tools) + "--:|",
    ]
    for name, pair in results.items():
        any_r = next(iter(pair.values()), {})
        gflops = f"{any_r['flops_before'] / 1e9:.2f}" if any_r.get("flops_before") else "—"
        params = f"{any_r['params_before'] / 1e6:.2f}" if any_r.get("params_before") else "—"
        cells = [cell(pair.get(t), limit, args.target) if applies(t, name) else "n/a" for t in tools]
        oracle = " · ".join(f"{t.split('-')[1][0]} {_sci(pair[t].get('oracle_max_abs'))} "
                            f"(rel {_sci(pair[t].get('oracle_max_rel'))})"
                            for t in OURS if t in pair and pair[t].get("oracle_max_abs") is not None) or "—"
        lines.append(f"| {name} | {any_r.get('input', '—')} | {gflops} | {params} | " + " | ".join(cells)
                     + f" | {oracle} |")
    lines += ["", *failures(results), "", *verdict(results, args, tools), "", *raw(results, tools, limit)]
    return "\n".join(lines) + "\n"


def failures(results: dict[str, dict[str, dict]]) -> list[str]:
    lines = ["## Failures", ""]
    found = [(name, tool, r) for name, pair in results.items() for tool, r in pair.items() if not r.get("ok")]
    if not found:
        return [*lines, "None: every tool ran on every model it applies to."]
    for name, tool, r in found:
        where = f" — raised at `{r['where']}`" if r.get("where") else ""
        if r.get("called_from"):
            where += f", called from `{r['called_from']}` (`{r['code']}`)"
        lines.append(f"- **{name} / {tool}**: {r.get('error', '?')}{where} (the child ran {r.get('wall_s', 0):.0f} s)")
    return lines


def verdict(results: dict[str, dict[str, dict]], args: argparse.Namespace, tools: list[str]) -> list[str]:
    lines = ["## Verdict", ""]
    for tool in tools:
        rows = {name: pair[tool] for name, pair in results.items() if tool in pair}
        if not rows:
            continue
        ok = [n for n, r in rows.items() if r.get("ok")]
        hit = [n for n, r in rows.items() if reached(r, args.target)]
        failed = [n for n, r in rows.items() if not r.get("ok")]
        ratios = [flops_ratio(rows[n]) for n in ok if flops_ratio(rows[n]) is not None]
        label = f"{tool}** (with the user-written block rewrite)" if tool == "tp-split" else f"{tool}**"
        text = (f"- **{label}: ran on {len(ok)} of {len(rows)} models, reached ≤ "
                f"{100 * (1 - args.target + REACHED_TOL):.1f} % FLOPs on {len(hit)}")
        if ratios:
            text += f" (FLOPs after: {_span(100 * min(ratios), 100 * max(ratios), '.1f')} %)"
        if failed:
            text += f"; failed on {', '.join(failed)}"
        missed = [n for n in ok if n not in hit]
        if missed and tool != "modelpruning":
            text += f"; ran but stayed above the target on {', '.join(missed)}"
            if tool in OURS:
                text += " (" + "; ".join(_why_missed(n, rows[n]) for n in missed) + ")"
        if tool == "modelpruning" and ok:
            zeroed = [rows[n]["zeroed_filters"] for n in ok if rows[n].get("zeroed_filters") is not None]
            if zeroed:
                text += (f"; masks only: {_span(100 * min(zeroed), 100 * max(zeroed), '.0f')} % of filters zeroed, "
                         "FLOPs and parameters unchanged")
        lines.append(text + ".")
    lines += ["", *head_to_head(results, args)]
    return lines


def _span(low: float, high: float, spec: str) -> str:
    a, b = format(low, spec), format(high, spec)
    return a if a == b else f"{a}–{b}"


def _why_missed(name: str, r: dict) -> str:
    """Where our FLOPs estimate (on the trace) and ``count_flops`` disagree, say by how much."""
    text = f"{name}: the plan was estimated to remove {_pct(r.get('estimated_flops_removed'), r['flops_before'])}"
    text += f", {_pct(r['flops_before'] - r['flops_after'], r['flops_before'])} went"
    if r.get("traced_flops"):
        text += f"; the trace counts {r['traced_flops'] / r['flops_before']:.3f}× the FLOPs `count_flops` counts"
    return text


def head_to_head(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> list[str]:
    """Who reached the target where the other did not; then ours-uniform vs the Torch-Pruning row per model (tp,
    else tp-split) where both reached it."""
    lines = []
    peer_only, ours_only = [], []
    for name, pair in results.items():
        peer = next((t for t in ("tp", "tp-split") if reached(pair.get(t, {}), args.target)), None)
        ours_hit = reached(pair.get("ours-uniform", {}), args.target)
        if peer and "ours-uniform" in pair and not ours_hit:
            p, o = pair[peer], pair["ours-uniform"]
            peer_only.append(f"{name} ({peer} {_pct(p['flops_after'], p['flops_before'])} FLOPs vs ours "
                             f"{_pct(o.get('flops_after'), o.get('flops_before'))})")
        if ours_hit and not peer and any(t in pair for t in ("tp", "tp-split")):
            ours_only.append(name)
    if peer_only:
        lines.append("- **Torch-Pruning reached the target where ours-uniform did not**: " + ", ".join(peer_only) + ".")
    if ours_only:
        lines.append("- ours-uniform reached the target where no Torch-Pruning variant did: " + ", ".join(ours_only)
                     + ".")
    if lines:
        lines.append("")
    pairs = []
    for name, pair in results.items():
        ours = pair.get("ours-uniform")
        peer_tool = next((t for t in ("tp", "tp-split") if reached(pair.get(t, {}), args.target)), None)
        if ours and reached(ours, args.target) and peer_tool:
            pairs.append((name, ours, peer_tool, pair[peer_tool]))
    if not pairs:
        return [*lines, "No model where both ours-uniform and Torch-Pruning reached the target: no time/memory "
                "comparison."]
    lines += [f"Where ours-uniform and Torch-Pruning both reached the target ({len(pairs)} models; Torch-Pruning "
             "as built, or with the rewrite where it needs one):", ""]
    faster = [(n, o, p, t) for n, o, t, p in pairs if p["tool_s"] < o["tool_s"]]
    lighter = [(n, o, p, t) for n, o, t, p in pairs if p["tool_peak"] < o["tool_peak"]]
    fewer_params = [(n, o, p, t) for n, o, t, p in pairs if p["params_after"] < o["params_after"]]
    time_ratios = sorted(o["tool_s"] / p["tool_s"] for _, o, _, p in pairs if p["tool_s"] > 0)
    bare_ratios = sorted(o["tool_s"] / (p["tool_s"] - p.get("count_s", 0.0)) for _, o, _, p in pairs
                         if p["tool_s"] - p.get("count_s", 0.0) > 0)
    mem_ratios = sorted(o["tool_peak"] / p["tool_peak"] for _, o, _, p in pairs if p["tool_peak"] > 0)
    if time_ratios:
        lines.append(f"- Time ours/TP: median {statistics.median(time_ratios):.2f}×, range {time_ratios[0]:.2f}–"
                     f"{time_ratios[-1]:.2f}×. TP's time includes its between-step FLOPs counts (our counter, "
                     f"{_share(pairs)} of its time); ours includes `prune`'s verification forwards. Without TP's "
                     f"FLOPs counts: median {statistics.median(bare_ratios):.2f}×, range {bare_ratios[0]:.2f}–"
                     f"{bare_ratios[-1]:.2f}×.")
    if faster:
        lines.append("- **Torch-Pruning was faster** on " + ", ".join(
            f"{n} ({p['tool_s']:.2f} s vs ours {o['tool_s']:.2f} s, {t})" for n, o, p, t in faster) + ".")
    else:
        lines.append("- Ours was faster on every one of them.")
    if mem_ratios:
        lines.append(f"- Peak memory ours/TP: median {statistics.median(mem_ratios):.2f}×, range {mem_ratios[0]:.2f}–"
                     f"{mem_ratios[-1]:.2f}×.")
    if lighter:
        lines.append("- **Torch-Pruning used less peak memory** on " + ", ".join(
            f"{n} ({mb(p['tool_peak'])} MB vs ours {mb(o['tool_peak'])} MB)" for n, o, p, _ in lighter) + ".")
    else:
        lines.append("- Ours used less peak memory on every one of them.")
    if fewer_params:
        lines.append("- Torch-Pruning left fewer parameters at the same FLOPs target on " + ", ".join(
            f"{n} ({_pct(p['params_after'], p['params_before'])} vs ours "
            f"{_pct(o['params_after'], o['params_before'])})" for n, o, p, _ in fewer_params) + ".")
    return lines


def _share(pairs: list) -> str:
    shares = sorted(p.get("count_s", 0.0) / p["tool_s"] for _, _, _, p in pairs if p["tool_s"] > 0)
    if not shares:
        return "—"
    return f"median {100 * statistics.median(shares):.0f} %, range {100 * shares[0]:.0f}–{100 * shares[-1]:.0f} %"


def raw(results: dict[str, dict[str, dict]], tools: list[str], limit: float) -> list[str]:
    lines = ["## Raw measurements", "",
             "Max |Δ| vs unpruned is information only (pruning is meant to change outputs; weights are random). "
             "Knob: ours = channels removed / prunable channels (largest fraction of one group); TP = channel ratio "
             "reached (steps, the time spent counting FLOPs between them), with the C2f/C2PSA blocks rewritten; "
             "ModelPruning = amount (filters zeroed). Groups (ours): all, prunable, in the plan, and of those the "
             "exact ones (masking predicts pruning exactly: `prune(verify=True)` checks those). Other load: cores "
             "other processes used during the tool's timed work.",
             "",
             "| model | tool | ok | reached | FLOPs after | params after | shapes | max \\|Δ\\| vs unpruned (scale) "
             "| knob | groups (prunable, planned, planned exact) | wall s | CPU s | peak MB | other load | child s |",
             "|---|---|---|---|--:|--:|---|--:|---|---|--:|--:|--:|--:|--:|"]
    for name, pair in results.items():
        for tool in tools:
            r = pair.get(tool)
            if r is None:
                continue
            if tool in OURS:
                knob = (f"{100 * r['channels_removed']:.1f} % (max {100 * r['group_fraction_max']:.0f} %)"
                        if r.get("channels_removed") is not None else "—")
                groups = (f"{r['groups']} ({r['prunable']}, {r['planned']}, {r['planned_exact']})"
                          if r.get("groups") is not None else "—")
            elif tool.startswith("tp"):
                parts = [f"{r['tp_ratio']:.2f} ({r['tp_steps']} steps, {r.get('count_s', 0):.1f} s of FLOPs counts)"
                         ] if r.get("tp_ratio") is not None else []
                if r.get("rewritten_blocks") is not None:
                    parts.append(f"{r['rewritten_blocks']} blocks rewritten")
                knob = ", ".join(parts) or "—"
                groups = "—"
            else:
                knob = (f"{r['mp_amount']:.3f} ({100 * r['zeroed_filters']:.1f} % zeroed)"
                        if r.get("zeroed_filters") is not None else "—")
                groups = "—"
            delta = r.get("max_abs_vs_unpruned")
            delta_text = f"{_sci(delta)} ({_sci(r.get('unpruned_scale'))})" if delta is not None else "—"
            shapes = "—" if r.get("shapes_ok") is None else ("same" if r["shapes_ok"] else "**changed**")
            ok = "✓" if r.get("ok") else "✗"
            hit = "yes" if r.get("ok") and r.get("reached") else ("no" if r.get("ok") else "—")
            wall = f"{r['tool_s']:.3f}" if r.get("tool_s") is not None else "—"
            cpu = f"{r['tool_cpu_s']:.3f}" if r.get("tool_cpu_s") is not None else "—"
            load = r.get("tool_load", r.get("other_load"))
            load_text = "—" if load is None else f"{load:.2f}" + (" ⚠" if load > limit else "")
            lines.append(f"| {name} | {tool} | {ok} | {hit} | {_pct(r.get('flops_after'), r.get('flops_before'))} "
                         f"| {_pct(r.get('params_after'), r.get('params_before'))} | {shapes} | {delta_text} | {knob} "
                         f"| {groups} | {wall} | {cpu} | {mb(r.get('tool_peak'))} | {load_text} "
                         f"| {r.get('wall_s', 0):.1f} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(ZOO), default=list(MODELS), metavar="MODEL",
                        help=f"models to run (default: {', '.join(MODELS)}; also: "
                             f"{', '.join(n for n in ZOO if n not in MODELS)})")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="tools to run (default: all)")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of FLOPs to remove (0.5)")
    parser.add_argument("--timeout", type=float, default=300.0, help="wall-time limit per child, seconds (300)")
    parser.add_argument("--mem-gb", type=float, default=8.0, help="address-space / RSS limit per child, GB (8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (1)")
    parser.add_argument("--cls-side", type=int, default=224, help="input side for the classifiers (224)")
    parser.add_argument("--det-side", type=int, default=320, help="input side for the ultralytics models (320)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="Markdown results file; the raw results go next to it as .json")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only render the Markdown file (--out) again from a results JSON file; runs nothing")
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.target < 1:
        parser.error("--target must be between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        tool, name = args.worker
        if tool not in TOOLS or name not in ZOO or not args.result_file:
            print(f"bad worker arguments: {args.worker} {args.result_file}", file=sys.stderr)
            return 2
        return worker(tool, name, args.result_file, args)

    if args.render:
        saved = json.loads(args.render.read_text())
        args.out.write_text(render(saved["results"], saved["meta"]))
        print(f"wrote {args.out} from {args.render}", file=sys.stderr)
        return 0

    os.environ["YOLO_OFFLINE"] = "1"
    t0 = time.monotonic()
    meta: dict[str, Any] = {
        "command": command_line(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": f"python {platform.python_version()}, " + ", ".join(
            f"{d} {dist_version(d)}" for d in ("torch", "torchvision", "ultralytics", "torch-pruning", "lightning",
                                               "lightning-prune")),
        "git": git_rev(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "timeout_s": args.timeout,
        "mem_gb": args.mem_gb,
        "target": args.target,
        "inputs": {"classifiers": args.cls_side, "ultralytics": args.det_side},
        "tools": list(args.tools),
    }
    json_out = args.out.with_suffix(".json")
    results: dict[str, dict[str, dict]] = {}
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    def write() -> None:
        meta["total_s"] = time.monotonic() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(results, meta))
        json_out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="prunability_") as tmp:
        for name in args.models:
            results[name] = {}
            for tool in args.tools:
                if not applies(tool, name):
                    continue
                say(f"[{time.monotonic() - t0:6.0f} s] {name:<14} {tool:<13} ...")
                r = run_pair(tool, name, args, Path(tmp))
                r["reached"] = reached(r, args.target)
                results[name][tool] = r
                if r.get("ok"):
                    say(f"{'':9} -> FLOPs {_pct(r['flops_after'], r['flops_before'])}, params "
                        f"{_pct(r['params_after'], r['params_before'])}, {r['tool_s']:.2f} s, "
                        f"{mb(r['tool_peak'])} MB, oracle {_sci(r.get('oracle_max_abs'))}")
                else:
                    say(f"{'':9} -> FAILED: {r['error']}")
            write()  # after every model, so an interrupted run leaves what it had
    write()
    say(f"wrote {args.out} and {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
