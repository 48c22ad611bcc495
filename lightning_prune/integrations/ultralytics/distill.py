"""Distillation with ultralytics' own machinery (``distill_model=``, ``ultralytics.nn.distill_model``), kept in step
with pruning.

ultralytics wraps the trained model in a ``DistillationModel``: a frozen teacher, the student, and one projector per
neck level feeding the Detect head (score-weighted L2 on the projected features, weight ``dis``). The student is
what :class:`~lightning_prune.pruning.IterativePruner` prunes; the projectors read the student's neck outputs, so
they are handed to the dependency graph as attachments (:class:`DetectionProjectors`) and every prune slices their
inputs, in the live model, in the EMA and in the optimizer state alike. The teacher never changes shape, and it is
never written into checkpoints: ultralytics strips it from the EMA and rebuilds it from ``distill_model``.

Example::

    from ultralytics import YOLO
    from lightning_prune.integrations.ultralytics import add_pruning

    model = YOLO("runs/detect/base/weights/best.pt")
    add_pruning(model, schedule=[0, 2, 4], target=0.5, distill=True)   # the teacher: the model as the run starts
    model.train(data="data.yaml", epochs=10)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from lightning_prune.pruning.distill import identity_start

__all__ = ["DetectionProjectors", "prepare_teacher", "student_of", "teacher_problem"]


def student_of(model: nn.Module) -> nn.Module:
    """The trained model inside ultralytics' ``DistillationModel`` (the model itself otherwise)."""
    student = getattr(model, "student_model", None)
    return student if isinstance(student, nn.Module) else model


class DetectionProjectors:
    """The projectors of a ``DistillationModel`` as graph attachments of its student (``projector.<i>`` reads
    the output of ``model.<feats_idx[i]>``), and the twins of its EMA copy."""

    def __init__(self, distillation: nn.Module) -> None:
        self.distillation = distillation
        self.student = [distillation.student_model]
        self.levels = list(distillation.feats_idx[:-1])  # the last index is the Detect head itself

    def attachments(self) -> dict[str, tuple[str, nn.Module]]:
        return {f"projector.{i}": (f"model.{level}", self.distillation.projector[i])
                for i, level in enumerate(self.levels)}

    def identity_start(self, ema: Any = None) -> None:
        """Start every projector as the identity (:func:`~lightning_prune.pruning.distill.identity_start`), in the
        live model and in ultralytics' EMA (``ModelEMA`` or None): for a student that is its teacher (``distill=True``,
        before the first prune) the loss starts at zero instead of at ultralytics' random projection of it."""
        copies = [self.distillation.projector]
        ema_projector = getattr(getattr(ema, "ema", None), "projector", None)
        if ema_projector is not None:
            copies.append(ema_projector)
        for projectors in copies:
            for projector in projectors:
                identity_start(projector)

    def ema_copies(self, ema: nn.Module) -> list[tuple[nn.Module, str]]:
        """``(copy, prefix)`` pairs for :meth:`IterativePruner.step`: the EMA's student and each of its projectors."""
        copies: list[tuple[nn.Module, str]] = [(student_of(ema), "")]
        projector = getattr(ema, "projector", None)
        if projector is not None:
            copies += [(projector[i], f"projector.{i}") for i in range(len(self.levels))]
        return copies


def _describe(model: nn.Module) -> tuple[str, int, list[int]]:
    from lightning_prune.integrations.ultralytics.build import model_task

    head = model.model[-1]
    return model_task(model), int(getattr(head, "nc", -1)), [int(i) for i in getattr(head, "f", [])]


def teacher_problem(teacher: nn.Module, student: nn.Module) -> str | None:
    """Why ``teacher`` cannot teach ``student`` (another task, class count or number of head inputs), or None."""
    if not hasattr(teacher, "model") or not hasattr(student, "model"):
        return "teacher and student must both be ultralytics models"
    (t_task, t_nc, t_f), (s_task, s_nc, s_f) = _describe(teacher), _describe(student)
    if t_task != s_task:
        return f"the teacher solves task {t_task!r}, the student {s_task!r}"
    if t_nc != s_nc:
        return f"the teacher predicts {t_nc} classes, the student {s_nc}"
    if len(t_f) != len(s_f):
        return f"the teacher's head reads {len(t_f)} feature levels, the student's {len(s_f)}"
    return None


def prepare_teacher(distill: bool | str | os.PathLike, trainer: Any) -> str:
    """The ``distill_model`` path for ultralytics, checked before anything is built: ``distill`` itself when it is
    a path, or with ``distill=True`` the ``.pt`` the run starts from (the model as it is before the first prune).
    The teacher must load and solve the run's task; ``ValueError`` in one line otherwise. (Its class count and head
    are checked against the student once both are built: :func:`teacher_problem`.)"""
    from ultralytics.nn.tasks import load_checkpoint

    if distill is True:
        start = trainer.args.model
        if not (isinstance(start, (str, Path)) and str(start).lower().endswith(".pt") and Path(start).is_file()):
            raise ValueError(f"distill=True distils from the trained model the run starts from, but it starts from "
                             f"{start!r}: start from a .pt, or pass distill='teacher.pt'")
        path = Path(start)
    else:
        path = Path(distill)
    if not path.is_file():
        raise ValueError(f"distillation teacher {str(path)!r} does not exist")
    try:
        teacher, _ = load_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - any failure to load is the user's file, named in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"distillation teacher {str(path)!r} does not load as an ultralytics model: {first}") from None
    task = getattr(trainer.args, "task", None)
    if not hasattr(teacher, "model"):
        raise ValueError(f"distillation teacher {str(path)!r} is not an ultralytics model")
    if task is not None and _describe(teacher)[0] != task:
        raise ValueError(f"distillation teacher {str(path)!r} solves task {_describe(teacher)[0]!r}, this run "
                         f"trains {task!r}")
    return str(path)
