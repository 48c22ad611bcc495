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


def test_the_main_job_yaml_uses_only_everyday_settings() -> None:
    """The main job's YAML (README's first command) sets only the callback's everyday parameters: the expert groups
    (sensitivity, latency, limits) and a whole ``config`` keep their defaults, and the YAML parses as the callback's
    LightningCLI arguments."""
    import inspect

    from jsonargparse import ArgumentParser

    config = yaml.safe_load((EXAMPLE.parent / "yolo" / "quick.yaml").read_text())
    entry = next(cb for cb in config["trainer"]["callbacks"] if cb["class_path"].endswith("IterativePruningCallback"))
    expert = {"sensitivity", "latency", "limits", "config", "seed"}
    everyday = set(inspect.signature(IterativePruningCallback.__init__).parameters) - expert - {"self", "deprecated"}
    assert set(entry["init_args"]) <= everyday, set(entry["init_args"]) - everyday
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(IterativePruningCallback, "callback")
    parsed = parser.parse_object({"callback": entry["init_args"]})
    assert parsed.callback.target == entry["init_args"]["target"]
