"""YOLOModule's EMA through pruning, save_yolo's task round trip, bring-your-own checkpoints, task/nc mismatches.

Small and fast: 64 px images, a handful of them, one thread.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
pytest.importorskip("pycocotools")
pl = pytest.importorskip("lightning.pytorch")

from lightning_prune import DependencyGraph  # noqa: E402
from lightning_prune.data.synthetic import CLASS_NAMES, make_synthetic_dataset  # noqa: E402
from lightning_prune.integrations.ultralytics import (  # noqa: E402
    ModelEMA,
    YOLODataModule,
    YOLOModule,
    model_task,
    save_yolo,
)
from lightning_prune.pruning.importance import lowest_channels  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMGSZ = 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, imgsz=IMGSZ, seed=0,
                                  num_test=4)


def _trainer(**kwargs) -> pl.Trainer:
    options = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0)
    return pl.Trainer(**{**options, **kwargs})


def _single_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _prune(model: torch.nn.Module, fraction: float = 0.3) -> None:
    graph = DependencyGraph(model, torch.zeros(1, 3, IMGSZ, IMGSZ))
    plan = {g.name: lowest_channels(g, model, int(g.size * fraction), "l1")
            for g in graph.prunable_groups if int(g.size * fraction) > 0}
    graph.prune(plan)


# -- the EMA -----------------------------------------------------------------------------------------------------------
def test_ema_has_ultralytics_decay_ramp() -> None:
    net = torch.nn.Linear(2, 1)
    ema = ModelEMA(net, decay=0.9999, tau=2000)
    assert ema.decay_at(1) == pytest.approx(0.9999 * (1 - 2.718281828 ** (-1 / 2000)), rel=1e-6)
    assert ema.decay_at(10 ** 6) == pytest.approx(0.9999)
    with torch.no_grad():
        net.weight.fill_(1.0)
        ema.ema.weight.fill_(0.0)
    ema.update(net)
    d = ema.decay_at(1)
    assert torch.allclose(ema.ema.weight, torch.full_like(net.weight, 1 - d))
    assert not ema.ema.weight.requires_grad and ema.updates == 1
    state = ema.state_dict()
    other = ModelEMA(net)
    other.load_state_dict(state)
    assert other.updates == 1 and torch.equal(other.ema.weight, ema.ema.weight)


def test_module_validates_and_saves_the_ema(shapes: Path, tmp_path: Path) -> None:
    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ)
    assert module.averaged_copies() == [(module.ema.ema, "model")]
    data = YOLODataModule(str(shapes / "data.yaml"), imgsz=IMGSZ, batch_size=4)
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, data)
    assert module.ema.updates == trainer.global_step == 4  # one update per optimizer step
    live, ema = module.model.state_dict(), module.ema.ema.state_dict()
    assert any(not torch.equal(live[k], ema[k]) for k in live if live[k].dtype.is_floating_point)
    assert module.eval_model is module.ema.ema  # outside training: Lightning's evaluation loops read the EMA
    saved = save_yolo(module, tmp_path / "ema.pt")
    from ultralytics import YOLO

    loaded = YOLO(str(saved)).model.state_dict()
    assert all(torch.equal(loaded[k].float(), ema[k].float()) for k in ema)
    assert YOLOModule(str(saved)).ema is not None and YOLOModule("yolov8n.yaml", nc=3, ema=False).ema is None


def test_ema_survives_pruning_by_the_callback(shapes: Path, tmp_path: Path) -> None:
    """The callback mirrors every prune onto YOLOModule.averaged_copies(): the EMA keeps its averages, is not reset."""
    from lightning_prune.callbacks import IterativePruningCallback

    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ)
    data = YOLODataModule(str(shapes / "data.yaml"), imgsz=IMGSZ, batch_size=4)
    seen: dict[str, object] = {}

    class Watch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # runs after the pruning callback's hook
            if trainer.current_epoch == 1:
                seen["updates"] = pl_module.ema.updates
                seen["matches"] = pl_module.ema.matches(pl_module.model)

    pruning = IterativePruningCallback(schedule=[1], target=0.4, strategy="uniform", verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer(max_epochs=2, callbacks=[pruning, Watch()])
        trainer.fit(module, data)
    assert not [w for w in caught if "EMA restarts" in str(w.message)]
    assert seen == {"updates": 2, "matches": True}  # pruned alike at the start of epoch 1, before any update
    assert module.ema.updates == trainer.global_step == 4  # kept averaging through the prune
    assert module.ema.matches(module.model)
    live = sum(p.numel() for p in module.model.parameters())
    assert sum(p.numel() for p in module.ema.ema.parameters()) == live
    metrics = _trainer().validate(module, data, verbose=False)[0]  # validation runs on the pruned EMA copy
    assert "val/mAP50-95" in metrics
    # a Lightning checkpoint of the pruned module loads back, EMA included (plain tensors: weights_only=True)
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    loaded = YOLOModule.load_from_checkpoint(path, weights_only=True)
    assert sum(p.numel() for p in loaded.model.parameters()) == live and loaded.ema.updates == 4
    ema = module.ema.ema.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in loaded.ema.ema.state_dict().items())


def test_ema_restarts_with_a_warning_when_pruned_outside_the_callback(shapes: Path) -> None:
    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ)
    _prune(module.model)
    with pytest.warns(UserWarning, match="EMA restarts"):
        assert module.eval_model is module.ema.ema
    assert module.ema.matches(module.model) and module.ema.updates == 0


# -- save_yolo keeps the task ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("yaml_name", "task", "nc"), [
    ("yolov8n.yaml", "detect", 3), ("yolov8n-seg.yaml", "segment", 3), ("yolov8n-pose.yaml", "pose", 1),
    ("yolov8n-obb.yaml", "obb", 3)])
def test_save_yolo_keeps_the_task_of_pruned_models(yaml_name: str, task: str, nc: int, shapes: Path,
                                                   tmp_path: Path) -> None:
    from ultralytics import YOLO

    module = YOLOModule(yaml_name, nc=nc, imgsz=IMGSZ)
    assert module.task == task and model_task(module.model) == task
    _prune(module.model)
    module.model.names = {i: f"thing{i}" for i in range(nc)}
    params = sum(p.numel() for p in module.model.parameters())
    path = save_yolo(module, tmp_path / f"{task}.pt", ema=False)
    yolo = YOLO(str(path))
    assert yolo.task == task and yolo.names == {i: f"thing{i}" for i in range(nc)}
    assert sum(p.numel() for p in yolo.model.parameters()) == params
    results = yolo.predict(str(shapes / "images" / "val" / "000000.png"), imgsz=IMGSZ, device="cpu", conf=0.0,
                           verbose=False, save=False)
    assert len(results) == 1
    expected = {"detect": "boxes", "segment": "masks", "pose": "keypoints", "obb": "obb"}[task]
    assert getattr(results[0], expected) is not None
    again = YOLOModule(str(path))  # and back into Lightning, to train and prune further
    assert again.task == task and again.names == yolo.names
    assert sum(p.numel() for p in again.model.parameters()) == params


@pytest.mark.skipif(not os.environ.get("LP_SLOW"), reason="ONNX export of four models: set LP_SLOW=1 to run")
@pytest.mark.parametrize("yaml_name", ["yolov8n-seg.yaml", "yolov8n-pose.yaml", "yolov8n-obb.yaml"])
def test_pruned_task_models_export_to_onnx(yaml_name: str, tmp_path: Path) -> None:
    from ultralytics import YOLO

    module = YOLOModule(yaml_name, nc=1 if "pose" in yaml_name else 3, imgsz=IMGSZ)
    _prune(module.model)
    onnx_file = Path(YOLO(str(save_yolo(module, tmp_path / "m.pt"))).export(format="onnx", imgsz=IMGSZ,
                                                                            simplify=False, device="cpu"))
    assert onnx_file.is_file()


def _polygon_shapes(root: Path) -> Path:
    """The synthetic shapes with each box written as a 4-point polygon: a valid segmentation data set."""
    root = make_synthetic_dataset(root, num_train=4, num_val=2, imgsz=IMGSZ, seed=0)
    for label in (root / "labels").rglob("*.txt"):
        rows = []
        for line in label.read_text().splitlines():
            c, cx, cy, w, h = line.split()
            cx, cy, w, h = map(float, (cx, cy, w, h))
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            rows.append(f"{c} {x0:.4f} {y0:.4f} {x1:.4f} {y0:.4f} {x1:.4f} {y1:.4f} {x0:.4f} {y1:.4f}")
        label.write_text("\n".join(rows) + "\n")
    return root


def test_segment_model_trains_validates_and_prunes(tmp_path: Path) -> None:
    """A segmentation model on polygon labels: ultralytics' segmentation loss, box mAP logged, pruned, saved."""
    root = _polygon_shapes(tmp_path / "shapes")
    module = YOLOModule("yolov8n-seg.yaml", nc=3, imgsz=IMGSZ)
    data = YOLODataModule(str(root / "data.yaml"), task="segment", imgsz=IMGSZ, batch_size=2)
    trainer = _trainer()
    trainer.fit(module, data)
    assert "val/mAP50-95" in trainer.callback_metrics and torch.isfinite(trainer.callback_metrics["val/loss"])
    _prune(module.model)
    trainer = _trainer()
    trainer.fit(module, data)  # trains on after the prune (the EMA restarts: pruned outside the callback)
    from ultralytics import YOLO

    assert YOLO(str(save_yolo(module, tmp_path / "seg.pt", data=root / "data.yaml"))).task == "segment"


