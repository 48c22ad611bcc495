"""Distillation while pruning: a frozen teacher (by default the model as it was before the first prune) teaches the
pruned student through its outputs and/or named feature maps, each feature through a learned 1 x 1 projector.

The projectors read the student's (pruned) channels, so they are handed to the dependency graph as attachments
(:mod:`~lightning_prune.graph.attachments`): every prune slices their input weights like any other consumer's, and
the graph's masked == pruned check covers their outputs. The teacher never changes shape.

Cost: one extra teacher forward per batch, under ``no_grad`` and in eval mode (no activations kept for backward),
plus the projectors. Under DDP every rank holds its own teacher.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune.pruning import Distiller
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    >>> x = torch.randn(2, 3, 6, 6)
    >>> _ = net(x)
    >>> distiller = Distiller(net, x, features=["1"], outputs="kl")   # teacher: a frozen copy of net as it is now
    >>> out, loss = distiller(x)                                         # the student's output and the KD loss
    >>> out.shape, abs(loss.item()) < 1e-6           # the student is still its teacher: nothing to pull yet
    (torch.Size([2, 4]), True)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.utils.model import call_model, eval_mode
from lightning_prune.utils.tree import iter_tensors

__all__ = ["DeclaredAttachments", "DistillationConfig", "Distiller", "OutputLoss", "declared_attachments",
           "distill_step", "distillation_loss", "identity_start"]

OutputLoss = Literal["kl", "mse"]
ATTACHMENT_PREFIX = "distill"


@dataclass(frozen=True)
class DistillationConfig:
    """What :class:`Distiller` distils, as configuration (``IterativePruningCallback(distill=...)``, YAML).

    Attributes:
        features: module names whose outputs are distilled through 1 x 1 projectors.
        teacher_features: the teacher's module for each feature (default: the same names).
        outputs: ``"kl"`` or ``"mse"`` on the model's outputs, or ``None``.
        weight, output_weight, temperature: as :class:`Distiller`.
    """

    features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] | None = None
    outputs: OutputLoss | None = None
    weight: float = 1.0
    output_weight: float = 1.0
    temperature: float = 1.0

    def build(self, student: nn.Module, example_input: Any, teacher: nn.Module | None = None) -> Distiller:
        """A :class:`Distiller` of ``student`` (the teacher: ``teacher``, or a frozen copy of ``student`` now)."""
        return Distiller(student, example_input, teacher=teacher, features=self.features,
                         teacher_features=self.teacher_features, outputs=self.outputs, weight=self.weight,
                         output_weight=self.output_weight, temperature=self.temperature)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: OutputLoss = "kl",
                      temperature: float = 1.0) -> torch.Tensor:
    """Output distillation: ``"kl"`` — KL divergence of temperature-softened class distributions over dim 1,
    scaled by ``temperature**2`` (Hinton et al.); ``"mse"`` — mean squared error.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
        >>> abs(distillation_loss(logits, logits).item()) < 1e-6
        True
    """
    if kind == "mse":
        return F.mse_loss(student.float(), teacher.float())
    if kind != "kl":
        raise ValueError(f"output loss must be 'kl' or 'mse', got {kind!r}")
    t = float(temperature)
    log_p = F.log_softmax(student.float() / t, dim=1)
    q = F.softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * t * t


class _Capture:
    """Forward hook storing a module's output under a key (only while a :meth:`Distiller.capture` block runs)."""

    def __init__(self, store: dict[str, Any], key: str) -> None:
        self.store, self.key = store, key

    def __call__(self, _module: nn.Module, _args: Any, output: Any) -> None:
        self.store[self.key] = output


