"""Distillation in the Lightning front-ends, end to end on the CPU with real (small) models.

1. ``IterativePruningCallback(distill=DistillationConfig(...))`` on a plain LightningModule: the projectors follow
   every prune (live module and Lightning's ``EMAWeightAveraging`` copy, whichever callback comes first), the
   teacher keeps its widths, the loss teaches and is logged, checkpoints hold the pruned student and the projectors
   beside it (never the teacher), ``load_from_checkpoint`` of the plain module and resume both work, and the module
   leaves fit without a distiller.
2. Bad input fails in one line before anything trains; ``distill_step`` without a distiller is a plain forward.
3. ``YOLOModule(distill=True)`` (ultralytics' distillation loss, projectors declared as graph attachments): one prune
   slices the projectors to the student's neck widths, the EMA copy agrees, checkpoints hold the projectors and not
   the teacher, ``load_from_checkpoint`` rebuilds the teacher unpruned, resume works; bad teachers fail in one line.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything
torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402

from lightning_prune.callbacks import IterativePruningCallback  # noqa: E402
from lightning_prune.callbacks.iterative_pruning import DISTILL_KEY  # noqa: E402
from lightning_prune.checkpoint import PrunedCheckpointMixin  # noqa: E402
from lightning_prune.pruning import DistillationConfig, Distiller, distill_step  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH = 32  # wide enough that a teacher hidden in a checkpoint would show in its size
TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def _single_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message, message
    return message


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _tensors(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in _tensors(value)]
    return []


def _keys(obj: Any) -> list[str]:
    """Every dictionary key anywhere in a checkpoint."""
    if isinstance(obj, dict):
        return [str(k) for k in obj] + [k for value in obj.values() for k in _keys(value)]
    if isinstance(obj, (list, tuple)):
        return [k for value in obj for k in _keys(value)]
    return []


def _numel(obj: Any) -> int:
    return sum(t.numel() for t in _tensors(obj))


# -- 1. a plain LightningModule --------------------------------------------------------------------------------------
class Net(PrunedCheckpointMixin, pl.LightningModule):
    def __init__(self, width: int = WIDTH, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(width, 2))
        self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out, kd = distill_step(self, x)
        return F.cross_entropy(out, y) + kd

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def _loader() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8, generator=generator), torch.randint(0, 2, (64,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _pruning(**kwargs: Any) -> IterativePruningCallback:
    options = dict(schedule=[1, 2], target=0.5, strategy="uniform", verbose=False,
                   distill=DistillationConfig(features=("body.4",), outputs="kl"))
    return IterativePruningCallback(**{**options, **kwargs})


def _averaged(trainer: pl.Trainer) -> nn.Module | None:
    found = [c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging)]
    return found[0]._average_model.module if found else None


class Recorder(Callback):
    """Reads the distiller while training: every batch's loss (before the pruning callback logs and clears it) and,
    at each epoch end, the widths of the student, its projector, the teacher and the averaged copy."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.epochs: list[dict[str, Any]] = []
        self.at_start: dict[str, torch.Tensor] = {}
        self.optimized: set[int] = set()
        self.projector_params: list[int] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        distiller = pl_module.distiller
        self.at_start = {k: v.detach().clone() for k, v in distiller.projectors.state_dict().items()}
        self.optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.projector_params = [id(p) for p in distiller.projectors.parameters()]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.losses.append((trainer.current_epoch, float(pl_module.distiller.last_loss)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        distiller = pl_module.distiller
        projector, teacher = distiller.projectors[0], distiller.teacher
        record = dict(epoch=trainer.current_epoch, student=pl_module.body[3].out_channels,
                      projector=(projector.in_channels, tuple(projector.weight.shape)),
                      teacher=(teacher.body[0].out_channels, teacher.body[3].out_channels,
                               tuple(teacher.body[3].weight.shape)),
                      teacher_is_student=teacher is pl_module or teacher.body is pl_module.body,
                      teacher_trainable=any(p.requires_grad for p in teacher.parameters()),
                      student_of=distiller.student[0] is pl_module)
        average = _averaged(trainer)
        if average is not None:
            twin = getattr(average, "distiller", None)
            record.update(average_student=tuple(average.body[3].weight.shape),
                          average_projector=None if twin is None else tuple(twin.projectors[0].weight.shape),
                          average_student_of=None if twin is None else twin.student[0] is average,
                          average_shares=twin is not None and twin.projectors[0].weight is projector.weight)
        self.epochs.append(record)


def _fit(tmp: Path, net: Net, callbacks: list[Callback], max_epochs: int = 4, **kwargs: Any) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, default_root_dir=str(tmp), **TRAINER)
    trainer.fit(net, _loader(), _loader(), **kwargs)
    return trainer


@pytest.fixture(scope="module")
def generic_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Schedule [1, 2], uniform, 4 epochs, with an EMA of the whole module and a checkpoint every epoch."""
    tmp = tmp_path_factory.mktemp("generic")
    torch.manual_seed(0)
    net, recorder, pruning = Net(), Recorder(), _pruning()
    checkpoints = ModelCheckpoint(dirpath=str(tmp / "ckpt"), save_top_k=-1, filename="{epoch}")
    trainer = _fit(tmp, net, [recorder, pruning, EMAWeightAveraging(decay=0.9), checkpoints])
    return dict(tmp=tmp, net=net, recorder=recorder, pruning=pruning, trainer=trainer, ckpt=tmp / "ckpt")


def test_projectors_follow_every_prune_and_the_teacher_keeps_its_widths(generic_run: dict[str, Any]) -> None:
    epochs = generic_run["recorder"].epochs
    assert [h["epoch"] for h in generic_run["pruning"].history] == [1, 2]
    widths = [e["student"] for e in epochs]
    assert widths[0] == WIDTH and widths[0] > widths[1] > widths[2] == widths[3]  # one prune at each of 1 and 2
    for e in epochs:
        assert e["projector"] == (e["student"], (WIDTH, e["student"], 1, 1)), e  # input: the student's width
        assert e["teacher"] == (WIDTH, WIDTH, (WIDTH, WIDTH, 3, 3)), e  # the teacher is never pruned
        assert not e["teacher_is_student"] and not e["teacher_trainable"] and e["student_of"], e
        # the averaged copy holds a twin of the module and its distiller: both sliced with every prune
        assert e["average_student"] == (e["student"], e["student"], 3, 3), e
        assert e["average_projector"] == e["projector"][1], e
        assert e["average_student_of"] and not e["average_shares"], e
    assert generic_run["net"].body[3].out_channels == widths[-1]


def test_distillation_loss_decreases_and_is_logged(generic_run: dict[str, Any]) -> None:
    losses = generic_run["recorder"].losses
    assert len(losses) == 4 * 8 and all(loss > 0 for _, loss in losses)
    by_epoch = [[loss for epoch, loss in losses if epoch == e] for e in range(4)]
    first = by_epoch[0]
    assert sum(first[-3:]) < sum(first[:3])  # the projector learns within the first (unpruned) epoch
    means = [sum(values) / len(values) for values in by_epoch]
    assert means[-1] < 0.75 * means[0], means  # and the student keeps following the teacher through two prunes
    metrics = generic_run["trainer"].callback_metrics
    assert "train/distill_loss" in metrics and "train/distill_loss_epoch" in metrics
    assert float(metrics["train/distill_loss_epoch"]) == pytest.approx(means[-1], rel=1e-4)


def test_module_leaves_fit_without_a_distiller(generic_run: dict[str, Any]) -> None:
    net = generic_run["net"]
    assert not hasattr(net, "distiller")
    assert not any(k.startswith("distiller.") for k in net.state_dict())
    assert "on_load_checkpoint" not in vars(net) and "on_save_checkpoint" not in vars(net)
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 2)


def test_checkpoints_hold_the_pruned_student_and_the_projectors_not_the_teacher(generic_run: dict[str, Any]) -> None:
    widths = {e["epoch"]: e["student"] for e in generic_run["recorder"].epochs}
    ckpt_dir = generic_run["ckpt"]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [f"epoch={e}.ckpt" for e in range(4)]
    teacher_numel = _numel(Net().state_dict())
    for epoch, width in widths.items():
        path = ckpt_dir / f"epoch={epoch}.ckpt"
        ckpt = torch.load(path, weights_only=True)  # plain types only: no pickled module (no teacher) inside
        for key in ("state_dict", "current_model_state"):  # the averaged weights and the live ones
            state = ckpt[key]
            assert not [k for k in state if k.startswith("distiller.")], (epoch, key)
            assert state["body.3.weight"].shape == (width, width, 3, 3), (epoch, key)
            assert Net(width=width).state_dict().keys() == state.keys()
        projectors = ckpt[DISTILL_KEY]
        assert {k: tuple(v.shape) for k, v in projectors.items()} == {
            "distiller.projectors.0.weight": (WIDTH, width, 1, 1), "distiller.projectors.0.bias": (WIDTH,)}
        assert not [k for k in _keys(ckpt) if "teacher" in k.lower()], epoch
        if width < WIDTH:  # the unpruned teacher's conv is nowhere
            assert not [t for t in _tensors(ckpt) if tuple(t.shape) == (WIDTH, WIDTH, 3, 3)], epoch
        # nothing but the student (averaged and live), the projectors, their optimizer moments and a few scalars
        student, scalars = _numel(ckpt["state_dict"]), _numel([ckpt["callbacks"], ckpt["averaging_state"]])
        assert _numel(ckpt["current_model_state"]) == student and scalars <= 4
        expected = 2 * student + _numel(projectors) + _numel(ckpt["optimizer_states"]) + scalars
        assert _numel(ckpt) == expected
        assert path.stat().st_size < 4 * expected + 40_000 < 4 * (expected + teacher_numel), (epoch, path.stat())


def test_load_from_checkpoint_gives_the_pruned_plain_module(generic_run: dict[str, Any]) -> None:
    last = generic_run["ckpt"] / "epoch=3.ckpt"
    loaded = Net.load_from_checkpoint(last)
    width = generic_run["recorder"].epochs[-1]["student"]
    assert loaded.body[0].out_channels == loaded.body[3].in_channels == loaded.body[3].out_channels == width
    assert not hasattr(loaded, "distiller")
    state = torch.load(last, weights_only=True)["state_dict"]  # the averaged weights, as Lightning stores them
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key])
    with torch.no_grad():
        assert loaded.eval()(torch.zeros(1, 3, 8, 8)).shape == (1, 2)


def test_resume_restores_projectors_and_reaches_the_same_architecture(generic_run: dict[str, Any]) -> None:
    start = generic_run["ckpt"] / "epoch=1.ckpt"
    saved = torch.load(start, weights_only=True)[DISTILL_KEY]
    torch.manual_seed(1)
    net, recorder, pruning = Net(), Recorder(), _pruning()
    _fit(generic_run["tmp"] / "resume", net, [recorder, pruning, EMAWeightAveraging(decay=0.9)], ckpt_path=start)
    assert [h["epoch"] for h in pruning.history] == [1, 2]
    assert [e["epoch"] for e in recorder.epochs] == [2, 3]
    for key, value in recorder.at_start.items():  # the checkpoint's projectors, not a fresh init
        torch.testing.assert_close(value, saved[f"distiller.projectors.{key}"])
    assert recorder.projector_params and set(recorder.projector_params) <= recorder.optimized
    final = generic_run["recorder"].epochs[-1]
    for e in recorder.epochs:
        assert e["student"] == final["student"] and e["projector"] == final["projector"], e
        assert e["average_projector"] == final["average_projector"], e
    assert net.body[3].out_channels == generic_run["net"].body[3].out_channels
    assert not hasattr(net, "distiller")


def test_weight_averaging_before_the_pruning_callback(tmp_path: Path) -> None:
    """EMAWeightAveraging first: its copy is made before the distiller exists; the run still completes, the copy's
    parameters line up with the module's and its projector is sliced with the live one."""
    torch.manual_seed(0)
    net, recorder, pruning = Net(), Recorder(), _pruning(schedule=[1])
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1, filename="{epoch}")
    trainer = _fit(tmp_path, net, [recorder, EMAWeightAveraging(decay=0.9), pruning, checkpoints], max_epochs=2)
    assert [h["epoch"] for h in pruning.history] == [1]
    for e in recorder.epochs:
        assert e["average_projector"] == e["projector"][1] == (WIDTH, e["student"], 1, 1), e
        assert e["average_student_of"] and not e["average_shares"], e
    average = _averaged(trainer)
    assert [p.shape for p in average.parameters()] == [p.shape for p in net.parameters()] + [
        p.shape for p in average.distiller.parameters()]
    ckpt = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=True)
    assert not [k for k in [*ckpt["state_dict"], *ckpt["current_model_state"]] if k.startswith("distiller.")]
    assert ckpt[DISTILL_KEY]["distiller.projectors.0.weight"].shape == (WIDTH, net.body[3].out_channels, 1, 1)
    assert Net.load_from_checkpoint(tmp_path / "ckpt" / "epoch=1.ckpt").body[3].out_channels == net.body[3].out_channels