# -- bring your own checkpoint -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ultralytics_best(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by ultralytics' own trainer: one epoch of YOLO('yolov8n.yaml').train on the shapes."""
    from ultralytics import YOLO

    project = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    try:
        YOLO("yolov8n.yaml").train(data=str(shapes / "data.yaml"), epochs=1, imgsz=IMGSZ, batch=4, workers=0,
                                   device="cpu", plots=False, val=False, project=str(project), name="train",
                                   exist_ok=True, verbose=False, amp=False)
    finally:
        torch.set_num_threads(threads)  # ultralytics' device selection resets the process-wide thread count
    weights = project / "train" / "weights"
    best = weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"
    assert best.is_file()
    return best


def test_module_loads_an_ultralytics_trainer_checkpoint(ultralytics_best: Path, shapes: Path, tmp_path: Path) -> None:
    from ultralytics.nn.tasks import load_checkpoint

    module = YOLOModule(str(ultralytics_best), imgsz=IMGSZ)
    assert module.task == "detect" and module.nc == 3 and module.names == dict(enumerate(CLASS_NAMES))
    reference, _ = load_checkpoint(str(ultralytics_best))
    expected = reference.state_dict()
    assert all(torch.equal(v.float(), expected[k].float()) for k, v in module.model.state_dict().items())
    assert all(p.requires_grad for p in module.model.parameters())
    # ... and prunes and trains inside Lightning, then saves for ultralytics and loads back the same way
    from lightning_prune.callbacks import IterativePruningCallback

    data = YOLODataModule(str(shapes / "data.yaml"), imgsz=IMGSZ, batch_size=4)
    before = sum(p.numel() for p in module.model.parameters())
    trainer = _trainer(max_epochs=2, callbacks=[IterativePruningCallback(schedule=[1], target=0.3,
                                                                         strategy="uniform", verbose=False)])
    trainer.fit(module, data)
    after = sum(p.numel() for p in module.model.parameters())
    assert after < before
    path = save_yolo(module, tmp_path / "pruned.pt", data=shapes / "data.yaml")
    again = YOLOModule(str(path), imgsz=IMGSZ)
    assert sum(p.numel() for p in again.model.parameters()) == after and again.names == module.names


