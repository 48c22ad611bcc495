"""The report: the regime check first, then every arm's test mAP (seed spread), measured latency and training cost,
the verdict by the project's rule, and two plots. Reads only committed run folders made at clean revisions.

Rule (as ``benchmarks/accuracy``): a difference counts as a win only when the means differ by more than both arms'
seed spreads (max - min) and the latencies are within 3 % (or the winner is also faster); otherwise it is a tie, and
the paired per-seed differences are shown either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.prune_vs_small.arms import ARMS, ROUND_TO, arm_digest
from benchmarks.prune_vs_small.config import LENGTHS, PROTOCOL, PRUNING, RESULTS
from benchmarks.prune_vs_small.runs import Record, git_state, run_dir

ALTERNATIVES = ("small", "small-distill", "small-distill-dis1")  # what a user could deploy instead of pruning
LATENCY_TOLERANCE = 0.03
MIN_SEEDS = 3  # a verdict on fewer seeds is marked provisional


def plateau(history: list[float], window: int = PROTOCOL.plateau_window) -> dict[str, Any]:
    """Gain of the best val mAP50-95 of the last ``window`` epochs over the best before them."""
    if len(history) <= window:
        return {"gain": None, "passed": False}
    gain = max(history[-window:]) - max(history[:-window])
    return {"gain": gain, "passed": gain < PROTOCOL.plateau_gain}


def collect(root: Path = RESULTS) -> dict[str, dict[int, dict[str, Any]]]:
    """``arm -> seed -> run.json`` of every finished run at a clean revision with the current configuration."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for name, arm in ARMS.items():
        for folder in sorted((root / name).glob("seed*")) if (root / name).is_dir() else []:
            seed = int(folder.name[4:])
            record = Record.load(folder)
            if record is not None and record.reusable(arm_digest(arm, seed)):
                runs.setdefault(name, {})[seed] = record.data
    return runs


def regime(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Is the question meaningful? Both models at their plateau, and the base ahead by the protocol's gap outside
    both seed spreads."""
    out: dict[str, Any] = {"plateau": {}, "passed": False}
    for arm in ("base", "small"):
        for seed, data in runs.get(arm, {}).items():
            out["plateau"][f"{arm} seed {seed}"] = plateau(data["val_history"])
    base = [d["test"]["map50_95"] for d in runs.get("base", {}).values()]
    small = [d["test"]["map50_95"] for d in runs.get("small", {}).values()]
    if base and small:
        gap = statistics.mean(base) - statistics.mean(small)
        out.update(gap=gap, separated=min(base) > max(small), seeds=(len(base), len(small)))
        out["passed"] = (gap >= PROTOCOL.regime_gap and min(base) > max(small)
                         and all(p["passed"] for p in out["plateau"].values()) and min(len(base), len(small)) >= 3)
    return out


def measure(runs: dict[str, dict[int, dict[str, Any]]], root: Path) -> dict[str, dict[int, dict[str, float]]]:
    """Latency of every run's model, all interleaved in one measurement per backend (batch 1, deployment size,
    BatchNorm folded), plus FLOPs and parameters."""
    import torch
    from ultralytics import YOLO

    from lightning_prune.profiling import compare_latency, count_flops, count_params, deployed_copy

    size = PROTOCOL.deploy_imgsz
    x = torch.zeros(1, 3, size, size)
    models, out = {}, {}
    for arm, seeds in runs.items():
        for seed in seeds:
            model = YOLO(str(run_dir(arm, seed, root) / "weights.pt")).model.float().eval()
            models[f"{arm}/{seed}"] = deployed_copy(model)
            out.setdefault(arm, {})[seed] = {"flops": float(count_flops(model, x)),
                                             "params": float(count_params(model)), "widths": block_widths(model)}
    for backend in ("onnxruntime", "eager"):
        timed = compare_latency(models, x, backend, rounds=10, repeats=20, num_threads=1)
        for key, result in timed.items():
            arm, seed = key.split("/")
            out[arm][int(seed)][f"{backend}_ms"] = float(result.median_ms)
    return out


def block_widths(model: Any) -> list[int]:
    """Output channels of all convolutions in each of the detector's top-level blocks (``model.model[i]``): where
    an arm keeps its width, against the small model's uniform share."""
    from torch import nn

    return [sum(m.out_channels for m in block.modules() if isinstance(m, nn.Conv2d)) for block in model.model]


