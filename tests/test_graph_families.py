"""Families the tracer used to pin wholesale: grouped convolutions, per-channel parameters broadcast onto a feature
map, weight-standardised convolutions, value-dependent selections (``topk``) and the verification that names the
group that breaks a model. Every prune is checked against the mask of the same plan (eval mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prune import DependencyGraph


def masked_then_pruned(graph: DependencyGraph, plan: dict, x: torch.Tensor, lp) -> None:
    with graph.masked(plan):
        expected = lp.run(graph.model, x)
    graph.prune(plan)
    lp.assert_outputs_close(lp.run(graph.model, x), expected)
    lp.check_module_attributes(graph.model)


class Grouped(nn.Module):
    """1x1 conv -> BN -> grouped conv (or transposed, or a channel multiplier) -> BN -> 1x1 conv."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        if kind == "grouped":
            self.g = nn.Conv2d(16, 24, 3, padding=1, groups=4)
        elif kind == "transposed":
            self.g = nn.ConvTranspose2d(16, 24, 2, stride=2, groups=4)
        else:  # a depthwise channel multiplier: one input channel, two outputs per group
            self.g = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.bn = nn.BatchNorm2d(self.g.out_channels)
        self.c = nn.Conv2d(self.g.out_channels, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.bn(self.g(self.a(x)))))


@pytest.mark.parametrize("kind", ["grouped", "transposed", "multiplier"])
def test_grouped_conv_prunes_per_group_uniformly(kind: str, lp) -> None:
    torch.manual_seed(0)
    model = lp.randomize_bn(Grouped(kind).eval())
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    groups = model.g.groups
    if kind == "multiplier":  # a group goes as a whole, with its one input channel
        assert graph["a.0"].prunable and graph["a.0"].size == 16 and "g" not in {g.name for g in graph.groups}
        masked_then_pruned(graph, {"a.0": [0, 5, 7]}, x, lp)
        assert (model.g.groups, model.g.in_channels, model.g.out_channels) == (13, 13, 26)
        return
    # channel i of every conv group goes together, inputs (4 per group) and outputs (6 per group) alike
    assert graph["a.0"].prunable and graph["a.0"].size == 4
    assert graph["g"].prunable and graph["g"].size == 6
    masked_then_pruned(graph, {"a.0": [1], "g": [0, 4]}, x, lp)
    assert model.g.groups == groups == 4
    assert (model.g.in_channels, model.g.out_channels) == (12, 16)
    assert model.a[0].out_channels == 12 and model.bn.num_features == 16 and model.c.in_channels == 16


def test_torchvision_resnext_block_is_prunable(lp) -> None:
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    block = lp.randomize_bn(Bottleneck(64, 16, groups=4, base_width=64).eval())  # width 64, 4 groups of 16
    x = torch.randn(1, 64, 8, 8)
    graph = DependencyGraph(block, x)
    assert graph["conv1"].prunable and graph["conv2"].prunable
    masked_then_pruned(graph, {"conv1": [0, 3], "conv2": [5]}, x, lp)
    assert (block.conv2.groups, block.conv2.in_channels, block.conv2.out_channels) == (4, 56, 60)
    assert torchvision is not None