def test_without_weight_averaging_checkpoints_and_resume(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, pruning = Net(), _pruning(schedule=[1])
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1, filename="{epoch}")
    _fit(tmp_path, net, [pruning, checkpoints], max_epochs=2)
    ckpt = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=True)
    assert "current_model_state" not in ckpt and not [k for k in ckpt["state_dict"] if "distiller" in k]
    assert ckpt[DISTILL_KEY]["distiller.projectors.0.weight"].shape == (WIDTH, WIDTH, 1, 1)
    resumed, again = Net(), _pruning(schedule=[1])
    _fit(tmp_path / "resume", resumed, [again], max_epochs=2, ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    assert [h["epoch"] for h in again.history] == [1]
    assert resumed.body[3].out_channels == net.body[3].out_channels < WIDTH


# -- 2. bad input and the plain path ---------------------------------------------------------------------------------
def test_distill_step_without_a_distiller_is_a_plain_forward() -> None:
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 3, 8, 8)
    out, kd = distill_step(net, x)
    assert kd == 0.0 and isinstance(kd, float)
    torch.testing.assert_close(out, net(x))


def test_distill_step_with_a_distiller_in_eval_mode_is_a_plain_forward() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    net.distiller = DistillationConfig(features=("body.4",)).build(net, x)
    out, kd = distill_step(net, x)
    assert kd == 0.0 and net.distiller.last_loss is None
    net.train()
    _, kd = distill_step(net, x)
    assert isinstance(kd, torch.Tensor) and kd.item() > 0 and kd.requires_grad
    assert isinstance(net.distiller, Distiller)


