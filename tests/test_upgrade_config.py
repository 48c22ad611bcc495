"""``python -m lightning_prune.callbacks.upgrade_config``: old LightningCLI YAMLs with the deprecated flat keywords
(which LightningCLI refuses) are rewritten into the nested groups, which it parses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_prune.callbacks import IterativePruningCallback
from lightning_prune.callbacks.upgrade_config import main, upgrade_document
from lightning_prune.pruning.config import FLAT_KEYWORDS, LatencyConfig, Limits, SensitivityConfig

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FLAT = {"sensitivity_batches": 2, "max_rate": 0.5, "latency_backend": "onnxruntime"}


def _callback(document: dict[str, Any]) -> dict[str, Any]:
    return next(cb for cb in document["trainer"]["callbacks"] if cb["class_path"].endswith("IterativePruningCallback"))


def _old_yolo_yaml(tmp_path: Path, **flat: Any) -> Path:
    """examples/yolo/quick.yaml as an earlier release wrote it: flat keywords in the callback's init_args."""
    document = yaml.safe_load((EXAMPLES / "yolo" / "quick.yaml").read_text())
    _callback(document)["init_args"].update(flat or FLAT)
    path = tmp_path / "quick.yaml"
    path.write_text("# an old config\n" + yaml.safe_dump(document, sort_keys=False))
    return path


def _parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(IterativePruningCallback, "callback")  # what LightningCLI builds for init_args
    return parser


