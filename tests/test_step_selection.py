"""The pruner's collaborators for one step: :class:`StepSelector` (what a step removes, what the candidates can give,
the shortfall warning) and :class:`PlanApplier` (the surgery, retried without culprit groups), on a small CNN."""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch
from torch import nn
from toy_modules import PLAIN_CNN_INPUT, plain_cnn  # noqa: E402

from lightning_prune import DependencyGraph, count_flops
from lightning_prune.pruning import IterativePruner, Limits, LocalCommunicator
from lightning_prune.pruning.config import configure
from lightning_prune.pruning.cost_table import SharedCostTable
from lightning_prune.pruning.measured_choice import MeasuredAllocator
from lightning_prune.pruning.plan_applier import PlanApplier
from lightning_prune.pruning.sensitivity import ShardedProbes
from lightning_prune.pruning.step_selection import StepSelection, StepSelector

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLE = PLAIN_CNN_INPUT
make_net = plain_cnn


def make_selector(net: nn.Module, evaluate: object = None, **settings: object) -> StepSelector:
    config = configure(**settings)
    graph, comm = DependencyGraph(net, EXAMPLE), LocalCommunicator()
    return StepSelector(graph, config, comm,
                        probes=ShardedProbes(graph, comm, config.sensitivity_rates, config.round_to,
                                             config.min_channels),
                        measured_choice=MeasuredAllocator(graph, EXAMPLE, config, comm),
                        cost_tables=SharedCostTable(graph, config.latency_backend, config.cost_table_dir, comm),
                        evaluate=evaluate or (lambda: None))


def short(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if "short of its budget" in str(w.message)]


def test_max_total_rate_caps_what_a_group_still_gives_of_its_original_width() -> None:
    assert make_selector(make_net(), strategy="uniform").max_removal([]) is None  # no cap: nothing to hold
    selector = make_selector(make_net(), strategy="uniform", limits=Limits(max_total_rate=0.5))
    groups = selector.candidates()
    assert [g.name for g in groups] == ["0", "3"] and all(g.size == 16 for g in groups)
    assert selector.max_removal(groups) == {"0": 8, "3": 8}
    PlanApplier(selector.graph, selector.candidates, contextlib.nullcontext).apply({"0": list(range(6))})
    assert (selector.original_sizes["0"], selector.original_sizes["3"]) == (16, 16)  # the widths it is a share of
    assert selector.max_removal(selector.candidates()) == {"0": 2, "3": 8}
    plan, probes, picks, choice = selector.select(1e12, "uniform", 1, None, None)  # far more than there is
    assert {name: len(channels) for name, channels in plan.items()} == {"0": 2, "3": 8}
    assert probes == [] and picks == [] and choice is None
    # as restored from a checkpoint: the group was 12 wide, so its 10 channels may not go below 6
    selector.original_sizes = {**selector.original_sizes, "0": 12}
    assert selector.max_removal(selector.candidates()) == {"0": 4, "3": 8}


def test_capacity_is_every_candidate_at_its_per_step_cap() -> None:
    selector = make_selector(make_net(), strategy="uniform", limits=Limits(max_rate=0.25))
    expected = selector.graph.estimate_removal({"0": list(range(4)), "3": list(range(4))})[0]
    assert selector.capacity() == pytest.approx(expected) and 0 < expected < math.inf
    uncapped = make_selector(make_net(), strategy="uniform")
    assert uncapped.capacity() > selector.capacity()


def test_the_shortfall_warning_fires_only_past_the_tolerance_when_the_candidates_cannot_give_the_budget() -> None:
    selector = make_selector(make_net(), strategy="uniform", limits=Limits(max_rate=0.25))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selector.warn_short(1, budget=50.0, capacity=60.0, removed=10.0, scale=100.0, what="baseline FLOPs")
        selector.warn_short(1, budget=50.0, capacity=40.0, removed=49.8, scale=100.0, what="baseline FLOPs")
        selector.warn_short(1, budget=50.0, capacity=40.0, removed=10.0, scale=0.0, what="baseline FLOPs")
    assert short(caught) == []  # the candidates could give it; within 1 % of it; no scale to speak in
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selector.warn_short(2, budget=50.0, capacity=40.0, removed=10.0, scale=100.0, what="baseline FLOPs")
    (warning,) = short(caught)
    assert warning.category is UserWarning
    assert str(warning.message) == ("pruning step 2 ends short of its budget: it removed 10.0% of the baseline FLOPs "
                                    "instead of 50.0%, 40.0% short; limited by max_rate=0.25 per step")
    plain = make_selector(make_net(), strategy="uniform")
    with pytest.warns(UserWarning, match=r"40\.0% short; the candidate groups give no more \(min_channels"):
        plain.warn_short(1, budget=50.0, capacity=40.0, removed=10.0, scale=100.0, what="baseline FLOPs")


