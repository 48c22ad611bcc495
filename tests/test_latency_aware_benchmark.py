"""benchmarks/latency_aware.py: the paired verdict (per-round ratios, bootstrap interval) and the run-to-run table."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

bench = pytest.importorskip("latency_aware")


def test_paired_ratio_cancels_what_the_machine_did_in_each_round() -> None:
    # both arms slow down together in round 2 (another job): the per-round ratio stays 1.25 throughout
    fast = [8.0, 8.0, 16.0, 16.0, 8.0, 8.0]
    slow = [10.0, 10.0, 20.0, 20.0, 10.0, 10.0]
    row = bench.paired(fast, slow, repeats=2)
    assert row["rounds"] == 3
    assert row["ratio"] == pytest.approx(1.25) and row["low"] == pytest.approx(1.25)
    assert row["high"] == pytest.approx(1.25)
    # the FLOPs ratio turns a speed ratio into an efficiency ratio
    assert bench.paired(fast, slow, repeats=2, flops_ratio=0.8)["ratio"] == pytest.approx(1.0)


def test_paired_interval_straddles_parity_when_rounds_disagree() -> None:
    a = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0, 11.0, 9.0]
    b = [10.5, 10.0, 9.5, 10.0, 10.0, 9.5, 10.5, 9.5]
    row = bench.paired(a, b, repeats=1)
    assert row["low"] < 1.0 < row["high"]
    assert "level with" in bench.standing(0.9, {"sibling": 0.9}, {"sibling": row})


def test_paired_without_a_full_round_is_nan() -> None:
    row = bench.paired([1.0], [1.0], repeats=2)
    assert row["rounds"] == 0 and math.isnan(row["ratio"])


def test_standing_reads_the_interval_and_falls_back_to_the_level_margin() -> None:
    above = {"ratio": 1.04, "low": 1.02, "high": 1.06, "rounds": 30}
    below = {"ratio": 0.95, "low": 0.93, "high": 0.97, "rounds": 30}
    text = bench.standing(0.91, {"sibling": 0.88, "uniform": 0.99}, {"sibling": above, "uniform": below})
    assert text.startswith("above sibling (×1.040") and "below uniform (×0.950" in text
    # an efficiency gap inside LEVEL is level without intervals (runs recorded before them), whatever its sign
    assert bench.standing(0.91, {"sibling": 0.89}) == f"level with sibling (within {bench.LEVEL:.2f})"
    assert bench.standing(0.95, {"sibling": 0.89}) == "above sibling"


def test_run_to_run_counts_above_by_interval_where_a_run_has_one() -> None:
    old = {"commit": "aaaaaaa", "started": "2026-12-01 00:00 UTC",
           "pairs": {"m / b": {"measured": 0.91, "sibling": 0.89, "target_ratio": 0.5}}}
    new = {"commit": "bbbbbbb", "started": "2026-12-02 00:00 UTC",
           "pairs": {"m / b": {"measured": 0.91, "sibling": 0.89, "target_ratio": 0.5,
                               "vs_sibling": [1.025, 1.01, 1.04]}}}
    assert bench.above_sibling(old["pairs"]["m / b"]) is False  # 0.02 < LEVEL
    assert bench.above_sibling(new["pairs"]["m / b"]) is True  # the whole interval above 1
    row = next(line for line in bench.run_to_run([old, new]) if line.startswith("| m / b"))
    assert "(×1.025 [1.010, 1.040])" in row and row.endswith("| 2 of 2 | 1 of 2 |")
