"""Honest targets (issue 38, items 5 and 7): a cap that makes a target unreachable fails at ``check()``, a step that
ends short of its budget says so, a non-finite weight or output names itself and pins nothing, and a plan that hits a
culprit group is selected again without it and still meets its budget."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from toy_modules import PLAIN_CNN_INPUT, plain_cnn  # noqa: E402

from lightning_prune import DependencyGraph
from lightning_prune.checkpoint import replay_history
from lightning_prune.pruning import IterativePruner
from lightning_prune.pruning.pruner import conv_widths

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLE = PLAIN_CNN_INPUT
make_net = plain_cnn


def blur_net(seed: int = 0, culprits: int = 1) -> nn.Module:
    """A conv feeding timm's ``BlurPool2d``, whose ``channels`` sizes its depthwise filter and is not updated by
    pruning: that conv's group breaks the model when pruned (with ``culprits=2`` the second conv's too)."""
    from timm.layers import BlurPool2d

    torch.manual_seed(seed)
    second = BlurPool2d(16) if culprits > 1 else nn.Identity()
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), BlurPool2d(16), nn.Conv2d(16, 16, 3, padding=1), second,
                         nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 2))


def short_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "short of its budget" in str(w.message)]


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(torch.nan_to_num(sa[k]), torch.nan_to_num(sb[k])) for k in sa)


# -- item 5: targets a cap makes unreachable, steps that end short --------------------------------------------------
def test_check_refuses_a_target_max_rate_makes_unreachable() -> None:
    pruner = IterativePruner(make_net(), EXAMPLE, schedule=[0], target=0.5, strategy="uniform", max_rate=0.1)
    with pytest.raises(ValueError, match=r"target 50% of flops is unreachable: .* within max_rate=0\.1 per step over "
                                         r"1 step removes at most 1\d%") as raised:
        pruner.check()
    assert "\n" not in str(raised.value)
    # the cap compounds over the steps left: seven steps of 10 % reach 50 % of the FLOPs
    IterativePruner(make_net(), EXAMPLE, schedule=list(range(7)), target=0.5, strategy="uniform",
                    max_rate=0.1).check()
    both = IterativePruner(make_net(), EXAMPLE, schedule=[0, 1], target=0.5, strategy="uniform", max_rate=0.2,
                           max_total_rate=0.25)
    with pytest.raises(ValueError, match=r"within max_rate=0\.2 per step over 2 steps and max_total_rate=0\.25 "):
        both.check()


def test_a_step_that_ends_short_of_its_budget_says_how_far_in_one_line() -> None:
    net = make_net()
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.5, strategy="uniform", max_rate=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pruner.step(0)
    assert result.flops_after / result.flops_before > 0.85  # the cap held: about 11 % of the FLOPs went
    (message,) = short_warnings(caught)
    removed = 1 - result.flops_after / result.flops_before
    assert "\n" not in message and "max_rate=0.1" in message
    assert f"removed {removed:.1%} of the baseline FLOPs instead of 50.0%, {0.5 - removed:.1%} short" in message


@pytest.mark.parametrize("strategy", ["uniform", "global"])
def test_a_step_that_meets_its_budget_does_not_warn(strategy: str) -> None:
    pruner = IterativePruner(make_net(), EXAMPLE, schedule=[0, 1], target=0.5, strategy=strategy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner.step(0)
        pruner.step(1)
    assert short_warnings(caught) == []


# -- item 5: non-finite weights and outputs name themselves, before anything changes, and pin nothing -------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_weight_names_itself_and_pins_nothing(value: float) -> None:
    net = make_net()
    with torch.no_grad():
        net[3].weight[2, 0, 0, 0] = value
    before = copy.deepcopy(net)
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.5, strategy="uniform")
    kind = "NaN" if value != value else "Inf"
    for attempt in (pruner.check, lambda: pruner.step(0)):
        with pytest.raises(ValueError, match=rf"^parameter '3\.weight' holds 1 {kind} of 2304 values") as raised:
            attempt()
        assert "\n" not in str(raised.value)
    assert pruner.graph.verification_pins == {} and all(g.prunable for g in pruner.candidates())
    assert pruner.history == [] and same_state(net, before)


def test_a_non_finite_output_names_itself_and_pins_nothing() -> None:
    """Finite weights, but a corrupt BatchNorm statistic (a negative running variance) makes the output NaN: the
    graph's verification compares NaN with NaN and used to pin the healthy group as a culprit."""
    net = make_net()
    with torch.no_grad():
        net[1].running_var.fill_(-1.0)
    before = copy.deepcopy(net)
    graph = DependencyGraph(net, EXAMPLE)
    with pytest.raises(ValueError, match=r"^output 0 \(shape \(1, 2\)\) of the model with the planned channels "
                                         r"masked holds 2 NaN of 2 values"):
        graph.prune({"0": [0, 1, 2]})
    assert graph.verification_pins == {} and graph["0"].prunable and same_state(net, before)
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.5, strategy="uniform")
    with pytest.raises(ValueError, match=r"^output 0 \(shape \(1, 2\)\) of the model on the example input holds"):
        pruner.step(0)
    assert pruner.graph.verification_pins == {} and pruner.history == [] and same_state(net, before)