def stored_targets(root: Path = RESULTS) -> dict[str, Any]:
    """What the pruning arms aimed at (``targets.json``, written by the first of them; empty before)."""
    try:
        return json.loads((root / "targets.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def protocol_lines() -> list[str]:
    """The protocol in a few lines, from the configuration the runs were checked against."""
    d = PROTOCOL.data
    return [f"- Data: Fashion-MNIST scenes at {d.imgsz} px, {d.num_train} train / {d.num_val} val / {d.num_test} test "
            f"images (set seed {d.seed}); selection and best-epoch choice read val, every number below reads test.",
            f"- Base: {PROTOCOL.base_model}, {LENGTHS.base} epochs from scratch; small: the same YAML at width "
            f"{PROTOCOL.small_width:g}, {LENGTHS.small} epochs; ultralytics' trainer and defaults for every arm.",
            f"- Pruning arms: from the base of their seed to the small model's FLOPs share (the latency arm: its "
            f"measured ONNX Runtime latency share), steps at fine-tuning epochs {list(PRUNING.schedule)}, "
            f"{LENGTHS.finetune} epochs in all (mosaic off for the last {PRUNING.close_mosaic}), channel "
            f"counts in multiples of {ROUND_TO}.",
            f"- Latency: batch 1 at {PROTOCOL.deploy_imgsz} px, {PROTOCOL.threads} thread, BatchNorm folded, every "
            "model interleaved in one measurement per backend (median)."]


def _points(gain: float | None) -> str:
    """A plateau gain in signed mAP points (``n/a`` when the history was too short)."""
    return "n/a" if gain is None else f"{gain * 100:+.2f}"


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "n": len(values)}


def compare(runs: dict, costs: dict, a: str, b: str) -> dict[str, Any]:
    """``a`` against ``b`` by the rule: mean gap, spreads, paired per-seed gaps, latency ratio."""
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    if not seeds:
        return {"a": a, "b": b, "verdict": "not comparable (no common seeds)"}
    ma = [runs[a][s]["test"]["map50_95"] for s in runs[a]]
    mb = [runs[b][s]["test"]["map50_95"] for s in runs[b]]
    gap = statistics.mean(ma) - statistics.mean(mb)
    spread = max(max(ma) - min(ma), max(mb) - min(mb))
    lat = {backend: statistics.median(costs[a][s][f"{backend}_ms"] for s in costs[a])
           / statistics.median(costs[b][s][f"{backend}_ms"] for s in costs[b]) for backend in ("onnxruntime", "eager")}
    paired = {s: runs[a][s]["test"]["map50_95"] - runs[b][s]["test"]["map50_95"] for s in seeds}
    faster_or_equal = all(r <= 1 + LATENCY_TOLERANCE for r in lat.values())
    slower_or_equal = all(r >= 1 - LATENCY_TOLERANCE for r in lat.values())
    if abs(gap) <= spread:
        verdict = "tie (the gap is inside the seed spread)"
    elif gap > 0:
        verdict = f"{a} wins" if faster_or_equal else f"{a} is more accurate but slower: no win at equal latency"
    else:
        verdict = f"{b} wins" if slower_or_equal else f"{b} is more accurate but slower: no win at equal latency"
    if (fewest := min(len(ma), len(mb))) < MIN_SEEDS:
        verdict = f"provisional, {fewest} seed(s) of {MIN_SEEDS}: {verdict}"
    return {"a": a, "b": b, "gap": gap, "spread": spread, "paired": paired, "latency_ratio": lat, "verdict": verdict}


def since_last_prune(arm: str, history: list[float]) -> list[float]:
    """The part of a run's validation history that reads its final architecture: after its last pruning step (the
    whole history for the arms that do not prune during training)."""
    if ARMS[arm].setup is None or ARMS[arm].spec.get("setup", {}).get("tool") == "torch-pruning":
        return history
    return history[max(PRUNING.schedule):]


def _last_gain(arm: str, seeds: dict[int, dict[str, Any]]) -> float | None:
    gains = [plateau(since_last_prune(arm, d["val_history"]))["gain"] for d in seeds.values()]
    gains = [g for g in gains if g is not None]
    return statistics.mean(gains) if gains else None


def _width_share(costs: dict, arm: str) -> list[float] | None:
    """Per block, the arm's conv channels as a share of the base's of the same seed (mean over seeds)."""
    shares = [[w / b if b else 1.0 for w, b in zip(c["widths"], costs["base"][seed]["widths"], strict=False)]
              for seed, c in costs[arm].items() if seed in costs.get("base", {})]
    return [statistics.mean(column) for column in zip(*shares, strict=True)] if shares else None


def _plots(out_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, label, name in (("onnxruntime_ms", "ONNX Runtime latency, batch 1 (ms)", "latency"),
                             ("cpu_minutes_total", "training cost, CPU-minutes in total", "cost")):
        fig, ax = plt.subplots(figsize=(7, 5))
        for row in rows:
            m = row["map"]
            ax.errorbar([row[key]], [m["mean"]], yerr=[[m["mean"] - m["min"]], [m["max"] - m["mean"]]], fmt="o",
                        capsize=4, label=row["arm"])
        ax.set_xlabel(label)
        ax.set_ylabel("test mAP50-95 (mean, min-max over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"map_vs_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    shaped = [row for row in rows if row.get("width_share") and row["arm"] != "base"]
    if shaped:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for row in shaped:
            ax.plot(range(len(row["width_share"])), row["width_share"], marker="o", markersize=3, label=row["arm"])
        ax.set_xlabel("block of the detector (model.model[i]: backbone, neck, head)")
        ax.set_ylabel("conv channels kept, share of the base's")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "widths.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return files


def status(root: Path = RESULTS, seeds: tuple[int, ...] = (0, 1, 2)) -> str:
    """Where the benchmark stands, without measuring anything: every arm and seed as reusable (with its test
    mAP50-95, last-10-epoch gain, cost and revision), superseded (a run of another configuration) or missing, and
    the regime check on the reusable runs so far."""
    runs = collect(root)
    lines = ["| arm | seed | state | epochs | test mAP50-95 | last-10 gain | CPU-min | revision |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ARMS:
        for seed in seeds:
            data, state = runs.get(name, {}).get(seed), "reusable"
            if data is None:
                record = Record.load(run_dir(name, seed, root))
                data, state = (None, "missing") if record is None or "test" not in record.data else \
                    (record.data, "superseded (another configuration)")
            if data is None:
                lines.append(f"| {name} | {seed} | {state} | | | | | |")
                continue
            gain = plateau(since_last_prune(name, data["val_history"]))["gain"]
            lines.append(f"| {name} | {seed} | {state} | {data['cost']['epochs']} | {data['test']['map50_95']:.3f} | "
                         f"{_points(gain)} | "
                         f"{data['cost']['cpu_minutes']:.0f} | {data['git']['revision'][:7]} |")
    check = regime(runs)
    lines += ["", "Plateau (best val mAP50-95 of the last 10 epochs over the best before, criterion < "
              f"{PROTOCOL.plateau_gain * 100:g} points): " + (", ".join(
                  f"{k} {_points(v['gain'])}"
                  for k, v in check["plateau"].items()) or "no runs")]
    if "gap" in check:
        lines.append(f"Base − small on test so far: {check['gap'] * 100:+.1f} points (seeds {check['seeds']}, "
                     f"spreads {'separated' if check['separated'] else 'overlap'}); regime check "
                     f"{'passed' if check['passed'] else 'not passed yet'}.")
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> int:
    root = RESULTS
    runs = collect(root)
    check = regime(runs)
    costs = measure(runs, root) if runs else {}
    base_cpu = {s: d["cost"]["cpu_minutes"] for s, d in runs.get("base", {}).items()}
    rows = []
    for arm, seeds in runs.items():
        after = [d["cost"]["cpu_minutes"] for d in seeds.values()]
        uses_base = ARMS[arm].start == "base-weights" or "distill_model" in ARMS[arm].train.extra
        total = [d["cost"]["cpu_minutes"] + (base_cpu.get(s, float("nan")) if uses_base and arm != "base" else 0.0)
                 for s, d in seeds.items()]
        rows.append({
            "arm": arm, "summary": ARMS[arm].summary, "seeds": sorted(seeds),
            "map": _summary([d["test"]["map50_95"] for d in seeds.values()]),
            "per_seed": {s: d["test"]["map50_95"] for s, d in seeds.items()},
            "epochs": ARMS[arm].train.epochs,
            "epochs_total": ARMS[arm].train.epochs + (ARMS["base"].train.epochs if uses_base and arm != "base" else 0),
            "cpu_minutes_after_base": statistics.mean(after),
            "cpu_minutes_total": statistics.mean(total),
            "onnxruntime_ms": statistics.median(c["onnxruntime_ms"] for c in costs[arm].values()),
            "eager_ms": statistics.median(c["eager_ms"] for c in costs[arm].values()),
            "flops": statistics.mean(c["flops"] for c in costs[arm].values()),
            "params": statistics.mean(c["params"] for c in costs[arm].values()),
            "width_share": _width_share(costs, arm),
            "revisions": sorted({d["git"]["revision"][:7] for d in seeds.values()}),
            # still learning at the end? (the plateau gain of its own val history: for the pruning arms, whether a
            # longer fine-tuning would have paid)
            "last_gain": _last_gain(arm, seeds),
        })
    comparisons = [compare(runs, costs, a, b) for a in runs if a not in (*ALTERNATIVES, "base")
                   for b in ALTERNATIVES if b in runs]
    # does distillation make the small model better? (the user's alternative against itself from scratch)
    comparisons += [compare(runs, costs, b, "small") for b in ALTERNATIVES if b != "small" and b in runs
                    and "small" in runs]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(args.out_dir, rows) if rows else []
    payload = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git": git_state(),
               "command": "python -m benchmarks.prune_vs_small report", "regime": check, "rows": rows,
               "targets": stored_targets(root),
               "comparisons": comparisons, "plots": plots}
    (args.out_dir / "report.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    (args.out_dir / "report.md").write_text(render(payload))
    print(render(payload))
    return 0


def render(payload: dict[str, Any]) -> str:
    check = payload["regime"]
    lines = ["# Does pruning beat the smaller model? (Fashion-MNIST scenes, YOLOv8n vs its narrower sibling)", "",
             f"Made by `{payload['command']}` on {payload['date']} at {payload['git']['revision'][:7]}"
             f"{'' if payload['git']['clean'] else ' (uncommitted changes)'}; each run lists its own revision.", "",
             "## Protocol", "", *protocol_lines()]
    t = payload.get("targets") or {}
    if "flops_keep" in t:
        lines.append(f"- Targets (the small model against the base, from the architectures): FLOPs share "
                     f"{t['flops_keep']:.3f}, ONNX Runtime latency share {t['latency_keep']:.3f} (measured once, "
                     f"{t.get('measured', '?')}, load average {t.get('load_average', float('nan')):.1f})")
    lines += ["", "## Regime check (before any arm is compared)", ""]
    for name, p in check.get("plateau", {}).items():
        gain = "n/a" if p["gain"] is None else f"{p['gain'] * 100:+.2f} points"
        state = "plateau" if p["passed"] else "NOT at a plateau"
        lines.append(f"- {name}: best val mAP50-95 of the last {PROTOCOL.plateau_window} epochs vs before: {gain} "
                     f"({state}; criterion < {PROTOCOL.plateau_gain * 100:g})")
    if "gap" in check:
        lines.append(f"- base − small on test: {check['gap'] * 100:+.1f} points mAP50-95 (needs ≥ "
                     f"{PROTOCOL.regime_gap * 100:g}), spreads {'separated' if check['separated'] else 'OVERLAP'}, "
                     f"seeds {check['seeds']}")
    lines += ["", f"**Regime check: {'passed' if check['passed'] else 'NOT passed — no arm comparison counts yet'}**",
              "", "## Arms", "",
              "| arm | test mAP50-95 mean (min–max) | per seed | ORT ms | eager ms | GFLOPs | params | epochs "
              "(own) | epochs total | CPU-min (own) | CPU-min total | last-10 gain | revisions |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        m = r["map"]
        seeds = ", ".join(f"{v:.3f}" for _, v in sorted(r["per_seed"].items()))
        lines.append(f"| {r['arm']} | {m['mean']:.3f} ({m['min']:.3f}–{m['max']:.3f}) | {seeds} | "
                     f"{r['onnxruntime_ms']:.2f} | {r['eager_ms']:.2f} | {r['flops'] / 1e9:.3f} | {r['params']:,.0f} | "
                     f"{r['epochs']} | {r['epochs_total']} | {r['cpu_minutes_after_base']:.0f} | "
                     f"{r['cpu_minutes_total']:.0f} | "
                     f"{_points(r.get('last_gain'))} | "
                     f"{', '.join(r['revisions'])} |")
    lines += ["", "Own: the arm's training (for the pruning arms: the fine-tuning after the base); total: with the "
              "base's when the arm starts from it or distils from it. Last-10 gain: the best val mAP50-95 of the "
              f"last {PROTOCOL.plateau_window} epochs over the best before (for a pruning arm: since its last "
              "prune), in points (mean over seeds): above "
              f"{PROTOCOL.plateau_gain * 100:g}, the arm was still learning when it stopped.", "", "## Verdicts", ""]
    for c in payload["comparisons"]:
        if "gap" not in c:
            lines.append(f"- {c['a']} vs {c['b']}: {c['verdict']}")
            continue
        paired = ", ".join(f"seed {s}: {v * 100:+.1f}" for s, v in sorted(c["paired"].items()))
        lat = ", ".join(f"{k} ×{v:.2f}" for k, v in c["latency_ratio"].items())
        lines.append(f"- **{c['a']} vs {c['b']}**: {c['verdict']}; mean gap {c['gap'] * 100:+.1f} points, spread "
                     f"{c['spread'] * 100:.1f}; paired {paired}; latency {lat}")
    lines += ["", *(f"![{p}]({p})" for p in payload["plots"]), ""]
    return "\n".join(lines)
