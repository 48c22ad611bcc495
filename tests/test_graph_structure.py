"""What the graph finds: group names and members at concat offsets, C2f halves, pinned heads and attention, unsupported
ops, trace errors, side-effect freedom, summary text and FLOP counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_prune import DependencyGraph, GraphTraceError, count_flops, count_params


def member(group, module: str, param: str = "weight", dim: int | None = None):
    found = [m for m in group.members if m.module == module and m.param == param and (dim is None or m.dim == dim)]
    assert len(found) == 1, (group.name, module, param, dim, group.members)
    return found[0]


def arange(n: int) -> list[int]:
    return list(range(n))


# -- the hand-built model -------------------------------------------------------------------------------------------
TINY_GROUPS = [  # name, size, prunable
    ("input:0", 3, False), ("stem.0", 16, True), ("branch_a.0", 8, True), ("branch_b.0", 12, True),
    ("expand", 12, True), ("left", 12, True), ("head", 10, True), ("fc", 5, False),
]


def test_tinynet_groups(tinynet) -> None:
    model, x = tinynet
    graph = DependencyGraph(model, x)
    assert [(g.name, g.size, g.prunable) for g in graph.groups] == TINY_GROUPS
    assert all(g.exact for g in graph.groups)
    assert graph["input:0"].reason == "model input"
    assert graph["fc"].reason == "reaches the model output"
    assert all(g.reason is None for g in graph.prunable_groups)

    # concat: branch_a fills expand's inputs 0..7, branch_b 8..19
    assert member(graph["branch_a.0"], "expand", dim=1).channels.tolist() == arange(8) + [-1] * 12
    assert member(graph["branch_b.0"], "expand", dim=1).channels.tolist() == [-1] * 8 + arange(12)
    assert member(graph["branch_b.0"], "expand", dim=1).indices([0, 11]).tolist() == [8, 19]
    # chunk halves and the residual fuse conv share expand's channels: channel k lives at k and 12 + k
    expand = graph["expand"]
    for name in ("expand", "expand_bn", "fuse", "fuse_bn"):
        assert member(expand, name, dim=0).channels.tolist() == arange(12) * 2, name
    assert member(expand, "expand_bn", "running_var").role == "stat"
    assert member(expand, "left", dim=1).channels.tolist() == arange(12)
    assert member(expand, "right", dim=1).channels.tolist() == arange(12)
    assert member(expand, "head", dim=1).channels.tolist() == arange(12) * 2
    # the split block ties left and right together, with the depthwise conv and its BN on the second half
    left = graph["left"]
    assert {(m.module, m.param) for m in left.producers} >= {
        ("left", "weight"), ("right", "weight"), ("mix.dw", "weight"), ("mix.bn", "weight"), ("mix.bn", "bias")}
    assert member(left, "fuse", dim=1).channels.tolist() == arange(12) * 2
    # flatten after a 2x2 pool: each head channel feeds four linear inputs
    assert member(graph["head"], "fc", dim=1).channels.tolist() == np.repeat(arange(10), 4).tolist()
    assert sum(g.flops_share for g in graph.groups) > 0


def test_tinynet_prune_updates_split_attribute_and_names_stay(tinynet, lp) -> None:
    model, x = tinynet
    graph = DependencyGraph(model, x)
    graph.prune({"left": [0, 5, 7], "expand": [2], "head": [1, 2]})
    assert [g.name for g in graph.groups] == [name for name, _, _ in TINY_GROUPS]
    assert model.mix.c == 9 and model.mix.dw.groups == 9 and model.mix.dw.in_channels == 9
    assert model.left.out_channels == model.right.out_channels == 9 and model.fuse.in_channels == 18
    assert model.expand.out_channels == 22 and model.fuse.out_channels == 22 and model.left.in_channels == 11
    assert model.fc.in_features == 32
    lp.check_module_attributes(model)


# -- yolov8n ------------------------------------------------------------------------------------------------------
def test_yolov8n_c2f_members(yolov8n) -> None:
    model, x = yolov8n
    graph = DependencyGraph(model, x)
    names = [g.name for g in graph.groups]
    for name in ("model.0.conv", "model.2.cv1.conv", "model.12.cv1.conv", "model.12.m.0.cv2.conv",
                 "model.21.cv2.conv", "model.22.cv2.0.0.conv", "model.22.dfl.conv"):
        assert name in names
    assert len(set(names)) == len(names)

    # neck C2f (no shortcut): cv1's two halves are one group; cv2 reads [half0, half1, m.0 output]
    c2f = graph["model.12.cv1.conv"]
    assert c2f.size == 64 and c2f.prunable and c2f.exact
    assert member(c2f, "model.12.cv1.conv", dim=0).channels.tolist() == arange(64) * 2
    assert member(c2f, "model.12.cv1.bn", dim=0).role == "producer"
    assert member(c2f, "model.12.cv2.conv", dim=1).channels.tolist() == arange(64) * 2 + [-1] * 64
    assert member(c2f, "model.12.m.0.cv1.conv", dim=1).channels.tolist() == arange(64)  # reads the second half
    bottleneck = graph["model.12.m.0.cv2.conv"]
    assert member(bottleneck, "model.12.cv2.conv", dim=1).channels.tolist() == [-1] * 128 + arange(64)
    assert member(bottleneck, "model.12.cv2.conv", dim=1).indices([0]).tolist() == [128]

    # backbone C2f (shortcut): the bottleneck's output is added onto the second half, so it joins cv1's group
    c2f_sc = graph["model.2.cv1.conv"]
    assert member(c2f_sc, "model.2.cv2.conv", dim=1).channels.tolist() == arange(16) * 3
    assert member(c2f_sc, "model.2.m.0.cv2.conv", dim=0).role == "producer"

    # Concat([upsample(SPPF), layer 6]) feeding model.12.cv1 at offsets 0 and 256
    sppf, p4 = graph["model.9.cv2.conv"], graph["model.6.cv2.conv"]
    assert member(sppf, "model.12.cv1.conv", dim=1).channels.tolist() == arange(256) + [-1] * 128
    assert member(p4, "model.12.cv1.conv", dim=1).channels.tolist() == [-1] * 256 + arange(128)
    assert member(p4, "model.12.cv1.conv", dim=1).indices([0, 127]).tolist() == [256, 383]
    assert member(p4, "model.7.conv", dim=1).channels.tolist() == arange(128)


def test_yolov8n_c2f_prune_and_stable_names(yolov8n, lp) -> None:
    model, x = yolov8n
    graph = DependencyGraph(model, x)
    names = [g.name for g in graph.groups]
    plan = lp.random_plan(graph, fraction=0.3, seed=7)
    plan["model.12.cv1.conv"] = list(range(0, 64, 4))  # 16 of 64
    plan["model.2.cv1.conv"] = [1, 2, 3]
    graph.prune(plan)
    assert [g.name for g in graph.groups] == names
    c2f = model.model[12]
    assert c2f.c == 48 == graph["model.12.cv1.conv"].size
    assert c2f.cv1.conv.out_channels == 96 and c2f.m[0].cv1.conv.in_channels == 48
    bottleneck_out = c2f.m[0].cv2.conv.out_channels
    assert c2f.cv2.conv.in_channels == 96 + bottleneck_out
    assert model.model[2].c == 13 and model.model[2].cv2.conv.in_channels == 39
    lp.check_module_attributes(model)


def test_yolov8n_head_outputs_are_pinned(yolov8n) -> None:
    model, x = yolov8n
    graph = DependencyGraph(model, x)
    for branch in ("cv2", "cv3"):
        for level in range(3):
            name = f"model.22.{branch}.{level}.2"
            owners = [g for g in graph.groups
                      if any(m.module == name and m.param == "weight" and m.dim == 0 for m in g.members)]
            assert len(owners) == 1, name
            assert not owners[0].prunable and owners[0].reason, name
    dfl = [g for g in graph.groups if any(m.module == "model.22.dfl.conv" for m in g.members)]
    assert dfl and all(not g.prunable and g.reason for g in dfl)
    assert graph["model.22.cv2.0.2"].reason == "reaches the model output"
    # the feature maps the head passes through under "feats" are no output: the neck convs stay prunable
    for name in ("model.15.cv2.conv", "model.18.cv2.conv", "model.21.cv2.conv"):
        assert graph[name].prunable
    # ... unless the caller pins the whole output
    strict = DependencyGraph(model, x, output_filter=lambda output: output)
    assert not strict["model.21.cv2.conv"].prunable
    assert strict["model.21.cv2.conv"].reason == "reaches the model output"


def test_yolo11n_attention_is_pinned(zoo) -> None:
    model, x = zoo("yolo11n")
    graph = DependencyGraph(model, x)
    qkv = graph["model.10.m.0.attn.qkv.conv"]
    assert not qkv.prunable
    assert "model.10.m.0.attn" in qkv.reason
    assert any(m.module == "model.10.m.0.attn.qkv.conv" and m.dim == 0 for m in qkv.members)
    # the C2PSA input conv's channel count sizes the attention's reshape too
    assert not graph["model.10.cv1.conv"].prunable
    assert "read from a shape" in graph["model.10.cv1.conv"].reason
    assert graph["model.9.cv2.conv"].prunable  # SPPF right before it is fine


# -- summary ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tinynet", "yolov8n"])
def test_summary(name, zoo) -> None:
    model, x = zoo(name)
    graph = DependencyGraph(model, x)
    text = graph.summary()
    lines = text.splitlines()
    prunable = graph.prunable_groups
    assert lines[0].startswith(f"DependencyGraph of {type(model).__name__}: {len(graph.groups)} groups, "
                               f"{len(prunable)} prunable ({sum(g.size for g in prunable)} of "
                               f"{sum(g.size for g in graph.groups)} channels), {count_params(model):,} parameters")
    assert lines[1].split() == ["group", "size", "prunable", "FLOPs", "reason"]
    assert len(lines) == 2 + len(graph.groups)
    for line, group in zip(lines[2:], graph.groups):
        assert line.split()[0] == group.name
        assert line.split()[1:3] == [str(group.size), "yes" if group.prunable else "no"]
        if group.reason:
            assert line.endswith(group.reason)
    assert str(graph) == text
    assert repr(graph) == (f"DependencyGraph({type(model).__name__}, groups={len(graph.groups)}, "
                           f"prunable={len(prunable)})")
    short = graph.summary(max_rows=3).splitlines()
    assert len(short) == 6 and short[-1] == f"... {len(graph.groups) - 3} more groups"


# -- unsupported ops ----------------------------------------------------------------------------------------------
class Mixer(nn.Module):
    """Mixes channels through an op the graph does not know."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "roll":
            return torch.roll(x, shifts=1, dims=1)
        return torch.fft.fft(x, dim=1).real


