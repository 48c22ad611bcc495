"""The report: the Markdown tables with the setup, reuse and merge lines, the answer and the verdict, and the three
plots (mAP vs FLOPs, mAP vs latency, speedup vs FLOPs reduction)."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

from _harness import cpu_name as _cpu
from _harness import dist_version as _version

from .compare import _earlier_words, _is_earlier, _latency, _reference, _start, answer, verdict
from .config import ARM_LABELS, ARMS, LATENCY_MATCH_ARM, LATENCY_SIZE, Config, log
from .reuse import LATENCY_REBUILT, PRETRAIN_TOLERANCE


def render(data: dict[str, Any], prefix: str) -> str:
    cfg = Config(**data["config"])
    arms = data["arms"]
    seeds = data.get("seeds", [cfg.seed])
    runs = data.get("runs", {})
    pretrain_maps = ", ".join(f"{runs[str(s)]['pretrain'].get('map50_95', math.nan):.3f} (seed {s})" for s in seeds
                              if str(s) in runs) or "—"
    base = arms.get("unpruned", {})
    base_flops = base.get("flops_640") or next((a["flops_640"] for a in arms.values() if a.get("ok")), None)
    base_params = base.get("params")
    lines = [
        f"# Accuracy vs latency: {cfg.model.removesuffix('.yaml')} pruned to −{cfg.target:.0%} FLOPs by each tool, "
        "against smaller models trained from scratch",
        "",
        f"- Command: `{data['command']}` (from the repository root; total {data['total_s'] / 60:.0f} min)",
        f"- Date: {data['date']}",
        f"- Versions: python {platform.python_version()}, torch {_version('torch')}, "
        f"lightning {_version('lightning')}, ultralytics {_version('ultralytics')}, torchmetrics "
        f"{_version('torchmetrics')}, onnxruntime {_version('onnxruntime')}, torch-pruning "
        f"{_version('torch-pruning')}, lightning-prune {_version('lightning-prune')} (git {data['git']})",
        f"- Machine: {_cpu()}, {os.cpu_count()} cores, CPU only, float32, `torch.set_num_threads({cfg.threads})`; "
        f"load average before/after the latency block: {_loads(data)}",
        f"- Data: the synthetic shapes set (`lightning_prune.data.synthetic`, seed {cfg.data_seed}), {cfg.num_train} "
        f"train / {cfg.num_val} val / {cfg.num_test} held-out test images at {cfg.imgsz} px, 3 classes, batch "
        f"{cfg.batch_size}, ultralytics' augmentation pipeline (`YOLODataModule`)",
        *_reused_line(runs),
        *_merge_lines(data),
        *_revisions_line(runs, data["git"]),
        f"- Seeds: {', '.join(map(str, seeds))} (model init, data order, augmentation); each seed has its own "
        "pretrained model and runs every arm from it; mAP below is the mean over the seeds, the per-seed values in "
        "parentheses; FLOPs, params and latency are the first seed's models",
        f"- Pretraining (shared by every pruning arm of a seed): {cfg.model} from its YAML, random init, "
        f"{cfg.pretrain_epochs} "
        f"epochs, AdamW lr {cfg.pretrain_lr} with 1 warm-up epoch and cosine decay → mAP50-95 {pretrain_maps}",
        f"- Pruning + fine-tuning (every arm alike): {cfg.finetune_epochs} epochs, AdamW lr {cfg.finetune_lr}, cosine "
        f"decay; pruning steps at the start of epochs {cfg.schedule} towards −{cfg.target:.0%} FLOPs at the "
        f"{cfg.imgsz} px training input; ours-sensitivity probes with {cfg.sensitivity_batches} validation "
        "batch(es) per probe at rates 25/50/75 %, read from the **val** split",
        f"- Smaller models from scratch (`*-scratch`): the same data, {cfg.pretrain_epochs + cfg.finetune_epochs} "
        "epochs (the pruning arms' pretraining + fine-tuning), AdamW with the pretraining's schedule; the narrower "
        "sibling is the base YAML at the `width_multiple` whose FLOPs are closest to the pruned models', the "
        f"sibling at {LATENCY_MATCH_ARM}'s latency the one whose latency, timed interleaved with the first seed's "
        f"{LATENCY_MATCH_ARM} model (eager and ONNX Runtime, geometric mean), is closest to it (every seed trains "
        "that width)",
        f"- mAP: the final model on the {cfg.num_test} held-out **test** images, never seen by training or "
        "selection (torchmetrics `MeanAveragePrecision`, COCO-style, as `YOLOModule` logs `test/mAP50-95`); "
        "compare differences against the per-seed spread",
        f"- FLOPs and params: `torch.utils.flop_counter` (FLOPs = 2 × multiply-adds) at 1×3×{LATENCY_SIZE}×"
        f"{LATENCY_SIZE}; latency: median of {cfg.latency_rounds} interleaved rounds × {cfg.latency_repeats} calls, "
        f"batch 1 at {LATENCY_SIZE} px, BatchNorm fused; ONNX Runtime on the CPU execution provider",
        "",
        "| arm | mAP50-95 | mAP50 | GFLOPs @640 (% of unpruned) | params M (%) | eager ms (speedup) "
        "| ONNX Runtime ms (speedup) | train wall min | notes |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for arm, r in arms.items():
        label = ARM_LABELS.get(arm, arm)
        if not r.get("ok"):
            lines.append(f"| {label} | ✗ | | | | | | {r.get('wall_s', 0) / 60:.1f} | failed: {r['error']} |")
            continue

        def pct(value: float, ref: float | None) -> str:
            return f" ({value / ref:.0%})" if ref else ""

        notes = []
        if r.get("width_multiple"):
            notes.append(f"width_multiple {r['width_multiple']:.4f}")
        if r.get("same_run_as"):
            notes.append(f"the same architecture as {r['same_run_as']}: its run (trained at {r.get('trained_at')})")
        match = r.get("latency_match")
        if match and match.get("chosen") in match.get("ratios", {}):
            chosen = match["ratios"][match["chosen"]]
            notes.append(f"chosen at {', '.join(f'{v:.2f}×' for v in chosen.values())} of {match['reference_arm']}'s "
                         f"{'/'.join(chosen)} latency (seed {match.get('reference_seed')}'s model, timed before "
                         f"training; {len(match.get('coarse', match['ratios']))} widths)")
        if arm == "tp-magnitude":
            notes.append(f"per-layer ratio {r['tp_ratio']:.2f}; {r['csp_blocks_rewritten']} C2f blocks rewritten")
        if r.get("cost_table"):
            table = r["cost_table"]
            notes.append(f"latency table: {table['layers']} layers on {table['backend']} at "
                         f"{'×'.join(map(str, table['input_shape']))} ({r.get('pruning_plans', '?')} plans applied)")
        if r.get("reused_from"):
            notes.append(f"reused from {r['reused_from']}")
        if r.get("merged_from"):
            notes.append(f"merged from `{r['merged_from']}` (ran at {r.get('git', '?')})"
                         + ("; latency: rebuilt architecture timed in this run"
                            if r.get("latency_source") == LATENCY_REBUILT else ""))
        if r.get("rebuild_error"):
            notes.append(f"not rebuilt for timing: {r['rebuild_error']}")
        if r.get("failed_seeds"):
            notes.append("failed: " + "; ".join(r["failed_seeds"]))
        if r.get("ema") is False:
            notes.append("no EMA (torch.nn.utils.prune masks cannot be deep-copied)")
        if arm == "modelpruning":
            notes.append(f"{r['zeroed_filters']:.0%} of filters zeroed behind masks, none removed: FLOPs, params "
                         f"and latency unchanged (step amount {r['step_amount']:.3f})")
        dagger = " †" if _is_earlier(data, arm) else ""
        lines.append(
            f"| {label} | {_seeds(r, 'map50_95')} | {_seeds(r, 'map50')} "
            f"| {r['flops_640'] / 1e9:.2f}{pct(r['flops_640'], base_flops)} "
            f"| {r['params'] / 1e6:.2f}{pct(r['params'], base_params)} "
            f"| {_fmt_speed(_latency(data, 'eager', arm), _reference(data, 'eager', arm))}{dagger} "
            f"| {_fmt_speed(_latency(data, 'onnxruntime', arm), _reference(data, 'onnxruntime', arm))}{dagger} "
            f"| {r['fit_s'] / 60:.1f} | {'; '.join(notes)} |")
    earlier = [arm for arm, r in arms.items() if r.get("ok") and _is_earlier(data, arm)]
    if earlier:
        lines += ["", f"† latency of {', '.join(earlier)} from the {_earlier_words(data)} measurement of "
                  f"`{data.get('merge', {}).get('source', '?')}` (load average before/after its latency block: "
                  f"{_loads({'latency': data.get('latency_earlier') or {}})}), their speedups relative to that "
                  "measurement's unpruned model; their milliseconds are not comparable with the other rows' "
                  "(compare the speedups)."]
    lines += ["", *answer(data), *verdict(data), ""]
    sweep = [name for name in data["latency"].get("eager", {}) if name.startswith("sweep")]
    if sweep:
        lines += ["## Speed sweep (untrained YOLOv8n; speed does not depend on the weights)", "",
                  "| model | GFLOPs @640 (% of unpruned) | eager ms (speedup) | ONNX Runtime ms (speedup) |",
                  "|---|--:|--:|--:|"]
        for name in sweep:
            flops = data["sweep_flops"][name]
            eager, ort = _latency(data, "eager", name), _latency(data, "onnxruntime", name)
            ref_eager, ref_ort = _latency(data, "eager", "sweep unpruned"), _latency(data, "onnxruntime",
                                                                                      "sweep unpruned")
            lines.append(f"| {name} | {flops / 1e9:.2f} ({flops / data['sweep_flops']['sweep unpruned']:.0%}) "
                         f"| {_fmt_speed(eager, ref_eager)} | {_fmt_speed(ort, ref_ort)} |")
        lines.append("")
    for backend in ("eager", "onnxruntime"):
        if "error" in data["latency"].get(backend, {}):
            lines.append(f"- {backend} latency could not be measured: {data['latency'][backend]['error']}")
    lines += ["## Plots", ""]
    for what, title in (("map_vs_flops", "mAP50-95 vs FLOPs"), ("map_vs_latency", "mAP50-95 vs latency"),
                        ("speedup_vs_flops", "speedup vs FLOPs reduction")):
        lines.append(f"![{title}]({prefix}_{what}.png)")
    return "\n".join(lines) + "\n"


def _reused_line(runs: dict[str, Any]) -> list[str]:
    def reused(r: dict[str, Any]) -> bool:  # a merged arm's own reuse belongs to the merged run
        return bool(r.get("reused")) and not r.get("merged_from")

    reused = [f"seed {seed}: {', '.join(arm for arm, r in run['arms'].items() if reused(r))}"
              for seed, run in runs.items() if any(reused(r) for r in run["arms"].values())]
    if not reused:
        return []
    lines = [f"- Reused (`--reuse`) from an earlier invocation with the identical configuration: {'; '.join(reused)}"]
    other = []
    for seed, run in runs.items():
        here = run.get("pretrain", {}).get("map50_95")
        starts = {arm: _start(run, arm) for arm in run["arms"]}
        names = [arm for arm, start in starts.items()
                 if here is not None and start is not None and abs(start - here) > 1e-6]
        if names:
            other.append(f"seed {seed}: {', '.join(names)} (pretrained mAP50-95 "
                         f"{starts[names[0]]:.3f} there, {here:.3f} here)")
    if other:
        lines.append("- **Reused from an earlier results file that started from other pretrained weights** (another "
                     f"machine or environment, the same configuration): {'; '.join(other)}; their mean and spread "
                     "count as independent seeds, but their paired lines with this run's arms leave those seeds out")
    return lines


def _merge_lines(data: dict[str, Any]) -> list[str]:
    """``--merge``: the merged file and its arms with their revisions, the pretraining check, where each merged
    arm's latency comes from."""
    merge = data.get("merge")
    if not merge:
        return []
    arms = data.get("arms", {})
    merged = "; ".join(f"{arm} (seeds {', '.join(map(str, e['seeds']))}; git {', '.join(e['git'])})"
                       for arm, e in merge.get("arms", {}).items()) or "no arm"
    lines = [f"- Merged (`--merge`) from `{merge['source']}` (its command `{merge.get('command')}`, "
             f"{merge.get('date')}, git {merge.get('git')}): {merged}; this invocation ran "
             f"{', '.join(merge.get('own_arms', [])) or 'no arm'} itself (its arms win over the merged file's)"]
    if merge.get("seeds_not_merged"):
        lines.append(f"- Seeds of the merged file this run does not have (left out): "
                     f"{', '.join(map(str, merge['seeds_not_merged']))}")
    if merge.get("config_differs"):
        diffs = "; ".join(f"{k}: {v['this']} here, {v['merged']} there" for k, v in merge["config_differs"].items())
        lines.append(f"- **The merged run's configuration differs from this one's**: {diffs}")
    checks = merge.get("pretrain_match", {})
    if checks:
        def fmt(v: Any) -> str:
            return f"{v:.6f}" if isinstance(v, (int, float)) else "n/a"

        values = ", ".join(f"seed {s} {fmt(c['this'])} vs {fmt(c['merged'])}" for s, c in checks.items())
        bad = [s for s, c in checks.items() if not c.get("match")]
        if not bad:
            lines.append(f"- Pretraining check (this run's pretrained mAP50-95 vs the merged file's, tolerance "
                         f"{PRETRAIN_TOLERANCE:g}): {values} — equal: identical weights, paired comparison valid")
        else:
            lines.append(f"- Pretraining check (this run's pretrained mAP50-95 vs the merged file's, tolerance "
                         f"{PRETRAIN_TOLERANCE:g}): {values} — **differ for seed(s) {', '.join(bad)}**: there the "
                         "merged arms started from different pretrained weights than this run's arms, so the paired "
                         "per-seed lines between a merged arm and an arm of this run leave those seeds out")
    rebuilt = [arm for arm, r in arms.items() if r.get("latency_source") == LATENCY_REBUILT]
    earlier = [arm for arm, r in arms.items() if r.get("ok") and _is_earlier(data, arm)]
    parts = []
    if rebuilt:
        parts.append(f"{', '.join(rebuilt)} timed in this run's interleaved measurement on their architecture "
                     "rebuilt from the YAML (random init: speed does not depend on the weights; FLOPs and params "
                     "checked equal to the merged results')")
    if earlier:
        parts.append(f"{', '.join(earlier)} (architecture from training, models not kept) keep the "
                     f"{_earlier_words(data)} measurement's numbers †, speedups relative to its unpruned model")
    if parts:
        lines.append("- Latency of the merged arms: " + "; ".join(parts))
    return lines


