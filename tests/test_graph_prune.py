"""``DependencyGraph.prune``: repeated prunes, serialisation, plan validation, atomic rollback, gradients and
parameter identity."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lightning_prune import DependencyGraph, PruneResult


def oracle_prune(graph: DependencyGraph, plan: dict, x: torch.Tensor, lp) -> PruneResult:
    """Prune ``plan`` and check the result against the mask of the same plan."""
    with graph.masked(plan):
        expected = lp.run(graph.model, x)
    result = graph.prune(plan)
    lp.assert_outputs_close(lp.run(graph.model, x), expected)
    lp.check_module_attributes(graph.model)
    return result


# -- pruning more than once -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tinynet", "yolov8n"])
def test_prune_twice(name, zoo, lp) -> None:
    model, x = zoo(name)
    graph = DependencyGraph(model, x)
    names0 = [g.name for g in graph.groups]
    original = lp.run(model, x)

    oracle_prune(graph, lp.random_plan(graph, fraction=0.25, seed=0), x, lp)
    sizes1 = lp.group_sizes(graph)
    second = lp.random_plan(graph, fraction=0.25, seed=1)  # from the re-traced groups
    assert second
    oracle_prune(graph, second, x, lp)

    assert [g.name for g in graph.groups] == names0
    assert lp.group_sizes(graph) == {n: s - len(second.get(n, ())) for n, s in sizes1.items()}
    assert [t.shape for t in lp.run(model, x)] == [t.shape for t in original]
    # the graph kept by prune is what a fresh trace of the pruned model finds
    fresh = DependencyGraph(model, x)
    assert [(g.name, g.size, g.prunable, g.exact) for g in fresh.groups] == \
           [(g.name, g.size, g.prunable, g.exact) for g in graph.groups]


def test_prune_plan_forms_and_empty_plans(tinynet, lp) -> None:
    model, x = tinynet
    graph = DependencyGraph(model, x)
    state0 = lp.snapshot(model)
    assert graph.prune({}).removed == {}
    assert graph.prune({"fc": [], "stem.0": []}).removed == {}  # nothing to do, even for a pinned group
    lp.assert_state_equal(model, state0)
    result = graph.prune({"stem.0": np.array([5, 1]), "head": torch.tensor([9]), "left": {3, 0},
                          "branch_a.0": (np.int64(2),)})
    assert result.removed == {"stem.0": [1, 5], "head": [9], "left": [0, 3], "branch_a.0": [2]}
    assert model.stem[0].out_channels == 14 and model.head.out_channels == 9 and model.left.out_channels == 10
    assert torch.equal(model.stem[0].weight, state0["stem.0.weight"][[i for i in range(16) if i not in (1, 5)]])


def test_prune_down_to_one_channel_pins_the_group(tinynet, lp) -> None:
    model, x = tinynet
    graph = DependencyGraph(model, x)
    with graph.masked({"branch_a.0": list(range(1, 8))}):
        expected = lp.run(model, x)
    graph.prune({"branch_a.0": list(range(1, 8))})
    lp.assert_outputs_close(lp.run(model, x), expected)
    group = graph["branch_a.0"]
    assert (group.size, group.prunable, group.reason) == (1, False, "a single channel")
    assert model.branch_a[0].out_channels == 1 and model.expand.in_channels == 13
    with pytest.raises(ValueError, match="pinned: a single channel"):
        graph.prune({"branch_a.0": [0]})


# -- serialisation --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tinynet", "yolov8n"])
def test_pruned_model_round_trips(name, zoo, lp, tmp_path) -> None:
    model, x = zoo(name)
    graph = DependencyGraph(model, x)
    graph.prune(lp.random_plan(graph, fraction=0.3, seed=3))
    expected = lp.run(model, x)

    path = tmp_path / "pruned.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert all(torch.equal(a, b) for a, b in zip(lp.run(loaded, x), expected))
    lp.check_module_attributes(loaded)
    assert not tensors_with_trace_labels(loaded)

    # state_dict into a deep copy whose values were scrambled first
    target = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in target.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.0)
    assert not all(torch.equal(a, b) for a, b in zip(lp.run(target, x), expected))
    target.load_state_dict(torch.load(_save_state(model, tmp_path), weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(lp.run(target, x), expected))

    # the pruned model traces again into the same groups
    assert lp.group_sizes(DependencyGraph(loaded, x)) == lp.group_sizes(graph)


def _save_state(model: nn.Module, tmp_path) -> str:
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def tensors_with_trace_labels(model: nn.Module) -> list[str]:
    """Tensors held by the model (parameters, buffers, plain attributes) that still carry the tracer's labels."""
    found = []
    for mod_name, module in model.named_modules():
        for attr, value in vars(module).items():
            values = value.items() if isinstance(value, dict) else [(attr, value)]
            for key, item in values:
                items = item if isinstance(item, (list, tuple)) else [item]
                for tensor in items:
                    if isinstance(tensor, torch.Tensor) and hasattr(tensor, "_lightning_prune_channels"):
                        found.append(f"{mod_name}.{key}")
    return found


