"""Iterative pruning inside ultralytics' own trainer (``add_pruning`` + ``YOLO.train``), end to end on the CPU.

Tiny runs: 64 px synthetic images, 16 train / 8 val, yolov8n-family models from their YAMLs (random init, nothing is
downloaded), ``workers=0``, ``plots=False``, one thread. Detect is trained, interrupted mid-schedule and resumed,
reloaded, validated, predicted with and exported to ONNX; segment is trained and reloaded; pose and obb are pruned
and saved in two-epoch runs.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402

from lightning_prune.checkpoint import CHECKPOINT_KEY  # noqa: E402
from lightning_prune.data.synthetic import CLASS_NAMES, make_synthetic_dataset  # noqa: E402
from lightning_prune.integrations.ultralytics import TASK_MONITORS, add_pruning, keep_pruned  # noqa: E402
from lightning_prune.profiling import count_flops  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMGSZ = 64
TRAIN = dict(imgsz=IMGSZ, batch=8, workers=0, device="cpu", plots=False, val=True, verbose=False, amp=False,
             exist_ok=True)
MODELS = {"detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml", "pose": "yolov8n-pose.yaml",
          "obb": "yolov8n-obb.yaml"}


class Interrupt(Exception):
    """Raised by a callback to stop a run the way a crash or Ctrl-C would (last.pt stays resumable)."""


def _task_dataset(root: Path, task: str) -> Path:
    """The synthetic shapes set with labels rewritten for ``task``: box corners as polygons (segment) or as an
    oriented box (obb), the box centre as one keypoint (pose). Returns the data.yaml."""
    root = make_synthetic_dataset(root, num_train=16, num_val=8, imgsz=IMGSZ, seed=0)
    if task == "detect":
        return root / "data.yaml"
    for label in (root / "labels").rglob("*.txt"):
        lines = []
        for line in label.read_text().splitlines():
            cls, cx, cy, w, h = line.split()
            x0, y0, x1, y1 = (float(cx) - float(w) / 2, float(cy) - float(h) / 2, float(cx) + float(w) / 2,
                              float(cy) + float(h) / 2)
            corners = f"{x0:.6f} {y0:.6f} {x1:.6f} {y0:.6f} {x1:.6f} {y1:.6f} {x0:.6f} {y1:.6f}"
            lines.append(f"{cls} {cx} {cy} {w} {h} {cx} {cy} 2" if task == "pose" else f"{cls} {corners}")
        label.write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASS_NAMES))
    extra = "kpt_shape: [1, 3]\nflip_idx: [0]\n" if task == "pose" else ""
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}{extra}")
    return data


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {task: _task_dataset(tmp_path_factory.mktemp(f"shapes-{task}"), task) for task in MODELS}


def _flops(model: torch.nn.Module) -> float:
    return float(count_flops(model.float().eval(), torch.zeros(1, 3, IMGSZ, IMGSZ)))


def _single_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# -- ultralytics' setup order: what the resume path relies on ------------------------------------------------------
def test_ultralytics_setup_order() -> None:
    """Fails loudly when ultralytics changes the order lightning_prune's resume relies on (see
    ``trainer._defer_resume``): ``check_resume`` before ``on_pretrain_routine_start``; in ``_setup_train``,
    ``setup_model`` → optimizer → EMA → ``resume_training`` (gated on ``self.resume``) → ``on_pretrain_routine_end``;
    in the epoch loop ``on_train_epoch_start`` before the model is put in train mode and batches are drawn."""
    from ultralytics.engine.trainer import BaseTrainer

    init = inspect.getsource(BaseTrainer.__init__)
    assert init.index("self.check_resume(") < init.index('run_callbacks("on_pretrain_routine_start")')
    setup = inspect.getsource(BaseTrainer._setup_train)
    order = ["self.setup_model()", "self._build_train_pipeline()", "ModelEMA(self.model)",
             "self.resume_training(ckpt)", 'run_callbacks("on_pretrain_routine_end")']
    positions = [setup.index(text) for text in order]
    assert positions == sorted(positions), order
    assert "run_callbacks" not in setup[:positions[3]], "a callback now runs before resume_training"
    resume = inspect.getsource(BaseTrainer.resume_training)
    assert "not self.resume" in resume and "_load_checkpoint_state(ckpt)" in resume
    loop = inspect.getsource(BaseTrainer._do_train)
    assert loop.index('run_callbacks("on_train_epoch_start")') < loop.index("self._model_train()")


# -- detect: train, interrupt mid-schedule, resume, reload -------------------------------------------------------------
@pytest.fixture(scope="module")
def detect_run(datasets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """3 epochs, pruning at epochs 1 and 2 to -50 % FLOPs (sensitivity, one probe rate), interrupted after epoch 1's
    checkpoint, resumed from last.pt."""
    project = tmp_path_factory.mktemp("runs")
    model = YOLO("yolov8n.yaml")
    options = dict(schedule=[1, 2], target=0.5, strategy="sensitivity", sensitivity_rates=(0.5,),
                   sensitivity_batches=1, verbose=False)
    first = add_pruning(model, **options)
    seen: dict = {}

    def interrupt(trainer) -> None:
        if trainer.epoch == 1:
            seen["updates"] = trainer.ema.updates
            raise Interrupt

    model.add_callback("on_model_save", interrupt)
    with pytest.raises(Interrupt):
        model.train(data=str(datasets["detect"]), epochs=3, project=str(project), name="detect", **TRAIN)
    last = project / "detect" / "weights" / "last.pt"
    interrupted = torch.load(last, map_location="cpu", weights_only=False)
    mid_flops = _flops(YOLO(str(last)).model)

    resumed = YOLO(str(last))
    second = add_pruning(resumed, **options)

    def check_resumed(trainer) -> None:
        seen["start_epoch"] = trainer.start_epoch
        seen["resumed_updates"] = trainer.ema.updates
        seen["state_fits"] = all(state["exp_avg"].shape == param.shape
                                 for group in trainer.optimizer.param_groups for param in group["params"]
                                 for state in [trainer.optimizer.state.get(param)] if state)
        seen["has_state"] = bool(trainer.optimizer.state)
        seen["resumed_flops"] = _flops(trainer.model)
        # the probes validate the live model (which they mask), not the EMA: shifting its class bias moves the
        # val loss (an untrained detector's outputs barely depend on its features, so masking alone would not)
        plain = second._validate(trainer)
        bias = trainer.model.model[-1].cv3[0][-1].bias
        ema_before = {k: v.clone() for k, v in trainer.ema.ema.state_dict().items()}
        with torch.no_grad():
            bias.add_(10.0)
        shifted = second._validate(trainer)
        with torch.no_grad():
            bias.sub_(10.0)
        seen["probe_keys"] = sorted(plain)
        seen["probe_moves"] = shifted["val/cls_loss"] > plain["val/cls_loss"] + 1.0
        seen["ema_untouched"] = all(torch.equal(v, trainer.ema.ema.state_dict()[k]) for k, v in ema_before.items())
        trainer.model.train()

    resumed.add_callback("on_train_start", check_resumed)
    resumed.train(resume=True)
    unpruned = first.baseline["flops"]  # the unpruned model with the data set's 3 classes, at IMGSZ
    return {"project": project, "unpruned": unpruned, "first": first, "second": second, "seen": seen,
            "interrupted": interrupted, "mid_flops": mid_flops, "model": resumed}


def test_detect_prunes_to_target_and_resumes(detect_run: dict) -> None:
    first, second, seen = detect_run["first"], detect_run["second"], detect_run["seen"]
    assert [r.epoch for r in first.results] == [1]
    assert detect_run["interrupted"]["epoch"] == 1
    record = detect_run["interrupted"]["ema"].__dict__[CHECKPOINT_KEY]
    assert [entry["epoch"] for entry in record["history"]] == [1]
    assert detect_run["mid_flops"] / detect_run["unpruned"] == pytest.approx(0.75, abs=0.03)
    # the resumed run starts at epoch 2 with the pruned architecture and ultralytics' own optimizer/EMA state
    assert seen["start_epoch"] == 2
    assert seen["resumed_updates"] == seen["updates"] > 0
    assert seen["has_state"] and seen["state_fits"]
    assert seen["resumed_flops"] == pytest.approx(detect_run["mid_flops"], rel=1e-6)
    assert TASK_MONITORS["detect"] in seen["probe_keys"]
    assert seen["probe_moves"] and seen["ema_untouched"]
    assert [r.epoch for r in second.results] == [2]
    assert [entry["epoch"] for entry in second.history] == [1, 2]
    assert second.flops_ratio == pytest.approx(0.5, abs=0.02)
    assert (detect_run["project"] / "detect" / "pruning.json").is_file()


def test_detect_checkpoints_reload_as_pruned(detect_run: dict, datasets: dict[str, Path]) -> None:
    weights = detect_run["project"] / "detect" / "weights"
    for name in ("best.pt", "last.pt"):
        model = YOLO(str(weights / name))
        assert _flops(model.model) / detect_run["unpruned"] == pytest.approx(0.5, abs=0.02), name
    # the YOLO object train() returns with is the pruned one too
    assert _flops(detect_run["model"].model) / detect_run["unpruned"] == pytest.approx(0.5, abs=0.02)
    model = YOLO(str(weights / "best.pt"))
    image = next((datasets["detect"].parent / "images" / "val").iterdir())
    (result,) = model.predict(str(image), imgsz=IMGSZ, device="cpu", verbose=False)
    assert result.boxes is not None
    metrics = model.val(data=str(datasets["detect"]), imgsz=IMGSZ, batch=8, device="cpu", plots=False,
                        verbose=False, workers=0, project=str(detect_run["project"]), name="val")
    assert 0.0 <= float(metrics.box.map) <= 1.0
    onnx_file = Path(YOLO(str(weights / "best.pt")).export(format="onnx", imgsz=IMGSZ, simplify=False,
                                                           device="cpu"))
    assert onnx_file.is_file()
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: torch.zeros(1, 3, IMGSZ, IMGSZ).numpy()})
    assert out.shape[:2] == (1, 4 + len(CLASS_NAMES))


def test_keep_pruned_fine_tunes_the_pruned_architecture(detect_run: dict, datasets: dict[str, Path]) -> None:
    """``YOLO(best.pt).train()`` rebuilds the model from its YAML; keep_pruned gives it the pruned one back."""
    best = detect_run["project"] / "detect" / "weights" / "best.pt"
    model = YOLO(str(best))
    keep = keep_pruned(model, verbose=False)
    model.train(data=str(datasets["detect"]), epochs=1, project=str(detect_run["project"]), name="finetune",
                **TRAIN)
    assert _flops(model.model) / detect_run["unpruned"] == pytest.approx(0.5, abs=0.02)
    assert [entry["epoch"] for entry in keep.history] == [1, 2]
    again = YOLO(str(detect_run["project"] / "finetune" / "weights" / "last.pt"))
    assert [entry["epoch"] for entry in again.model.__dict__[CHECKPOINT_KEY]["history"]] == [1, 2]


def test_keep_pruned_without_a_record(detect_run: dict, datasets: dict[str, Path], tmp_path: Path) -> None:
    """A pruned checkpoint saved elsewhere (``save_yolo``, no plan history): the architecture is copied over and
    checked against the checkpoint's outputs."""
    from lightning_prune.integrations.ultralytics import save_yolo

    pruned = YOLO(str(detect_run["project"] / "detect" / "weights" / "best.pt")).model
    delattr(pruned, CHECKPOINT_KEY)
    path = save_yolo(pruned, tmp_path / "pruned.pt", names=list(CLASS_NAMES), imgsz=IMGSZ, data=datasets["detect"])
    model = YOLO(str(path))
    keep = keep_pruned(model, verbose=False)
    model.train(data=str(datasets["detect"]), epochs=1, project=str(tmp_path), name="finetune", **TRAIN)
    assert _flops(model.model) / detect_run["unpruned"] == pytest.approx(0.5, abs=0.02)
    assert keep.record()["replayable"] is False


