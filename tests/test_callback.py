"""``IterativePruningCallback`` inside ``Trainer.fit``: targets, optimizer state, resume, bad input, logging,
criteria, the ``on_pruning_step`` event, schedules, and one ultralytics YOLOv8n run.

The model is :class:`toy_modules.ToyModule` (16x16 inputs, five prunable groups of 32 channels); every fit runs on
the CPU with at most a few batches per epoch.
"""

from __future__ import annotations

import csv
import io
import math
import os
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything (set before ultralytics can be imported)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from toy_modules import IMAGE_SIZE, NUM_CLASSES, ToyData, ToyModule, check_module_attributes  # noqa: E402

from lightning_prune import DependencyGraph, count_flops, count_params  # noqa: E402
from lightning_prune.callbacks import IterativePruningCallback, PruningStep  # noqa: E402
from lightning_prune.checkpoint import CHECKPOINT_KEY, load_pruned  # noqa: E402
from lightning_prune.pruning.importance import CRITERIA, channel_scores  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers",
    "ignore:.*LitLogger",
    "ignore:.*LeafSpec",
    "ignore:The dirpath has changed",
    "ignore:You defined a `validation_step` but have no `val_dataloader`",
)

GROUP_SIZE = 32  # every prunable group of the toy
PRUNABLE = ("net.stem.0", "net.block1.pw.0", "net.block1.fuse.0", "net.block2.pw.0", "net.block2.fuse.0")


# -- helpers --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _single_threaded() -> Any:
    """One intra-op thread: the toy's tensors are tiny, and two OpenMP threads on shared cores made every conv
    several times slower (restored afterwards for the other test modules)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LP_CALLBACK_TEST_THREADS", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_trainer(**overrides: Any) -> Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, max_epochs=3, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    options.update(overrides)
    return Trainer(**options)


def pruning(**overrides: Any) -> IterativePruningCallback:
    options: dict[str, Any] = dict(schedule=[1], target=0.5, strategy="uniform", sensitivity_batches=1,
                                   verbose=False)
    options.update(overrides)
    return IterativePruningCallback(**options)


def flops(module: nn.Module) -> int:
    return count_flops(module, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def assert_state_equal(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert list(state) == list(saved)
    for name, value in state.items():
        assert value.shape == saved[name].shape, name
        assert torch.equal(value, saved[name]), name


@torch.no_grad()
def outputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    training = module.training
    module.eval()
    try:
        return module(x).clone()
    finally:
        module.train(training)


def batch(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(5))


def assert_runs(module: nn.Module) -> None:
    out = outputs(module, batch())
    assert out.shape == (8, NUM_CLASSES)
    assert torch.isfinite(out).all()
    check_module_attributes(module)


def removed_per_group(history: list[dict[str, Any]]) -> dict[str, int]:
    removed: dict[str, int] = {}
    for entry in history:
        for name, channels in entry["plan"].items():
            removed[name] = removed.get(name, 0) + len(channels)
    return removed


class CountBatches(Callback):
    """Counts training and validation batches (proves that a failing fit stopped before any)."""

    def __init__(self) -> None:
        self.train = self.val = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.train += 1

    def on_validation_batch_start(self, *args: Any) -> None:
        self.val += 1


class RecordSteps(Callback):
    """An ``on_pruning_step`` listener: the events, and the model's real cost when each arrives."""

    def __init__(self) -> None:
        self.steps: list[PruningStep] = []
        self.live_flops: list[int] = []
        self.live_params: list[int] = []
        self.grads_left: list[int] = []

    def on_pruning_step(self, trainer: Trainer, pl_module: LightningModule, step: PruningStep) -> None:
        self.steps.append(step)
        self.live_flops.append(count_flops(pl_module, step.example_input))
        self.live_params.append(count_params(pl_module))
        self.grads_left.append(sum(p.grad is not None for p in pl_module.parameters()))