def test_a_missing_feature_fails_in_one_line_at_setup_before_training(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Net()
    before = copy.deepcopy(net.state_dict())
    started: list[int] = []

    class Started(Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            started.append(1)

    pruning = _pruning(distill=DistillationConfig(features=("body.99",), outputs="kl"))
    with pytest.raises(ValueError) as err:
        _fit(tmp_path, net, [pruning, Started()], max_epochs=3)
    assert "body.99" in _single_line(err)
    assert not started
    assert not hasattr(net, "distiller")
    assert net.state_dict().keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(net.state_dict()[key], value)
    assert "on_load_checkpoint" not in vars(net)


@pytest.mark.parametrize("value", [{"features": ["body.4"]}, "kl", ("body.4",), True])
def test_distill_must_be_a_distillation_config(value: Any) -> None:
    with pytest.raises(ValueError) as err:
        _pruning(distill=value)
    assert "DistillationConfig" in _single_line(err)


# -- 3. YOLOModule(distill=True) -------------------------------------------------------------------------------------
IMGSZ = 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ultralytics")
    from lightning_prune.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, imgsz=IMGSZ, seed=0)


def _yolo_fit(tmp: Path, module: pl.LightningModule, data_yaml: Path, callbacks: list[Callback], max_epochs: int,
              **kwargs: Any) -> pl.Trainer:
    from lightning_prune.integrations.ultralytics import YOLODataModule

    data = YOLODataModule(str(data_yaml), imgsz=IMGSZ, batch_size=4)
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, default_root_dir=str(tmp),
                         limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, **TRAINER)
    trainer.fit(module, data, **kwargs)
    return trainer


