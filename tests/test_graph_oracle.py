"""The masking oracle over the whole zoo: for exact groups, ``graph.masked(plan)`` predicts ``graph.prune(plan)``.

Every zoo model (torchvision, ultralytics, YOLOv7-tiny, a hand-built net) gets a seeded random plan removing ~30 % of
every prunable exact group; the eval-mode output under the mask must equal the output after physical pruning.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prune import DependencyGraph, count_flops, count_params


def test_masked_equals_pruned(zoo_name, zoo, lp) -> None:
    model, x = zoo(zoo_name)
    graph = DependencyGraph(model, x)
    plan = lp.random_plan(graph, fraction=0.3, seed=0)
    assert plan, "the zoo model should have prunable exact groups"
    assert all(graph[name].prunable and graph[name].exact for name in plan)

    original = lp.run(model, x)
    flops0, params0 = count_flops(model, x), count_params(model)
    state0 = lp.snapshot(model)
    sizes0 = lp.group_sizes(graph)

    with graph.masked(plan):
        masked = lp.run(model, x)
    lp.assert_state_equal(model, state0)  # the mask is gone again, to the bit
    # masking must really change something, or the comparison below proves nothing
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(masked, original))

    result = graph.prune(plan)
    assert result.removed == plan
    assert result.changes, "pruning must slice tensors"
    pruned = lp.run(model, x)

    assert [t.shape for t in pruned] == [t.shape for t in original]
    lp.assert_outputs_close(pruned, masked, tol=1e-4)

    assert count_flops(model, x) < flops0
    assert count_params(model) < params0
    lp.check_module_attributes(model)
    # the re-traced graph has the same groups, each smaller by exactly what the plan removed
    assert lp.group_sizes(graph) == {name: size - len(plan.get(name, ())) for name, size in sizes0.items()}


def test_masked_restores_when_block_raises(zoo_name, zoo, lp) -> None:
    model, x = zoo(zoo_name)
    graph = DependencyGraph(model, x)
    plan = lp.random_plan(graph, fraction=0.5, seed=1, exact_only=False)
    state0 = lp.snapshot(model)
    ids0 = [id(p) for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside the mask"), graph.masked(plan):
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state0[k])]
        assert changed, "masking must zero something"
        raise RuntimeError("inside the mask")
    lp.assert_state_equal(model, state0)
    assert [id(p) for p in model.parameters()] == ids0


def test_masked_zeroes_exactly_the_planned_producers(tinynet, lp) -> None:
    model, x = tinynet
    graph = DependencyGraph(model, x)
    plan = {"stem.0": [1, 5], "expand": [3]}
    state0 = lp.snapshot(model)
    with graph.masked(plan):
        assert torch.count_nonzero(model.stem[0].weight[[1, 5]]) == 0
        assert torch.count_nonzero(model.stem[1].weight[[1, 5]]) == 0
        assert torch.count_nonzero(model.stem[1].bias[[1, 5]]) == 0
        # running statistics are not producers: left alone
        assert torch.equal(model.stem[1].running_mean, state0["stem.1.running_mean"])
        # the consumers keep their input slices
        assert torch.equal(model.branch_a[0].weight, state0["branch_a.0.weight"])
        # expand's channel 3 lives twice (chunk halves) in expand, expand_bn and in the residual fuse conv
        for name in ("expand.weight", "expand.bias", "expand_bn.weight", "fuse.weight", "fuse_bn.bias"):
            tensor = model.state_dict()[name]
            assert torch.count_nonzero(tensor[[3, 15]]) == 0, name
            assert torch.count_nonzero(tensor[[0, 12]]) > 0, name
        other = [k for k in state0 if not k.startswith(("stem.", "expand", "fuse"))]
        for key in other:
            assert torch.equal(model.state_dict()[key], state0[key]), key
    lp.assert_state_equal(model, state0)


def test_module_attribute_check_catches_mismatch(lp) -> None:
    """The attribute check used above is not vacuous."""
    conv = nn.Conv2d(4, 8, 3)
    conv.weight.data = conv.weight.data[:6]
    with pytest.raises(AssertionError):
        lp.check_module_attributes(nn.Sequential(conv))