@contextlib.contextmanager
def _hooks(model: nn.Module, names: Sequence[str], store: dict[str, Any]) -> Iterator[None]:
    handles = [model.get_submodule(name).register_forward_hook(_Capture(store, name)) for name in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _feature(output: Any, where: str) -> torch.Tensor:
    tensors = list(iter_tensors(output))
    if len(tensors) != 1 or tensors[0].ndim < 2:
        raise ValueError(f"distillation feature {where!r} must output one tensor of shape (N, C, ...), got "
                         f"{type(output).__name__} with {len(tensors)} tensor(s)")
    return tensors[0]


def _projector(student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    channels_in, channels_out = student.shape[1], teacher.shape[1]
    if student.ndim == 2:
        return nn.Linear(channels_in, channels_out)
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}.get(student.ndim)
    if conv is None:
        raise ValueError(f"cannot project a feature of shape {tuple(student.shape)}")
    return conv(channels_in, channels_out, kernel_size=1)


#: bias shift that carries a feature through a ReLU inside a projector unchanged: SiLU outputs are >= -0.279
IDENTITY_SHIFT = 1.0
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def identity_start(projector: nn.Module, shift: float = IDENTITY_SHIFT) -> bool:
    """Make a distillation projector start as the identity, so that a student which *is* its teacher (the model
    before its first prune) starts at zero distillation loss, and every prune leaves the projector embedding the
    kept channels at their places in the teacher's (the graph slices its input columns).

    ``projector``: one 1 x 1 convolution or linear layer, or a sequence of them with ReLUs between (ultralytics'
    ``Conv-ReLU-Conv``), every layer mapping ``C`` channels to ``C``. A layer before a ReLU gets the bias ``+shift``
    and the one after it ``-shift``, so features above ``-shift`` pass unchanged (every SiLU output does). Returns
    False, changing nothing, where the projector is not of that form (e.g. the student is narrower).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> p = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
        >>> x = nn.functional.silu(torch.randn(2, 4, 3, 3))
        >>> identity_start(p), torch.allclose(p(x), x, atol=1e-6)
        (True, True)
        >>> identity_start(nn.Conv2d(4, 8, 1))   # the student has fewer channels than the teacher
        False
    """
    layers = list(projector) if isinstance(projector, nn.Sequential) else [projector]
    relu = [isinstance(m, nn.ReLU) for m in layers]
    if not all(r or isinstance(m, _LINEAR) for m, r in zip(layers, relu)) or relu[0] or relu[-1]:
        return False
    # each conv/linear layer: (a ReLU follows it, a ReLU precedes it)
    beside = {i: (i + 1 < len(layers) and relu[i + 1], i > 0 and relu[i - 1]) for i, r in enumerate(relu) if not r}
    for i, (relu_after, relu_before) in beside.items():
        m = layers[i]
        if m.weight.shape[0] != m.weight.shape[1] or m.weight[0, 0].numel() != 1 or getattr(m, "groups", 1) != 1:
            return False
        if m.bias is None and (relu_after or relu_before):
            return False  # a layer beside a ReLU needs a bias to carry negative features through it
    for i, (relu_after, relu_before) in beside.items():
        m = layers[i]
        m.weight.copy_(torch.eye(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device).view(m.weight.shape))
        if m.bias is not None:
            m.bias.fill_(float(shift) * (int(relu_after) - int(relu_before)))
    return True


class Distiller(nn.Module):
    """A frozen teacher, one projector per distilled feature, and the distillation loss.

    Args:
        student: the model being pruned and fine-tuned (its outputs and features are read, never changed).
        example_input: an input of the student's, to check the pair and size the projectors.
        teacher: the frozen teacher; default: a deep copy of ``student`` as it is now (before the first prune), and
            then the projectors start as the identity (:func:`identity_start`): the loss starts at zero and pulls
            the student back only where a prune moved it. It must give outputs of the same structure and shapes as
            the student.
        features: student module names whose outputs are distilled, each through a 1 x 1 projector from the
            student's channels to the teacher's (so the loss keeps working as pruning narrows the student).
        teacher_features: the teacher's module for each feature (default: the same names).
        outputs: distil the model's outputs as well: ``"kl"`` (logits over dim 1) or ``"mse"``; ``None``: features
            only. At least one of ``features`` and ``outputs`` is needed.
        weight: factor of the feature loss (mean squared error of projected student and teacher features).
        output_weight: factor of the output loss.
        temperature: softening of ``"kl"``.
        teacher_dtype: the teacher's precision; ``"auto"``: half precision on CUDA where it reproduces the float32
            teacher's outputs on ``example_input`` within 1 %, float32 otherwise.

    Raises:
        ValueError: one line, before anything is changed — nothing to distil, a module name that does not exist,
            a teacher whose outputs differ in structure or shape, or features whose spatial sizes differ.

    The teacher is kept outside the module tree: :meth:`state_dict` holds the projectors only, so checkpoints never
    carry the teacher (rebuild it from where it came from).
    """

    def __init__(self, student: nn.Module, example_input: Any, teacher: nn.Module | None = None,
                 features: Sequence[str] = (), teacher_features: Sequence[str] | None = None,
                 outputs: OutputLoss | None = None, weight: float = 1.0, output_weight: float = 1.0,
                 temperature: float = 1.0, teacher_dtype: Literal["auto"] | torch.dtype = "auto") -> None:
        super().__init__()
        features = list(features)
        teacher_features = list(teacher_features) if teacher_features is not None else list(features)
        if not features and outputs is None:
            raise ValueError("nothing to distil: name feature modules (features=[...]) and/or outputs='kl' or 'mse'")
        if len(teacher_features) != len(features):
            raise ValueError(f"{len(features)} features but {len(teacher_features)} teacher_features")
        if outputs not in (None, "kl", "mse"):
            raise ValueError(f"outputs must be None, 'kl' or 'mse', got {outputs!r}")
        for name in features:
            _submodule(student, name, "student")
        own_copy = teacher is None
        if own_copy:
            teacher = copy.deepcopy(student)
        for name in teacher_features:
            _submodule(teacher, name, "teacher")
        self.student = [student]  # a list: not a submodule (the student is trained, and saved, by its owner)
        self._teacher = [teacher]  # likewise: never in state_dict
        self.features, self.teacher_features = features, teacher_features
        self.outputs, self.weight, self.output_weight, self.temperature = outputs, weight, output_weight, temperature
        teacher.eval().requires_grad_(False)
        self._captured: dict[str, Any] = {}
        self.last_loss: torch.Tensor | None = None  # the latest loss, detached (for logging)
        with torch.no_grad():
            student_out, student_feats = self._run(student, features, example_input, train=False)
            teacher_out, teacher_feats = self._run(teacher, teacher_features, example_input, train=False)
        _check_outputs(student_out, teacher_out)
        projectors = []
        for name, s, t in zip(features, student_feats, teacher_feats):
            if s.shape[2:] != t.shape[2:]:
                raise ValueError(f"feature {name!r}: student size {tuple(s.shape[2:])} differs from the teacher's "
                                 f"{tuple(t.shape[2:])} (a 1 x 1 projector cannot resize)")
            projectors.append(_projector(s, t))
            if own_copy:
                identity_start(projectors[-1])
        self.projectors = nn.ModuleList(projectors).to(_device(student))
        self.teacher_dtype = self._choose_dtype(teacher_dtype, example_input, teacher_out)

    # -- the teacher ------------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (eval mode, no gradients)."""
        return self._teacher[0]

    def _choose_dtype(self, requested: Any, example_input: Any, reference: Any) -> torch.dtype:
        teacher = self.teacher
        if requested != "auto":
            teacher.to(requested)
            return requested
        if _device(teacher).type != "cuda":
            return torch.float32
        half = copy.deepcopy(teacher).half()
        with torch.no_grad():
            out = call_model(half, _cast(example_input, torch.float16))
        pairs = zip(iter_tensors(reference), iter_tensors(out))
        exact = all(torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2 * float(a.abs().max().clamp(min=1)))
                    for a, b in pairs if a.is_floating_point())
        if exact:
            self._teacher[0] = half
            return torch.float16
        return torch.float32

    def _apply(self, fn: Any, recurse: bool = True) -> Distiller:  # .to(device) moves the teacher too
        super()._apply(fn, recurse)
        self.teacher._apply(fn)
        return self

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    # -- running --------------------------------------------------------------------------------------------------
    def _run(self, model: nn.Module, names: Sequence[str], x: Any, train: bool | None = None) -> tuple[Any, list]:
        store: dict[str, Any] = {}
        with eval_mode(model) if train is False else contextlib.nullcontext(), _hooks(model, names, store):
            out = call_model(model, x)
        return out, [_feature(store[name], name) for name in names]

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Record the student's distilled features during the forwards inside the block (for :meth:`loss`), when
        the training step runs the student itself."""
        self._captured.clear()
        with _hooks(self.student[0], self.features, self._captured):
            yield

    def attachments(self, prefix: str = ATTACHMENT_PREFIX) -> dict[str, tuple[str, nn.Module]]:
        """The projectors as graph attachments (``DependencyGraph(..., attachments=...)``), named
        ``<prefix>.<i>``, so pruning slices their inputs. When the distiller is a submodule of the pruned model,
        pass its path plus ``".projectors"`` so the names agree with the model's own."""
        return {f"{prefix}.{i}": (name, projector)
                for i, (name, projector) in enumerate(zip(self.features, self.projectors))}

    def __deepcopy__(self, memo: dict[int, Any]) -> Distiller:
        """Copies share the frozen teacher (it never changes) and the student reference resolves through ``memo``
        (a copy of a module holding the distiller gets a distiller of its own copy)."""
        memo[id(self.teacher)] = self.teacher
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone

    def teacher_forward(self, x: Any) -> tuple[Any, list[torch.Tensor]]:
        """The teacher's output and distilled features on ``x`` (no grad, eval mode, its own precision)."""
        with torch.no_grad():
            out, feats = self._run(self.teacher, self.teacher_features, _cast(x, self.teacher_dtype))
        return out, [f.float() for f in feats]

    def loss(self, x: Any, student_output: Any = None) -> torch.Tensor:
        """The distillation loss for input ``x``, with the student's features recorded by :meth:`capture` (and its
        ``student_output`` when outputs are distilled)."""
        missing = [name for name in self.features if name not in self._captured]
        if missing:
            raise RuntimeError(f"no student features recorded for {missing}: run the student inside "
                               "distiller.capture(), or call distiller(x)")
        if self.outputs is not None and student_output is None:
            raise ValueError(f"outputs={self.outputs!r} needs the student's output: loss(x, student_output)")
        student_feats = [_feature(self._captured.pop(name), name) for name in self.features]
        teacher_out, teacher_feats = self.teacher_forward(x)
        total = torch.zeros((), device=_device(self.student[0]))
        for projector, s, t in zip(self.projectors, student_feats, teacher_feats):
            total = total + self.weight * F.mse_loss(projector(s).float(), t)
        if self.outputs is not None:
            for s, t in zip(iter_tensors(student_output), iter_tensors(teacher_out)):
                if s.is_floating_point():
                    total = total + self.output_weight * distillation_loss(s, t, self.outputs, self.temperature)
        self.last_loss = total.detach()
        return total

    def forward(self, x: Any) -> tuple[Any, torch.Tensor]:
        """Run the student on ``x`` and return ``(its output, the distillation loss)``."""
        with self.capture():
            out = call_model(self.student[0], x)
        return out, self.loss(x, out)