def _levels(module: nn.Module) -> list[int]:
    return list(module._distillation[0].feats_idx[:-1])


def _level_channels(model: nn.Module, levels: list[int]) -> list[int]:
    """The channels ``model.model[level]`` really outputs (a forward with hooks; the train/eval mode restored)."""
    seen: dict[int, int] = {}
    handles = [model.model[level].register_forward_hook(
        lambda module, args, out, level=level: seen.__setitem__(level, int(out.shape[1]))) for level in levels]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, IMGSZ, IMGSZ))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return [seen[level] for level in levels]


def _projectors(module: nn.Module) -> list[tuple[int, int, int]]:
    """Each projector's (first conv's in_channels, its weight's input width, the teacher-side output width)."""
    return [(int(p[0].in_channels), int(p[0].weight.shape[1]), int(p[2].weight.shape[0]))
            for p in module.distill_projector]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def yolo_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from lightning_prune.integrations.ultralytics import YOLOModule

    tmp = tmp_path_factory.mktemp("yolo")
    torch.manual_seed(0)
    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ, distill=True)
    levels = _levels(module)
    before = dict(student=_level_channels(module.model, levels), projectors=_projectors(module),
                  teacher_params=_params(module.teacher), student_params=_params(module.model),
                  last_conv=module.distill_projector[0][2].weight.detach().clone())
    pruning = IterativePruningCallback(schedule=[1], target=0.5, strategy="uniform", verbose=False)
    checkpoints = ModelCheckpoint(dirpath=str(tmp / "ckpt"), save_top_k=-1, filename="{epoch}")
    trainer = _yolo_fit(tmp, module, shapes / "data.yaml", [pruning, checkpoints], max_epochs=2)
    return dict(tmp=tmp, module=module, levels=levels, before=before, pruning=pruning, trainer=trainer,
                ckpt=tmp / "ckpt")