# -- segment end to end; pose and obb pruned and saved ----------------------------------------------------------------
@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_tasks_prune_save_reload(task: str, datasets: dict[str, Path], tmp_path: Path) -> None:
    model = YOLO(MODELS[task])
    # every strategy and a gradient criterion once; pose and obb validate only at the end (quicker)
    options = {"segment": dict(strategy="uniform"), "pose": dict(strategy="uniform", criterion="taylor"),
               "obb": dict(strategy="global", criterion="l1")}[task]
    pruning = add_pruning(model, schedule=[1], target=0.3, verbose=False, **options)
    model.train(data=str(datasets[task]), epochs=2, project=str(tmp_path), name=task,
                **{**TRAIN, "val": task == "segment"})
    assert pruning._monitor_key == TASK_MONITORS[task]
    assert pruning.flops_ratio == pytest.approx(0.7, abs=0.02)
    reloaded = YOLO(str(tmp_path / task / "weights" / "best.pt"))
    assert reloaded.task == task
    assert _flops(reloaded.model) / pruning.baseline["flops"] == pytest.approx(0.7, abs=0.02)
    if task == "segment":
        image = next((datasets[task].parent / "images" / "val").iterdir())
        (result,) = reloaded.predict(str(image), imgsz=IMGSZ, device="cpu", verbose=False)
        assert result.boxes is not None
        metrics = reloaded.val(data=str(datasets[task]), imgsz=IMGSZ, batch=8, device="cpu", plots=False,
                               verbose=False, workers=0, project=str(tmp_path), name="val")
        assert 0.0 <= float(metrics.seg.map) <= 1.0


