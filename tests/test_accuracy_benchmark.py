"""benchmarks/accuracy.py: arms, YOLOv7-tiny sibling, paired verdict, cross-model reuse (no training)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

accuracy = pytest.importorskip("accuracy")


def test_latency_arm_is_an_arm_with_label_and_marker() -> None:
    assert "ours-sensitivity-latency" in accuracy.ARMS
    assert "latency cost" in accuracy.ARM_LABELS["ours-sensitivity-latency"]
    assert set(accuracy.ARM_LABELS) == set(accuracy.ARMS)


def test_latency_arm_callback_settings(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    cfg = accuracy.Config.quick()
    seed_dir = tmp_path / "seed0"
    seed_dir.mkdir()
    callbacks, _ = accuracy._arm_callbacks("ours-sensitivity-latency", cfg, None, seed_dir)
    (callback,) = callbacks
    assert callback.config.strategy == "sensitivity"
    assert callback.config.selection_cost == "latency"
    assert callback.config.latency_backend == "onnxruntime"
    assert callback.config.target == cfg.target and list(callback.config.schedule) == cfg.schedule
    assert callback.example_input == [1, 3, 640, 640]
    assert Path(callback.config.cost_table_dir) == tmp_path / "cost_tables"  # shared by the seeds


def test_sensitivity_arm_unchanged(tmp_path: Path) -> None:
    callbacks, _ = accuracy._arm_callbacks("ours-sensitivity-r8", accuracy.Config.quick(), None, tmp_path)
    assert callbacks[0].config.strategy == "sensitivity" and callbacks[0].config.round_to == 8
    assert callbacks[0].config.selection_cost == "flops"


def test_yolov7_tiny_sibling_is_the_yaml_narrower() -> None:
    pytest.importorskip("ultralytics")
    cfg = accuracy.Config(imgsz=64, model="yolov7-tiny")
    assert accuracy._base_width("yolov7-tiny") == 1.0
    model = accuracy.sibling_model(cfg, 0.5)
    assert 0.3 <= model.sibling_width < 1.0
    full = accuracy._yaml_at_width("yolov7-tiny", None, seed=0)
    assert type(model) is type(full) and len(model.model) == len(full.model)
    assert model.model[0].conv.out_channels < full.model[0].conv.out_channels


def test_yolov8n_sibling_width_unchanged() -> None:
    pytest.importorskip("ultralytics")
    from _common import yolo_at_width

    a = accuracy._yaml_at_width("yolov8n.yaml", 0.2, seed=0)
    b = yolo_at_width("yolov8n.yaml", 0.2, nc=3, seed=0)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


def test_prefix_per_model() -> None:
    assert accuracy._model_stem("yolov8n.yaml") == "yolov8n"
    assert accuracy._model_stem("lightning_prune/models/yolov7-tiny.yaml") == "yolov7-tiny"


def test_paired_line_and_strict_tie() -> None:
    runs = {str(s): {"arms": {"ours-a": {"ok": True, "map50_95": a}, "b": {"ok": True, "map50_95": b}}}
            for s, a, b in ((0, 0.60, 0.566), (1, 0.62, 0.569), (2, 0.58, 0.502))}
    data = {"seeds": [0, 1, 2], "runs": runs}
    (line,) = accuracy._paired_line(data, "ours-a", "b")
    assert "+3.4, +5.1, +7.8 points" in line and "ahead in 3/3 seeds" in line
    # the strict rule stays: a mean gap inside the seed spread is a tie even if every pair is ahead
    a = {"map50_95": 0.60, "map50_95_seeds": [0.60, 0.62, 0.58]}
    b = {"map50_95": 0.545, "map50_95_seeds": [0.566, 0.569, 0.502]}
    assert accuracy.compare_map("ours-a", a, "b", b)[0] == 0


def test_paired_skips_failed_seeds() -> None:
    runs = {"0": {"arms": {"x": {"ok": True, "map50_95": 0.5}, "y": {"ok": False}}},
            "1": {"arms": {"x": {"ok": True, "map50_95": 0.5}, "y": {"ok": True, "map50_95": 0.4}}}}
    assert accuracy.paired_differences({"seeds": [0, 1], "runs": runs}, "x", "y") == [(1, pytest.approx(0.1))]


def _write_arm(seed_dir: Path, arm: str, cfg: accuracy.Config) -> None:
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / f"result-{arm}.json").write_text(json.dumps({"ok": True, "map50_95": 0.5, "config": asdict(cfg),
                                                             "git": "abc"}))
    torch.save(torch.nn.Conv2d(1, 1, 1), seed_dir / f"arm-{arm}.pt")


def test_model_free_scratch_arms_reused_across_models_only_if_config_identical(tmp_path: Path) -> None:
    v8 = accuracy.Config.quick()
    v7 = accuracy.Config.quick()
    v7.model, v7.sweep = "yolov7-tiny", False
    _write_arm(tmp_path / "v8" / "seed0", "yolo11n-scratch", v8)
    _write_arm(tmp_path / "v8" / "seed0", "sibling-scratch", v8)
    here = tmp_path / "v7" / "seed0"
    here.mkdir(parents=True)
    taken = accuracy._scratch_from_elsewhere("yolo11n-scratch", v7, here, tmp_path / "v8")
    assert taken and taken["reused"] and taken["git"] == "abc" and (here / "arm-yolo11n-scratch.pt").is_file()
    # then an ordinary --reuse in this work directory finds it
    args = argparse.Namespace(reuse=True, scratch_workdir=None, timeout=1)
    assert accuracy.arm_result("yolo11n-scratch", v7, here, args)["reused"]
    # the sibling depends on the model: never taken from another model's run
    assert accuracy._scratch_from_elsewhere("sibling-scratch", v7, here, tmp_path / "v8") is None
    # another training setting: not reused
    other = accuracy.Config.quick()
    other.model, other.pretrain_epochs = "yolov7-tiny", 99
    assert accuracy._scratch_from_elsewhere("yolo11n-scratch", other, tmp_path / "v7b" / "seed0",
                                            tmp_path / "v8") is None


@pytest.mark.parametrize("arm", ["tp-magnitude", "modelpruning"])
def test_peer_arms_set_up_on_yolov7_tiny(arm: str, tmp_path: Path) -> None:
    """The peers' set-up on the paper's model (Torch-Pruning prunes a probe copy to the FLOPs target; ModelPruning
    finds its per-layer fraction): either works, or the arm's failure is what the benchmark records."""
    pytest.importorskip("ultralytics")
    if arm == "tp-magnitude":
        pytest.importorskip("torch_pruning")
    cfg = accuracy.Config(imgsz=64, model="yolov7-tiny")
    module = argparse.Namespace(model=accuracy._yaml_at_width("yolov7-tiny", None, seed=0))
    callbacks, extra = accuracy._arm_callbacks(arm, cfg, module, tmp_path)
    assert len(callbacks) == 1
    if arm == "tp-magnitude":
        assert extra["csp_blocks_rewritten"] == 0 and 0 < extra["tp_ratio"] < 0.9
    else:
        assert 0 < extra["channel_fraction"] < 1