class LayerScale(nn.Module):
    """Learned per-channel scale and bias as bare parameters, broadcast through views, also channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.beta = nn.Parameter(torch.rand(8))
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) * self.gamma.view(1, -1, 1, 1) + self.beta[None, :, None, None]
        y = (y.permute(0, 2, 3, 1) * self.gamma).permute(0, 3, 1, 2)
        return self.b(y * self.scale)


def test_per_channel_parameters_are_members(lp) -> None:
    torch.manual_seed(0)
    model = LayerScale().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    group = graph["a"]
    assert group.prunable and group.exact
    assert {(m.param, m.role) for m in group.members} >= {("gamma", "producer"), ("beta", "producer"),
                                                           ("scale", "producer")}
    masked_then_pruned(graph, {"a": [1, 6]}, x, lp)
    assert model.gamma.shape == (6,) and model.beta.shape == (6,) and model.scale.shape == (6, 1, 1)


class StandardisedConv(nn.Conv2d):
    """Weight standardisation (as in timm's StdConv2d): every filter normalised over its input channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_weight_standardised_conv_is_pinned_with_a_reason() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), StandardisedConv(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 2, 1)).eval()
    graph = DependencyGraph(model, torch.randn(1, 3, 8, 8))
    for name in ("0", "2"):
        group = graph[name]
        assert not group.prunable and "computes its weight from its parameter" in group.reason
        assert "StandardisedConv" in group.reason and "\n" not in group.reason


class TopQueries(nn.Module):
    """Selects its outputs by value (like RT-DETR's query selection): float noise can swap the selected items."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.score = nn.Conv2d(16, 1, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        scores = self.score(y).flatten(1)
        index = torch.topk(scores, 5, dim=1).indices
        return self.head(y).flatten(2).gather(2, index[:, None].expand(-1, 4, -1))


def test_value_dependent_selection_is_replayed_when_verifying(lp) -> None:
    torch.manual_seed(0)
    model = TopQueries().eval()
    with torch.no_grad():  # near-ties: the masked and the pruned model would pick different items
        model.score.weight.mul_(1e-7)
    x = torch.randn(1, 3, 16, 16)
    graph = DependencyGraph(model, x)
    graph.prune({"a": [0, 1, 2, 3]})  # would be rejected (spuriously) without the replay
    assert model.a.out_channels == 12


class HardCodedWidth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b(x)
        return self.c(torch.cat([self.a(x), b * (8 / b.shape[1])], 1))  # a constant tied to b's width


def test_verification_names_and_pins_the_culprit(lp) -> None:
    torch.manual_seed(0)
    model = HardCodedWidth().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    assert graph["a"].prunable and graph["b"].prunable
    state = lp.snapshot(model)
    with pytest.raises(ValueError) as info:
        graph.prune({"a": [0], "b": [0]})
    message = str(info.value)
    assert "\n" not in message and "['b']" in message and "'b' is pinned now" in message and "other 1 group" in message
    lp.assert_state_equal(model, state)
    assert not graph["b"].prunable and "breaks the model" in graph["b"].reason
    assert graph["a"].prunable
    masked_then_pruned(graph, {"a": [0]}, x, lp)
    assert not graph["b"].prunable  # the pin survives the re-trace


class MixedSplit(nn.Module):
    """Uneven pieces sized by a list attribute (timm MixedConv2d), each to its own conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1)
        self.splits = [4, 8]
        self.convs = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(8, 8, 5, padding=2, groups=8)])
        self.b = nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(self.a(x), self.splits, 1)
        return self.b(torch.cat([conv(p) for conv, p in zip(self.convs, pieces)], 1))


def test_uneven_split_by_list_attribute(lp) -> None:
    torch.manual_seed(0)
    model = MixedSplit().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    assert graph["a"].prunable and graph["a"].size == 12
    masked_then_pruned(graph, {"a": [0, 5, 6]}, x, lp)
    assert model.splits == [3, 6] and model.convs[1].groups == 6


class DualPath(nn.Module):
    """Channel slices bounded by a module attribute (timm DPN's ``x[:, :self.num_1x1_c]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_1x1_c = 8
        self.a = nn.Conv2d(3, 12, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        resid = y[:, :self.num_1x1_c] + self.b(x)
        return self.c(torch.cat([resid, y[:, self.num_1x1_c:]], 1))


def test_channel_slice_bounded_by_an_attribute(lp) -> None:
    torch.manual_seed(0)
    model = DualPath().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    assert graph["a"].prunable and graph["a"].size == 12
    masked_then_pruned(graph, {"a": [1, 2, 9]}, x, lp)
    assert model.num_1x1_c == 6 and model.a.out_channels == 9 and model.b.out_channels == 6