# -- bad input: one line, before training ---------------------------------------------------------------------------
def test_bad_input_fails_with_one_line_before_training(datasets: dict[str, Path], tmp_path: Path) -> None:
    started: list[int] = []

    def run(**options):
        model = YOLO("yolov8n.yaml")
        add_pruning(model, verbose=False, **options)
        model.add_callback("on_train_start", lambda trainer: started.append(1))
        model.train(data=str(datasets["detect"]), epochs=2, project=str(tmp_path), name="bad", **TRAIN)

    with pytest.raises(ValueError) as err:
        run(schedule=[2], target=0.5, strategy="uniform")
    assert "schedule epoch 2 is not below epochs=2" in _single_line(err)
    with pytest.raises(ValueError) as err:
        run(schedule=[1], target=0.999, strategy="uniform")
    assert "unreachable" in _single_line(err)
    with pytest.raises(ValueError) as err:
        run(schedule=[1], target=0.5, strategy="sensitivity", monitor="metrics/mAP75(B)")
    assert "'metrics/mAP75(B)' is not produced" in _single_line(err)
    assert not started
    with pytest.raises(ValueError) as err:
        add_pruning(YOLO("yolov8n.yaml"), strategy="magic")
    assert "unknown strategy 'magic'" in _single_line(err)
    model = YOLO("yolov8n.yaml")
    add_pruning(model)
    with pytest.raises(ValueError) as err:
        add_pruning(model)
    assert "already has pruning attached" in _single_line(err)