def test_a_step_through_the_pruner_warns_short_at_its_caller() -> None:
    pruner = IterativePruner(make_net(), EXAMPLE, schedule=[0], target=0.5, strategy="uniform",
                             limits=Limits(max_rate=0.1, max_total_rate=0.5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pruner.step(0)
    (warning,) = short(caught)
    assert warning.filename == __file__  # the step's caller, as before the selector moved out of the pruner
    assert "limited by max_rate=0.1 per step and max_total_rate=0.5" in str(warning.message)
    assert all(len(channels) <= 2 for channels in result.plan.values())  # 10 % of 16, rounded


def test_check_reachable_names_the_caps_in_one_line() -> None:
    net = make_net()
    selector = make_selector(net, strategy="uniform", target=0.5, limits=Limits(max_rate=0.1))
    baseline = float(count_flops(net, EXAMPLE))
    with pytest.raises(ValueError, match=r"^target 50% of flops is unreachable: pruning every prunable group to its "
                                         r"minimum within max_rate=0\.1 per step over 1 step removes at most 1\d%$"):
        selector.check_reachable(1, baseline=baseline, current=baseline)
    selector.check_reachable(7, baseline=baseline, current=baseline)  # the cap compounds over seven steps
    nothing = make_selector(make_net(), strategy="uniform", ignore=["0", "3"])
    with pytest.raises(ValueError, match="no prunable group is left to reach the target"):
        nothing.check_reachable(1, baseline=1.0, current=1.0)


def test_a_step_selection_probes_once_and_reuses_its_probes_when_it_selects_again() -> None:
    net = make_net()
    calls = []

    def evaluate() -> float:
        calls.append(1)
        with torch.no_grad():
            return float(net(EXAMPLE).softmax(1)[0, 0])

    selector = make_selector(net, evaluate, strategy="sensitivity", sensitivity={"rates": (0.25, 0.5)})
    budget = 0.3 * selector.graph.estimate_removal({"0": list(range(15)), "3": list(range(15))})[0]
    selection = selector.for_step(budget, 1, 0.5, 0.5)
    assert isinstance(selection, StepSelection) and selection.capacity == math.inf
    first = selection()
    probed = len(calls)
    assert probed == 2 * 2 and first  # two groups at two rates
    second = selection()
    assert len(calls) == probed and second == first  # the same model: the same probes, nothing measured again
    assert len(selection.made) == 2 and selection.last[1] == selection.made[0][1]
    assert selection.capacity == selector.capacity() < math.inf


def test_the_applier_slices_the_optimizer_state_with_the_model() -> None:
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(EXAMPLE).sum().backward()
    optimizer.step()
    graph = DependencyGraph(net, EXAMPLE)
    applier = PlanApplier(graph, lambda: graph.groups, contextlib.nullcontext)
    selects = []

    def select() -> dict[str, list[int]]:
        selects.append(1)
        return {"3": [0, 1, 2]}

    assert applier.prune(select, 1, [optimizer]) == {"3": [0, 1, 2]} and selects == [1]
    assert net[3].out_channels == 13 and net[7].in_features == 13
    assert all(state["momentum_buffer"].shape == p.shape for p, state in optimizer.state.items())


def test_the_applier_selects_again_without_a_culprit_and_warns_at_the_steps_caller() -> None:
    pytest.importorskip("timm")
    from timm.layers import BlurPool2d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), BlurPool2d(16), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.3, strategy="uniform")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pruner.step(0)
    (warning,) = [w for w in caught if "selects again without it" in str(w.message)]
    assert warning.filename == __file__ and str(warning.message).startswith("pruning step 1: group '0' pinned (")
    assert "0" not in result.plan and result.plan and set(pruner.graph.verification_pins) == {"0"}



def test_the_pruners_callables_are_the_selectors() -> None:
    """``remeasure``, ``accumulate_gradients`` and ``progress`` live once, in the selector that calls them: set on
    the pruner after it is made, they reach the selection."""
    pruner = IterativePruner(make_net(), EXAMPLE, target=0.3, strategy="uniform")
    remeasure, fill, wrap = (lambda: 1.0), (lambda: None), list
    pruner.remeasure, pruner.accumulate_gradients, pruner.progress = remeasure, fill, wrap
    assert (pruner.selector.remeasure, pruner.selector.accumulate_gradients, pruner.selector.progress) == \
        (remeasure, fill, wrap)
    assert (pruner.remeasure, pruner.accumulate_gradients, pruner.progress) == (remeasure, fill, wrap)
