"""Coverage zoo: models no one here tuned the tracer to (torchvision, timm, ultralytics), at a small input.

For each model: the share of conv/linear FLOPs pruning can reach (:attr:`DependencyGraph.prunable_flops_share`)
must not drop below its floor; every pinned group carries a one-line reason; and a prune of 30 % of every prunable
group passes the graph's own verification and equals the mask of the same plan (eval mode). The heavy run (224 px,
Torch-Pruning alongside) is ``benchmarks/coverage.py``. Random init only; nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything (set before ultralytics can be imported)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lightning_prune import DependencyGraph  # noqa: E402
from lightning_prune.pruning.importance import lowest_channels  # noqa: E402

SIZE = 64
RATIO = 0.3

# (source, name): the floor of prunable_flops_share at SIZE px (measured, less a small margin)
ZOO = {
    ("torchvision", "resnext50_32x4d"): 0.97,
    ("torchvision", "regnet_x_400mf"): 0.97,
    ("torchvision", "mobilenet_v2"): 0.94,
    ("torchvision", "shufflenet_v2_x0_5"): 0.69,
    ("torchvision", "convnext_tiny"): 0.45,
    ("timm", "dpn68"): 0.98,
    ("timm", "mixnet_s"): 0.94,
    ("timm", "skresnet18"): 0.65,
    ("timm", "nf_resnet26"): 0.0,
    ("timm", "convnext_atto"): 0.42,
    ("ultralytics", "yolov8n"): 0.97,
    ("ultralytics", "rtdetr-l"): 0.69,
}
REPORT: dict[str, str] = {}


def build(source: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    if source == "torchvision":
        torchvision = pytest.importorskip("torchvision")
        return torchvision.models.get_model(name, weights=None)
    if source == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False)
    pytest.importorskip("ultralytics")
    from ultralytics import RTDETR, YOLO

    return (RTDETR if name.startswith("rtdetr") else YOLO)(f"{name}.yaml").model


def randomize_norms(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def outputs(graph: DependencyGraph) -> list[torch.Tensor]:
    """The outputs whose shapes the graph keeps (ultralytics' pass-through ``feats`` left out)."""
    from lightning_prune.graph.conventions import default_output_filter
    from lightning_prune.utils import iter_tensors

    with torch.no_grad():
        output = default_output_filter(graph.model)(graph.run())
    return [t.clone() for t in iter_tensors(output, attributes=True) if t.is_floating_point()]


@pytest.mark.parametrize(("source", "name"), list(ZOO), ids=[name for _, name in ZOO])
def test_coverage(source: str, name: str) -> None:
    model = randomize_norms(build(source, name).eval())
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    graph = DependencyGraph(model, x)
    share = graph.prunable_flops_share
    pinned = [g for g in graph.groups if not g.prunable]
    REPORT[name] = (f"{name:<20} {share:6.1%} of conv FLOPs reachable (floor {ZOO[source, name]:.0%}), "
                    f"{len(graph.prunable_groups)}/{len(graph.groups)} groups prunable")
    assert all(g.reason and "\n" not in g.reason for g in pinned), [g.name for g in pinned if not g.reason]
    assert share >= ZOO[source, name], f"{name}: prunable share dropped to {share:.3f} (floor {ZOO[source, name]})"
    plan = {g.name: lowest_channels(g, model, int(RATIO * g.size), "l1") for g in graph.prunable_groups
            if int(RATIO * g.size) > 0}
    if not plan:
        return
    exact = all(graph[name].exact for name in plan)
    with graph.masked(plan):
        expected = outputs(graph)
    graph.prune(plan)  # verifies masked == pruned itself when every group is exact; raises naming a culprit
    if exact and name != "rtdetr-l":  # RT-DETR selects queries by value: only the graph's replayed check applies
        for before, after in zip(expected, outputs(graph)):
            torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-4 * max(1.0, float(before.abs().max())))


def test_coverage_report(capsys: pytest.CaptureFixture) -> None:
    with capsys.disabled():
        print("\ncoverage zoo (prunable share of conv FLOPs at 64 px):\n  " + "\n  ".join(REPORT.values()))