def _revisions_line(runs: dict[str, Any], final: str) -> list[str]:
    """Which revision each arm ran at, when they were not all the final one."""
    ran: dict[str, set[str]] = {}
    for run in runs.values():
        for arm, r in run["arms"].items():
            ran.setdefault(r.get("git", final), set()).add(arm)
    if set(ran) <= {final}:
        return []
    return ["- Revisions the arms ran at (the rest of this report: " + final + "): "
            + "; ".join(f"{rev}: {', '.join(sorted(arms))}" for rev, arms in sorted(ran.items()))]


def _seeds(r: dict[str, Any], key: str) -> str:
    values = r.get(f"{key}_seeds")
    if not values or len(values) < 2:
        return f"{r[key]:.3f}"
    return f"{r[key]:.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def _fmt_speed(ms: float | None, ref: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.1f}" + (f" ({ref / ms:.2f}×)" if ref else "")


def _loads(data: dict[str, Any]) -> str:
    lat = data["latency"]
    fmt = lambda v: "/".join(f"{x:.2f}" for x in v) if v else "n/a"  # noqa: E731
    return f"{fmt(lat.get('loadavg_before'))} → {fmt(lat.get('loadavg_after'))}"


def plots(data: dict[str, Any], out_dir: Path, prefix: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plots")
        return []
    arms = {k: v for k, v in data["arms"].items() if v.get("ok")}
    base = arms.get("unpruned")
    written = []
    markers = dict(zip(ARMS, "o*sD^vPdX<hp>H8", strict=True))
    colors = {arm: f"C{i}" for i, arm in enumerate(ARMS)}  # one colour per arm in every plot

    def yerr(r: dict[str, Any]) -> list[list[float]] | None:
        values = r.get("map50_95_seeds") or []
        if len(values) < 2:
            return None
        return [[r["map50_95"] - min(values)], [max(values) - r["map50_95"]]]

    def save(fig: Any, what: str) -> None:
        path = out_dir / f"{prefix}_{what}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for arm, r in arms.items():
        ax.errorbar(r["flops_640"] / 1e9, r["map50_95"], yerr=yerr(r), marker=markers.get(arm, "o"),
                    color=colors.get(arm), markersize=9, capsize=4, linestyle="", label=arm)
    ax.set_xlabel(f"GFLOPs at {LATENCY_SIZE} px")
    ax.set_ylabel("mAP50-95 (synthetic test; bars: min–max over seeds)")
    ax.set_title(f"{data['config'].get('model', 'yolov8n.yaml').removesuffix('.yaml')}: accuracy vs FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "map_vs_flops")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, backend in zip(axes, ("eager", "onnxruntime"), strict=True):
        for arm, r in arms.items():
            ms = _latency(data, backend, arm)
            if ms is not None:
                early = _is_earlier(data, arm)  # another measurement: hollow, labelled
                ax.errorbar(ms, r["map50_95"], yerr=yerr(r), marker=markers.get(arm, "o"), color=colors.get(arm),
                            markersize=9, capsize=4, linestyle="", markerfacecolor="none" if early else None,
                            label=f"{arm} † (earlier run)" if early else arm)
        ax.set_xlabel(f"{backend} latency, ms (batch 1, {LATENCY_SIZE} px)")
        ax.set_title(backend)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mAP50-95 (synthetic test; bars: min–max over seeds)")
    axes[0].legend(fontsize=8)
    save(fig, "map_vs_latency")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, backend in zip(axes, ("eager", "onnxruntime"), strict=True):
        series: dict[str, list[tuple[float, float]]] = {}
        if base:
            for arm, r in arms.items():
                ms, ref = _latency(data, backend, arm), _reference(data, backend, arm)  # one measurement each
                if ms is not None and ref and arm != "unpruned":
                    series.setdefault(f"{arm} †" if _is_earlier(data, arm) else arm, []).append(
                        (1 - r["flops_640"] / base["flops_640"], ref / ms))
        sweep_ref = _latency(data, backend, "sweep unpruned")
        for name, flops in data.get("sweep_flops", {}).items():
            ms = _latency(data, backend, name)
            if sweep_ref and ms and name != "sweep unpruned":
                tool = name.split()[1]
                series.setdefault(f"{tool} (sweep)", []).append(
                    (1 - flops / data["sweep_flops"]["sweep unpruned"], sweep_ref / ms))
        for label, points in series.items():
            points.sort()
            xs, ys = zip(*points, strict=True)
            arm = label.split()[0]
            ax.plot(xs, ys, marker=markers.get(arm, "o"), color=colors.get(arm),
                    linestyle="--" if "sweep" in label else "", label=label)
        ideal = [i / 100 for i in range(0, 80)]
        ax.plot(ideal, [1 / (1 - r) for r in ideal], color="grey", linewidth=1, label="ideal: 1 / (1 − reduction)")
        ax.set_xlabel("FLOPs reduction")
        ax.set_title(backend)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("measured speedup (×)")
    axes[0].legend(fontsize=7)
    save(fig, "speedup_vs_flops")
    return written