def test_graph_leaves_no_labels_on_the_model(yolov8n) -> None:
    model, x = yolov8n
    graph = DependencyGraph(model, x)
    assert not tensors_with_trace_labels(model)
    graph.prune({"model.4.cv1.conv": [0, 3]})
    assert not tensors_with_trace_labels(model)
    assert not hasattr(x, "_lightning_prune_channels")


# -- bad plans ------------------------------------------------------------------------------------------------------
BAD_PLANS = {
    "unknown group": ({"nope": [0]}, r"unknown group 'nope'"),
    "unknown group, close match": ({"stem": [0]}, r"unknown group 'stem'.*did you mean 'stem\.0'"),
    "pinned output group": ({"fc": [0]}, r"group 'fc' is pinned: reaches the model output"),
    "pinned input group": ({"input:0": [1]}, r"group 'input:0' is pinned: model input"),
    "index out of range": ({"stem.0": [3, 16]}, r"channel 16 out of range 0\.\.15"),
    "negative index": ({"stem.0": [-1]}, r"channel -1 out of range"),
    "repeated index": ({"stem.0": [2, 4, 2]}, r"repeats channel 2"),
    "all channels": ({"stem.0": list(range(16))}, r"removes all 16 channels"),
    "float index": ({"stem.0": [1.0]}, r"non-integer channel index 1\.0"),
    "string index": ({"stem.0": ["1"]}, r"non-integer channel index '1'"),
    "bool index": ({"stem.0": [True]}, r"non-integer channel index True"),
    "scalar instead of a list": ({"stem.0": 3}, r"must be a list of channel indices"),
    "string instead of a list": ({"stem.0": "01"}, r"must be a list of channel indices"),
    "non-mapping plan": ([("stem.0", [0])], r"maps group names to channel indices, got list"),
    "None plan": (None, r"maps group names to channel indices, got NoneType"),
    "good entry then bad entry": ({"stem.0": [0], "head": [0], "fc": [1]}, r"group 'fc' is pinned"),
    "bad entry after good one in range": ({"head": [0, 1], "left": [12]}, r"channel 12 out of range"),
}


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_bad_plan_raises_and_leaves_model_untouched(case, tinynet, lp) -> None:
    plan, message = BAD_PLANS[case]
    model, x = tinynet
    graph = DependencyGraph(model, x)
    state0, sizes0, out0 = lp.snapshot(model), lp.group_sizes(graph), lp.run(model, x)
    with pytest.raises(ValueError, match=message):
        graph.prune(plan)
    with pytest.raises(ValueError, match=message), graph.masked(plan):
        pytest.fail("masked must reject the plan before entering the block")
    lp.assert_state_equal(model, state0)
    assert lp.group_sizes(graph) == sizes0
    assert all(torch.equal(a, b) for a, b in zip(lp.run(model, x), out0))
    lp.check_module_attributes(model)


