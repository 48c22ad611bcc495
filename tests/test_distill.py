"""Distillation in the Lightning-free core: the projectors follow every prune (oracle), the loss teaches, and bad
input is refused in one line before anything changes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_prune import DependencyGraph
from lightning_prune.pruning import Distiller, IterativePruner


def _net(classes: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))


def _calibrated(net: nn.Module) -> nn.Module:
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 8, 8))
    return net.eval()


def test_projector_follows_a_prune_masked_equals_pruned() -> None:
    torch.manual_seed(0)
    net = _calibrated(_net())
    x = torch.randn(4, 3, 8, 8)
    distiller = Distiller(net, x, features=["2", "5"])
    graph = DependencyGraph(net, x, attachments=distiller.attachments())
    plan = {"0": [1, 4, 7, 9], "3": [0, 5, 11]}
    with graph.masked(plan), torch.no_grad():
        expected = [p(f) for p, f in zip(distiller.projectors, _features(net, x, ["2", "5"]))]
    graph.prune(plan)  # verify=True: the graph's own masked == pruned check includes the projectors' outputs
    assert [p.in_channels for p in distiller.projectors] == [12, 9]
    with torch.no_grad():
        actual = [p(f) for p, f in zip(distiller.projectors, _features(net, x, ["2", "5"]))]
    for before, after in zip(expected, actual):
        assert before.shape == after.shape
        torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)
    assert [p.out_channels for p in distiller.projectors] == [16, 12]  # the teacher's widths never change
    assert distiller.teacher[0].out_channels == 16 and distiller.teacher[3].out_channels == 12


def _features(net: nn.Module, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    store = {}
    handles = [net.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: store.__setitem__(n, o))
               for n in names]
    net(x)
    for h in handles:
        h.remove()
    return [store[n] for n in names]


def test_projector_outputs_are_pinned_and_not_prunable() -> None:
    net = _calibrated(_net())
    distiller = Distiller(net, torch.randn(1, 3, 8, 8), features=["5"])
    graph = DependencyGraph(net, torch.randn(1, 3, 8, 8), attachments=distiller.attachments())
    assert not graph["distill.0"].prunable
    assert {g.name for g in graph.prunable_groups} == {"0", "3"}


def test_projectors_are_sliced_but_never_counted_as_the_model_s_cost() -> None:
    """Selection reads a group's FLOPs and parameters: training-only projectors must not make the groups that feed
    them look costlier (they did: the paper's selection then favoured those groups when distilling)."""
    net = _calibrated(_net())
    x = torch.randn(1, 3, 8, 8)
    plain = DependencyGraph(net, x)
    distiller = Distiller(net, x, features=["2", "5"])
    attached = DependencyGraph(net, x, attachments=distiller.attachments())
    plan = {"0": [1, 4, 7], "3": [0, 5]}
    assert attached.estimate_removal(plan) == plain.estimate_removal(plan)
    assert attached.traced_flops == plain.traced_flops
    assert attached.prunable_flops_share == pytest.approx(plain.prunable_flops_share)
    for name in ("0", "3"):
        assert attached[name].flops_share == pytest.approx(plain[name].flops_share)


def test_distillation_loss_decreases_and_the_pruned_student_learns_from_its_teacher() -> None:
    torch.manual_seed(0)
    net = _calibrated(_net())
    x = torch.randn(32, 3, 8, 8)
    distiller = Distiller(net, x[:1], features=["5"], outputs="kl")
    pruner = IterativePruner(net, x[:1], schedule=[0], target=0.5, strategy="uniform", distiller=distiller)
    optimizer = torch.optim.Adam([*net.parameters(), *distiller.parameters()], lr=1e-2)
    pruner.step(0, optimizers=[optimizer])
    net.train()
    losses = []
    for _ in range(60):
        _, loss = distiller(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(not p.requires_grad for p in distiller.teacher.parameters())
    assert not distiller.teacher.training


def test_teacher_is_a_frozen_copy_and_never_in_state_dict() -> None:
    net = _calibrated(_net())
    before = copy.deepcopy(net.state_dict())
    distiller = Distiller(net, torch.randn(1, 3, 8, 8), features=["2"])
    assert set(distiller.state_dict()) == {"projectors.0.weight", "projectors.0.bias"}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    torch.testing.assert_close(distiller.teacher[0].weight, before["0.weight"])


def test_capture_then_loss_matches_the_one_call_form() -> None:
    torch.manual_seed(0)
    net = _calibrated(_net())
    x = torch.randn(4, 3, 8, 8)
    distiller = Distiller(net, x, features=["2"], outputs="mse")
    with distiller.capture():
        out = net(x)
    split = distiller.loss(x, out)
    _, joint = distiller(x)
    torch.testing.assert_close(split, joint)
    with pytest.raises(RuntimeError, match="distiller.capture"):
        distiller.loss(x, out)  # the captured features were used up


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "nothing to distil"),
        ({"features": ["9"]}, "no module '9'"),
        ({"features": ["2"], "teacher": _net(classes=5)}, "teacher's outputs"),
        ({"outputs": "softmax"}, "outputs must be"),
        ({"features": ["2"], "teacher_features": ["2", "5"]}, "teacher_features"),
    ],
)
def test_bad_input_one_line_and_the_model_untouched(kwargs: dict, message: str) -> None:
    net = _calibrated(_net())
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=message) as info:
        Distiller(net, torch.randn(1, 3, 8, 8), **kwargs)
    assert "\n" not in str(info.value)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_feature_size_mismatch_is_refused() -> None:
    net = _calibrated(_net())
    teacher = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                            nn.Conv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="cannot resize"):
        Distiller(net, torch.randn(1, 3, 8, 8), teacher=teacher, features=["2"])