# -- item 7: a plan that hits a culprit is selected again without it ------------------------------------------------
def test_a_culprit_group_is_pinned_and_the_step_selects_again_on_resnetblur18() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnetblur18", pretrained=False)
    example = torch.randn(1, 3, 64, 64)
    pruner = IterativePruner(model, example, strategy="uniform", target=0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pruner.step(0)
    pinned = [str(w.message) for w in caught if "selects again without" in str(w.message)]
    assert pinned and "group 'conv1' pinned" in pinned[0] and "BlurPool2d" in pinned[0]
    assert all("\n" not in message for message in pinned)
    assert set(pruner.graph.verification_pins) >= {"conv1"} and "conv1" not in result.plan
    assert abs(result.flops_after / result.flops_before - 0.7) < 0.01  # the budget is still met
    assert short_warnings(caught) == []
    model.eval()
    assert model(example).shape == (1, 1000)
    fresh = timm.create_model("resnetblur18", pretrained=False)
    replay_history(fresh, pruner.history, example)
    assert conv_widths(fresh) == conv_widths(model)


def test_retries_reuse_the_sensitivity_probes() -> None:
    net = blur_net()
    calls = []

    def evaluate() -> float:
        calls.append(1)
        return float(net(EXAMPLE).softmax(1)[0, 0])

    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.5, strategy="sensitivity", evaluate=evaluate,
                             sensitivity_rates=(0.25, 0.5))
    groups = len(pruner.candidates())
    with pytest.warns(UserWarning, match=r"group '0' pinned \(pruning it breaks the model: .*BlurPool2d"):
        result = pruner.step(0)
    assert len(calls) == 2 + 2 * groups  # before, the probes once, after: the retry measured nothing again
    assert {probe.group for probe in result.probes} == {g.name for g in pruner.candidates()} and "0" not in result.plan
    assert abs(result.flops_after / result.flops_before - 0.5) < 0.03


def test_retries_end_when_every_group_is_a_culprit() -> None:
    """Each failure pins at least one group, so the retries are bounded; the model is never left half-pruned."""
    net = blur_net(culprits=2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(EXAMPLE).sum().backward()
    optimizer.step()
    before = copy.deepcopy(net)
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.9, strategy="uniform", ignore=["5"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pruner.step(0, optimizers=[optimizer])
    pinned = [str(w.message) for w in caught if "selects again without" in str(w.message)]
    assert len(pinned) == 2 and set(pruner.graph.verification_pins) == {"0", "2"}
    assert result.plan == {} and same_state(net, before) and len(short_warnings(caught)) == 1
    assert all(state["momentum_buffer"].shape == p.shape for p, state in optimizer.state.items())
