"""Lightning conventions that must keep working while the model's architecture changes mid-fit: ModelCheckpoint's
"best", EarlyStopping, load_from_checkpoint, weight averaging, LightningCLI choices, sharded strategies."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint  # noqa: E402
from toy_modules import IMAGE_SIZE, ToyData, ToyModule  # noqa: E402

from lightning_prune import count_flops  # noqa: E402
from lightning_prune.callbacks import IterativePruningCallback  # noqa: E402
from lightning_prune.callbacks.distributed import check_strategy  # noqa: E402
from lightning_prune.checkpoint import PrunedCheckpointMixin, load_pruned  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers", "ignore:.*LitLogger", "ignore:.*LeafSpec",
    "ignore:.*does not mix in lightning_prune", "ignore:.*sync_dist=True",
)

EXAMPLE = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.fixture(scope="module", autouse=True)
def _single_threaded() -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Declining(PrunedCheckpointMixin, ToyModule):
    """Logs ``val/score`` = 10 − epoch: the unpruned epoch 0 always scores best."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log("val/score", 10.0 - self.current_epoch)


def trainer(tmp_path: Any, callbacks: list, max_epochs: int = 4, **overrides: Any) -> Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
        default_root_dir=str(tmp_path), callbacks=callbacks,
    )
    options.update(overrides)
    return Trainer(**options)


def pruning(**overrides: Any) -> IterativePruningCallback:
    options: dict[str, Any] = dict(schedule=[1, 2], target=0.5, strategy="uniform", verbose=False)
    options.update(overrides)
    return IterativePruningCallback(**options)


def test_best_checkpoint_is_chosen_after_the_final_prune(tmp_path: Any) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max", save_top_k=1,
                                 filename="{epoch}")
    model = Declining()
    trainer(tmp_path, [pruning(), checkpoint]).fit(model, ToyData())
    # epoch 0 scored 10 (unpruned); epoch 2 is the best epoch of the final architecture
    assert os.path.basename(checkpoint.best_model_path) == "epoch=2.ckpt"
    assert float(checkpoint.best_model_score) == 8.0
    best = load_pruned(Declining(), checkpoint.best_model_path)
    assert count_flops(best, EXAMPLE) == count_flops(model, EXAMPLE)


def test_early_stopping_cannot_end_fit_before_the_last_prune(tmp_path: Any) -> None:
    stopper = EarlyStopping(monitor="val/score", mode="max", patience=0)
    callback = pruning(schedule=[1, 3])
    with pytest.warns(UserWarning, match="EarlyStopping asked to stop at epoch 2, before the pruning step at epoch 3"):
        trainer(tmp_path, [stopper, callback], max_epochs=6, enable_checkpointing=False).fit(Declining(), ToyData())
    assert [entry["epoch"] for entry in callback.history] == [1, 3]
    assert callback.pruner.finished


def test_callback_runs_after_early_stopping_whatever_the_order(tmp_path: Any) -> None:
    stopper = EarlyStopping(monitor="val/score", mode="max", patience=0, check_on_train_epoch_end=True)
    callback = pruning(schedule=[1, 3])
    fit_trainer = trainer(tmp_path, [callback, stopper], max_epochs=6, enable_checkpointing=False)
    with pytest.warns(UserWarning, match="EarlyStopping asked to stop"):
        fit_trainer.fit(Declining(), ToyData())
    assert [entry["epoch"] for entry in callback.history] == [1, 3]


def test_load_from_checkpoint_rebuilds_the_pruned_module(tmp_path: Any) -> None:
    model = Declining()
    trainer(tmp_path, [pruning(), ModelCheckpoint(dirpath=tmp_path, filename="last")], max_epochs=3).fit(
        model, ToyData())
    loaded = Declining.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.eval()
    loaded.eval()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(loaded(x), model(x))


def test_a_module_without_the_mixin_is_warned_about(tmp_path: Any) -> None:
    with pytest.warns(UserWarning, match="does not mix in lightning_prune.checkpoint.PrunedCheckpointMixin"):
        trainer(tmp_path, [pruning(), ModelCheckpoint(dirpath=tmp_path)], max_epochs=3).fit(ToyModule(), ToyData())


class WatchAverage(Callback):
    """Records the averaged stem filters just before and just after the first prune."""

    def __init__(self, ema: EMAWeightAveraging) -> None:
        self.ema, self.before, self.after, self.plan = ema, None, None, None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            self.before = self.ema._average_model.module.net.stem[0].weight.detach().clone()

    def on_pruning_step(self, trainer: Trainer, pl_module: Any, step: Any) -> None:
        if step.step == 1:
            self.after = self.ema._average_model.module.net.stem[0].weight.detach().clone()
            self.plan = step.plan


def test_ema_weight_averaging_survives_pruning_and_resume(tmp_path: Any) -> None:
    ema = EMAWeightAveraging(decay=0.9)
    watch = WatchAverage(ema)
    model = Declining()
    callback = pruning()
    trainer(tmp_path, [watch, callback, ema, ModelCheckpoint(dirpath=tmp_path, filename="last")],
            max_epochs=3).fit(model, ToyData())
    assert [entry["epoch"] for entry in callback.history] == [1, 2]
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in ema._average_model.module.state_dict().items()} == shapes
    # the average kept its own values for the surviving channels: sliced, not re-copied from the model
    removed = set(watch.plan["net.stem.0"])
    kept = [c for c in range(watch.before.shape[0]) if c not in removed]
    torch.testing.assert_close(watch.after, watch.before[kept])
    # resume with the EMA: the averaged copy is rebuilt like the model before Lightning loads either
    resumed, ema2 = Declining(), EMAWeightAveraging(decay=0.9)
    trainer(tmp_path, [pruning(), ema2], max_epochs=4, enable_checkpointing=False).fit(
        resumed, ToyData(), ckpt_path=tmp_path / "last.ckpt")
    assert {k: v.shape for k, v in ema2._average_model.module.state_dict().items()} == shapes


def test_sharded_strategies_are_refused() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="cannot prune under FSDPStrategy"):
        check_strategy(FSDPStrategy())
    deepspeed_like = type("DeepSpeedStrategy", (), {})()
    with pytest.raises(ValueError, match="cannot prune under DeepSpeedStrategy"):
        check_strategy(deepspeed_like)


def test_cli_lists_and_validates_the_choices(capsys: pytest.CaptureFixture) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(IterativePruningCallback, "pruning")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    with pytest.raises(SystemExit):  # the expert groups list their fields on their own help
        parser.parse_args(["--pruning.latency.help", "LatencyConfig"])
    text += capsys.readouterr().out
    for choice in ("sensitivity", "uniform", "global", "latency", "onnxruntime", "bn_scale_l1"):
        assert choice in text
    with pytest.raises(Exception, match="strategy"):
        parser.parse_args(["--pruning.strategy=magic"])
