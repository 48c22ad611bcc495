"""LightningCLI drives IterativePruningCallback from the shipped YAML (examples/toy/config.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from lightning_prune import count_flops
from lightning_prune.callbacks import IterativePruningCallback

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy"


@pytest.fixture
def toy_cli(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    sys.modules.pop("main", None)
    import main

    return main.main


def test_cli_config_runs_the_pruning_schedule(toy_cli, tmp_path: Path) -> None:
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    callback_config = config["trainer"]["callbacks"][0]
    assert callback_config["class_path"] == "lightning_prune.callbacks.IterativePruningCallback"

    cli = toy_cli(["fit", "--config", str(EXAMPLE / "config.yaml"), "--trainer.logger=false",
                   f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_checkpointing=false",
                   "--trainer.limit_train_batches=2"])
    callbacks = [cb for cb in cli.trainer.callbacks if isinstance(cb, IterativePruningCallback)]
    assert len(callbacks) == 1
    pruning = callbacks[0]
    assert pruning.schedule == callback_config["init_args"]["schedule"]
    assert pruning.monitor == "val/acc"
    assert [entry["epoch"] for entry in pruning.history] == [1, 2, 3]
    model = cli.model
    baseline = pruning.baseline["flops"]
    ratio = count_flops(model, model.example_input_array) / baseline
    assert abs(ratio - (1 - pruning.target)) < 0.05


def test_cli_rejects_a_bad_callback_argument(toy_cli, tmp_path: Path) -> None:
    with pytest.raises((SystemExit, ValueError)):
        toy_cli(["fit", "--config", str(EXAMPLE / "config.yaml"), "--trainer.logger=false",
                 f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks.init_args.target=1.5"])