@pytest.mark.skipif(not os.environ.get("LP_SLOW"), reason="runs the example (~20 s): set LP_SLOW=1 to run")
def test_example_interrupts_and_resumes(tmp_path: Path) -> None:
    import runpy

    example = Path(__file__).resolve().parents[1] / "examples" / "yolo" / "ultralytics_trainer.py"
    main = runpy.run_path(str(example), run_name="example")["main"]
    summary = main(["--epochs", "3", "--schedule", "1", "2", "--strategy", "uniform", "--imgsz", "64",
                    "--num-train", "16", "--num-val", "8", "--data-root", str(tmp_path / "data"), "--project",
                    str(tmp_path / "runs"), "--interrupt", "--no-export"])
    assert summary["steps"] == [2] and summary["history"] == 2
    assert summary["flops_ratio"] == pytest.approx(0.5, abs=0.02)


def test_the_ema_keeps_averaging_after_a_prune(datasets: dict[str, Path], tmp_path: Path) -> None:
    """What ultralytics validates and saves is the EMA: after a prune it must go on following the training model.

    ultralytics' ``ModelEMA`` caches the tensors it averages on its first update; a prune replaces them. Before the
    fix the pruned EMA stayed exactly as it was right after each prune (the cache went on averaging the old,
    unpruned tensors), so every pruned ``best.pt`` was the model as pruned, never fine-tuned."""
    model = YOLO("yolov8n.yaml")
    add_pruning(model, schedule=[1], target=0.5, strategy="uniform", verbose=False)
    seen: dict = {}

    def after_prune(trainer) -> None:  # runs after add_pruning's own on_train_epoch_start
        if trainer.epoch == 1:
            seen["pruned_ema"] = {k: v.clone() for k, v in trainer.ema.ema.state_dict().items()}
            seen["updates"] = trainer.ema.updates

    def at_end(trainer) -> None:
        ema, live = trainer.ema.ema.state_dict(), trainer.model.state_dict()
        seen["updates_end"] = trainer.ema.updates
        moved = [k for k, v in seen["pruned_ema"].items() if v.is_floating_point() and not torch.equal(v, ema[k])]
        seen["moved_share"] = len(moved) / sum(v.is_floating_point() for v in seen["pruned_ema"].values())
        weight = "model.2.cv1.conv.weight"
        seen["gap"] = float((ema[weight] - live[weight]).abs().max())
        seen["gap_at_prune"] = float((seen["pruned_ema"][weight] - live[weight]).abs().max())

    model.add_callback("on_train_epoch_start", after_prune)
    model.add_callback("on_train_end", at_end)
    model.train(data=str(datasets["detect"]), epochs=3, nbs=8, project=str(tmp_path), name="ema", **TRAIN)
    assert seen["updates_end"] > seen["updates"]  # the optimizer stepped after the prune
    assert seen["moved_share"] > 0.9  # nearly every pruned EMA tensor changed (with the stale cache: none)
    assert seen["gap"] < seen["gap_at_prune"]  # and it moved towards the training model