# -- 1. strategies reach the FLOPs target -------------------------------------------------------------------------
# How close a strategy can land on this toy: "uniform" moves all five 32-channel groups together, one channel each,
# which near 30-70% removal changes the FLOPs by 3.4-4.8% per move, so it lands within half of that; "sensitivity"
# and "global" finish by trimming a single group, where one channel is at most 2.4% of the FLOPs.
TOLERANCE = {"sensitivity": 0.015, "uniform": 0.025, "global": 0.015}


@pytest.mark.parametrize("strategy", ["sensitivity", "uniform", "global"])
def test_strategy_reaches_flops_target(strategy: str) -> None:
    model = ToyModule()
    flops0, params0 = flops(model), count_params(model)
    callback = pruning(schedule=[1, 2], target=0.5, strategy=strategy, monitor="val/acc",
                       verbose=strategy == "sensitivity")
    trainer = make_trainer(max_epochs=3, callbacks=[callback])
    trainer.fit(model, ToyData())

    ratio = flops(model) / flops0
    assert abs(ratio - 0.5) <= TOLERANCE[strategy], ratio
    assert count_params(model) < params0
    assert callback.baseline == {"flops": flops0, "params": params0}

    history = callback.history
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert [entry["step"] for entry in history] == [1, 2]
    for entry in history:
        assert {"plan", "flops", "params", "metric_before", "metric_after"} <= set(entry)
        assert entry["plan"] and set(entry["plan"]) <= set(PRUNABLE)
        for channels in entry["plan"].values():
            assert channels == sorted(set(channels)) and all(isinstance(c, int) for c in channels)
        for key in ("metric_before", "metric_after"):
            assert isinstance(entry[key], float) and 0.0 <= entry[key] <= 1.0
    assert flops0 > history[0]["flops"] > history[1]["flops"]
    assert history[-1]["flops"] == flops(model)  # nothing is pruned after the last step
    assert history[-1]["params"] == count_params(model)
    # the first step takes about half the way (the budget is spread over the steps)
    assert 0.15 <= 1 - history[0]["flops"] / flops0 <= 0.35

    # the plans account for every channel that went, and the rebuilt graph knows the new sizes
    removed = removed_per_group(history)
    sizes = {group.name: group.size for group in callback.graph.prunable_groups}
    assert sizes == {name: GROUP_SIZE - removed.get(name, 0) for name in PRUNABLE}
    assert model.net.stem[0].out_channels == sizes["net.stem.0"]
    assert model.net.block1.pw[0].out_channels == sizes["net.block1.pw.0"]

    assert_runs(model)
    assert trainer.global_step == 6 and model.training_steps == 6  # training went on after each prune


def test_sensitivity_with_a_loss_monitor() -> None:
    model = ToyModule()
    flops0 = flops(model)
    callback = pruning(schedule=[1], target=0.3, strategy="sensitivity", monitor="val/loss", mode="min",
                       sensitivity_rates=[0.25, 0.5])
    make_trainer(max_epochs=2, callbacks=[callback]).fit(model, ToyData())
    assert abs(flops(model) / flops0 - 0.7) <= TOLERANCE["sensitivity"]
    entry = callback.history[0]
    assert entry["metric_before"] > 0 and entry["metric_after"] > 0  # losses
    assert_runs(model)


def test_params_target() -> None:
    model = ToyModule()
    params0 = count_params(model)
    callback = pruning(schedule=[1], target=0.4, target_metric="params", strategy="global")
    make_trainer(max_epochs=2, callbacks=[callback]).fit(model, ToyData())
    assert abs(count_params(model) / params0 - 0.6) <= 0.015
    assert callback.history[-1]["params"] == count_params(model)
    assert_runs(model)


# -- 2. optimizer state survives surgery --------------------------------------------------------------------------
def optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {key: value.detach().clone() for key, value in optimizer.state[p].items()
                   if isinstance(value, torch.Tensor)}
            for name, p in module.named_parameters() if p in optimizer.state}


