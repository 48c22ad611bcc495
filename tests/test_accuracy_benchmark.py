"""benchmarks/accuracy: arms, YOLOv7-tiny sibling, paired verdict, cross-model reuse (no training)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

accuracy = pytest.importorskip("benchmarks.accuracy")


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


def test_latency_target_arm_and_its_flops_targeted_rival(tmp_path: Path) -> None:
    """Issue 14 item 6's accuracy question: a −50 % latency target against FLOPs-targeted uniform L1 pruned to about
    the same latency (−70 % FLOPs); the answer and the verdict compare the two."""
    cfg = accuracy.Config.quick()
    seed_dir = tmp_path / "seed0"
    seed_dir.mkdir()
    (target,), _ = accuracy._arm_callbacks("ours-latency-target", cfg, None, seed_dir)
    assert target.config.target_metric == "latency" and target.config.target == cfg.target
    assert target.config.selection_cost == "latency" and target.config.strategy == "global"
    assert target.config.latency_backend == "onnxruntime" and target.example_input == [1, 3, 640, 640]
    assert target.config.max_total_rate == 0.75  # uncapped, it emptied the early layers (mAP ~0)
    (rival,), extra = accuracy._arm_callbacks("ours-uniform-70", cfg, None, seed_dir)
    assert rival.config.target_metric == "flops" and rival.config.target == 0.70 == extra["flops_target"]
    assert rival.config.strategy == "uniform"
    assert "ours-latency-target" in accuracy.ANSWER_ARMS and accuracy.ANSWER_RIVALS[0] == "ours-uniform-70"
    (paper,), _ = accuracy._arm_callbacks("ours-sensitivity-latency-target", cfg, None, seed_dir)
    assert paper.config.strategy == "sensitivity" and paper.config.target_metric == "latency"
    assert paper.config.selection_cost == "latency" and paper.config.max_total_rate == 0.75


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


# -- --merge (fabricated JSON, no training) ---------------------------------------------------------------------------
def _cfg(seed: int) -> dict:
    return asdict(accuracy.Config(threads=1, sweep=False, seed=seed))


def _res(value: float, seed: int, git: str, flops: int = 4_000_000_000, params: int = 1_000_000, **extra) -> dict:
    return {"ok": True, "map50_95": value, "map50": value + 0.2, "fit_s": 60.0, "flops": flops // 25,
            "flops_base": 8_000_000_000 // 25, "flops_640": flops, "params": params, "zeroed_filters": 0.0,
            "config": _cfg(seed), "git": git, "reused": True, **extra}


def _old(pretrain: tuple[float, ...] = (0.35, 0.51, 0.48)) -> dict:
    runs = {}
    for seed, pre in enumerate(pretrain):
        runs[str(seed)] = {"pretrain": {"map50_95": pre, "map50": 0.5, "ok": True}, "arms": {
            "unpruned": _res(0.70 + seed / 100, seed, "5a58f3c", flops=8_000_000_000, params=3_000_000),
            "ours-sensitivity": _res(0.68 + seed / 100, seed, "5a58f3c", params=700_000),
            "modelpruning": _res(0.65, seed, "4138f81", flops=8_000_000_000, params=3_000_000, ema=False,
                                 step_amount=0.11, channel_fraction=0.3, zeroed_filters=0.3),
            "sibling-scratch": _res(0.72 - seed / 100, seed, "5a58f3c", width_multiple=0.15),
            "ours-sensitivity-latency": _res(0.10, seed, "5a58f3c")}}  # an old version: this run's own must win
    latency = {"loadavg_before": [9.2, 9.5, 8.8], "loadavg_after": [6.2, 7.1, 7.9],
               "eager": {"unpruned": {"median_ms": 600.0, "iqr_ms": 1.0},
                         "ours-sensitivity": {"median_ms": 300.0, "iqr_ms": 1.0},
                         "modelpruning": {"median_ms": 700.0, "iqr_ms": 1.0},
                         "sibling-scratch": {"median_ms": 450.0, "iqr_ms": 1.0}},
               "onnxruntime": {"unpruned": {"median_ms": 200.0, "iqr_ms": 1.0},
                               "ours-sensitivity": {"median_ms": 120.0, "iqr_ms": 1.0}}}
    return {"command": "python benchmarks/accuracy.py --old", "date": "2026-12-01 21:49 UTC", "git": "4138f81",
            "config": _cfg(0), "seeds": [0, 1, 2], "runs": runs, "latency": latency, "sweep_flops": {}}


def _this_runs(pretrain: tuple[float, ...] = (0.35, 0.51, 0.48)) -> dict:
    return {seed: {"pretrain": {"map50_95": pre, "ok": True},
                   "arms": {"ours-sensitivity-latency": _res(0.69 + seed / 100, seed, "6b1a899", reused=False)}}
            for seed, pre in enumerate(pretrain)}


def _merged_data(runs: dict, old: dict, record: dict) -> dict:
    arms = accuracy.combine_seeds(runs)
    for arm, r in arms.items():  # as merged_latency_models decides, without building models
        if r.get("merged_from"):
            r["latency_source"] = (accuracy.LATENCY_REBUILT if arm in accuracy.REBUILDABLE_ARMS
                                   else accuracy.LATENCY_EARLIER)
    record["latency_earlier_loaded"] = accuracy._earlier_loaded(old["latency"])
    latency = {"loadavg_before": [0.1, 0.1, 0.1], "loadavg_after": [0.2, 0.2, 0.2],
               "eager": {"unpruned": {"median_ms": 200.0, "iqr_ms": 1.0},
                         "ours-sensitivity-latency": {"median_ms": 100.0, "iqr_ms": 1.0},
                         "modelpruning": {"median_ms": 201.0, "iqr_ms": 1.0},
                         "sibling-scratch": {"median_ms": 150.0, "iqr_ms": 1.0}},
               "onnxruntime": {"unpruned": {"median_ms": 80.0, "iqr_ms": 1.0},
                               "ours-sensitivity-latency": {"median_ms": 40.0, "iqr_ms": 1.0}}}
    return {"command": "python benchmarks/accuracy.py --merge old.json", "date": "2026-12-02 09:00 UTC",
            "git": "6b1a899", "config": _cfg(0), "seeds": list(runs), "total_s": 60.0,
            "runs": {str(s): r for s, r in runs.items()}, "arms": arms, "latency": latency, "sweep_flops": {},
            "merge": record, "latency_earlier": old["latency"]}


def test_merge_takes_other_arms_own_arms_win_and_checks_pretraining() -> None:
    runs, old = _this_runs(), _old()
    record = accuracy.merge_runs(runs, ["ours-sensitivity-latency"], old, "old.json", _cfg(0))
    for seed in (0, 1, 2):
        arms = runs[seed]["arms"]
        assert list(arms) == ["unpruned", "ours-sensitivity", "modelpruning", "ours-sensitivity-latency",
                              "sibling-scratch"]  # ARMS order
        assert arms["ours-sensitivity-latency"]["map50_95"] == pytest.approx(0.69 + seed / 100)  # own wins
        assert "merged_from" not in arms["ours-sensitivity-latency"]
        assert arms["unpruned"]["merged_from"] == "old.json"
        assert arms["unpruned"]["git"] == "5a58f3c" and arms["modelpruning"]["git"] == "4138f81"
        assert arms["unpruned"]["config"]["seed"] == seed  # its own configuration
    assert set(record["arms"]) == {"unpruned", "ours-sensitivity", "modelpruning", "sibling-scratch"}
    assert record["arms"]["modelpruning"] == {"seeds": [0, 1, 2], "git": ["4138f81"]}
    assert all(c["match"] for c in record["pretrain_match"].values())
    assert record["config_differs"] == {} and record["seeds_not_merged"] == []
    data = _merged_data(runs, old, record)
    assert data["arms"]["unpruned"]["map50_95_seeds"] == pytest.approx([0.70, 0.71, 0.72])
    text = accuracy.render(data, "accuracy")
    assert "Merged (`--merge`) from `old.json`" in text and "modelpruning (seeds 0, 1, 2; git 4138f81)" in text
    assert "identical weights, paired comparison valid" in text
    assert "4138f81: modelpruning" in text and "5a58f3c: ours-sensitivity, sibling-scratch, unpruned" in text
    assert "Reused (`--reuse`)" not in text  # the merged run's own reuse is not this invocation's
    (line,) = accuracy._paired_line(data, "ours-sensitivity-latency", "unpruned")
    assert "(seeds 0, 1, 2)" in line and "left out" not in line


def test_merge_only_this_runs_seeds_and_config_differences() -> None:
    runs = {0: _this_runs()[0]}
    cfg = {**_cfg(0), "finetune_epochs": 3}
    record = accuracy.merge_runs(runs, ["ours-sensitivity-latency"], _old(), "old.json", cfg)
    assert record["seeds_not_merged"] == [1, 2] and list(record["pretrain_match"]) == ["0"]
    assert record["config_differs"] == {"finetune_epochs": {"this": 3, "merged": 10}}


def test_merge_pretrain_mismatch_leaves_out_mixed_pairs() -> None:
    runs, old = _this_runs((0.35, 0.40, 0.48)), _old()
    record = accuracy.merge_runs(runs, ["ours-sensitivity-latency"], old, "old.json", _cfg(0))
    assert [s for s, c in record["pretrain_match"].items() if not c["match"]] == ["1"]
    data = _merged_data(runs, old, record)
    # a merged arm against this run's arm: seed 1 is no pair
    assert [s for s, _ in accuracy.paired_differences(data, "ours-sensitivity-latency", "unpruned")] == [0, 2]
    (line,) = accuracy._paired_line(data, "ours-sensitivity-latency", "unpruned")
    assert "(seeds 0, 2)" in line and "seed(s) 1 left out" in line
    # two merged arms started from the same (earlier) pretrained weights: still paired
    assert [s for s, _ in accuracy.paired_differences(data, "ours-sensitivity", "unpruned")] == [0, 1, 2]
    text = accuracy.render(data, "accuracy")
    assert "differ for seed(s) 1" in text and "identical weights" not in text
    # every seed mismatching: the paired line says it is not valid
    runs, old = _this_runs((0.1, 0.2, 0.3)), _old()
    data = _merged_data(runs, old, accuracy.merge_runs(runs, ["ours-sensitivity-latency"], old, "o.json", _cfg(0)))
    (line,) = accuracy._paired_line(data, "ours-sensitivity-latency", "sibling-scratch")
    assert "not valid" in line


def test_merged_latency_sources_and_speedups_per_measurement() -> None:
    runs, old = _this_runs(), _old()
    data = _merged_data(runs, old, accuracy.merge_runs(runs, ["ours-sensitivity-latency"], old, "old.json",
                                                       _cfg(0)))
    arms = data["arms"]
    assert arms["ours-sensitivity"]["latency_source"].startswith("earlier run")
    assert arms["sibling-scratch"]["latency_source"] == accuracy.LATENCY_REBUILT
    assert "latency_source" not in arms["ours-sensitivity-latency"]
    assert data["merge"]["latency_earlier_loaded"] is (9.2 > (os.cpu_count() or 1))  # the larger 1-min load
    # the earlier arm: its own number and the earlier unpruned as the reference; the rest: this run's
    assert accuracy._latency(data, "eager", "ours-sensitivity") == 300.0
    assert accuracy._reference(data, "eager", "ours-sensitivity") == 600.0
    assert accuracy._latency(data, "eager", "sibling-scratch") == 150.0
    assert accuracy._reference(data, "eager", "sibling-scratch") == 200.0
    assert accuracy._latency(data, "eager", "unpruned") == 200.0
    # across measurements only the speedups compare: 300/600 vs 100/200 is a tie, not "3× slower"
    assert accuracy._faster(data, "ours-sensitivity", "ours-sensitivity-latency", "eager") == 0
    assert accuracy._faster(data, "ours-sensitivity", "sibling-scratch", "eager") == 1  # 0.50 vs 0.75
    text = accuracy.render(data, "accuracy")
    row = next(line for line in text.splitlines() if line.startswith("| **ours: sensitivity (paper)**"))
    assert "300.0 (2.00×) †" in row and "120.0 (1.67×) †" in row
    row = next(line for line in text.splitlines() if line.startswith("| narrower sibling"))
    assert "150.0 (1.33×)" in row and "†" not in row
    assert "† latency of ours-sensitivity from the" in text
    assert "speedup over the unpruned model of the same measurement (ours-sensitivity's from the" in text
    assert "Latency of the merged arms:" in text
    # the latency-cost arm is compared with the FLOPs-cost sensitivity arm it replaces
    line = next(line for line in text.splitlines() if "ours-sensitivity-latency and ours-sensitivity tie" in line)
    assert "eager 2.00× vs 2.00× speedup" in line


def test_merged_latency_models_rebuild_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.accuracy import reuse as accuracy  # patched in the module that looks them up
    from lightning_prune import count_flops, count_params

    tiny = torch.nn.Conv2d(3, 1, 1)
    flops, params = count_flops(tiny, torch.zeros(1, 3, 640, 640)), count_params(tiny)
    monkeypatch.setattr(accuracy, "rebuild_architecture", lambda arm, r, cfg: tiny)
    arms = {"unpruned": _res(0.7, 0, "a", flops=flops, params=params, merged_from="o.json"),
            "sibling-scratch": _res(0.7, 0, "a", flops=flops, params=params + 1, merged_from="o.json"),
            "tp-magnitude": _res(0.6, 0, "a", merged_from="o.json"),
            "ours-sensitivity-latency": _res(0.7, 0, "b")}
    models = accuracy.merged_latency_models(arms, accuracy.Config())
    assert list(models) == ["unpruned"]
    assert arms["unpruned"]["latency_source"] == accuracy.LATENCY_REBUILT
    assert arms["sibling-scratch"]["latency_source"] == accuracy.LATENCY_EARLIER  # mismatch: earlier kept
    assert "params" in arms["sibling-scratch"]["rebuild_error"]
    assert arms["tp-magnitude"]["latency_source"] == accuracy.LATENCY_EARLIER
    assert "latency_source" not in arms["ours-sensitivity-latency"]


def test_rebuilt_architectures_match_the_committed_results() -> None:
    """The rebuilt merged arms have the FLOPs and params the earlier YOLOv8n run recorded for its trained models."""
    pytest.importorskip("ultralytics")
    from lightning_prune import count_flops, count_params

    committed = json.loads((REPO / "benchmarks" / "results" / "accuracy.json").read_text())
    cfg = accuracy.Config(**committed["config"])
    x = torch.zeros(1, 3, 640, 640)
    for arm in accuracy.REBUILDABLE_ARMS:
        r = committed["arms"].get(arm)
        if not r or not r.get("ok"):
            continue
        model = accuracy.rebuild_architecture(arm, r, cfg)
        assert (count_flops(model, x), count_params(model)) == (r["flops_640"], r["params"]), arm
    with pytest.raises(ValueError, match="depends on its training"):
        accuracy.rebuild_architecture("ours-sensitivity", {}, cfg)


def test_render_cli_on_merged_json(tmp_path: Path) -> None:
    runs, old = _this_runs(), _old()
    data = _merged_data(runs, old, accuracy.merge_runs(runs, ["ours-sensitivity-latency"], old, "old.json",
                                                       _cfg(0)))
    path = tmp_path / "merged.json"
    path.write_text(json.dumps(data))
    assert accuracy.main(["--render", str(path)]) == 0
    text = (tmp_path / "merged.md").read_text()
    assert "Merged (`--merge`)" in text and "†" in text


def test_combine_seeds_keeps_arms_missing_in_the_first_seed() -> None:
    runs = {0: {"arms": {"a": {"ok": True, "map50_95": 0.5, "map50": 0.7}}},
            1: {"arms": {"a": {"ok": True, "map50_95": 0.6, "map50": 0.8},
                         "unpruned": {"ok": True, "map50_95": 0.7, "map50": 0.9}}}}
    combined = accuracy.combine_seeds(runs)
    assert list(combined) == ["unpruned", "a"]
    assert combined["unpruned"]["failed_seeds"] == ["seed 0: not run for this seed"]


def test_reuse_json_takes_earlier_results_for_seeds_whose_models_are_not_timed(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from benchmarks.accuracy import runs as accuracy  # patched in the module that looks them up

    cfg = dataclasses.replace(accuracy.Config.quick(), seed=1)
    earlier = tmp_path / "earlier.json"
    entry = {"ok": True, "map50_95": 0.5, "config": asdict(cfg), "git": "abc1234"}
    earlier.write_text(json.dumps({"runs": {"1": {"arms": {"ours-uniform": entry}}}}))
    args = argparse.Namespace(reuse=True, reuse_json=[earlier], scratch_workdir=None, timeout=1)
    ran = []
    monkeypatch.setattr(accuracy, "run_child", lambda *a, **k: ran.append(a) or {"ok": False, "error": "x"})
    seed_dir = tmp_path / "seed1"
    seed_dir.mkdir()
    taken = accuracy.arm_result("ours-uniform", cfg, seed_dir, args, need_model=False)
    assert taken["reused"] and taken["git"] == "abc1234" and taken["reused_from"] == str(earlier) and not ran
    assert taken["started_from_map50_95"] is None  # the earlier file records no pretraining for that seed
    # the first seed's models are timed: a results file cannot stand in for them
    accuracy.arm_result("ours-uniform", cfg, seed_dir, args, need_model=True)
    assert ran
    # another configuration is never reused
    ran.clear()
    accuracy.arm_result("ours-uniform", dataclasses.replace(cfg, finetune_epochs=cfg.finetune_epochs + 1), seed_dir,
                        args, need_model=False)
    assert ran


def test_reuse_json_takes_model_free_arms_from_another_models_results(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """YOLO11n from scratch does not read --model: a YOLOv7-tiny run takes it from the YOLOv8n results file (the
    first file holding the arm wins); a pruning arm of the other model is never taken."""
    import dataclasses

    from benchmarks.accuracy import runs as accuracy  # patched in the module that looks them up

    v7 = dataclasses.replace(accuracy.Config.quick(), seed=1, model="yolov7-tiny")
    v8 = dataclasses.replace(v7, model="yolov8n.yaml")
    v7_file, v8_file = tmp_path / "v7.json", tmp_path / "v8.json"
    v7_file.write_text(json.dumps({"runs": {"1": {"arms": {}}}}))
    v8_file.write_text(json.dumps({"runs": {"1": {"arms": {
        "yolo11n-scratch": {"ok": True, "map50_95": 0.6, "config": asdict(v8), "git": "abc1234"},
        "ours-uniform": {"ok": True, "map50_95": 0.5, "config": asdict(v8), "git": "abc1234"}}}}}))
    args = argparse.Namespace(reuse=True, reuse_json=[v7_file, v8_file], scratch_workdir=None, timeout=1)
    ran = []
    monkeypatch.setattr(accuracy, "run_child", lambda *a, **k: ran.append(a[0]) or {"ok": False, "error": "x"})
    seed_dir = tmp_path / "seed1"
    seed_dir.mkdir()
    taken = accuracy.arm_result("yolo11n-scratch", v7, seed_dir, args, need_model=False)
    assert taken["reused_from"] == str(v8_file) and taken["map50_95"] == 0.6 and not ran
    assert taken["config"] == asdict(v7) and taken["ran_with_config"]["model"] == "yolov8n.yaml"
    accuracy.arm_result("ours-uniform", v7, seed_dir, args, need_model=False)
    assert ran == ["ours-uniform"]


def test_train_only_stops_before_the_latency_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.accuracy import cli as accuracy  # patched in the module that looks them up

    monkeypatch.setattr(accuracy, "make_data", lambda cfg, workdir: None)
    monkeypatch.setattr(accuracy, "pretrained", lambda cfg, workdir, timeout: {"ok": True, "map50_95": 0.5})
    monkeypatch.setattr(accuracy, "arm_result", lambda arm, cfg, workdir, args, need_model=True: {
        "ok": True, "map50_95": 0.5, "flops": 1, "flops_base": 2, "fit_s": 1.0})

    def no_timing(*args: object, **kwargs: object) -> None:
        raise AssertionError("--train-only must not time anything")

    monkeypatch.setattr(accuracy, "measure_latency_all", no_timing)
    out = tmp_path / "out"
    assert accuracy.main(["--quick", "--arms", "unpruned", "--seeds", "0", "1", "--workdir", str(tmp_path / "w"),
                          "--train-only", "--out-dir", str(out)]) == 0
    assert (tmp_path / "w" / "seed1").is_dir() and not out.exists()


def test_sibling_at_latency_needs_the_matched_arm(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run that arm first"):
        accuracy.sibling_at_latency(accuracy.Config(imgsz=64), tmp_path / "arm-ours-sensitivity.pt")


def test_sibling_at_latency_picks_the_width_whose_measured_latency_matches(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With a stand-in timer (latency = parameter count), the sibling matched to a model that *is* one sibling
    width is that width's channel configuration, and every timed width is one distinct configuration."""
    pytest.importorskip("ultralytics")
    import lightning_prune.profiling as profiling
    from benchmarks.accuracy import models as accuracy  # patched in the module that looks them up

    cfg = accuracy.Config(imgsz=64)
    target = accuracy._yaml_at_width(cfg.model, 0.15625, seed=0).eval()
    torch.save(target, tmp_path / "arm-ours-sensitivity.pt")
    calls = []

    def fake(models, example, backend, **kwargs):  # noqa: ANN001, ANN202 - stands in for compare_latency
        calls.append(backend)
        return {name: argparse.Namespace(median_ms=float(sum(p.numel() for p in m.parameters())))
                for name, m in models.items()}

    monkeypatch.setattr(profiling, "compare_latency", fake)
    built: dict[float, torch.nn.Module] = {}
    real = accuracy._yaml_at_width
    monkeypatch.setattr(accuracy, "_yaml_at_width", lambda name, width, seed: copy.deepcopy(
        built.setdefault(width, real(name, width, seed))))
    match = accuracy.sibling_at_latency(cfg, tmp_path / "arm-ours-sensitivity.pt")
    assert calls == ["eager", "onnxruntime"] * 2  # all widths, then the three nearest again
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    model = accuracy._yaml_at_width(cfg.model, float(match["chosen"]), seed=0)
    assert count(model) == count(target) and len(match["ratios"]) == 3
    assert match["ratios"][match["chosen"]] == {"eager": pytest.approx(1.0), "onnxruntime": pytest.approx(1.0)}
    widths = [accuracy._yaml_at_width(cfg.model, float(w), seed=0) for w in match["coarse"]]
    assert len({count(m) for m in widths}) == len(widths) >= 3
    # the seeds share one match: measured for the first seed that gets there, taken by the next
    measured = []
    monkeypatch.setattr(accuracy, "sibling_at_latency", lambda c, f: measured.append(c.seed) or dict(match))
    for seed in (0, 1):
        (tmp_path / "w" / f"seed{seed}").mkdir(parents=True)
    torch.save(target, tmp_path / "w" / "seed0" / "arm-ours-sensitivity.pt")
    shared = accuracy.shared_latency_match(cfg, tmp_path / "w" / "seed0")
    again = accuracy.shared_latency_match(accuracy.Config(imgsz=64, seed=1), tmp_path / "w" / "seed1")
    assert measured == [0] and again["chosen"] == shared["chosen"] == match["chosen"]
    assert again["reference_seed"] == 0
    narrower = accuracy._yaml_at_width(cfg.model, 0.125, seed=0)
    for seed in (0, 1):  # seed 0's model changed: seed 1 measures against its own
        torch.save(narrower, tmp_path / "w" / f"seed{seed}" / "arm-ours-sensitivity.pt")
    accuracy.shared_latency_match(accuracy.Config(imgsz=64, seed=1), tmp_path / "w" / "seed1")
    assert measured == [0, 1]
    model.sibling_width = float(match["chosen"])
    rebuilt = accuracy.rebuild_architecture("sibling-latency-scratch",
                                            {"width_multiple": model.sibling_width, "config": asdict(cfg)}, cfg)
    assert count(rebuilt) == count(target)


