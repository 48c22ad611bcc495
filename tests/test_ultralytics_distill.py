"""Pruning while distilling inside ultralytics' own trainer (``add_pruning(..., distill=...)``), end to end on the CPU.

ultralytics wraps the trained model in its ``DistillationModel`` (frozen teacher, student, one Conv1x1-ReLU-Conv1x1
projector per neck level); lightning_prune prunes the student and slices the projectors' inputs with it, in the live
model, the EMA and the optimizer state. Tiny runs: 64 px synthetic images, 16 train / 8 val, yolov8n from its YAML
(nothing is downloaded), ``workers=0``, ``plots=False``, one thread. The teacher is yolov8n trained one epoch. A
distilled run is pruned, checked after every step, its checkpoints reloaded, validated, predicted with and exported;
another is interrupted mid-schedule and resumed; bad teachers fail in one line before any epoch trains.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.distill_model import DistillationModel  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from lightning_prune.checkpoint import CHECKPOINT_KEY  # noqa: E402
from lightning_prune.data.synthetic import CLASS_NAMES, make_synthetic_dataset  # noqa: E402
from lightning_prune.integrations.ultralytics import add_pruning  # noqa: E402
from lightning_prune.profiling import count_flops  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMGSZ = 64
TRAIN = dict(imgsz=IMGSZ, batch=8, workers=0, device="cpu", plots=False, val=True, verbose=False, amp=False,
             exist_ok=True)
PRUNE = dict(target=0.5, strategy="uniform", verbose=False)


class Interrupt(Exception):
    """Raised by a callback to stop a run the way a crash or Ctrl-C would (last.pt stays resumable)."""


def _flops(model: torch.nn.Module) -> float:
    return float(count_flops(model.float().eval(), torch.zeros(1, 3, IMGSZ, IMGSZ)))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _single_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _level_channels(student: torch.nn.Module, levels: list[int]) -> list[int]:
    """The channels ``student.model[level]`` really outputs (a forward pass with hooks, train mode restored)."""
    seen: dict[int, int] = {}
    handles = [student.model[level].register_forward_hook(
        lambda module, args, out, level=level: seen.__setitem__(level, int(out.shape[1]))) for level in levels]
    training = student.training
    try:
        student.eval()
        with torch.no_grad():
            student(torch.zeros(1, 3, IMGSZ, IMGSZ, device=next(student.parameters()).device))
    finally:
        student.train(training)
        for handle in handles:
            handle.remove()
    return [seen[level] for level in levels]


def _projector_inputs(distillation: torch.nn.Module) -> list[tuple[int, int]]:
    """``(in_channels, weight.shape[1])`` of each projector's first conv."""
    return [(int(p[0].in_channels), int(p[0].weight.shape[1])) for p in distillation.projector]


def _projector_outputs(distillation: torch.nn.Module) -> list[tuple[int, ...]]:
    """Each projector's widths after its input: first conv out, second conv in and out (the teacher's side)."""
    return [(int(p[0].weight.shape[0]), int(p[2].weight.shape[1]), int(p[2].weight.shape[0]))
            for p in distillation.projector]


def _snapshot(trainer) -> dict:
    """What the distillation wrapper looks like right now: the student's channels at the levels the projectors
    read and the projectors' inputs (live model and EMA), whether the optimizer state fits the projectors, the
    teacher's size."""
    model, ema = trainer.model, trainer.ema.ema
    snap: dict = {"type": type(model), "ema_type": type(ema)}
    if not isinstance(model, DistillationModel):
        return snap
    levels = list(model.feats_idx[:-1])
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    projector_params = [p for p in model.projector.parameters()]
    fits = []
    for param in projector_params:
        state = trainer.optimizer.state.get(param) or {}
        fits.extend(state[key].shape == param.shape for key in ("exp_avg", "exp_avg_sq", "momentum_buffer")
                    if key in state)
    snap.update(
        levels=levels,
        student=_level_channels(model.student_model, levels),
        projectors=_projector_inputs(model),
        ema_student=_level_channels(ema.student_model, levels),
        ema_projectors=_projector_inputs(ema),
        outputs=_projector_outputs(model),
        ema_outputs=_projector_outputs(ema),
        dis=float(model.dis),
        ema_shares=any(a is b for a, b in zip(model.projector.parameters(), ema.projector.parameters())),
        optimized=all(id(p) in optimized for p in projector_params),
        state_fits=fits,
        teacher_params=_params(model.teacher_model),
        teacher_frozen=not any(p.requires_grad for p in model.teacher_model.parameters()),
        student_params=_params(model.student_model),
    )
    return snap


