"""Issue 38, items 1, 3 and 8: resume with changed settings keeps the run's history and baseline; Lightning's
precision plugins reach graph tracing, probes, latency readings and gradients; multi-GPU ultralytics training is
refused before it starts.

The model is :class:`toy_modules.ToyModule` (16x16 inputs, five prunable groups of 32 channels); every fit runs on
the CPU with a few batches per epoch.
"""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything (set before ultralytics can be imported)

import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402
from toy_modules import IMAGE_SIZE, ToyData, ToyModule, check_module_attributes  # noqa: E402

from lightning_prune import count_flops, count_params  # noqa: E402
from lightning_prune.callbacks import IterativePruningCallback  # noqa: E402
from lightning_prune.checkpoint import CHECKPOINT_KEY, load_pruned  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings(
    "ignore:.*does not have many workers",
    "ignore:.*LitLogger",
    "ignore:.*LeafSpec",
    "ignore:The dirpath has changed",
    "ignore:.*does not mix in lightning_prune.checkpoint.PrunedCheckpointMixin",
    "ignore:.*Checkpoint directory .* exists and is not empty",
    "ignore:.*AMP with fp16 is not supported on CPU",
)]


def make_trainer(**overrides: Any) -> Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, max_epochs=3, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    options.update(overrides)
    return Trainer(**options)


def pruning(**overrides: Any) -> IterativePruningCallback:
    options: dict[str, Any] = dict(schedule=[1, 2], target=0.5, strategy="uniform", sensitivity_batches=1,
                                   verbose=False)
    options.update(overrides)
    return IterativePruningCallback(**options)


def flops(module: nn.Module) -> int:
    return count_flops(module, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


@torch.no_grad()
def outputs(module: nn.Module) -> torch.Tensor:
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(5))
    training = module.training
    module.eval()
    try:
        return module(x).clone()
    finally:
        module.train(training)


# -- item 1: resuming with changed settings ------------------------------------------------------------------------
ORIGINAL = {"schedule": [1, 2], "target": 0.5, "strategy": "uniform"}
LEGACY_KEY = "IterativePruningCallback" + repr(ORIGINAL)  # the state key before the fix named the settings


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """schedule [1, 2], target 0.5, uniform; a checkpoint after every epoch."""
    directory = tmp_path_factory.mktemp("first")
    callback = pruning(**ORIGINAL)
    checkpoints = ModelCheckpoint(dirpath=directory, filename="{epoch}", save_top_k=-1)
    make_trainer(callbacks=[callback, checkpoints], enable_checkpointing=True).fit(ToyModule(), ToyData())
    assert [entry["epoch"] for entry in callback.history] == [1, 2]
    return SimpleNamespace(directory=directory, callback=callback, first_step=callback.history[:1])


def resume(path: Any, directory: Any, **settings: Any) -> tuple[IterativePruningCallback, ToyModule, list[str]]:
    """Resume ``path`` with ``settings`` (over the original ones) for four epochs; the callback, the module and
    the warnings' messages."""
    callback = pruning(**{**ORIGINAL, **settings})
    checkpoints = ModelCheckpoint(dirpath=directory, filename="{epoch}", save_top_k=-1, save_last=True)
    model = ToyModule()
    trainer = make_trainer(max_epochs=4, callbacks=[callback, checkpoints], enable_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, ToyData(), ckpt_path=path)
    return callback, model, [str(w.message) for w in caught]


def assert_whole_run(callback: IterativePruningCallback, model: ToyModule, first_step: list[dict[str, Any]],
                     epochs: list[int], target: float, last: Any) -> None:
    # the baseline is the original, unpruned model's, not the model as pruned when the run resumed
    assert callback.baseline == {"flops": flops(ToyModule()), "params": count_params(ToyModule())}
    # the recorded step is kept, the new one follows it
    assert [entry["epoch"] for entry in callback.history] == epochs
    assert callback.history[:1] == first_step
    assert flops(model) / callback.baseline["flops"] == pytest.approx(1 - target, abs=0.025)
    # last.ckpt carries the whole history and loads into a fresh module
    saved = torch.load(last, weights_only=True)
    assert saved[CHECKPOINT_KEY]["history"] == callback.history
    assert saved["callbacks"][callback.state_key]["history"] == callback.history
    loaded = load_pruned(ToyModule(seed=1), last)
    assert shapes(loaded) == shapes(model)
    assert torch.equal(outputs(loaded), outputs(model))
    check_module_attributes(loaded)