def test_yolo_projectors_of_its_own_copy_start_as_the_identity(lp) -> None:
    from lightning_prune.integrations.ultralytics import YOLOModule

    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ, distill=True)  # the teacher: the model as built here
    assert all(lp.embeds_kept_channels(p) for p in module.distill_projector)
    x = torch.nn.functional.silu(torch.randn(1, 64, 4, 4) * 4)
    with torch.no_grad():
        torch.testing.assert_close(module.distill_projector[0](x), x)  # zero distillation loss at the start


def test_yolo_projectors_follow_the_prune(yolo_run: dict[str, Any]) -> None:
    module, levels, before = yolo_run["module"], yolo_run["levels"], yolo_run["before"]
    assert len(levels) == 3 and [h["epoch"] for h in yolo_run["pruning"].history] == [1]
    assert [c for c, _, _ in before["projectors"]] == before["student"] == [64, 128, 256]
    student = _level_channels(module.model, levels)
    assert all(now < was for now, was in zip(student, before["student"])), student
    projectors = _projectors(module)
    assert [c for c, _, _ in projectors] == [w for _, w, _ in projectors] == student
    assert [o for _, _, o in projectors] == [o for _, _, o in before["projectors"]]  # the teacher's side stays
    assert _level_channels(module.ema.ema, levels) == student  # the EMA copy was pruned the same way
    assert _params(module.teacher) == before["teacher_params"] > _params(module.model)
    assert not any(p.requires_grad for p in module.teacher.parameters())
    optimizer = yolo_run["trainer"].optimizers[0]
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in module.distill_projector.parameters()} <= optimized  # the projectors are trained
    assert not torch.equal(module.distill_projector[0][2].weight, before["last_conv"])
    for p in module.distill_projector.parameters():  # and their optimizer moments were sliced with them
        assert all(v.shape == p.shape for k, v in optimizer.state[p].items() if k.startswith("exp_avg"))


def test_yolo_distill_loss_is_logged(yolo_run: dict[str, Any]) -> None:
    metrics = yolo_run["trainer"].callback_metrics
    assert float(metrics["train/distill_loss"]) > 0
    assert float(metrics["train/loss"]) > float(metrics["train/distill_loss"])