class WithMixer(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.a_bn = nn.BatchNorm2d(8)
        self.mixer = Mixer(op)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.b_bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(torch.relu(self.a_bn(self.a(x))))
        return self.c(torch.relu(self.b_bn(self.b(y))))


@pytest.mark.parametrize(("op", "name"), [("roll", "'roll'"), ("fft", "fft")])
def test_unsupported_op_pins_with_reason(op, name, lp) -> None:
    torch.manual_seed(0)
    model = lp.randomize_bn(WithMixer(op).eval())
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    pinned = graph["a"]
    assert not pinned.prunable
    assert "unsupported op" in pinned.reason and name in pinned.reason and "mixer" in pinned.reason
    with pytest.raises(ValueError, match="pinned"):
        graph.prune({"a": [0]})
    # downstream of the unknown op the model is still prunable, and the oracle holds there
    assert graph["b"].prunable and graph["b"].exact
    with graph.masked({"b": [1, 6]}):
        expected = lp.run(model, x)
    graph.prune({"b": [1, 6]})
    lp.assert_outputs_close(lp.run(model, x), expected)
    assert model.b.out_channels == 6 and model.c.in_channels == 6 and model.a.out_channels == 8


# -- trace errors and bad arguments ----------------------------------------------------------------------------------
class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kaboom")


def test_forward_error_names_the_failing_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.ReLU(), Boom()))
    model.train()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(GraphTraceError, match=r"module '1\.1' \(Boom\): RuntimeError: kaboom") as info:
        DependencyGraph(model, x)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert all(m.training for m in model.modules())  # flags restored
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # hooks removed
    assert not hasattr(x, "_lightning_prune_channels")

    mismatch = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(GraphTraceError, match=r"module '2' \(Conv2d\)"):
        DependencyGraph(mismatch, x)