@pytest.mark.parametrize(("settings", "epochs", "change"), [
    ({"target": 0.7}, [1, 2], "target 0.5 -> 0.7"),
    ({"schedule": [1, 3]}, [1, 3], "schedule [1, 2] -> [1, 3]"),
    ({"strategy": "global"}, [1, 2], "strategy 'uniform' -> 'global'"),
], ids=["target", "schedule", "strategy"])
def test_resume_with_changed_settings_continues_the_history(first_run: SimpleNamespace, tmp_path: Any,
                                                             settings: dict[str, Any], epochs: list[int],
                                                             change: str) -> None:
    callback, model, messages = resume(first_run.directory / "epoch=1.ckpt", tmp_path, **settings)
    assert_whole_run(callback, model, first_run.first_step, epochs, settings.get("target", 0.5),
                     tmp_path / "last.ckpt")
    # one line says what changed and what happens; Lightning's generic "callbacks used to create" warning is gone
    said = [m for m in messages if "changed settings" in m]
    assert len(said) == 1 and change in said[0] and "\n" not in said[0], messages
    assert not [m for m in messages if "callbacks used to create the checkpoint" in m], messages


def test_resume_with_the_same_settings_says_nothing(first_run: SimpleNamespace, tmp_path: Any) -> None:
    callback, model, messages = resume(first_run.directory / "epoch=1.ckpt", tmp_path)
    assert_whole_run(callback, model, first_run.first_step, [1, 2], 0.5, tmp_path / "last.ckpt")
    assert not [m for m in messages if "changed settings" in m or "callbacks used to create" in m], messages
    assert callback.history == first_run.callback.history  # the same run as the uninterrupted one


@pytest.mark.parametrize("settings", [{}, {"target": 0.7}], ids=["same", "target"])
def test_checkpoints_written_under_the_old_state_key_resume(first_run: SimpleNamespace, tmp_path: Any,
                                                            settings: dict[str, Any]) -> None:
    checkpoint = torch.load(first_run.directory / "epoch=1.ckpt", weights_only=True)
    state = checkpoint["callbacks"].pop("IterativePruningCallback")
    state.pop("settings", None)  # the old state had no record of its settings: the old key names them
    checkpoint["callbacks"][LEGACY_KEY] = state
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    callback, model, messages = resume(old, tmp_path / "resumed", **settings)
    assert_whole_run(callback, model, first_run.first_step, [1, 2], settings.get("target", 0.5),
                     tmp_path / "resumed" / "last.ckpt")
    assert not [m for m in messages if "callbacks used to create" in m], messages
    assert len([m for m in messages if "changed settings" in m]) == (1 if settings else 0), messages
    saved = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)["callbacks"]
    assert list(saved) == ["IterativePruningCallback", *[k for k in saved if k.startswith("ModelCheckpoint")]]


def test_a_checkpoint_without_the_callback_state_keeps_the_original_baseline(first_run: SimpleNamespace,
                                                                             tmp_path: Any) -> None:
    """A checkpoint whose callback state is gone (another callback class wrote it) still resumes from the
    original model: history from the checkpoint's pruning record, baseline measured before the replay."""
    checkpoint = torch.load(first_run.directory / "epoch=1.ckpt", weights_only=True)
    checkpoint["callbacks"].pop("IterativePruningCallback")
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    callback, model, messages = resume(bare, tmp_path / "resumed")
    assert_whole_run(callback, model, first_run.first_step, [1, 2], 0.5, tmp_path / "resumed" / "last.ckpt")
    assert len([m for m in messages if "no state of IterativePruningCallback" in m]) == 1, messages


# -- item 3: precision plugins -------------------------------------------------------------------------------------
#: what every validation_step and training_step must see under each precision — Lightning's own and the pruner's
#: (sensitivity probes, taylor gradients): (input dtype, CPU autocast on, default dtype). On the CPU Lightning runs
#: "16-mixed" as "bf16-mixed" (it warns so); "16-true" runs in float16.
SEEN = {
    "bf16-true": (torch.bfloat16, False, torch.bfloat16),
    "16-true": (torch.float16, False, torch.float16),
    "bf16-mixed": (torch.float32, True, torch.float32),
    "16-mixed": (torch.float32, True, torch.float32),
}


def skip_unless_the_cpu_runs(precision: str) -> None:
    """Skip (with the reason) where this CPU build cannot run the toy's ops in ``precision``."""
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    conv, x = nn.Conv2d(2, 2, 3, padding=1), torch.randn(1, 2, 5, 5)
    try:
        if precision.endswith("-true"):
            conv, x = conv.to(dtype), x.to(dtype)
            y = nn.functional.batch_norm(conv(x), None, None, training=True)
        else:
            with torch.autocast("cpu", dtype=dtype):
                y = nn.functional.batch_norm(conv(x), None, None, training=True)
        y.float().sum().backward()
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"this CPU build cannot run {precision} convolutions: {str(err).splitlines()[0][:120]}")