def test_pruner_refuses_a_distiller_of_another_model() -> None:
    net, other = _calibrated(_net()), _calibrated(_net())
    distiller = Distiller(other, torch.randn(1, 3, 8, 8), features=["2"])
    with pytest.raises(ValueError, match="another model"):
        IterativePruner(net, torch.randn(1, 3, 8, 8), distiller=distiller)


def test_optimizer_state_of_the_projector_is_sliced_with_the_prune() -> None:
    torch.manual_seed(0)
    net = _calibrated(_net())
    x = torch.randn(8, 3, 8, 8)
    distiller = Distiller(net, x[:1], features=["5"])
    pruner = IterativePruner(net, x[:1], schedule=[0], target=0.5, strategy="uniform", distiller=distiller)
    optimizer = torch.optim.Adam([*net.parameters(), *distiller.parameters()], lr=1e-3)
    _, loss = distiller(x)
    loss.backward()
    optimizer.step()
    pruner.step(0, optimizers=[optimizer])
    weight = distiller.projectors[0].weight
    assert optimizer.state[weight]["exp_avg"].shape == weight.shape
    _, loss = distiller(x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()  # no shape error


# -- projectors of a student that is its teacher start as the identity ----------------------------------------------
def test_own_copy_starts_at_zero_loss_and_the_prune_leaves_the_kept_channels_in_place() -> None:
    torch.manual_seed(0)
    net = _calibrated(_net())
    x = torch.randn(4, 3, 8, 8)
    distiller = Distiller(net, x, features=["2", "5"])  # the teacher: a frozen copy of net as it is now
    _, loss = distiller(x)
    assert loss.item() == 0.0  # the student is its teacher: nothing to pull yet
    graph = DependencyGraph(net, x, attachments=distiller.attachments())
    plan = {"0": [1, 4, 7, 9], "3": [0, 5, 11]}
    graph.prune(plan)
    with torch.no_grad():
        projected = [p(f) for p, f in zip(distiller.projectors, _features(net, x, ["2", "5"]))]
        students = _features(net, x, ["2", "5"])
    for out, feat, width, removed in zip(projected, students, (16, 12), (plan["0"], plan["3"])):
        kept = [c for c in range(width) if c not in removed]
        assert out.shape[1] == width  # the teacher's width
        torch.testing.assert_close(out[:, kept], feat)  # each kept channel at its place in the teacher's
        assert not out[:, removed].any()  # a removed channel contributes nothing until the projector learns it


def test_an_explicit_teacher_keeps_learned_projectors_from_scratch() -> None:
    torch.manual_seed(0)
    net = _calibrated(_net())
    x = torch.randn(4, 3, 8, 8)
    distiller = Distiller(net, x, teacher=copy.deepcopy(net), features=["2"])
    assert not torch.equal(distiller.projectors[0].weight.flatten(1), torch.eye(16))


def test_identity_start_carries_silu_features_through_ultralytics_conv_relu_conv() -> None:
    from lightning_prune.pruning import identity_start

    projector = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    x = nn.functional.silu(torch.randn(2, 8, 5, 5) * 4)
    assert x.min() < 0  # SiLU's negative part must survive the ReLU
    assert identity_start(projector)
    with torch.no_grad():
        torch.testing.assert_close(projector(x), x)


@pytest.mark.parametrize("projector", [
    nn.Conv2d(4, 8, 1),                                                              # a narrower student
    nn.Conv2d(8, 8, 3),                                                              # not 1 x 1
    nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 1)),  # no bias to carry negatives
    nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()),                                  # ends in a ReLU
], ids=["narrower", "3x3", "no-bias", "relu-last"])
def test_identity_start_refuses_other_shapes_and_changes_nothing(projector: nn.Module) -> None:
    from lightning_prune.pruning import identity_start

    before = copy.deepcopy(projector.state_dict())
    assert identity_start(projector) is False
    after = projector.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