def test_yolo_checkpoint_holds_projectors_not_the_teacher(yolo_run: dict[str, Any]) -> None:
    path = yolo_run["ckpt"] / "epoch=1.ckpt"
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["state_dict"]
    module = yolo_run["module"]
    projector_keys = [k for k in state if k.startswith("distill_projector.")]
    assert projector_keys and set(projector_keys) == {f"distill_projector.{k}"
                                                      for k in module.distill_projector.state_dict()}
    for key in projector_keys:
        assert state[key].shape == module.state_dict()[key].shape
    assert not [k for k in _keys(ckpt) if "teacher" in k.lower()]
    assert state.keys() == module.state_dict().keys()
    # the size of the student (live and EMA) with its optimizer moments: a teacher would add as much again
    tensors = _numel(ckpt)
    assert path.stat().st_size < 4 * tensors * 1.02 + 100_000
    assert tensors < 4.5 * yolo_run["before"]["student_params"] < tensors + 4 * yolo_run["before"]["teacher_params"]


def test_yolo_load_from_checkpoint_rebuilds_the_teacher(yolo_run: dict[str, Any]) -> None:
    from lightning_prune.integrations.ultralytics import YOLOModule

    module, levels = yolo_run["module"], yolo_run["levels"]
    loaded = YOLOModule.load_from_checkpoint(yolo_run["ckpt"] / "epoch=1.ckpt")
    student = _level_channels(module.model, levels)
    assert _level_channels(loaded.model, levels) == student
    assert _projectors(loaded) == _projectors(module)
    assert _params(loaded.teacher) == yolo_run["before"]["teacher_params"]
    assert _level_channels(loaded.teacher, levels) == yolo_run["before"]["student"]
    state = torch.load(yolo_run["ckpt"] / "epoch=1.ckpt", weights_only=False)["state_dict"]
    for key, value in loaded.distill_projector.state_dict().items():
        torch.testing.assert_close(value, state[f"distill_projector.{key}"])


@pytest.mark.parametrize("start", ["epoch=0.ckpt", "epoch=1.ckpt"])
def test_yolo_resume(yolo_run: dict[str, Any], shapes: Path, start: str) -> None:
    from lightning_prune.integrations.ultralytics import YOLOModule

    torch.manual_seed(1)
    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ, distill=True)
    pruning = IterativePruningCallback(schedule=[1], target=0.5, strategy="uniform", verbose=False)
    trainer = _yolo_fit(yolo_run["tmp"] / f"resume-{start}", module, shapes / "data.yaml", [pruning], max_epochs=3,
                        ckpt_path=yolo_run["ckpt"] / start)
    assert trainer.current_epoch == 3 and [h["epoch"] for h in pruning.history] == [1]
    levels = yolo_run["levels"]
    student = _level_channels(yolo_run["module"].model, levels)
    assert _level_channels(module.model, levels) == _level_channels(module.ema.ema, levels) == student
    assert [c for c, _, _ in _projectors(module)] == [w for _, w, _ in _projectors(module)] == student
    assert float(trainer.callback_metrics["train/distill_loss"]) > 0


def test_yolo_bad_teachers_fail_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from lightning_prune.integrations.ultralytics import YOLOModule, save_yolo

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00this is not a checkpoint\xff" * 64)
    five = save_yolo(YOLOModule("yolov8n.yaml", nc=5, imgsz=IMGSZ), tmp_path / "five.pt")
    cases = [
        (dict(distill=str(tmp_path / "missing.pt")), "missing.pt' does not load"),
        (dict(distill=str(garbage)), "does not load"),
        (dict(distill=str(five)), "predicts 5 classes, the student 3"),
        (dict(distill=True, distill_weight=0), "distill_weight must be a positive number"),
        (dict(distill=True, distill_weight=float("nan")), "distill_weight must be a positive number"),
        (dict(distill="yes"), "does not load"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(ValueError) as err:
            YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ, **kwargs)
        message = _single_line(err)
        assert expected in message, (kwargs, message)
    plain = YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ)
    assert plain.teacher is None and plain.distill_projector is None and plain.distillation_attachments() == {}
    assert not [k for k in plain.state_dict() if "distill" in k]