def test_bad_arguments() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match="example input"):
        DependencyGraph(model, None)
    with pytest.raises(TypeError, match="nn.Module"):
        DependencyGraph(lambda t: t, torch.randn(1, 3, 4, 4))
    with pytest.raises(GraphTraceError, match="holds no tensor"):
        DependencyGraph(model, {"scale": 2})


def test_example_input_forms() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.b(self.a(x) * scale)

    x = torch.randn(1, 3, 4, 4)
    for inputs in ((x, 2.0), {"x": x, "scale": 2.0}):
        graph = DependencyGraph(TwoInputs(), inputs)
        assert [(g.name, g.prunable) for g in graph.groups] == [("input:0", False), ("a", True), ("b", False)]


# -- the graph leaves the model alone -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tinynet", "yolov8n"])
def test_build_has_no_side_effects(name, zoo, lp) -> None:
    model, x = zoo(name)
    model.train()
    frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][::3]
    for m in frozen:
        m.eval()
    flags = {n: m.training for n, m in model.named_modules()}
    state0 = lp.snapshot(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    x0 = x.clone()

    graph = DependencyGraph(model, x)
    count_flops(model, x)
    with graph.masked(lp.random_plan(graph, seed=2)):
        pass

    assert {n: m.training for n, m in model.named_modules()} == flags
    lp.assert_state_equal(model, state0)  # BN running stats and num_batches_tracked included
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x0) and not hasattr(x, "_lightning_prune_channels")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- FLOPs --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("layer", "shape", "expected"), [
    # 2 * outputs * (in_channels / groups) * kernel area
    (nn.Conv2d(3, 8, 3, bias=False), (1, 3, 10, 10), 2 * (8 * 8 * 8) * 3 * 9),
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 16, 16), 2 * (2 * 6 * 8 * 8) * 4 * 9),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 5, 5), 2 * (8 * 5 * 5) * 1 * 9),
    (nn.Conv2d(8, 4, (1, 3), groups=2), (1, 8, 6, 6), 2 * (4 * 6 * 4) * 4 * 3),
    (nn.Linear(10, 3), (4, 10), 2 * 4 * 10 * 3),
])
def test_count_flops_by_hand(layer, shape, expected) -> None:
    layer.train()
    assert count_flops(layer, torch.randn(*shape)) == expected
    assert layer.training