class CaptureBeforePrune(Callback):
    """Listed before the pruning callback: weights and optimizer state at the start of every epoch."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.state: dict[int, dict[str, dict[str, torch.Tensor]]] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        self.weights[epoch] = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
        self.state[epoch] = optimizer_state(trainer.optimizers[0], pl_module)


class CaptureAfterPrune(Callback):
    """Weights, optimizer state and learning rate right after the prune (``on_pruning_step``)."""

    def on_pruning_step(self, trainer: Trainer, pl_module: LightningModule, step: PruningStep) -> None:
        self.step = step
        self.weights = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
        self.state = optimizer_state(trainer.optimizers[0], pl_module)
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def pruned_like(values: dict[str, torch.Tensor], plan: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """``values`` (one tensor per parameter of the unpruned toy) sliced the way ``plan`` slices the parameters:
    load them as the parameters of a fresh toy and prune that one."""
    module = ToyModule()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(values[name])
    DependencyGraph(module, module.example_input_array).prune(plan)
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize(("optimizer", "keys"), [("sgd", ("momentum_buffer",)), ("adamw", ("exp_avg", "exp_avg_sq"))])
def test_optimizer_state_is_sliced_not_reset(optimizer: str, keys: tuple[str, ...]) -> None:
    model = ToyModule(optimizer=optimizer, scheduler=True)
    before, after = CaptureBeforePrune(), CaptureAfterPrune()
    trainer = make_trainer(max_epochs=3, callbacks=[before, pruning(schedule=[1], target=0.4), after])
    trainer.fit(model, ToyData())

    plan = after.step.plan
    old_weights, old_state = before.weights[1], before.state[1]
    assert set(old_state) == set(old_weights)  # every parameter had state after epoch 0
    changed = [name for name in old_weights if old_weights[name].shape != after.weights[name].shape]
    assert len(changed) >= 15  # convs, norms and the classifier's input all shrank

    # replaying the plan on a fresh toy reproduces the surgery on the weights ...
    expected_weights = pruned_like(old_weights, plan)
    for name, weight in after.weights.items():
        assert torch.equal(weight, expected_weights[name]), name
    # ... and the optimizer state was sliced exactly like its parameter (not reset, not left at the old shape)
    for key in keys:
        expected = pruned_like({name: state[key] for name, state in old_state.items()}, plan)
        for name, state in after.state.items():
            assert state[key].shape == after.weights[name].shape, (name, key)
            assert torch.equal(state[key], expected[name]), (name, key)
            assert state[key].abs().sum() > 0, (name, key)
    if optimizer == "adamw":  # Adam's step counters are kept too
        for name, state in after.state.items():
            assert torch.equal(state["step"], old_state[name]["step"]), name
            assert float(state["step"]) == 2
    assert after.lr == pytest.approx(0.05 * (0.1 if optimizer == "adamw" else 1) * 0.5)

    # training went on for two more epochs with the same parameter objects; the scheduler kept stepping
    opt = trainer.optimizers[0]
    assert [id(p) for group in opt.param_groups for p in group["params"]] == [id(p) for p in model.parameters()]
    for p in model.parameters():
        for key in keys:
            assert opt.state[p][key].shape == p.shape
    final = optimizer_state(opt, model)
    assert not torch.equal(final["net.stem.0.weight"][keys[0]], after.state["net.stem.0.weight"][keys[0]])
    assert trainer.global_step == 6 and model.training_steps == 6
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.optimizer is opt and scheduler.last_epoch == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(after.lr * 0.25)
    assert_runs(model)


# -- 3. resuming from a checkpoint ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Four epochs with pruning steps at epochs 1, 2, 3 and a checkpoint after every epoch."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    model = ToyModule()
    callback = pruning(schedule=[1, 2, 3], target=0.5, monitor="val/acc")
    checkpoints = ModelCheckpoint(dirpath=directory, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(max_epochs=4, callbacks=[callback, checkpoints], enable_checkpointing=True)
    trainer.fit(model, ToyData())
    return SimpleNamespace(model=model, callback=callback, trainer=trainer, directory=directory)


def test_resume_rebuilds_the_pruned_architecture(uninterrupted: SimpleNamespace, tmp_path: Any) -> None:
    run = uninterrupted
    assert sorted(os.listdir(run.directory)) == [f"epoch={epoch}.ckpt" for epoch in range(4)]
    assert [entry["epoch"] for entry in run.callback.history] == [1, 2, 3]
    state = run.callback.state_dict()
    assert state["history"] == run.callback.history
    assert state["baseline"] == {"flops": flops(ToyModule()), "params": count_params(ToyModule())}

    # the checkpoint after epoch 1 loads with weights_only and carries the first step, plainly typed
    path = run.directory / "epoch=1.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint[CHECKPOINT_KEY] == {"history": run.callback.history[:1], "example_input_shape": [1, 3, 16, 16]}
    assert checkpoint["callbacks"][run.callback.state_key]["history"] == run.callback.history[:1]

    model = ToyModule()
    callback = pruning(schedule=[1, 2, 3], target=0.5, monitor="val/acc")
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(max_epochs=4, callbacks=[callback, checkpoints], enable_checkpointing=True)
    trainer.fit(model, ToyData(), ckpt_path=path)

    assert [entry["epoch"] for entry in callback.history] == [1, 2, 3]
    assert callback.history[0] == run.callback.history[0]  # restored, not pruned again
    assert shapes(model) == shapes(run.model)
    assert trainer.global_step == run.trainer.global_step == 8
    assert callback.state_dict()["history"] == callback.history
    assert sorted(os.listdir(tmp_path)) == ["epoch=2.ckpt", "epoch=3.ckpt"]

    # load_pruned rebuilds a fresh (differently initialised) module from the last checkpoint of either run
    x = batch()
    for last, trained in ((run.directory / "epoch=3.ckpt", run.model), (tmp_path / "epoch=3.ckpt", model)):
        assert torch.load(last, weights_only=True)[CHECKPOINT_KEY]["history"] == callback.history
        loaded = load_pruned(ToyModule(seed=1), last)
        assert shapes(loaded) == shapes(trained)
        assert torch.equal(outputs(loaded, x), outputs(trained, x))
    # without example_input_array, the example input's shape comes from the checkpoint
    bare = load_pruned(ToyModule(example_input=False), run.directory / "epoch=3.ckpt")
    assert torch.equal(outputs(bare, x), outputs(run.model, x))
    # and the epoch-1 checkpoint gives the architecture after the first step
    early = load_pruned(ToyModule(seed=1), path)
    removed = removed_per_group(run.callback.history[:1])
    assert early.net.stem[0].out_channels == GROUP_SIZE - removed["net.stem.0"]
    assert early.net.block2.fuse[0].out_channels == GROUP_SIZE - removed["net.block2.fuse.0"]


def test_a_failed_fit_does_not_break_a_later_resume(uninterrupted: SimpleNamespace) -> None:
    model = ToyModule()
    with pytest.raises(ValueError, match="never logged"):  # a typo in `monitor`
        make_trainer(callbacks=[pruning(monitor="val/accuracy")]).fit(model, ToyData())
    # fixed, the same module object resumes the pruned run
    callback = pruning(schedule=[1, 2, 3], target=0.5, monitor="val/acc")
    make_trainer(max_epochs=4, callbacks=[callback]).fit(model, ToyData(),
                                                         ckpt_path=uninterrupted.directory / "epoch=1.ckpt")
    assert shapes(model) == shapes(uninterrupted.model)


class SaveWholeModule(Callback):
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        buffer = io.BytesIO()
        torch.save(pl_module, buffer)
        self.saved = buffer.getvalue()


def test_module_can_be_pickled_during_fit() -> None:
    saver = SaveWholeModule()
    make_trainer(max_epochs=1, limit_train_batches=1, callbacks=[pruning(schedule=[0]), saver]).fit(
        ToyModule(), ToyData())
    loaded = torch.load(io.BytesIO(saver.saved), weights_only=False)
    assert isinstance(loaded, ToyModule)


# -- 4. bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(target=0), "strictly between 0 and 1"),
    (dict(target=1), "strictly between 0 and 1"),
    (dict(target=1.5), "strictly between 0 and 1"),
    (dict(target=-0.2), "strictly between 0 and 1"),
    (dict(target=math.nan), "strictly between 0 and 1"),
    (dict(target="0.5"), "strictly between 0 and 1"),
    (dict(criterion="l3"), "unknown criterion 'l3'"),
    (dict(strategy="random"), "unknown strategy 'random'"),
    (dict(target_metric="macs"), "unknown target_metric 'macs'"),
    (dict(mode="best"), "unknown mode 'best'; choose one of max, min"),
    (dict(strategy="sensitivity", monitor=None), "needs `monitor`"),
    (dict(sensitivity_rates=[0.5, 1.0]), "sensitivity_rates"),
    (dict(sensitivity_rates=[]), "sensitivity_rates"),
    (dict(round_to=0), "round_to must be at least 1"),
    (dict(min_channels=0), "min_channels must be at least 1"),
    (dict(sensitivity_batches=0), "sensitivity_batches must be at least 1"),
])
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        pruning(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "module", "fit_kwargs", "message"), [
    pytest.param(dict(schedule=[1, 3]), {}, {}, "schedule epoch 3 is not below max_epochs=3", id="late-epoch"),
    pytest.param(dict(monitor="val/acc"), dict(log_val=False), {}, "monitor 'val/acc' is never logged",
                 id="monitor-never-logged"),
    pytest.param(dict(strategy="sensitivity", monitor="val/acc"), {}, dict(val=False), "needs validation data",
                 id="no-validation-data"),
    pytest.param(dict(strategy="sensitivity", monitor="val/acc"), {}, dict(val=False, limit_val_batches=0),
                 "needs validation data", id="no-validation-data-limit-0"),
    pytest.param({}, dict(example_input=False), {}, "ToyModule has no example input", id="no-example-input"),
    pytest.param(dict(example_input=[1, 3, IMAGE_SIZE, IMAGE_SIZE]), dict(example_input=False, seed=3), {}, None,
                 id="example-input-shape-works"),
    pytest.param(dict(target=0.99, min_channels=16), {}, {}, "target 99% of flops is unreachable",
                 id="unreachable-min-channels"),
    pytest.param(dict(target=0.6, ignore=["net.stem", "net.block1.fuse"]), {}, {}, "target 60% of flops is unreachable",
                 id="unreachable-ignore"),
    pytest.param(dict(ignore=["net.*"]), {}, {}, "no prunable group is left", id="all-ignored"),
])
def test_bad_input_fails_at_fit_start(kwargs: dict[str, Any], module: dict[str, Any], fit_kwargs: dict[str, Any],
                                      message: str | None) -> None:
    model = ToyModule(**module)
    saved = snapshot(model)
    counter = CountBatches()
    trainer_kwargs = {key: value for key, value in fit_kwargs.items() if key != "val"}
    trainer = make_trainer(max_epochs=3, callbacks=[counter, pruning(**kwargs)], **trainer_kwargs)
    data = ToyData()
    if message is None:  # the control: a shape is enough to trace a module without example_input_array
        trainer.fit(model, data)
        assert counter.train == 6 and flops(model) < 0.6 * count_flops(ToyModule(), batch(1))
        return
    with pytest.raises(ValueError) as info:
        if fit_kwargs.get("val") is False:
            trainer.fit(model, train_dataloaders=data.train_dataloader())
        else:
            trainer.fit(model, data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert trainer.global_step == 0 and counter.train == 0 and counter.val == 0 and model.training_steps == 0
    assert_state_equal(model, saved)


# -- 5. loggers -------------------------------------------------------------------------------------------------------
SCALARS = ("pruning/flops", "pruning/params", "pruning/flops_ratio", "pruning/step", "pruning/probe_metric_before",
           "pruning/probe_metric_after")


def test_tensorboard_gets_scalars_figures_and_plan(tmp_path: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pytest.importorskip("matplotlib")
    logger = TensorBoardLogger(tmp_path, name="tb")
    model = ToyModule()
    flops0 = flops(model)
    callback = pruning(schedule=[1], target=0.4, strategy="sensitivity", monitor="val/acc")
    make_trainer(max_epochs=2, logger=logger, callbacks=[callback]).fit(model, ToyData())
    entry = callback.history[0]

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert set(SCALARS) <= set(tags["scalars"])
    values = {tag: [event.value for event in events.Scalars(tag)] for tag in SCALARS}
    assert values["pruning/step"] == [1.0]
    assert values["pruning/flops"] == [pytest.approx(entry["flops"], rel=1e-6)]
    assert values["pruning/params"] == [pytest.approx(entry["params"], rel=1e-6)]
    assert values["pruning/flops_ratio"] == [pytest.approx(entry["flops"] / flops0, rel=1e-6)]
    assert values["pruning/probe_metric_before"] == [pytest.approx(entry["metric_before"], rel=1e-6)]
    assert values["pruning/probe_metric_after"] == [pytest.approx(entry["metric_after"], rel=1e-6)]

    assert {"pruning/sensitivity", "pruning/widths"} <= set(tags["images"])
    for tag in ("pruning/sensitivity", "pruning/widths"):
        image = events.Images(tag)[0]
        assert image.width > 100 and image.height > 100 and image.encoded_image_string[:4] == b"\x89PNG"

    text_tags = [tag for tag in tags["tensors"] if tag.startswith("pruning/plan_step_1")]
    assert len(text_tags) == 1
    assert events.SummaryMetadata(text_tags[0]).plugin_data.plugin_name == "text"
    text = events.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    for name, channels in entry["plan"].items():
        assert f"| `{name}` | {len(channels)} |" in text


def test_csv_logger_gets_scalars(tmp_path: Any) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    model = ToyModule()
    callback = pruning(schedule=[1], target=0.4, strategy="sensitivity", monitor="val/acc")
    make_trainer(max_epochs=2, logger=logger, callbacks=[callback]).fit(model, ToyData())
    entry = callback.history[0]
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("pruning/flops")]
    assert len(rows) == 1
    row = rows[0]
    assert set(SCALARS) <= set(row)
    assert float(row["pruning/step"]) == 1
    assert float(row["pruning/flops"]) == entry["flops"]
    assert float(row["pruning/params"]) == entry["params"]
    assert float(row["pruning/probe_metric_after"]) == pytest.approx(entry["metric_after"])


# -- 6. criteria and group options ------------------------------------------------------------------------------------
class ExpectedScores(Callback):
    """Listed before the pruning callback: each group's scores under ``criterion``, computed independently right
    before the prune (for ``taylor`` from the eval-mode gradients of the first ``batches`` training batches)."""

    def __init__(self, criterion: str, batches: int) -> None:
        self.criterion = criterion
        self.batches = batches
        self.scores: dict[str, np.ndarray] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch != 1:
            return
        graph = DependencyGraph(pl_module, pl_module.example_input_array)
        if self.criterion == "taylor":  # gradients in eval mode, as the callback takes them (BN stats untouched)
            pl_module.zero_grad(set_to_none=True)
            pl_module.eval()
            for index, (x, y) in enumerate(trainer.train_dataloader):
                if index == self.batches:
                    break
                nn.functional.cross_entropy(pl_module(x), y).backward()
            pl_module.train()
        self.scores = {g.name: channel_scores(g, pl_module, self.criterion) for g in graph.prunable_groups}
        pl_module.zero_grad(set_to_none=True)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_runs_one_step(criterion: str) -> None:
    model = ToyModule()
    flops0 = flops(model)
    expected = ExpectedScores(criterion, batches=2)
    recorder = RecordSteps()
    callback = pruning(schedule=[1], target=0.5, criterion=criterion, sensitivity_batches=2)
    make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[expected, callback, recorder]).fit(model, ToyData())
    assert len(callback.history) == 1
    assert abs(flops(model) / flops0 - 0.5) <= TOLERANCE["uniform"]
    assert_runs(model)
    plan = callback.history[0]["plan"]
    assert set(plan) == set(PRUNABLE)
    if criterion != "random":  # the lowest-scored channels of each group went
        for name, channels in plan.items():
            order = np.argsort(expected.scores[name], kind="stable")
            assert channels == sorted(order[: len(channels)].tolist()), name
    if criterion == "taylor":  # the gradients the criterion needed are not left behind
        assert recorder.grads_left == [0]


def test_callable_criterion() -> None:
    calls: list[str] = []

    def last_first(group: Any, module: nn.Module) -> np.ndarray:
        calls.append(group.name)
        return -np.arange(group.size, dtype=float)  # the highest index scores lowest: pruned first

    model = ToyModule()
    callback = pruning(schedule=[1], target=0.4, criterion=last_first)
    make_trainer(max_epochs=2, callbacks=[callback]).fit(model, ToyData())
    # called once per group at fit start (to catch a broken criterion early) and once at the step
    assert sorted(calls) == sorted(PRUNABLE * 2)
    plan = callback.history[0]["plan"]
    assert set(plan) == set(PRUNABLE)
    for channels in plan.values():
        assert channels == list(range(GROUP_SIZE - len(channels), GROUP_SIZE))
    assert_runs(model)


def test_callable_criterion_with_wrong_length_fails_at_fit_start() -> None:
    model = ToyModule()
    callback = pruning(schedule=[1], target=0.4, criterion=lambda group, module: [0.0])
    trainer = make_trainer(max_epochs=2, callbacks=[callback])
    with pytest.raises(ValueError, match="criterion returned"):
        trainer.fit(model, ToyData())
    assert trainer.global_step == 0


def test_ignore_keeps_a_group_untouched() -> None:
    model = ToyModule()
    stem = {name: p.detach().clone() for name, p in model.net.stem.named_parameters()}
    callback = pruning(schedule=[1], target=0.3, ignore=["net.stem"])
    recorder = RecordSteps()
    make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback, recorder]).fit(model, ToyData())
    plan = callback.history[0]["plan"]
    assert "net.stem.0" not in plan and set(plan) == set(PRUNABLE) - {"net.stem.0"}
    assert callback.graph.group("net.stem.0").size == GROUP_SIZE
    for name, p in model.net.stem.named_parameters():
        assert p.shape == stem[name].shape, name
    # the stem's channels live on in the first block (its expansion's halves and its depthwise conv) ...
    assert model.net.block1.expand[0].out_channels == 2 * GROUP_SIZE and model.net.block1.dw[0].out_channels == 32
    # ... while the second block's are those of the first block's (pruned) fuse
    fuse1 = callback.graph.group("net.block1.fuse.0").size
    assert fuse1 < GROUP_SIZE and model.net.block2.dw[0].out_channels == fuse1
    assert model.net.block2.expand[0].out_channels == 2 * fuse1
    assert recorder.steps[0].flops_after < recorder.steps[0].flops_before
    assert_runs(model)


@pytest.mark.parametrize("strategy", ["uniform", "global"])
def test_round_to_keeps_multiples(strategy: str) -> None:
    model = ToyModule()
    callback = pruning(schedule=[1], target=0.4, strategy=strategy, round_to=4)
    make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback]).fit(model, ToyData())
    sizes = {group.name: group.size for group in callback.graph.prunable_groups}
    assert set(sizes) == set(PRUNABLE)
    assert all(size % 4 == 0 for size in sizes.values()), sizes
    assert any(size < GROUP_SIZE for size in sizes.values())
    assert model.net.block1.fuse[0].out_channels == sizes["net.block1.fuse.0"]
    assert_runs(model)


# -- 7. the on_pruning_step event ---------------------------------------------------------------------------------
def test_listener_gets_one_consistent_event_per_step() -> None:
    model = ToyModule()
    flops0, params0 = flops(model), count_params(model)
    recorder = RecordSteps()
    callback = pruning(schedule=[0, 1, 2], target=0.5, monitor="val/acc")
    make_trainer(max_epochs=3, limit_train_batches=1, callbacks=[callback, recorder]).fit(model, ToyData())

    steps = recorder.steps
    assert all(isinstance(step, PruningStep) for step in steps)
    assert [step.step for step in steps] == [1, 2, 3]
    assert [step.epoch for step in steps] == [0, 1, 2]
    assert steps[0].flops_before == flops0 and steps[0].params_before == params0
    for step, entry, live_flops, live_params in zip(steps, callback.history, recorder.live_flops,
                                                    recorder.live_params):
        assert step.flops_after < step.flops_before and step.params_after < step.params_before
        assert (step.baseline_flops, step.baseline_params) == (flops0, params0)
        assert (live_flops, live_params) == (step.flops_after, step.params_after)  # the model is already pruned
        assert step.plan == entry["plan"] and step.flops_after == entry["flops"]
        assert (step.metric_before, step.metric_after) == (entry["metric_before"], entry["metric_after"])
        assert isinstance(step.metric_before, float)
        assert tuple(step.example_input.shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    for previous, step in zip(steps, steps[1:]):
        assert step.flops_before == previous.flops_after and step.params_before == previous.params_after
    assert abs(steps[-1].flops_after / flops0 - 0.5) <= TOLERANCE["uniform"]


# -- 8. schedules ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("schedule", "epochs"), [
    ({"start": 1, "stop": 4, "every": 1}, [1, 2, 3]),
    ({"start": 1, "stop": 4}, [1, 2, 3]),
    ({"stop": 3}, [0, 1, 2]),
    ({"start": 1, "stop": 9, "every": 3}, [1, 4, 7]),
    ([1, 2, 3], [1, 2, 3]),
    ((3, 1), [1, 3]),
    (2, [2]),
])
def test_schedule_forms(schedule: Any, epochs: list[int]) -> None:
    assert pruning(schedule=schedule).schedule == epochs


@pytest.mark.parametrize("schedule", [
    {}, {"start": 1}, {"start": 1, "stop": 4, "each": 1}, {"start": 3, "stop": 1}, {"start": 1, "stop": 4, "every": -1},
    {"start": 1, "stop": 4, "every": 0}, {"stop": "x"}, [], [-1], [1, 1], [1, "a"], "x", None, 2.5,
])
def test_bad_schedules_raise(schedule: Any) -> None:
    with pytest.raises(ValueError):
        pruning(schedule=schedule)


@pytest.mark.parametrize("schedule", [
    [1.5], "13", {"start": 1, "stop": 4, "every": 0}, True,
])
def test_bad_schedules_are_named(schedule: Any) -> None:
    with pytest.raises(ValueError, match="schedule"):
        pruning(schedule=schedule)


# -- 9. ultralytics YOLOv8n -------------------------------------------------------------------------------------------
def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


class RawYOLO(LightningModule):
    """A YOLOv8n ``DetectionModel`` trained on a dummy loss: the point is surgery inside fit, not accuracy."""

    def __init__(self) -> None:
        super().__init__()
        from ultralytics import YOLO

        torch.manual_seed(0)
        self.model = YOLO("yolov8n.yaml").model
        self.example_input_array = torch.zeros(1, 3, 64, 64)

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return sum(t.float().pow(2).mean() for t in _tensors(self(batch[0]))) / 1e4

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)


def test_yolov8n_prunes_inside_fit() -> None:
    pytest.importorskip("ultralytics")
    module = RawYOLO()
    x = module.example_input_array
    flops0, params0 = count_flops(module, x), count_params(module)
    data = DataLoader(TensorDataset(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))),
                      batch_size=2)
    callback = pruning(schedule=[1], target=0.3)
    trainer = make_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, train_dataloaders=data)
    assert abs(count_flops(module, x) / flops0 - 0.7) <= 0.02
    assert count_params(module) < params0
    assert trainer.global_step == 4
    module.eval()
    with torch.no_grad():
        out = module(torch.randn(2, 3, 64, 64))
    assert all(torch.isfinite(t).all() for t in _tensors(out))
    assert _tensors(out)[0].shape[0] == 2
