"""Statistics and verdict: the seeds combined, which measurement a latency comes from, the tie rules (a mAP gap
inside the seed spread, a latency within 3 %), the paired per-seed differences, the answer and the verdict."""

from __future__ import annotations

import statistics
from typing import Any

from .config import SCRATCH_ARMS, SWEEP_TARGETS, _ordered
from .reuse import LATENCY_EARLIER


def combine_seeds(runs: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: the first seed's result (architecture, FLOPs, params, timings) with mAP replaced by the mean over
    the seeds where the arm finished, and the per-seed values kept (``*_seeds``)."""
    seeds = list(runs)
    combined: dict[str, dict[str, Any]] = {}
    names = _ordered([arm for s in seeds for arm in runs[s]["arms"]])  # every arm of any seed (merged ones too)
    for arm in names:
        results = [runs[s]["arms"].get(arm, {"ok": False, "error": "not run for this seed"}) for s in seeds]
        done = [r for r in results if r.get("ok")]
        if not done:
            combined[arm] = results[0]
            continue
        first = dict(done[0])
        for key in ("map50_95", "map50"):
            values = [r[key] for r in done]
            first[f"{key}_seeds"] = values
            first[key] = statistics.fmean(values)
        failed = [f"seed {s}: {r.get('error', '?')}" for s, r in zip(seeds, results, strict=True) if not r.get("ok")]
        if failed:
            first["failed_seeds"] = failed
        combined[arm] = first
    return combined


def _is_earlier(data: dict[str, Any], name: str) -> bool:
    """A merged arm whose latency is the merged file's own (earlier) measurement, not this run's."""
    return str(data.get("arms", {}).get(name, {}).get("latency_source", "")).startswith(LATENCY_EARLIER)


def _measured(block: dict[str, Any] | None, backend: str, name: str) -> float | None:
    entry = (block or {}).get(backend, {}).get(name)
    return entry["median_ms"] if isinstance(entry, dict) and "median_ms" in entry else None


def _latency(data: dict[str, Any], backend: str, name: str) -> float | None:
    """``name``'s median latency: this run's measurement, or the earlier one's for a merged arm flagged so."""
    return _measured(data.get("latency_earlier") if _is_earlier(data, name) else data["latency"], backend, name)


def _reference(data: dict[str, Any], backend: str, name: str) -> float | None:
    """The unpruned latency of the same measurement as ``name``'s (speedups never mix measurements)."""
    block = data.get("latency_earlier") if _is_earlier(data, name) else data["latency"]
    return _measured(block, backend, "unpruned")


def _earlier_words(data: dict[str, Any]) -> str:
    return "earlier, loaded" if data.get("merge", {}).get("latency_earlier_loaded") else "earlier"


def _spread(r: dict[str, Any]) -> float:
    values = r.get("map50_95_seeds") or [r["map50_95"]]
    return max(values) - min(values)


def compare_map(name_a: str, a: dict[str, Any], name_b: str, b: dict[str, Any]) -> tuple[int, str]:
    """(+1 a wins, −1 b wins, 0 tie) and a sentence. A gap no wider than either arm's seed spread (max − min) is a
    tie, never a win.

    Example:
        >>> compare_map("x", {"map50_95": 0.70, "map50_95_seeds": [0.69, 0.71]},
        ...             "y", {"map50_95": 0.60, "map50_95_seeds": [0.59, 0.61]})[1]
        'x beats y by 10.0 mAP points (0.700 vs 0.600; seed spreads 2.0 / 2.0)'
        >>> compare_map("x", {"map50_95": 0.70, "map50_95_seeds": [0.65, 0.75]}, "y", {"map50_95": 0.68})[0]
        0
    """
    gap = a["map50_95"] - b["map50_95"]
    margin = max(_spread(a), _spread(b))
    spreads = f"seed spreads {_spread(a) * 100:.1f} / {_spread(b) * 100:.1f}"
    if abs(gap) <= margin:
        return 0, (f"{name_a} and {name_b} tie ({a['map50_95']:.3f} vs {b['map50_95']:.3f}: a gap of "
                   f"{abs(gap) * 100:.1f} points, inside the {spreads})")
    winner, loser = (name_a, name_b) if gap > 0 else (name_b, name_a)
    high, low = (a, b) if gap > 0 else (b, a)
    return (1 if gap > 0 else -1), (f"{winner} beats {loser} by {abs(gap) * 100:.1f} mAP points "
                                    f"({high['map50_95']:.3f} vs {low['map50_95']:.3f}; {spreads})")


def _comparable(data: dict[str, Any], backend: str, a: str, b: str) -> tuple[float, float] | None:
    """``a``'s and ``b``'s latencies on ``backend`` in comparable units: milliseconds when one measurement timed
    both, each relative to its own measurement's unpruned model when one is the earlier (merged) run's; ``None``
    when either is missing."""
    ms_a, ms_b = _latency(data, backend, a), _latency(data, backend, b)
    if not ms_a or not ms_b:
        return None
    if _is_earlier(data, a) != _is_earlier(data, b):  # two measurements: compare latencies relative to unpruned
        ref_a, ref_b = _reference(data, backend, a), _reference(data, backend, b)
        if not ref_a or not ref_b:
            return None
        ms_a, ms_b = ms_a / ref_a, ms_b / ref_b
    return ms_a, ms_b


def _faster(data: dict[str, Any], a: str, b: str, backend: str, tolerance: float = 0.03) -> int:
    """+1 if ``a`` is faster than ``b`` by more than ``tolerance`` (relative), −1 if slower, 0 a tie."""
    both = _comparable(data, backend, a, b)
    if both is None:
        return 0
    ms_a, ms_b = both
    if abs(ms_a - ms_b) <= tolerance * max(ms_a, ms_b):
        return 0
    return 1 if ms_a < ms_b else -1


ANSWER_ARMS = ("ours-sensitivity", "ours-sensitivity-latency", "ours-latency-target",
               "ours-sensitivity-latency-target")  # the pruned models the answer is about
ANSWER_RIVALS = ("ours-uniform-70", "ours-uniform", "tp-magnitude", "modelpruning", "sibling-latency-scratch",
                 "sibling-scratch", "yolo11n-scratch", "yolo26n-scratch", "unpruned")  # a user's alternatives, in order


def _outcome(accuracy: int, speeds: list[int]) -> str:
    """One word for a comparison from the mAP outcome (+1/0/−1, spread rule) and the per-backend speed outcomes of
    the first arm (+1 faster, 0 within 3 %, −1 slower): a tie is never a win.

    Example:
        >>> _outcome(0, [0, 0]), _outcome(1, [0, 1]), _outcome(-1, [1, 1]), _outcome(0, [1, 0])
        ('tie', 'ours wins', 'trade-off: ours faster, it more accurate', 'tied mAP, ours faster')
        >>> _outcome(-1, [-1, 1]), _outcome(1, [1, -1])
        ('it more accurate, mixed speed', 'ours more accurate, mixed speed')
    """
    faster, slower = any(v > 0 for v in speeds), any(v < 0 for v in speeds)
    if accuracy > 0 and not slower:
        return "ours wins"
    if accuracy < 0 and not faster:
        return "it wins"
    if accuracy == 0:
        if faster and not slower:
            return "tied mAP, ours faster"
        if slower and not faster:
            return "tied mAP, it faster"
        return "tie" if not (faster or slower) else "tied mAP, mixed speed"
    if faster and slower:  # faster on one backend, slower on the other: neither side of a trade-off
        return ("ours" if accuracy > 0 else "it") + " more accurate, mixed speed"
    if accuracy > 0:
        return "trade-off: ours more accurate, it faster"
    return "trade-off: ours faster, it more accurate"


def answer(data: dict[str, Any]) -> list[str]:
    """The issue's question in one table per pruned arm of ours: against each alternative, the latency ratio on both
    backends, the mAP gap with the seed spreads (a gap inside them is a tie), the paired per-seed gaps and one word.
    Alternatives within 3 % of our latency on a backend compare at equal measured latency there."""
    arms = {k: v for k, v in data["arms"].items() if v.get("ok")}
    lines: list[str] = []
    for ours in (a for a in ANSWER_ARMS if a in arms):
        rivals = [r for r in ANSWER_RIVALS if r in arms and r != ours]
        if not rivals:
            continue
        lines += [f"### {ours}: against what a user would do instead", "",
                  "| alternative | its latency ÷ ours, eager / ONNX Runtime | mAP50-95 ours − it (seed spreads) "
                  "| paired by seed | outcome |", "|---|--:|--:|--:|---|"]
        for rival in rivals:
            timed = {b: _comparable(data, b, ours, rival) for b in ("eager", "onnxruntime")}
            ratios = [f"{both[1] / both[0]:.2f}" if both else "n/a" for both in timed.values()]
            accuracy, _ = compare_map(ours, arms[ours], rival, arms[rival])
            gap = (arms[ours]["map50_95"] - arms[rival]["map50_95"]) * 100
            spreads = f"{_spread(arms[ours]) * 100:.1f} / {_spread(arms[rival]) * 100:.1f}"
            pairs = paired_differences(data, ours, rival)
            paired = ", ".join(f"{d * 100:+.1f}" for _, d in pairs).replace("-", "−") or "n/a"
            speeds = [_faster(data, ours, rival, b) for b, both in timed.items() if both]
            lines.append(f"| {rival} | {' / '.join(ratios)} | {f'{gap:+.1f}'.replace('-', '−')} ({spreads}) "
                         f"| {paired} | {_outcome(accuracy, speeds)} |")
        lines.append("")
    if lines:
        lines = ["## The answer: accuracy at the latency each model runs at", "",
                 "A latency ratio above 1 means the alternative is slower than ours; within 3 % (0.97–1.03) the two "
                 "run at equal measured latency on that backend. 'ours wins' / 'it wins' need a mAP gap wider than "
                 "both seed spreads and no speed loss; a gap inside the spreads is a tie, never a win.", "", *lines]
    return lines


def verdict(data: dict[str, Any]) -> list[str]:
    """Plain statements from the numbers. A gap inside the seed spread is a tie, a latency within 3 % is a tie,
    and wherever a peer or a smaller model trained from scratch wins, it says so."""
    arms = {k: v for k, v in data["arms"].items() if v.get("ok")}
    lines = ["## Verdict (written from the numbers above)", ""]
    pruned = {k: v for k, v in arms.items() if k != "unpruned"}
    if not pruned:
        return [*lines, "- No arm besides the unpruned model finished."]
    ranking = sorted(arms, key=lambda k: -arms[k]["map50_95"])
    lines.append("- Ranking by mean test mAP50-95: " + " > ".join(f"{k} {arms[k]['map50_95']:.3f}" for k in ranking)
                 + ".")
    spreads = {k: _spread(r) for k, r in arms.items() if len(r.get("map50_95_seeds") or []) > 1}
    if spreads:
        lines.append(f"- Seed spread (max − min) of mAP50-95: median {statistics.median(spreads.values()) * 100:.1f} "
                     f"points, widest {max(spreads.values()) * 100:.1f} ({max(spreads, key=spreads.get)}); a gap "
                     "inside the spread of either arm is reported as a tie.")
    ours = [k for k in pruned if k.startswith("ours-")]
    others = [k for k in pruned if not k.startswith("ours-")]
    if "unpruned" in arms:
        for arm in ours:
            lines.append(f"- Against the unpruned model: {compare_map(arm, arms[arm], 'unpruned', arms['unpruned'])[1]}"
                         ".")
            lines += _paired_line(data, arm, "unpruned")
    for arm in ours:
        # ours against ours-uniform; the latency-cost arm also against the FLOPs-cost sensitivity it replaces
        # (and the latency target against FLOPs-targeted pruning at about its latency)
        mates = {"ours-sensitivity-latency": ("ours-uniform", "ours-sensitivity"),
                 "ours-latency-target": ("ours-uniform-70", "ours-uniform"),
                 "ours-sensitivity-latency-target": ("ours-uniform-70", "ours-latency-target")}.get(arm,
                                                                                                  ("ours-uniform",))
        for other in others + [k for k in ours if k != arm and k in mates]:
            outcome, sentence = compare_map(arm, arms[arm], other, arms[other])
            speed, speeds = [], []
            for backend in ("eager", "onnxruntime"):
                ms_a, ms_b = _latency(data, backend, arm), _latency(data, backend, other)
                if ms_a and ms_b:
                    speeds.append(_faster(data, arm, other, backend))
                    word = {1: "faster", -1: "slower", 0: "as fast (within 3 %)"}[speeds[-1]]
                    speed.append(_speed_words(data, backend, arm, other, word))
            flops = f"{arm} at {arms[arm]['flops_640'] / 1e9:.2f} vs {arms[other]['flops_640'] / 1e9:.2f} GFLOPs"
            dominated = ""
            word = _outcome(outcome, speeds)  # a backend without both latencies counts as equal speed, as before
            if word in ("it wins", "ours wins"):  # the answer table's rule: no speed loss on either backend
                winner = other if word == "it wins" else arm
                dominated = f" — **{winner} wins: at least as fast on both backends and more accurate**"
            lines.append(f"- {sentence}; {flops}; {'; '.join(speed) or 'latency not measured'}{dominated}.")
            lines += _paired_line(data, arm, other)
    lines += _sweep_verdict(data)
    return lines


def _speed_words(data: dict[str, Any], backend: str, a: str, b: str, word: str) -> str:
    """One latency comparison of the verdict, saying when a number is the earlier (merged) run's measurement."""
    ms_a, ms_b = _latency(data, backend, a), _latency(data, backend, b)
    early = [arm for arm in (a, b) if _is_earlier(data, arm)]
    if not early:
        return f"{backend} {ms_a:.0f} vs {ms_b:.0f} ms: {a} {word}"
    if len(early) == 2:
        return (f"{backend} {ms_a:.0f} vs {ms_b:.0f} ms (both from the {_earlier_words(data)} measurement †): "
                f"{a} {word}")
    ref_a, ref_b = _reference(data, backend, a), _reference(data, backend, b)
    if not ref_a or not ref_b:
        return f"{backend}: not comparable ({early[0]}'s latency is from the {_earlier_words(data)} measurement †)"
    return (f"{backend} {ref_a / ms_a:.2f}× vs {ref_b / ms_b:.2f}× speedup over the unpruned model of the same "
            f"measurement ({early[0]}'s from the {_earlier_words(data)} measurement †, the other's from this run): "
            f"{a} {word}")


def _start(run: dict[str, Any], arm: str) -> float | None:
    """The pretrained mAP50-95 ``arm`` of this seed started from: an arm reused from an earlier results file
    (``--reuse-json``) records its source's; the others started from this run's; scratch arms from nothing."""
    r = run.get("arms", {}).get(arm, {})
    if arm in SCRATCH_ARMS or r.get("merged_from"):
        return None
    return r.get("started_from_map50_95", run.get("pretrain", {}).get("map50_95"))


def _unpaired_seeds(data: dict[str, Any], a: str, b: str) -> list[int]:
    """Seeds where ``a`` and ``b`` started from different pretrained weights, so that seed's difference is no
    paired comparison: exactly one of them merged and the pretraining check failed, or one of them reused from an
    earlier results file whose pretrained model differs from the other's (equal within 1e-6: the same weights)."""
    checks = data.get("merge", {}).get("pretrain_match", {})
    out = []
    for seed in data.get("seeds", []):
        run = data.get("runs", {}).get(str(seed), {})
        merged = [bool(run.get("arms", {}).get(arm, {}).get("merged_from")) for arm in (a, b)]
        starts = [_start(run, arm) for arm in (a, b)]
        if (merged[0] != merged[1] and not checks.get(str(seed), {}).get("match", True)) or (
                None not in starts and abs(starts[0] - starts[1]) > 1e-6):
            out.append(seed)
    return out


def paired_differences(data: dict[str, Any], a: str, b: str) -> list[tuple[int, float]]:
    """``(seed, mAP50-95 of a − of b)`` for every seed where both arms finished: every arm of a seed starts from the
    same pretrained weights, data order and augmentation, so these pairs are the like-for-like comparison. A seed
    where one arm is merged (``--merge``) and the pretraining check failed is left out (``_unpaired_seeds``)."""
    pairs = []
    unpaired = _unpaired_seeds(data, a, b)
    for seed in data.get("seeds", []):
        if seed in unpaired:
            continue
        run = data.get("runs", {}).get(str(seed), {}).get("arms", {})
        ra, rb = run.get(a, {}), run.get(b, {})
        if ra.get("ok") and rb.get("ok"):
            pairs.append((seed, ra["map50_95"] - rb["map50_95"]))
    return pairs


def _paired_line(data: dict[str, Any], a: str, b: str) -> list[str]:
    """The per-seed differences under a comparison; informative only (the verdict's tie rule is unchanged).

    Example:
        >>> runs = {str(s): {"arms": {"x": {"ok": True, "map50_95": va}, "y": {"ok": True, "map50_95": vb}}}
        ...         for s, va, vb in ((0, 0.50, 0.466), (1, 0.52, 0.469), (2, 0.40, 0.41))}
        >>> _paired_line({"seeds": [0, 1, 2], "runs": runs}, "x", "y")[0]
        '  - paired by seed, x − y: +3.4, +5.1, −1.0 points (seeds 0, 1, 2); x ahead in 2/3 seeds'
    """
    pairs = paired_differences(data, a, b)
    unpaired = _unpaired_seeds(data, a, b)
    left_out = (f"seed(s) {', '.join(map(str, unpaired))} left out: the two arms started there from different "
                "pretrained weights (a merged or reused arm of an earlier run)") if unpaired else ""
    if not pairs:
        return [f"  - paired by seed, {a} − {b}: not valid — {left_out}"] if unpaired else []
    diffs = ", ".join(f"{d * 100:+.1f}".replace("-", "−") for _, d in pairs)
    ahead = sum(d > 0 for _, d in pairs)
    behind = sum(d < 0 for _, d in pairs)
    tail = f"{a} ahead in {ahead}/{len(pairs)} seeds" + (f", level in {len(pairs) - ahead - behind}"
                                                         if len(pairs) - ahead - behind else "")
    return [f"  - paired by seed, {a} − {b}: {diffs} points (seeds {', '.join(str(s) for s, _ in pairs)}); {tail}"
            + (f"; {left_out}" if left_out else "")]


def _sweep_verdict(data: dict[str, Any]) -> list[str]:
    """Where Torch-Pruning's model is faster than ours at the same sweep target (same untrained weights); within
    3 % is a tie."""
    wins, losses, ties = [], [], []
    for backend in ("eager", "onnxruntime"):
        ref = _latency(data, backend, "sweep unpruned")
        for target in SWEEP_TARGETS:
            tag = f"−{target:.0%}"
            tp_name = f"sweep tp-magnitude {tag}"
            tp = _latency(data, backend, tp_name)
            if not ref or not tp:
                continue
            for ours in ("ours-uniform", "ours-uniform-r8"):
                name = f"sweep {ours} {tag}"
                mine = _latency(data, backend, name)
                if mine:
                    entry = f"{ours} {tag} {backend} ({ref / mine:.2f}× vs {ref / tp:.2f}×)"
                    {1: wins, -1: losses, 0: ties}[_faster(data, name, tp_name, backend)].append(entry)
    lines = []
    if losses:
        lines.append("- Speed sweep, **Torch-Pruning's model is faster** than ours at the same FLOPs target: "
                     + "; ".join(losses) + ".")
    if wins:
        lines.append("- Speed sweep, ours is faster: " + "; ".join(wins) + ".")
    if ties:
        lines.append("- Speed sweep, ties (within 3 %): " + "; ".join(ties) + ".")
    return lines
