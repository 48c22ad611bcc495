"""Shared fixtures for the graph tests: a small model zoo, an oracle-friendly BatchNorm randomiser, output helpers.

Every zoo model is built once per session (random init, nothing is downloaded) and handed out as a deep copy, so
tests may mutate what they get. Helpers reach the tests through the ``lp`` fixture (a namespace), which keeps the
test modules free of ``import conftest``.
"""

from __future__ import annotations

import copy
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything (set before ultralytics can be imported)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lightning_prune import DependencyGraph  # noqa: E402
from lightning_prune.graph.conventions import default_output_filter  # noqa: E402

TORCHVISION_ZOO = ("resnet18", "mobilenet_v2", "densenet121")
YOLO_ZOO = ("yolov5nu", "yolov8n", "yolo11n", "yolov8n-seg", "yolov7-tiny")
ZOO = ("tinynet", *TORCHVISION_ZOO, *YOLO_ZOO)
IMAGE_SIZE = 64

# The graph tests' inputs are tiny: one intra-op thread is as fast, and far faster than two when the cores are
# shared (OpenMP workers spinning against other processes made single forwards 10-50x slower in practice).
GRAPH_TEST_THREADS = int(os.environ.get("LP_GRAPH_TEST_THREADS", "1"))


# -- a hand-built model with every coupling the graph must get right ------------------------------------------------
class SplitMix(nn.Module):
    """``split`` into halves sized by ``self.c``, a depthwise conv + BN on one half, concat back."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c = channels // 2
        self.dw = nn.Conv2d(self.c, self.c, 3, padding=1, groups=self.c, bias=False)
        self.bn = nn.BatchNorm2d(self.c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.split(self.c, 1)
        return torch.cat([a, torch.relu(self.bn(self.dw(b)))], 1)


class TinyNet(nn.Module):
    """stem -> two branches concatenated -> expand -> chunk halves (mixed back by a residual add) -> split block with
    a depthwise conv -> head conv -> pool -> flatten -> linear classifier."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.expand = nn.Conv2d(20, 24, 1)  # reads cat(branch_a, branch_b)
        self.expand_bn = nn.BatchNorm2d(24)
        self.left = nn.Conv2d(12, 12, 3, padding=1)
        self.right = nn.Conv2d(12, 12, 1)
        self.mix = SplitMix(24)
        self.fuse = nn.Conv2d(24, 24, 1, bias=False)  # its output is added back onto expand: a residual
        self.fuse_bn = nn.BatchNorm2d(24)
        self.head = nn.Conv2d(24, 10, 3, stride=2, padding=1)
        self.head_bn = nn.BatchNorm2d(10)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(10 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        c = torch.cat([self.branch_a(s), self.branch_b(s)], 1)
        e = torch.relu(self.expand_bn(self.expand(c)))
        h1, h2 = e.chunk(2, dim=1)
        halves = torch.cat([torch.relu(self.left(h1)), torch.relu(self.right(h2))], 1)
        y = e + self.fuse_bn(self.fuse(self.mix(halves)))
        z = torch.relu(self.head_bn(self.head(y)))
        return self.fc(torch.flatten(self.pool(z), 1))


# -- building the zoo ---------------------------------------------------------------------------------------------
def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    if name == "tinynet":
        return TinyNet(), x
    if name in TORCHVISION_ZOO:
        torchvision = pytest.importorskip("torchvision")
        return getattr(torchvision.models, name)(weights=None), x
    if name in YOLO_ZOO:
        pytest.importorskip("ultralytics")
        if name == "yolov7-tiny":
            from ultralytics.nn.tasks import DetectionModel

            from lightning_prune.models import model_yaml

            return DetectionModel(str(model_yaml("yolov7-tiny")), nc=3, verbose=False), x
        from ultralytics import YOLO

        return YOLO(f"{name}.yaml").model, x
    raise KeyError(name)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, so masking and pruning are
    compared on a model whose normalisations really matter (fresh BN is an identity in eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                if module.running_mean is not None:
                    module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                    module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if module.weight is not None:
                    module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    module.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


_CACHE: dict[str, tuple[nn.Module, torch.Tensor]] = {}


def zoo_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A fresh (deep-copied) eval-mode zoo model with randomised BatchNorm, and its example input."""
    if name not in _CACHE:
        model, x = _build(name)
        _CACHE[name] = (randomize_bn(model.eval()), x)
    model, x = _CACHE[name]
    return copy.deepcopy(model), x.clone()


# -- outputs, state and plans -------------------------------------------------------------------------------------
def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors nested in lists/tuples/dicts, in order (depth first)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flatten_tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in flatten_tensors(item)]
    return []


def flat_outputs(model: nn.Module, output: Any) -> list[torch.Tensor]:
    """The model's output after :func:`default_output_filter`, as a flat list of tensors."""
    return flatten_tensors(default_output_filter(model)(output))


@torch.no_grad()
def run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Eval-mode forward, filtered and flattened outputs (training flags are restored)."""
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        return [t.detach().clone() for t in flat_outputs(model, model(x))]
    finally:
        for name, m in model.named_modules():
            m.training = modes[name]


def assert_outputs_close(actual: list[torch.Tensor], expected: list[torch.Tensor], tol: float = 1e-4) -> None:
    """Equal up to ``tol`` relative to each output's scale (YOLO's decoded boxes are in pixels)."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
        torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(state) == list(saved)
    for key, value in state.items():
        assert value.shape == saved[key].shape, key
        assert torch.equal(value, saved[key]), key


def random_plan(graph: DependencyGraph, fraction: float = 0.3, seed: int = 0,
                exact_only: bool = True) -> dict[str, list[int]]:
    """Remove a random ``fraction`` (at least one channel, never all) of every prunable (exact) group."""
    rng = np.random.default_rng(seed)
    plan = {}
    for group in graph.groups:
        if not group.prunable or (exact_only and not group.exact):
            continue
        count = min(group.size - 1, max(1, round(group.size * fraction)))
        plan[group.name] = sorted(rng.choice(group.size, count, replace=False).tolist())
    return plan


def check_module_attributes(model: nn.Module) -> None:
    """Every conv/norm/linear module's size attributes agree with its tensors' shapes."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name
            if m.transposed:
                assert (w.shape[0], w.shape[1] * m.groups) == (m.in_channels, m.out_channels), name
            else:
                assert (w.shape[0], w.shape[1] * m.groups) == (m.out_channels, m.in_channels), name
            if m.bias is not None:
                assert m.bias.shape == (m.out_channels,), name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                if t is not None:
                    assert t.shape == (m.num_features,), name
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), name
            if m.bias is not None:
                assert m.bias.shape == (m.out_features,), name


def embeds_kept_channels(projector: nn.Module) -> bool:
    """Whether an ultralytics ``Conv-ReLU-Conv`` distillation projector is the identity started by
    ``identity_start`` and sliced by prunes: each student channel maps to one teacher channel of its own (1.0, the
    rest 0), shifted by +1 before the ReLU and -1 after it, the second conv the identity."""
    first, second = projector[0], projector[2]
    w = first.weight.detach().flatten(1)  # (teacher channels, student channels)
    one_hot = bool(((w == 0) | (w == 1)).all()) and bool((w.sum(0) == 1).all()) and bool((w.sum(1) <= 1).all())
    return (one_hot and bool((first.bias == 1).all()) and bool((second.bias == -1).all())
            and torch.equal(second.weight.detach().flatten(1), torch.eye(second.weight.shape[0])))


def group_sizes(graph: DependencyGraph) -> dict[str, int]:
    return {g.name: g.size for g in graph.groups}


# -- fixtures -----------------------------------------------------------------------------------------------------
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "zoo_name" in metafunc.fixturenames:
        metafunc.parametrize("zoo_name", ZOO)


@pytest.fixture(autouse=True)
def _graph_tests_single_threaded(request: pytest.FixtureRequest):
    """Run the ``test_graph_*`` modules with :data:`GRAPH_TEST_THREADS` intra-op threads; others are left alone."""
    if not request.module.__name__.rpartition(".")[2].startswith("test_graph_"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(GRAPH_TEST_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): tiny
    CPU models run faster on one thread, and much faster than two on a busy machine; restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def lp() -> types.SimpleNamespace:
    """The helpers above, for the test modules."""
    return types.SimpleNamespace(
        ZOO=ZOO, TinyNet=TinyNet, SplitMix=SplitMix, zoo_model=zoo_model, randomize_bn=randomize_bn,
        flatten_tensors=flatten_tensors, flat_outputs=flat_outputs, run=run, assert_outputs_close=assert_outputs_close,
        snapshot=snapshot, assert_state_equal=assert_state_equal, random_plan=random_plan,
        check_module_attributes=check_module_attributes, group_sizes=group_sizes,
        embeds_kept_channels=embeds_kept_channels,
    )


@pytest.fixture
def zoo() -> Callable[[str], tuple[nn.Module, torch.Tensor]]:
    """``zoo(name)`` -> (fresh deep copy of the model, example input)."""
    return zoo_model


@pytest.fixture
def tinynet() -> tuple[nn.Module, torch.Tensor]:
    return zoo_model("tinynet")


@pytest.fixture
def yolov8n() -> tuple[nn.Module, torch.Tensor]:
    return zoo_model("yolov8n")
