"""The YOLO example's LightningCLI configs: the quick config runs end to end with tiny limits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ultralytics")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "yolo"


@pytest.fixture
def yolo_cli(monkeypatch: pytest.MonkeyPatch):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread avoids oversubscription on a shared 2-core runner
    monkeypatch.syspath_prepend(str(EXAMPLE))
    sys.modules.pop("main", None)
    import main

    yield main.main
    sys.modules.pop("main", None)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("config", ["quick.yaml", "full.yaml", "yolov7_tiny.yaml"])
def test_configs_name_the_pruning_callbacks(config: str) -> None:
    loaded = yaml.safe_load((EXAMPLE / config).read_text())
    paths = [cb["class_path"] for cb in loaded["trainer"]["callbacks"]]
    assert "lightning_prune.callbacks.IterativePruningCallback" in paths
    assert "lightning_prune.callbacks.LatencyProfiler" in paths
    pruning = next(cb for cb in loaded["trainer"]["callbacks"] if cb["class_path"].endswith("IterativePruningCallback"))
    assert pruning["init_args"]["target"] == 0.5
    assert pruning["init_args"]["strategy"] == "sensitivity"
    assert loaded["data"]["synthetic"] is True


def test_quick_config_trains_a_base_prunes_reports_and_saves(yolo_cli, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from ultralytics import YOLO

    from lightning_prune import count_flops
    from lightning_prune.callbacks import IterativePruningCallback

    config = yaml.safe_load((EXAMPLE / "quick.yaml").read_text())
    callbacks = config["trainer"]["callbacks"]
    callbacks[0]["init_args"]["schedule"] = [1, 2]  # the same callbacks, a shorter schedule, fewer probes
    callbacks[0]["init_args"]["sensitivity"] = {"rates": [0.5], "batches": 1}
    callbacks[0]["init_args"]["round_to"] = 1
    callbacks[1]["init_args"]["repeats"] = 2
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(config))
    saved = tmp_path / "pruned.pt"
    args = [
        "fit", "--config", str(tmp_path / "quick.yaml"),
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'tb'}",
        "--trainer.enable_progress_bar=false", "--trainer.max_epochs=3", "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=1", f"--data.synthetic_root={tmp_path / 'shapes'}",
        "--data.synthetic_num_train=16", "--data.synthetic_num_val=8", "--data.synthetic_num_test=4",
        "--data.imgsz=64", "--data.batch_size=8", f"--save_yolo={saved}", "--base_epochs=1",
        f"--base_dir={tmp_path / 'bases'}", "--report_imgsz=64", "--report_backends=[eager]",
    ]
    cli = yolo_cli(args)
    out = capsys.readouterr().out
    assert "training the base model" in out and len(list((tmp_path / "bases").glob("base-*.pt"))) == 1
    for needle in ("## Pruning report", "test mAP50-95", "GFLOPs @64", "parameters (M)", "eager PyTorch ms @64",
                   str(saved)):
        assert needle in out, needle
    pruning = next(cb for cb in cli.trainer.callbacks if isinstance(cb, IterativePruningCallback))
    assert [entry["epoch"] for entry in pruning.history] == [1, 2]
    ratio = count_flops(cli.model, cli.model.example_input_array) / pruning.baseline["flops"]
    assert abs(ratio - 0.5) < 0.05
    assert saved.exists()
    detector = YOLO(str(saved))
    assert sum(p.numel() for p in detector.model.parameters()) == sum(p.numel() for p in cli.model.parameters())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(cli.trainer.logger.log_dir)), size_guidance={"tensors": 0})
    events.Reload()
    assert "report/text_summary" in events.Tags()["tensors"]

    yolo_cli(args)  # the same settings again: the trained base is reused
    assert "reusing the trained base from an earlier run" in capsys.readouterr().out