class Recorder(ToyModule):
    """Records, at every training and validation step, the input's dtype, autocast and the default dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype, bool, torch.dtype]] = []

    def _record(self, where: str, batch: Any) -> None:
        self.seen.append((where, batch[0].dtype, torch.is_autocast_enabled("cpu"), torch.get_default_dtype()))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._record("train", batch)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._record("val", batch)
        super().validation_step(batch, batch_idx)


def float_flops(model: nn.Module) -> int:
    import copy

    return flops(copy.deepcopy(model).float())


@pytest.mark.parametrize("precision", list(SEEN))
@pytest.mark.parametrize(("strategy", "criterion", "monitor"), [
    ("sensitivity", "l1", "val/acc"), ("uniform", "l1", None), ("uniform", "taylor", None),
], ids=["sensitivity", "uniform", "uniform-taylor"])
def test_precision_plugins_reach_tracing_probes_and_gradients(precision: str, strategy: str, criterion: str,
                                                              monitor: str | None) -> None:
    skip_unless_the_cpu_runs(precision)
    model = Recorder()
    callback = pruning(schedule=[1], target=0.5, strategy=strategy, criterion=criterion, monitor=monitor)
    make_trainer(max_epochs=2, precision=precision, callbacks=[callback]).fit(model, ToyData())

    assert [entry["epoch"] for entry in callback.history] == [1]
    assert callback.baseline["flops"] == flops(ToyModule())
    assert float_flops(model) / callback.baseline["flops"] == pytest.approx(0.5, abs=0.03)
    dtype = SEEN[precision][0]
    assert {p.dtype for p in model.parameters()} == {dtype}
    check_module_attributes(model)
    # every step saw the plugin: Lightning's (4 training, 2 validation) and the pruner's own
    assert {entry[1:] for entry in model.seen} == {SEEN[precision]}, model.seen
    steps = {where: sum(entry[0] == where for entry in model.seen) for where in ("train", "val")}
    assert steps["val"] > 2 if monitor else steps["val"] == 2
    assert steps["train"] > 4 if criterion == "taylor" else steps["train"] == 4


@pytest.mark.parametrize("precision", list(SEEN))
def test_latency_readings_go_through_the_precision_plugin(precision: str) -> None:
    from lightning_prune.callbacks import LatencyProfiler

    skip_unless_the_cpu_runs(precision)
    model = ToyModule()
    callback = pruning(schedule=[1], target=0.3, target_metric="latency", latency_repeats=3, latency_corrections=1)
    profiler = LatencyProfiler(repeats=3, warmup=1, per_layer=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*short of its budget")  # a noisy reading: not the point here
        make_trainer(max_epochs=2, precision=precision, callbacks=[callback, profiler]).fit(model, ToyData())
    assert callback.baseline["latency"] > 0 and [entry["step"] for entry in callback.history][:1] == [1]
    assert [row["reason"] for row in profiler.history] == ["fit_start", "pruning_step"]
    assert profiler.history[0]["flops"] == flops(ToyModule()) > profiler.history[1]["flops"]


def test_taylor_gradients_under_a_grad_scaler_are_unscaled() -> None:
    """On the CPU Lightning turns "16-mixed" into "bf16-mixed", so its GradScaler path is driven directly: the
    taylor gradients are taken with the scaled loss (no float16 underflow) and handed back unscaled."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lightning_prune.callbacks.evaluation import accumulate_training_gradients

    skip_unless_the_cpu_runs("16-mixed")

    def gradients(scaling: bool) -> tuple[Recorder, dict[str, torch.Tensor]]:
        module = Recorder()
        plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", enabled=scaling))
        trainer = SimpleNamespace(train_dataloader=ToyData().train_dataloader(), precision_plugin=plugin,
                                  strategy=SimpleNamespace(batch_to_device=lambda batch, device: batch))
        accumulate_training_gradients(trainer, module, 2)
        return module, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    module, scaled = gradients(True)
    _, plain = gradients(False)
    assert scaled and scaled.keys() == plain.keys()
    for name, grad in plain.items():  # the same gradients (float16 rounding apart), not 65536 times larger
        ratio = float(torch.linalg.vector_norm(scaled[name]) / torch.linalg.vector_norm(grad))
        assert ratio == pytest.approx(1.0, abs=0.02), name
    assert {entry[1:] for entry in module.seen} == {(torch.float32, True, torch.float32)}
    assert not torch.is_autocast_enabled("cpu")