def _submodule(model: nn.Module, name: str, which: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the {which} has no module {name!r} to distil") from None


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    return x


def _check_outputs(student: Any, teacher: Any) -> None:
    s, t = list(iter_tensors(student)), list(iter_tensors(teacher))
    if len(s) != len(t) or any(a.shape != b.shape for a, b in zip(s, t)):
        raise ValueError(f"the teacher's outputs {[tuple(x.shape) for x in t]} differ from the student's "
                         f"{[tuple(x.shape) for x in s]}: a teacher must solve the same task with the same classes")


def declared_attachments(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """The graph attachments a model carries: the projectors of every :class:`Distiller` among its submodules
    (named after their path) and whatever it declares with a ``distillation_attachments()`` method."""
    found: dict[str, tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Distiller) and module.student[0] is model:
            found.update(module.attachments(f"{name}.projectors" if name else "projectors"))
    declare = getattr(model, "distillation_attachments", None)
    if callable(declare):
        found.update(declare() or {})
    return found


class DeclaredAttachments:
    """What :class:`~lightning_prune.pruning.IterativePruner` takes as ``distiller`` for a model that carries its
    own projectors (:func:`declared_attachments`)."""

    def __init__(self, model: nn.Module) -> None:
        self.student = [model]

    def attachments(self) -> dict[str, tuple[str, nn.Module]]:
        return declared_attachments(self.student[0])


def distill_step(module: nn.Module, x: Any) -> tuple[Any, torch.Tensor | float]:
    """``(module(x), distillation loss)`` with the :class:`Distiller` at ``module.distiller`` (set by
    ``IterativePruningCallback(distill=...)``), else ``(module(x), 0.0)``: one line in a ``training_step``.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 2)
        >>> out, kd = distill_step(net, torch.randn(3, 4))
        >>> out.shape, kd
        (torch.Size([3, 2]), 0.0)
    """
    distiller = getattr(module, "distiller", None)
    if isinstance(distiller, Distiller) and module.training:
        return distiller(x)
    return call_model(module, x), 0.0