def test_flat_yaml_is_refused_by_the_cli_parser_and_the_upgraded_one_parses(tmp_path: Path, capsys) -> None:
    from jsonargparse import ArgumentError

    path = _old_yolo_yaml(tmp_path)
    original = path.read_bytes()
    old = yaml.safe_load(original)
    parser = _parser()
    with pytest.raises(ArgumentError, match="does not accept option 'sensitivity_batches'"):
        parser.parse_object({"callback": _callback(old)["init_args"]})  # why the tool exists

    assert main([str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: moved ") and "sensitivity_batches -> sensitivity.batches" in line
    assert "max_rate -> limits.max_rate" in line and "latency_backend -> latency.backend" in line
    assert "comments" in line and f"{path}.bak" in line and len(line.splitlines()) == 1

    new = yaml.safe_load(path.read_text())
    init_args = _callback(new)["init_args"]
    assert not set(init_args) & set(FLAT_KEYWORDS)
    assert init_args["sensitivity"] == {"batches": 2} and init_args["limits"] == {"max_rate": 0.5}
    assert init_args["latency"] == {"backend": "onnxruntime"}
    assert list(init_args)[:6] == list(_callback(old)["init_args"])[:6]  # the other keys stay, in their order
    for key in set(old) - {"trainer"}:
        assert new[key] == old[key]
    assert [cb for cb in new["trainer"]["callbacks"] if cb is not _callback(new)] == \
        [cb for cb in old["trainer"]["callbacks"] if cb is not _callback(old)]
    assert (tmp_path / "quick.yaml.bak").read_bytes() == original  # the backup, comments and all

    parsed = parser.parse_object({"callback": init_args})
    callback = parser.instantiate(parsed).callback
    assert callback.config.sensitivity.batches == 2 and callback.config.limits.max_rate == 0.5
    assert callback.config.latency.backend == "onnxruntime" and callback.config.round_to == 8

    assert main([str(path)]) == 0  # a second run: nothing left to do, nothing written
    assert capsys.readouterr().out.strip() == f"{path}: nothing to upgrade"


def test_every_flat_keyword_moves_into_a_group_the_parser_accepts(tmp_path: Path) -> None:
    defaults = {"sensitivity": SensitivityConfig(), "latency": LatencyConfig(), "limits": Limits()}
    flat = {}
    for key, (group, name) in FLAT_KEYWORDS.items():
        value = getattr(defaults[group], name)
        flat[key] = list(value) if isinstance(value, tuple) else value
    flat["sensitivity_batches"], flat["latency_repeats"], flat["min_channels"] = 3, 7, 2
    document = {"trainer": {"callbacks": {"class_path": "IterativePruningCallback",  # a single mapping
                                          "init_args": {"monitor": "val/acc", **flat}}}}
    moves = upgrade_document(document)
    assert len(moves) == len(FLAT_KEYWORDS)
    init_args = document["trainer"]["callbacks"]["init_args"]
    assert set(init_args) == {"monitor", "sensitivity", "latency", "limits"}
    parsed = _parser().parse_object({"callback": init_args})
    assert parsed.callback.sensitivity.batches == 3 and parsed.callback.latency.repeats == 7
    assert parsed.callback.limits.min_channels == 2


def test_the_toy_example_runs_through_lightningcli_only_after_the_upgrade(tmp_path: Path, capsys,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.syspath_prepend(str(EXAMPLES / "toy"))
    monkeypatch.setattr(sys, "argv", ["main.py"])  # LightningCLI reads args=, not pytest's command line
    from toy import ConcatNet, SyntheticClasses

    document = yaml.safe_load((EXAMPLES / "toy" / "config.yaml").read_text())
    init_args = _callback(document)["init_args"]
    init_args["sensitivity_batches"] = init_args.pop("sensitivity")["batches"]
    init_args["max_total_rate"] = 0.75
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    args = ["--config", str(path), "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises(SystemExit):
        LightningCLI(ConcatNet, SyntheticClasses, args=args, run=False)
    assert "sensitivity_batches" in capsys.readouterr().err

    assert main(["--no-backup", str(path)]) == 0
    assert not (tmp_path / "config.yaml.bak").exists()
    cli = LightningCLI(ConcatNet, SyntheticClasses, args=args, run=False)
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, IterativePruningCallback)]
    assert callback.config.sensitivity.batches == 2 and callback.config.limits.max_total_rate == 0.75
    assert callback.monitor == "val/acc" and list(callback.config.schedule) == [1, 2, 3]


def test_check_reports_and_exits_1_without_writing(tmp_path: Path, capsys) -> None:
    path = _old_yolo_yaml(tmp_path)
    original = path.read_bytes()
    assert main(["--check", str(path)]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: needs upgrading: ") and "max_rate -> limits.max_rate" in line
    assert path.read_bytes() == original and not (tmp_path / "quick.yaml.bak").exists()
    shipped = sorted(str(p) for p in (EXAMPLES / "yolo").glob("*.yaml")) + [str(EXAMPLES / "toy" / "config.yaml")]
    assert main(["--check", *shipped]) == 0  # the shipped examples are current
    assert capsys.readouterr().out.splitlines() == [f"{p}: nothing to upgrade" for p in shipped]


def test_a_conflict_exits_2_and_leaves_the_file_untouched(tmp_path: Path, capsys) -> None:
    path = _old_yolo_yaml(tmp_path, sensitivity_batches=2, max_rate=0.5, sensitivity={"batches": 4})
    original = path.read_bytes()
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{path}: conflict") and "sensitivity_batches" in err and "disagree" in err
    assert len(err.splitlines()) == 1
    assert path.read_bytes() == original and not (tmp_path / "quick.yaml.bak").exists()
    assert main(["--check", str(path)]) == 2


def test_a_flat_key_that_agrees_with_its_group_is_merged(tmp_path: Path) -> None:
    path = _old_yolo_yaml(tmp_path, sensitivity_batches=2, exponent=10, sensitivity={"batches": 2}, latency=None,
                          latency_backend="openvino")
    assert main([str(path)]) == 0
    init_args = _callback(yaml.safe_load(path.read_text()))["init_args"]
    assert init_args["sensitivity"] == {"batches": 2, "exponent": 10}
    assert init_args["latency"] == {"backend": "openvino"}


def test_invalid_or_missing_files_exit_2_others_still_upgraded(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    good = _old_yolo_yaml(tmp_path)
    missing = tmp_path / "missing.yaml"
    assert main([str(bad), str(missing), str(good)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"{bad}: not valid YAML")
    assert errors[1].startswith(f"{missing}: ")
    assert bad.read_text() == "trainer: [unclosed\n" and not (tmp_path / "bad.yaml.bak").exists()
    assert captured.out.startswith(f"{good}: moved ")


def test_an_existing_backup_with_other_content_is_never_overwritten(tmp_path: Path, capsys) -> None:
    path = _old_yolo_yaml(tmp_path)
    original = path.read_bytes()
    backup = tmp_path / "quick.yaml.bak"
    backup.write_text("someone's file\n")
    assert main([str(path)]) == 2
    assert "--no-backup" in capsys.readouterr().err
    assert path.read_bytes() == original and backup.read_text() == "someone's file\n"


def test_subcommand_config_and_private_files(tmp_path: Path) -> None:
    """A YAML given before the subcommand (``fit: {trainer: ...}``), flat keys inside a whole ``config:``, and a
    private file staying private."""
    document = {"fit": {"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"max_rate": 1}},
        {"class_path": "lightning_prune.callbacks.IterativePruningCallback",
         "init_args": {"monitor": "val/acc", "config": {"schedule": [1], "min_channels": 4}}}]}}}
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(document))
    os.chmod(path, 0o600)
    assert main([str(path)]) == 0
    callbacks = yaml.safe_load(path.read_text())["fit"]["trainer"]["callbacks"]
    assert callbacks[0] == document["fit"]["trainer"]["callbacks"][0]  # another callback's keys are its own
    assert callbacks[1]["init_args"]["config"] == {"schedule": [1], "limits": {"min_channels": 4}}
    assert os.stat(path).st_mode & 0o777 == 0o600
    parser = _parser()
    with pytest.raises(Exception, match="min_channels"):
        parser.parse_object({"callback": document["fit"]["trainer"]["callbacks"][1]["init_args"]})
    callback = parser.instantiate(parser.parse_object({"callback": callbacks[1]["init_args"]})).callback
    assert callback.config.limits.min_channels == 4 and list(callback.config.schedule) == [1]


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    path = _old_yolo_yaml(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "lightning_prune.callbacks.upgrade_config", "--check", str(path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith(f"{path}: needs upgrading")


def test_the_map_is_the_configs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool moves by :data:`FLAT_KEYWORDS` itself: a keyword added there is upgraded too."""
    from lightning_prune.callbacks.upgrade_config import upgrade_init_args

    monkeypatch.setitem(FLAT_KEYWORDS, "newer_flat_key", ("limits", "newer"))
    assert upgrade_init_args({"newer_flat_key": 1}) == ({"limits": {"newer": 1}}, ["newer_flat_key -> limits.newer"])


def test_help_says_comments_are_not_kept(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "comments and layout are not kept" in text and "--check" in text and "--no-backup" in text