def test_resume_under_bf16_true_with_a_module_built_in_bf16(tmp_path: Any) -> None:
    """The replay of a resumed checkpoint traces the module in the dtype it has then (here: built in bf16 under
    ``trainer.init_module()``, before the plugin converts anything)."""
    skip_unless_the_cpu_runs("bf16-true")
    callback = pruning(schedule=[1, 2], target=0.5)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    first = ToyModule()
    make_trainer(precision="bf16-true", callbacks=[callback, checkpoints], enable_checkpointing=True).fit(
        first, ToyData())
    resumed = pruning(schedule=[1, 2], target=0.5)
    trainer = make_trainer(precision="bf16-true", callbacks=[resumed])
    with trainer.init_module():
        model = ToyModule()
    assert next(model.parameters()).dtype == torch.bfloat16
    trainer.fit(model, ToyData(), ckpt_path=tmp_path / "epoch=1.ckpt")
    assert resumed.history == callback.history and resumed.baseline == callback.baseline
    assert shapes(model) == shapes(first)


# -- item 8: multi-GPU ultralytics training ------------------------------------------------------------------------
def _ddp_worker(device: Any) -> Any:
    """An ``on_pretrain_routine_start`` callback that makes the trainer look like a DDP worker's: ``args.device``
    naming several GPUs, ``world_size`` counting them (what ultralytics' DDP launch file builds)."""

    def fake(trainer: Any) -> None:
        trainer.args.device, trainer.world_size = device, 2

    return fake


@pytest.mark.parametrize("device", ["0,1", [0, 1]], ids=["string", "list"])
@pytest.mark.parametrize("attach", ["add_pruning", "keep_pruned"])
def test_multi_gpu_ultralytics_training_is_refused_in_one_line(device: Any, attach: str, tmp_path: Any) -> None:
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    from lightning_prune.data.synthetic import make_synthetic_dataset
    from lightning_prune.integrations.ultralytics import add_pruning, keep_pruned

    data = make_synthetic_dataset(tmp_path / "shapes", num_train=8, num_val=4, imgsz=64, seed=0) / "data.yaml"
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_pretrain_routine_start", _ddp_worker(device))
    pruning = add_pruning(model, schedule=[1], target=0.5, strategy="uniform", verbose=False) \
        if attach == "add_pruning" else keep_pruned(model, verbose=False)
    started: list[int] = []
    model.add_callback("on_train_start", lambda trainer: started.append(1))
    with pytest.raises(ValueError) as err:
        model.train(data=str(data), epochs=2, imgsz=64, batch=4, workers=0, device="cpu", plots=False,
                    amp=False, project=str(tmp_path / "runs"), name="ddp", exist_ok=True, verbose=False)
    message = str(err.value)
    assert "\n" not in message and "multi-GPU" in message and repr(device) in message, message
    assert not started and pruning.pruner is None and not pruning.history


def test_ddp_workers_get_the_pruning_callbacks_and_every_rank_refuses() -> None:
    """ultralytics' DDP launch file rebuilds the trainer with a cloudpickled copy of its callbacks: ours are among
    them, and the ranks that never run ``on_pretrain_routine_start`` refuse at ``on_pretrain_routine_end``."""
    pytest.importorskip("ultralytics")
    cloudpickle = pytest.importorskip("cloudpickle")
    from ultralytics import YOLO

    from lightning_prune.integrations.ultralytics import add_pruning
    from lightning_prune.integrations.ultralytics.trainer import UltralyticsPruning

    model = YOLO("yolov8n.yaml")
    add_pruning(model, schedule=[1], target=0.5, strategy="uniform", verbose=False)
    callbacks = cloudpickle.loads(cloudpickle.dumps(model.callbacks))  # as generate_ddp_file hands them over
    ours = {event: [f for f in functions if isinstance(getattr(f, "__self__", None), UltralyticsPruning)]
            for event, functions in callbacks.items()}
    assert len(ours["on_pretrain_routine_start"]) == len(ours["on_pretrain_routine_end"]) == 1
    rank1 = SimpleNamespace(args=SimpleNamespace(device="0,1"), world_size=2, model=None)
    with pytest.raises(ValueError, match="cannot prune multi-GPU training"):
        ours["on_pretrain_routine_end"][0](rank1)
    single = SimpleNamespace(args=SimpleNamespace(device="0"), world_size=1)
    from lightning_prune.integrations.ultralytics.trainer import _refuse_several_devices

    _refuse_several_devices(single)  # one GPU (or the CPU) trains as before
    _refuse_several_devices(SimpleNamespace(args=SimpleNamespace(device="cpu"), world_size=0))