def _assert_projectors_follow(snap: dict) -> None:
    assert snap["type"] is DistillationModel and snap["ema_type"] is DistillationModel
    assert len(snap["levels"]) == 3
    assert [c for c, _ in snap["projectors"]] == snap["student"]
    assert [c for _, c in snap["projectors"]] == snap["student"]  # the tensor, not only the attribute
    assert [c for c, _ in snap["ema_projectors"]] == snap["ema_student"] == snap["student"]
    assert [c for _, c in snap["ema_projectors"]] == snap["student"]
    # the teacher's side of the projectors never changes: yolov8n's neck widths 64/128/256
    assert snap["outputs"] == snap["ema_outputs"] == [(c, c, c) for c in (64, 128, 256)]
    assert not snap["ema_shares"]
    assert snap["optimized"]


# -- shared runs ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), num_train=16, num_val=8, imgsz=IMGSZ,
                                  seed=0) / "data.yaml"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def base(data: Path, project: Path) -> dict:
    """The teacher: yolov8n trained one epoch from its YAML, unpruned."""
    model = YOLO("yolov8n.yaml")
    model.train(data=str(data), epochs=1, project=str(project), name="base", **TRAIN)
    path = project / "base" / "weights" / "last.pt"
    teacher = YOLO(str(path)).model
    return {"path": path, "params": _params(teacher), "flops": _flops(teacher)}