def test_graph_group_lookup(tinynet) -> None:
    model, x = tinynet
    graph = DependencyGraph(model, x)
    assert graph["stem.0"] is graph.group("stem.0")
    with pytest.raises(KeyError, match="did you mean 'head'"):
        graph.group("heads")
    assert len(graph) == len(graph.groups) and list(graph) == graph.groups


# -- a prune that breaks the forward ----------------------------------------------------------------------------------
class FixedView(nn.Module):
    """Hard-codes the channel count of its input (16) in a reshape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], 16, -1)


class HardCoded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.flat = FixedView()
        self.c1 = nn.Conv1d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c1(self.flat(self.bn(self.conv(x))))


def test_hard_coded_channel_count_is_pinned_or_rolled_back(lp) -> None:
    torch.manual_seed(0)
    model = lp.randomize_bn(HardCoded().eval())
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    group = graph["conv"]
    was_prunable = group.prunable
    state0, sizes0, out0 = lp.snapshot(model), lp.group_sizes(graph), lp.run(model, x)
    if not group.prunable:  # caught at build time
        assert "flat" in group.reason
        with pytest.raises(ValueError, match="pinned"):
            graph.prune({"conv": [0, 1]})
    else:  # caught by the re-trace after surgery, and rolled back
        with pytest.raises(ValueError, match=r"pruning \['conv'\] breaks the model, left unchanged.*'c1'") as info:
            graph.prune({"conv": [0, 1]})
        assert info.value.__cause__ is not None
    lp.assert_state_equal(model, state0)
    assert lp.group_sizes(graph) == sizes0
    assert model.conv.out_channels == 16 and model.bn.num_features == 16 and model.c1.in_channels == 16
    assert all(torch.equal(a, b) for a, b in zip(lp.run(model, x), out0))
    # the culprit is pinned with the cause, so the next plan leaves it out
    if was_prunable:
        assert not graph["conv"].prunable and "breaks the model" in graph["conv"].reason
        with pytest.raises(ValueError, match="pinned"):
            graph.prune({"conv": [0, 1]})
    lp.assert_state_equal(model, state0)


def shape_attributes(model: nn.Module) -> dict[str, tuple]:
    keys = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features", "c")
    return {name: tuple(getattr(m, k, None) for k in keys) for name, m in model.named_modules()}


def test_failed_retrace_rolls_back_everything(yolov8n, lp, monkeypatch) -> None:
    """A forward that only breaks with fewer channels (patched in after the graph was built): the whole prune, C2f's
    split size included, is undone."""
    model, x = yolov8n
    graph = DependencyGraph(model, x)
    plan = lp.random_plan(graph, fraction=0.3, seed=5)
    assert "model.12.cv1.conv" in plan
    state0, attrs0, sizes0, out0 = lp.snapshot(model), shape_attributes(model), lp.group_sizes(graph), lp.run(model, x)
    params0 = [id(p) for p in model.parameters()]
    picky = model.model[12].m[0].cv1
    original_forward = picky.forward

    def forward(t: torch.Tensor) -> torch.Tensor:
        if t.shape[1] != 64:
            raise RuntimeError(f"expected 64 channels, got {t.shape[1]}")
        return original_forward(t)

    monkeypatch.setattr(picky, "forward", forward)
    with pytest.raises(ValueError, match=r"breaks the model, left unchanged: .*'model\.12\.m\.0\.cv1'.*expected 64"):
        graph.prune(plan)
    lp.assert_state_equal(model, state0)
    assert shape_attributes(model) == attrs0 and model.model[12].c == 64
    assert [id(p) for p in model.parameters()] == params0
    assert lp.group_sizes(graph) == sizes0
    assert all(torch.equal(a, b) for a, b in zip(lp.run(model, x), out0))
    # the same plan without the picky layer's group goes through
    del plan["model.12.cv1.conv"]
    with graph.masked(plan):
        expected = lp.run(model, x)
    graph.prune(plan)
    lp.assert_outputs_close(lp.run(model, x), expected)


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        y = self.a(x).view(n, 2, 8, h, w).transpose(1, 2).reshape(n, 16, h, w)  # a channel shuffle
        return self.b(y)


def test_channel_shuffle_with_sizes_fixed_in_code_is_pinned_at_build_time() -> None:
    graph = DependencyGraph(Shuffle(), torch.randn(1, 3, 8, 8))
    group = graph["a"]
    assert not group.prunable
    assert "view" in group.reason and "splits the channel dim with sizes fixed in code" in group.reason
    assert graph["b"].prunable is False  # the output


class ShapeShuffle(Shuffle):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # torchvision's channel_shuffle
        y = self.a(x)
        n, c, h, w = y.size()
        return self.b(y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))


def test_channel_shuffle_sized_from_the_shape_prunes_in_lock_step(lp) -> None:
    """view (n, 2, c // 2) -> transpose -> reshape: channel i of both shuffle blocks goes together, so the shuffle
    stays a shuffle of two equal blocks."""
    torch.manual_seed(0)
    model = ShapeShuffle().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    group = graph["a"]
    assert group.prunable and group.size == 8 and group.exact
    oracle_prune(graph, {"a": [0, 3]}, x, lp)
    assert model.a.out_channels == 12 and model.b.in_channels == 12


class HeadSplit(nn.Module):
    """A reshape that merges channels into the spatial dim (not a split into blocks) stays pinned."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.a(x).view(n, 4, 4 * h * w)


def test_reshape_merging_channels_is_pinned_at_build_time() -> None:
    graph = DependencyGraph(HeadSplit(), torch.randn(1, 3, 8, 8))
    assert not graph["a"].prunable and "splits or merges the channel dim" in graph["a"].reason


# -- gradients, parameter identity and optimizers ------------------------------------------------------------------
def test_prune_slices_gradients_and_keeps_parameter_identity(tinynet, lp) -> None:
    model, x = tinynet
    graph = DependencyGraph(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    model(x).square().sum().backward()
    optimizer.step()  # creates momentum buffers shaped like the unpruned parameters
    params0 = dict(model.named_parameters())
    grads0 = {name: p.grad.clone() for name, p in params0.items()}

    result = graph.prune({"stem.0": [0, 2], "expand": [1], "left": [4, 5], "head": [9]})

    assert dict(model.named_parameters()).keys() == params0.keys()
    for name, p in model.named_parameters():
        assert p is params0[name], name
        assert p.grad is not None and p.grad.shape == p.shape, name
    changed = {id(change.tensor): change for change in result.changes}
    assert id(model.stem[0].weight) in changed and id(model.fc.weight) in changed
    for name, p in model.named_parameters():
        change = changed.get(id(p))
        expected = change.slice(grads0[name]) if change is not None else grads0[name]
        assert torch.equal(p.grad, expected), name
    assert torch.equal(model.stem[0].weight.grad, grads0["stem.0.weight"][[1, *range(3, 16)]])
    assert model.training  # prune's re-trace restores the training flags

    # the optimizer built before still holds the very same (now smaller) parameters
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert [id(p) for p in held] == [id(p) for p in model.parameters()]
    for p in held:  # bring its state along with ParamChange.slice
        if id(p) in changed:
            state = optimizer.state[p]
            state["momentum_buffer"] = changed[id(p)].slice(state["momentum_buffer"])
    optimizer.zero_grad()
    model(x).square().sum().backward()
    optimizer.step()
    model.eval()
    assert all(torch.isfinite(t).all() for t in lp.run(model, x))


def test_pruned_yolo_trains(yolov8n, lp) -> None:
    """ultralytics' training branch (raw head outputs and "feats") works on the pruned model."""
    model, x = yolov8n
    graph = DependencyGraph(model, x)
    graph.prune(lp.random_plan(graph, fraction=0.3, seed=4))
    model.train()
    preds = model(torch.cat([x, x.flip(-1)]))
    tensors = lp.flatten_tensors(preds)
    assert tensors
    sum(t.float().mean() for t in tensors).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters() if p.requires_grad)
    feats = preds["feats"] if isinstance(preds, dict) else preds[-1]
    assert [f.shape[1] for f in feats] == [model.model[15].cv2.conv.out_channels,
                                           model.model[18].cv2.conv.out_channels,
                                           model.model[21].cv2.conv.out_channels]


# -- regressions: split-size attributes and depthwise convs over untraced channels
class SplitWithGain(nn.Module):
    """Splits by ``self.c`` and also keeps an unrelated integer setting that happens to equal the piece size."""

    def __init__(self) -> None:
        super().__init__()
        self.c = 4
        self.gain = 4  # a multiplier, nothing to do with channels
        self.cv1 = nn.Conv2d(3, 8, 1)
        self.cv2 = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split(self.c, 1)
        return self.cv2(torch.cat([a * self.gain, b], 1))


def test_split_size_attribute_is_the_one_passed_to_split(lp) -> None:
    """`c` and `gain` both equal the piece size; only `c` is passed to `split` in the class's code, so only `c`
    follows the prune and `gain` (a multiplier) keeps its value."""
    torch.manual_seed(0)
    model = SplitWithGain().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    assert graph["cv1"].prunable and graph["cv1"].exact
    with graph.masked({"cv1": [0]}):
        expected = lp.run(model, x)
    graph.prune({"cv1": [0]})
    assert (model.c, model.gain) == (3, 4)
    lp.assert_outputs_close(lp.run(model, x), expected)


class ChunkWithScale(nn.Module):
    """``chunk(2)`` needs no attribute; ``self.scale`` happens to equal the piece size and must never change."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 8
        self.cv1 = nn.Conv2d(3, 16, 1)
        self.cv2 = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([a * self.scale, b], 1))


@pytest.mark.parametrize("verify", [True, False])
def test_chunk_leaves_an_unrelated_attribute_equal_to_the_piece_size(lp, verify: bool) -> None:
    torch.manual_seed(0)
    model = ChunkWithScale().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    group = graph["cv1"]
    assert group.prunable and group.exact and group.size == 8
    with graph.masked({"cv1": [1, 5]}):
        expected = lp.run(model, x)
    graph.prune({"cv1": [1, 5]}, verify=verify)
    assert model.scale == 8 and model.cv1.out_channels == 12
    lp.assert_outputs_close(lp.run(model, x), expected)


def test_split_prune_updates_the_one_size_attribute(lp) -> None:
    class SplitByC(SplitWithGain):
        def __init__(self) -> None:
            super().__init__()
            self.gain = 5

    torch.manual_seed(0)
    model = SplitByC().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    assert graph["cv1"].prunable and graph["cv1"].exact
    with graph.masked({"cv1": [1]}):
        expected = lp.run(model, x)
    graph.prune({"cv1": [1]})
    assert model.c == 3
    assert model.gain == 5
    lp.assert_outputs_close(lp.run(model, x), expected)


class DepthwiseAfterUnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.dw(torch.roll(self.a(x), 1, 1)))  # roll: the graph loses track of the channels


def test_depthwise_conv_after_unknown_op_is_not_offered_for_pruning(lp) -> None:
    model = DepthwiseAfterUnknownOp().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph(model, x)
    assert not graph["a"].prunable
    group = graph["dw"]
    if group.prunable:  # then pruning it must work
        with graph.masked({"dw": [0]}):
            expected = lp.run(model, x)
        graph.prune({"dw": [0]})
        lp.assert_outputs_close(lp.run(model, x), expected)
    else:
        assert group.reason