def test_identical_sibling_run_is_taken_not_retrained(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    cfg = accuracy.Config(imgsz=64)
    model = accuracy._yaml_at_width(cfg.model, 0.15625, seed=0)
    assert accuracy.identical_sibling_run(model, cfg, tmp_path) is None  # nothing ran
    torch.save(model, tmp_path / "arm-sibling-scratch.pt")
    result = {"ok": True, "config": asdict(cfg), "git": "abc1234", "map50_95": 0.7, "width_multiple": 0.15}
    (tmp_path / "result-sibling-scratch.json").write_text(json.dumps(result))
    taken = accuracy.identical_sibling_run(model, cfg, tmp_path)  # 0.15 and 0.15625 round to the same channels
    assert taken is not None and taken["map50_95"] == 0.7 and taken["same_run_as"] == "sibling-scratch"
    assert taken["trained_at"] == "abc1234" and (tmp_path / "arm-sibling-latency-scratch.pt").is_file()
    narrower = accuracy._yaml_at_width(cfg.model, 0.125, seed=0)
    assert accuracy.identical_sibling_run(narrower, cfg, tmp_path) is None
    other = {**result, "config": {**asdict(cfg), "finetune_epochs": 1}}
    (tmp_path / "result-sibling-scratch.json").write_text(json.dumps(other))
    assert accuracy.identical_sibling_run(model, cfg, tmp_path) is None


def test_answer_compares_at_measured_latency_and_never_counts_a_tie() -> None:
    """The answer table: a sibling at equal latency (within 3 %) and a gap wider than both spreads loses to it; a gap
    inside the spreads with a faster model of ours is a tied mAP, not a win."""
    maps = {"ours-sensitivity": (0.60, 0.61, 0.62), "sibling-latency-scratch": (0.70, 0.71, 0.72),
            "ours-uniform": (0.59, 0.60, 0.63)}
    runs = {str(s): {"arms": {arm: _res(v[s], s, "a") for arm, v in maps.items()}} for s in range(3)}
    arms = accuracy.combine_seeds({s: runs[str(s)] for s in range(3)})
    ms = {"ours-sensitivity": 100.0, "sibling-latency-scratch": 101.0, "ours-uniform": 120.0}
    latency = {b: {arm: {"median_ms": v, "iqr_ms": 1.0} for arm, v in ms.items()} for b in ("eager", "onnxruntime")}
    data = {"seeds": [0, 1, 2], "runs": runs, "arms": arms, "latency": latency}
    text = "\n".join(accuracy.answer(data))
    row = next(line for line in text.splitlines() if line.startswith("| sibling-latency-scratch"))
    assert "| 1.01 / 1.01 |" in row and "−10.0 (2.0 / 2.0)" in row and row.endswith("| it wins |")
    row = next(line for line in text.splitlines() if line.startswith("| ours-uniform"))
    assert "1.20 / 1.20" in row and row.endswith("| tied mAP, ours faster |")
    assert "ours-sensitivity-latency" not in text  # only arms that ran
    assert accuracy.answer({"seeds": [0], "runs": {}, "arms": {}, "latency": {}}) == []


def test_reused_arms_from_other_pretrained_weights_are_not_paired() -> None:
    """An arm reused from a results file whose pretrained model differs from this run's (another machine) counts
    in the mean, but its paired line with this run's arms leaves that seed out; scratch arms always pair."""
    runs = {}
    for seed in (0, 1):
        arms = {"unpruned": _res(0.70, seed, "a"), "ours-sensitivity": _res(0.68, seed, "b"),
                "sibling-latency-scratch": _res(0.72, seed, "b")}
        runs[str(seed)] = {"pretrain": {"map50_95": 0.40 + seed / 100}, "arms": arms}
    runs["1"]["arms"]["unpruned"].update(reused_from="old.json", started_from_map50_95=0.55)
    data = {"seeds": [0, 1], "runs": runs}
    assert [s for s, _ in accuracy.paired_differences(data, "ours-sensitivity", "unpruned")] == [0]
    assert [s for s, _ in accuracy.paired_differences(data, "sibling-latency-scratch", "unpruned")] == [0, 1]
    (line,) = accuracy._paired_line(data, "ours-sensitivity", "unpruned")
    assert "seed(s) 1 left out: the two arms started there from different pretrained weights" in line
    text = "\n".join(accuracy._reused_line(runs))
    assert "seed 1: unpruned (pretrained mAP50-95 0.550 there, 0.410 here)" in text