@pytest.fixture(scope="module")
def other_classes(data: Path, project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A teacher for 5 classes: the shapes set's data.yaml rewritten with 5 names, yolov8n trained one epoch on it
    with pruning attached and no distillation (what a plain pruning run looks like to the trainer is recorded)."""
    names = [*CLASS_NAMES, "extra1", "extra2"]
    root = data.parent
    data5 = tmp_path_factory.mktemp("shapes5") / "data.yaml"
    data5.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
                     + "".join(f"  {i}: {name}\n" for i, name in enumerate(names)))
    model = YOLO("yolov8n.yaml")
    pruning = add_pruning(model, schedule=[0], target=0.3, strategy="uniform", verbose=False)
    seen: dict = {}

    def after_step(trainer) -> None:
        seen["type"] = type(trainer.model)
        seen["distill_model"] = trainer.args.distill_model

    model.add_callback("on_train_epoch_start", after_step)
    model.add_callback("on_train_epoch_end", lambda trainer: seen.update(loss=sorted(trainer.loss_items)))
    model.train(data=str(data5), epochs=1, project=str(project), name="nc5", **TRAIN)
    return {"path": project / "nc5" / "weights" / "last.pt", "seen": seen, "pruning": pruning}


@pytest.fixture(scope="module")
def distill_run(data: Path, project: Path, base: dict, lp) -> dict:
    """3 epochs from the trained base, pruning at epochs 0 and 1 to -50 % FLOPs, distilling from the base (the
    model the run starts from) with weight 2."""
    model = YOLO(str(base["path"]))
    pruning = add_pruning(model, schedule=[0, 1], distill=True, distill_weight=2.0, **PRUNE)
    seen: dict = {"start": {}, "end": {}}
    model.add_callback("on_train_epoch_start", lambda trainer: seen["start"].__setitem__(
        trainer.epoch, {**_snapshot(trainer), "ratio": pruning.flops_ratio,
                        "distill_model": trainer.args.distill_model,
                        "embeds": [lp.embeds_kept_channels(p) for p in trainer.model.projector],
                        "ema_embeds": [lp.embeds_kept_channels(p) for p in trainer.ema.ema.projector]}))

    def epoch_end(trainer) -> None:
        seen["end"][trainer.epoch] = {**_snapshot(trainer), "loss": {k: float(v) for k, v in
                                                                     trainer.loss_items.items()}}

    model.add_callback("on_train_epoch_end", epoch_end)
    model.train(data=str(data), epochs=3, project=str(project), name="distill", **TRAIN)
    return {"pruning": pruning, "seen": seen, "weights": project / "distill" / "weights", "model": model}


@pytest.fixture(scope="module")
def resume_run(data: Path, project: Path, base: dict) -> dict:
    """Pruning at epochs 1 and 2 while distilling from the base (named by its path), interrupted after epoch 1's
    checkpoint, resumed from last.pt with ``distill=True``."""
    model = YOLO(str(base["path"]))
    first = add_pruning(model, schedule=[1, 2], distill=Path(base["path"]), **PRUNE)

    def interrupt(trainer) -> None:
        if trainer.epoch == 1:
            raise Interrupt

    model.add_callback("on_model_save", interrupt)
    with pytest.raises(Interrupt):
        model.train(data=str(data), epochs=3, project=str(project), name="resume", **TRAIN)
    last = project / "resume" / "weights" / "last.pt"
    interrupted = torch.load(last, map_location="cpu", weights_only=False)
    mid_flops = _flops(YOLO(str(last)).model)

    resumed = YOLO(str(last))
    second = add_pruning(resumed, schedule=[1, 2], distill=True, **PRUNE)
    seen: dict = {"start": {}}

    def train_start(trainer) -> None:
        seen["start_epoch"] = trainer.start_epoch
        seen["distill_model"] = trainer.args.distill_model
        seen["restart"] = _snapshot(trainer)
        student = trainer.model.student_model
        training = student.training
        seen["restart_flops"] = _flops(student)
        student.train(training)

    resumed.add_callback("on_train_start", train_start)
    resumed.add_callback("on_train_epoch_start",
                         lambda trainer: seen["start"].__setitem__(trainer.epoch, _snapshot(trainer)))
    resumed.train(resume=True)
    return {"first": first, "second": second, "seen": seen, "interrupted": interrupted, "mid_flops": mid_flops,
            "weights": project / "resume" / "weights"}


# -- 1. prune + distill ---------------------------------------------------------------------------------------------
def test_projectors_follow_every_prune(distill_run: dict, base: dict) -> None:
    pruning, seen = distill_run["pruning"], distill_run["seen"]
    assert sorted(seen["start"]) == sorted(seen["end"]) == [0, 1, 2]
    assert [r.epoch for r in pruning.results] == [0, 1]
    assert seen["start"][0]["distill_model"] == str(base["path"])
    for epoch in (0, 1, 2):
        for when in ("start", "end"):
            snap = seen[when][epoch]
            _assert_projectors_follow(snap)
            # the teacher is the unpruned base, frozen, whatever was pruned
            assert snap["teacher_params"] == base["params"] and snap["teacher_frozen"]
            assert snap["student_params"] < base["params"]
            assert snap["dis"] == 2.0
        start, end = seen["start"][epoch], seen["end"][epoch]
        assert start["student"] == end["student"]  # the step happens at the epoch's start
        if epoch > 0:
            # the optimizer has moments from the epoch before, sliced with the projectors
            assert start["state_fits"] and all(start["state_fits"]), epoch
        assert end["state_fits"] and all(end["state_fits"]), epoch
        # the distillation loss is really computed (and reported) while training
        assert "dis_loss" in end["loss"] and end["loss"]["dis_loss"] > 0, end["loss"]
    # the student is its teacher when the run starts: the projectors started as the identity, and the first prune
    # left them embedding the kept channels at their places in the teacher's (live and EMA)
    assert seen["start"][0]["embeds"] == seen["start"][0]["ema_embeds"] == [True] * 3
    # each step narrowed the levels the projectors read: yolov8n's neck outputs 64/128/256 channels unpruned
    widths = [seen["start"][epoch]["student"] for epoch in (0, 1, 2)]
    assert all(a > b for a, b in zip([64, 128, 256], widths[0])), widths
    assert all(a > b for a, b in zip(widths[0], widths[1])), widths
    assert widths[1] == widths[2]
    assert seen["start"][0]["ratio"] == pytest.approx(0.75, abs=0.03)
    assert seen["start"][1]["ratio"] == pytest.approx(0.5, abs=0.02)
    assert pruning.flops_ratio == pytest.approx(0.5, abs=0.02)
    assert pruning.baseline["flops"] == pytest.approx(base["flops"], rel=1e-6)
    assert (distill_run["weights"].parent / "pruning.json").is_file()


# -- 2. checkpoints hold the student alone ------------------------------------------------------------------------
def test_checkpoints_hold_the_pruned_student(distill_run: dict, base: dict, data: Path, project: Path) -> None:
    weights = distill_run["weights"]
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(weights / name, map_location="cpu", weights_only=False)
        student = ckpt["model"]
        assert type(student) is DetectionModel, name
        assert not hasattr(student, "teacher_model") and not hasattr(student, "projector"), name
        assert ckpt.get("ema") is None
        assert [entry["epoch"] for entry in student.__dict__[CHECKPOINT_KEY]["history"]] == [0, 1]
        reloaded = YOLO(str(weights / name))
        assert type(reloaded.model) is DetectionModel
        assert _flops(reloaded.model) / base["flops"] == pytest.approx(0.5, abs=0.02), name
    model = YOLO(str(weights / "best.pt"))
    image = next((data.parent / "images" / "val").iterdir())
    (result,) = model.predict(str(image), imgsz=IMGSZ, device="cpu", verbose=False)
    assert result.boxes is not None
    metrics = model.val(data=str(data), imgsz=IMGSZ, batch=8, device="cpu", plots=False, verbose=False, workers=0,
                        project=str(project), name="distill-val")
    assert 0.0 <= float(metrics.box.map) <= 1.0
    onnx_file = Path(YOLO(str(weights / "best.pt")).export(format="onnx", imgsz=IMGSZ, simplify=False, device="cpu"))
    assert onnx_file.is_file()
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: torch.zeros(1, 3, IMGSZ, IMGSZ).numpy()})
    assert out.shape[:2] == (1, 4 + len(CLASS_NAMES))


# -- 3. resume mid-schedule with distillation ---------------------------------------------------------------------
def test_resume_mid_schedule_rebuilds_student_and_projectors(resume_run: dict, base: dict) -> None:
    first, second, seen = resume_run["first"], resume_run["second"], resume_run["seen"]
    interrupted = resume_run["interrupted"]
    assert interrupted["epoch"] == 1
    assert [r.epoch for r in first.results] == [1]
    assert resume_run["mid_flops"] / base["flops"] == pytest.approx(0.75, abs=0.03)
    # the resumed run starts at epoch 2, distilling from the base, with the once-pruned student and its projectors
    assert seen["start_epoch"] == 2
    assert seen["distill_model"] == str(base["path"])
    restart = seen["restart"]
    _assert_projectors_follow(restart)
    assert restart["teacher_params"] == base["params"] and restart["teacher_frozen"]
    assert restart["dis"] == 6.0  # ultralytics' default weight
    assert restart["state_fits"] and all(restart["state_fits"])
    assert seen["restart_flops"] == pytest.approx(resume_run["mid_flops"], rel=1e-6)
    # then the second step, which slices the projectors again
    after = seen["start"][2]
    _assert_projectors_follow(after)
    assert all(a > b for a, b in zip(restart["student"], after["student"])), (restart["student"], after["student"])
    assert after["teacher_params"] == base["params"]
    assert after["state_fits"] and all(after["state_fits"])
    assert [r.epoch for r in second.results] == [2]
    assert [entry["epoch"] for entry in second.history] == [1, 2]
    assert second.flops_ratio == pytest.approx(0.5, abs=0.02)
    for name in ("best.pt", "last.pt"):
        reloaded = YOLO(str(resume_run["weights"] / name))
        assert type(reloaded.model) is DetectionModel
        assert _flops(reloaded.model) / base["flops"] == pytest.approx(0.5, abs=0.02), name


# -- 4. bad input: one line, before any epoch trains ----------------------------------------------------------------
def test_bad_teachers_fail_with_one_line_before_training(data: Path, project: Path, base: dict, other_classes: dict,
                                                         tmp_path: Path) -> None:
    started: list[str] = []
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00this is not a checkpoint\xff" * 64)
    segment = tmp_path / "seg.pt"
    YOLO("yolov8n-seg.yaml").save(str(segment))

    def run(start: str, name: str, distill) -> None:
        model = YOLO(start)
        add_pruning(model, schedule=[1], distill=distill, **PRUNE)
        model.add_callback("on_train_start", lambda trainer: started.append(name))
        try:
            model.train(data=str(data), epochs=2, project=str(tmp_path), name=name, **TRAIN)
        finally:
            assert not (tmp_path / name / "weights" / "last.pt").exists(), name

    cases = [
        ("yolov8n.yaml", "yaml", True, "distill=True distils from the trained model the run starts from"),
        (str(base["path"]), "missing", str(tmp_path / "missing.pt"), "does not exist"),
        (str(base["path"]), "garbage", str(garbage), "does not load as an ultralytics model"),
        (str(base["path"]), "classes", str(other_classes["path"]), "predicts 5 classes, the student 3"),
        (str(base["path"]), "task", str(segment), "solves task 'segment', this run trains 'detect'"),
    ]
    for start, name, distill, expected in cases:
        with pytest.raises(ValueError) as err:
            run(start, name, distill)
        assert expected in _single_line(err), name
    assert not started
    with pytest.raises(ValueError) as err:
        add_pruning(YOLO(str(base["path"])), distill=True, distill_weight=-1)
    assert "distill_weight must be a positive number" in _single_line(err)


# -- 5. without distill nothing changes -----------------------------------------------------------------------------
def test_without_distill_the_model_stays_plain(other_classes: dict) -> None:
    seen = other_classes["seen"]
    assert seen["type"] is DetectionModel
    assert seen["distill_model"] is None
    assert "dis_loss" not in seen["loss"]
    assert other_classes["pruning"].flops_ratio == pytest.approx(0.7, abs=0.02)