@pytest.mark.parametrize(("layer", "shape"), [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 16, 16)),
    (nn.Conv2d(8, 4, (1, 3), groups=2), (1, 8, 6, 6)),
    (nn.Linear(10, 3), (4, 10)),
    # transposed convs scatter every *input* element: stride 2 must not count 4x (YOLO-seg's Proto upsampler)
    (nn.ConvTranspose2d(8, 6, 2, stride=2), (1, 8, 5, 5)),
    (nn.ConvTranspose2d(6, 4, 3, groups=2), (1, 6, 5, 5)),
    (nn.ConvTranspose1d(8, 4, 4, stride=2), (2, 8, 9)),
])
def test_traced_flops_match_count_flops(layer, shape) -> None:
    # budgets are planned on the trace's FLOPs and checked with count_flops: the two must agree
    net = nn.Sequential(nn.Identity(), layer)
    x = torch.randn(*shape)
    assert DependencyGraph(net, x).traced_flops == count_flops(net, x)


def test_count_flops_and_params_of_a_small_net() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False))
    x = torch.randn(1, 3, 6, 6)
    assert count_flops(net, x) == 2 * 36 * (8 * 27 + 4 * 8)
    assert count_params(net) == 8 * 27 + 8 + 4 * 8
    net[0].weight.requires_grad_(False)
    assert count_params(net, trainable_only=True) == 8 + 4 * 8