def test_checkpoint_class_count_and_task_must_match(ultralytics_best: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        YOLOModule(str(ultralytics_best), nc=5)
    assert "nc=3" in _single_line(err) and "nc=5" in str(err.value)
    with pytest.raises(ValueError) as err:
        YOLOModule(str(ultralytics_best), task="segment")
    assert "detect" in _single_line(err) and "segment" in str(err.value)
    module = YOLOModule(str(ultralytics_best), imgsz=IMGSZ)
    weights = {k: v.clone() for k, v in module.model.state_dict().items()}
    data = YOLODataModule(str(_polygon_shapes(tmp_path) / "data.yaml"), task="segment", imgsz=IMGSZ)
    with pytest.raises(ValueError) as err:
        _trainer().fit(module, data)
    assert "detect model" in _single_line(err) and "segment labels" in str(err.value)
    assert all(torch.equal(v, weights[k]) for k, v in module.model.state_dict().items())  # nothing changed


def test_class_count_mismatch_with_the_data_leaves_the_model_untouched(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, num_train=2, num_val=1, imgsz=IMGSZ)
    (root / "five.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a, b, c, d, e]\n")
    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=IMGSZ)
    names = dict(module.model.names)
    with pytest.raises(ValueError) as err:
        _trainer().fit(module, YOLODataModule(str(root / "five.yaml"), imgsz=IMGSZ))
    assert "nc=5" in _single_line(err)
    assert module.model.names == names


def test_missing_data_yaml_and_image_folder_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        YOLODataModule(str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in _single_line(err)
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a]\n")
    with pytest.raises(ValueError) as err:
        YOLODataModule(str(tmp_path / "data.yaml"))
    assert str(tmp_path / "images" / "train") in _single_line(err)
