"""Latency as the cost in selection (``cost="latency"``) and a latency budget that is met
(``target_metric="latency"``), end to end on a small model. A scripted cost table and a scripted "measured"
latency keep every assertion free of timing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from toy_modules import IMAGE_SIZE, ToyData, ToyModule, ToyNet

from lightning_prune import DependencyGraph
from lightning_prune.callbacks import IterativePruningCallback
from lightning_prune.pruning import IterativePruner, PruningConfig
from lightning_prune.pruning.allocation import (
    cost_function,
    global_counts,
    knapsack_counts,
    sensitivity_counts,
    uniform_counts,
)
from lightning_prune.pruning.counts import plan_from_counts
from lightning_prune.pruning.scoring import paper_selection, score_probes
from lightning_prune.pruning.sensitivity import Probe
from lightning_prune.pruning.strategies import (
    Candidates,
    SelectionRules,
    candidate_groups,
    latency_options,
    score_channels,
    select_counts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

X = torch.randn(32, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0].mean((1, 2)) > 0).long() + 2 * (X[:, 1].mean((1, 2)) > 0).long()
EXAMPLE = X[:1]
STEP = 4  # the scripted backend is fast at multiples of 4 channels


class ScriptedTable:
    """A cost table whose 'measurements' are scripted: each group costs ``ms_per_channel[group]`` per channel, and
    the backend is fast only at multiples of :data:`STEP` (and at the current width)."""

    def __init__(self, graph: DependencyGraph, ms_per_channel: dict[str, float] | None = None) -> None:
        self.sizes = {g.name: g.size for g in graph.prunable_groups}
        self.rates = ms_per_channel or {name: 1.0 + index for index, name in enumerate(sorted(self.sizes))}
        self.updates = 0

    def removed_ms(self, plan: dict[str, Any]) -> float:
        return float(sum(self.rates[name] * (v if isinstance(v, int) else len(v)) for name, v in plan.items()))

    def total_ms(self) -> float:
        return float(sum(self.rates[name] * size for name, size in self.sizes.items()))

    def removal_options(self, group: str, min_channels: int = 1, multiple: int = 1) -> list[int]:
        size = self.sizes[group]
        return sorted({size - w for w in range(max(min_channels, 1), size + 1)
                       if (w % STEP == 0 and w % multiple == 0) or w == size})

    def updated(self, graph: DependencyGraph) -> ScriptedTable:
        table = ScriptedTable(graph, self.rates)
        table.updates = self.updates + 1
        return table


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ToyNet(30)  # 30 channels: not a multiple of STEP, so rounding shows


def scripted_latency(pruner_ref: list, overhead: float = 3.0, efficiency: float = 0.8) -> Any:
    """'Measured' latency: an overhead plus ``efficiency`` x the scripted table's total (read from the graph)."""

    def measure() -> float:
        table = ScriptedTable(pruner_ref[0].graph)
        return overhead + efficiency * table.total_ms()

    return measure


def accuracy_of(net: nn.Module) -> Any:
    def evaluate() -> float:
        return float((net(X).argmax(1) == Y).float().mean()) + 0.5

    return evaluate


def on_fast_widths(graph: DependencyGraph, original: dict[str, int]) -> bool:
    return all(g.size % STEP == 0 or g.size == original[g.name] for g in graph.prunable_groups)


# -- selection --------------------------------------------------------------------------------------------------
def test_budget_functions_take_a_cost_function_and_keep_their_old_signatures() -> None:
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    groups = candidate_groups(graph)
    scores, ranking = score_channels(groups, net, "l1")
    budget = 0.3 * graph.traced_flops
    by_name = uniform_counts(graph, groups, ranking, budget, "flops")
    by_function = uniform_counts(graph, groups, ranking, budget, cost_function(graph, "flops"))
    assert by_name == by_function
    assert global_counts(graph, groups, scores, ranking, budget, "flops") == global_counts(
        graph, groups, scores, ranking, budget, cost_function(graph, "flops"))


@pytest.mark.parametrize("strategy", ["uniform", "global", "sensitivity"])
def test_latency_cost_rounds_every_strategy_to_fast_widths(strategy: str) -> None:
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    table = ScriptedTable(graph)
    groups = candidate_groups(graph)
    scores, ranking = score_channels(groups, net, "l1")
    options = latency_options(table, groups)
    probes = [Probe(g.name, rate, int(rate * g.size), 1.0 - rate * (i % 3) / 10, 1.0, 1.0)
              for i, g in enumerate(groups) for rate in (0.25, 0.5, 0.75)]

    def scored() -> list:
        return score_probes(probes, 1.0, latency=lambda p: table.removed_ms({p.group: p.removed}))

    budget = 0.4 * table.total_ms()
    candidates = Candidates(graph, groups, scores, ranking)
    counts, _ = select_counts(candidates, SelectionRules(strategy, "latency"), budget,
                              scored=scored, cost_table=table)
    assert counts and all(count in options[name] for name, count in counts.items())
    removed = table.removed_ms(counts)
    assert abs(removed - budget) <= max(table.rates.values()) * STEP * 2  # as close as the coarse widths allow
    # a FLOPs budget met at latency-fast widths
    flops_budget = 0.4 * graph.traced_flops
    counts, _ = select_counts(candidates, SelectionRules(strategy, "latency", "flops"), flops_budget,
                              scored=scored, cost_table=table)
    assert all(count in options[name] for name, count in counts.items())
    assert graph.estimate_removal({n: list(range(c)) for n, c in counts.items() if c})[0] > 0.2 * graph.traced_flops


def test_the_paper_score_with_latency_ranks_by_latency_saved() -> None:
    probes = [Probe("a", 0.5, 4, 1.0, 100.0, 10.0), Probe("b", 0.5, 4, 1.0, 10.0, 10.0)]
    latency = {"a": 1.0, "b": 5.0}
    scored = score_probes(probes, 1.0, latency=lambda p: latency[p.group])
    assert [s.value_latency for s in scored] == [1.0, 5.0]
    assert [s.probe.group for s in paper_selection(scored, 0, 1, "latency")] == ["b"]
    assert [s.probe.group for s in paper_selection(scored, 0, 1, "flops")] == ["a"]


def test_sensitivity_counts_rounds_probes_down_to_allowed_counts() -> None:
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    groups = candidate_groups(graph)
    _, ranking = score_channels(groups, net, "l1")
    probes = [Probe(g.name, 0.5, 15, 1.0, 1.0, 1.0) for g in groups]
    options = {g.name: [0, 2, 6, 10, 14, 18] for g in groups}
    counts, used = sensitivity_counts(graph, groups, ranking, score_probes(probes, 1.0), 1e30, "flops",
                                      options=options)
    assert used and all(count in options[name] for name, count in counts.items())


def test_latency_cost_without_a_table_fails_in_one_line() -> None:
    graph = DependencyGraph(make_net(), EXAMPLE)
    with pytest.raises(ValueError, match="needs a measured cost table"):
        select_counts(Candidates(graph, candidate_groups(graph), {}, {}), SelectionRules("uniform", "latency"), 1.0)
    with pytest.raises(ValueError, match="unknown cost 'speed'"):
        PruningConfig(cost="speed")


# -- the loop -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["uniform", "global", "sensitivity"])
def test_a_latency_budget_is_met_at_fast_widths(strategy: str) -> None:
    net = make_net()
    ref: list = []
    graph = DependencyGraph(net, EXAMPLE)
    original = {g.name: g.size for g in graph.prunable_groups}
    pruner = IterativePruner(net, EXAMPLE, schedule=[0, 1], target=0.4, target_metric="latency", cost="latency",
                             strategy=strategy, measure_latency=scripted_latency(ref), latency_corrections=3,
                             latency_tolerance=0.03, evaluate=accuracy_of(net), cost_table=ScriptedTable(graph))
    ref.append(pruner)
    pruner.check()
    baseline = pruner.baseline["latency"]
    pruner.step(0)
    assert on_fast_widths(pruner.graph, original)
    result = pruner.step(1)
    assert result.latency_after <= baseline * 0.6 * 1.03
    assert result.latency_after >= baseline * 0.6 * 0.75  # not gutted either
    assert on_fast_widths(pruner.graph, original)
    assert pruner.last_cost_table.updates >= 2  # rebuilt after the prunes


def test_a_latency_target_with_a_real_measured_table(tmp_path: Any) -> None:
    """The default path: the table is measured (eager, tiny repeat counts) and cached; the latency itself is
    scripted from the FLOPs, so nothing here depends on timing."""
    from lightning_prune import count_flops

    net = make_net()
    base = count_flops(net, EXAMPLE)

    def measure() -> float:
        return 1.0 + 9.0 * count_flops(net, EXAMPLE) / base

    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.3, target_metric="latency", cost="latency",
                             strategy="global", measure_latency=measure, latency_corrections=3,
                             latency_tolerance=0.05, cost_table_dir=str(tmp_path))
    pruner.check()
    result = pruner.step(0)
    assert result.flops_after < result.flops_before
    assert result.latency_after <= 10.0 * 0.7 * 1.05
    assert list(tmp_path.iterdir())  # cached on disk


def test_the_callback_takes_cost_latency(tmp_path: Any) -> None:
    from lightning.pytorch import Trainer

    callback = IterativePruningCallback(schedule=[1], target=0.3, strategy="uniform", cost="latency",
                                        cost_table_dir=str(tmp_path), verbose=False)
    module = ToyModule(width=16)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, max_epochs=2, limit_train_batches=1,
                      limit_val_batches=1, num_sanity_val_steps=0, callbacks=[callback])
    trainer.fit(module, ToyData(n=32))
    assert callback.history and callback.pruner.config.selection_cost == "latency"
    table = callback.pruner.cost_table
    widths = {g.name: g.size for g in callback.pruner.graph.prunable_groups}
    assert all(np.isfinite(table.total_ms()) for _ in widths)
    with pytest.raises(ValueError, match="unknown cost"):
        IterativePruningCallback(cost="time")


def test_the_example_config_asks_for_a_latency_budget_with_latency_cost() -> None:
    from pathlib import Path

    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "yolo" / "latency.yaml").read_text())
    pruning = next(cb["init_args"] for cb in config["trainer"]["callbacks"]
                   if cb["class_path"].endswith("IterativePruningCallback"))
    assert pruning["target_metric"] == "latency" and pruning["latency"]["cost"] == "latency"
    PruningConfig(**{k: v for k, v in pruning.items() if k in PruningConfig.__dataclass_fields__})
    IterativePruningCallback(**pruning)  # every key is an init arg, every choice valid


# -- latency-aware global selection, the per-step cap, interleaved controller readings --------------------------
def test_global_latency_prunes_where_channels_cost_most() -> None:
    """At the same importance, the group whose channels cost ten times more on the backend loses more of them."""
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    groups = candidate_groups(graph)
    assert len(groups) >= 2
    costly, cheap = groups[0].name, groups[1].name
    rates = {g.name: 1.0 for g in groups}
    rates[costly] = 10.0
    table = ScriptedTable(graph, rates)
    scores = {g.name: np.linspace(1.0, 2.0, g.size) for g in groups}  # the same importance profile everywhere
    ranking = {g.name: np.arange(g.size) for g in groups}
    budget = 0.3 * table.total_ms()
    candidates = Candidates(graph, groups, scores, ranking)
    by_latency, _ = select_counts(candidates, SelectionRules("global", "latency"), budget, cost_table=table)
    by_flops, _ = select_counts(candidates, SelectionRules("global", "flops"), 0.3 * graph.traced_flops)
    share = {name: by_latency.get(name, 0) / next(g.size for g in groups if g.name == name) for name in (costly, cheap)}
    assert share[costly] > share[cheap]
    assert table.removed_ms(by_latency) >= budget * 0.9
    assert by_flops != by_latency


def test_global_latency_under_a_flops_budget_spends_it_where_flops_run_slowest() -> None:
    """Under a FLOPs budget a channel's weight is the milliseconds it saves per FLOP it removes: two groups whose
    channels cost the same milliseconds are pruned towards the one whose FLOPs are fewer (slower per FLOP), and
    the budget is still met in FLOPs."""
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    groups = candidate_groups(graph)
    flops = cost_function(graph, "flops")
    per_channel = {g.name: flops({g.name: [0]}) for g in groups}
    slow, fast = min(per_channel, key=per_channel.get), max(per_channel, key=per_channel.get)
    assert per_channel[slow] < per_channel[fast]
    table = ScriptedTable(graph, {g.name: 1.0 for g in groups})  # every channel saves the same milliseconds
    scores = {g.name: np.linspace(1.0, 2.0, g.size) for g in groups}
    ranking = {g.name: np.arange(g.size) for g in groups}
    budget = 0.3 * graph.traced_flops
    candidates = Candidates(graph, groups, scores, ranking)
    counts, _ = select_counts(candidates, SelectionRules("global", "latency", "flops"), budget, cost_table=table)
    share = {name: counts.get(name, 0) / next(g.size for g in groups if g.name == name) for name in (slow, fast)}
    assert share[slow] > share[fast]
    assert flops(plan_from_counts(ranking, counts)) >= 0.9 * budget
    by_ms, _ = select_counts(candidates, SelectionRules("global", "latency", "latency"), 0.3 * table.total_ms(),
                             cost_table=table)
    assert by_ms != counts  # under a latency budget the weight is milliseconds alone


def test_knapsack_meets_a_flops_budget_at_fast_widths_and_saves_at_least_the_threshold() -> None:
    """The knapsack spends the FLOPs budget (within one allowed step), stays on the table's fast widths and under
    the cap, and its predicted saving is at least that of one threshold on importance per cost."""
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    original = {g.name: g.size for g in graph.prunable_groups}
    groups = candidate_groups(graph)
    flops = cost_function(graph, "flops")
    table = ScriptedTable(graph)
    scores, ranking = score_channels(groups, net, "l1")
    budget = 0.4 * graph.traced_flops
    common = dict(strategy="global", cost="latency", budget_cost="flops", max_rate=0.75)
    candidates = Candidates(graph, groups, scores, ranking)
    knap, _ = select_counts(candidates, SelectionRules(allocation="knapsack", **common), budget, cost_table=table)
    thresh, _ = select_counts(candidates, SelectionRules(**common), budget, cost_table=table)
    removed = flops(plan_from_counts(ranking, knap))
    assert 0.85 * budget <= removed <= 1.15 * budget
    for group in groups:
        assert knap.get(group.name, 0) in table.removal_options(group.name)
        assert knap.get(group.name, 0) <= 0.75 * group.size
    assert table.removed_ms(knap) >= 0.98 * table.removed_ms(thresh)
    graph.prune(plan_from_counts(ranking, knap))
    assert on_fast_widths(graph, original)
    assert net(EXAMPLE).shape[0] == 1


def test_the_pruner_takes_allocation_knapsack_under_a_flops_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a FLOPs target with cost="latency" and allocation="knapsack" removes its FLOPs over two steps at
    fast widths; only the knapsack allocation calls the knapsack; a bad name is one line."""
    import lightning_prune.pruning.strategies as strategies

    calls = []
    real = strategies.knapsack_counts
    monkeypatch.setattr(strategies, "knapsack_counts", lambda *a, **k: calls.append(1) or real(*a, **k))
    for allocation in ("threshold", "knapsack"):
        net = make_net()
        graph = DependencyGraph(net, EXAMPLE)
        original = {g.name: g.size for g in graph.prunable_groups}
        pruner = IterativePruner(net, EXAMPLE, schedule=[0, 1], target=0.4, cost="latency", strategy="global",
                                 cost_table=ScriptedTable(graph), max_rate=0.75, allocation=allocation)
        pruner.check()
        pruner.step(0)
        result = pruner.step(1)
        assert on_fast_widths(pruner.graph, original)
        assert result.flops_after <= 0.6 * 1.1 * pruner.baseline["flops"]
        assert net(EXAMPLE).shape[0] == 1
        assert len(calls) == (2 if allocation == "knapsack" else 0)
    with pytest.raises(ValueError, match="unknown allocation"):
        PruningConfig(allocation="greedy")


def test_knapsack_takes_the_step_to_where_the_backend_gets_fast() -> None:
    """A group whose curve only drops at a wide step is taken there when per FLOP that step pays best, though its
    first small step saves nothing; with lookahead off (next step only) the greedy misses it."""
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1))
    graph = DependencyGraph(net, torch.randn(1, 3, 4, 4))
    groups = graph.prunable_groups
    ranking = {g.name: np.arange(8) for g in groups}
    count = lambda plan: float(sum(len(v) for v in plan.values()))  # noqa: E731
    ms = lambda plan: 1.0 * len(plan.get("0", [])) + 8.0 * (len(plan.get("1", [])) >= 4)  # noqa: E731
    options = {"0": [0, 2, 4], "1": [0, 2, 4]}
    assert knapsack_counts(graph, groups, ranking, 4.0, count, ms, options) == {"0": 0, "1": 4}
    assert knapsack_counts(graph, groups, ranking, 4.0, count, ms, options, lookahead=False) == {"0": 4, "1": 0}


def test_knapsack_importance_weight_spares_important_channels() -> None:
    """At equal milliseconds per FLOP, a positive importance weight prunes the group whose channels matter less."""
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1))
    graph = DependencyGraph(net, torch.randn(1, 3, 4, 4))
    groups = graph.prunable_groups
    ranking = {g.name: np.arange(8) for g in groups}
    count = lambda plan: float(sum(len(v) for v in plan.values()))  # noqa: E731
    scores = {"0": np.linspace(0.9, 1.0, 8), "1": np.linspace(0.1, 1.0, 8)}
    options = {g.name: [0, 4] for g in groups}
    counts = knapsack_counts(graph, groups, ranking, 4.0, count, count, options, scores=scores, importance_weight=1)
    assert counts == {"0": 0, "1": 4}
    with pytest.raises(ValueError, match="unknown allocation"):
        candidates = Candidates(graph, groups, scores, ranking)
        select_counts(candidates, SelectionRules("global", allocation="greedy"), 4.0)


@pytest.mark.parametrize("strategy", ["uniform", "global"])
@pytest.mark.parametrize("cost", ["flops", "latency"])
def test_max_rate_caps_every_group_in_a_step(strategy: str, cost: str) -> None:
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    table = ScriptedTable(graph)
    groups = candidate_groups(graph)
    scores, ranking = score_channels(groups, net, "l1")
    budget = 0.35 * (table.total_ms() if cost == "latency" else graph.traced_flops)
    candidates = Candidates(graph, groups, scores, ranking)
    counts, _ = select_counts(candidates, SelectionRules(strategy, cost, max_rate=0.5), budget, cost_table=table)
    assert any(counts.values())
    for group in groups:
        assert counts.get(group.name, 0) <= 0.5 * group.size


def test_max_rate_is_validated_in_one_line() -> None:
    with pytest.raises(ValueError, match="max_rate must be a fraction"):
        PruningConfig(max_rate=0.0)
    with pytest.raises(ValueError, match="max_rate must be a fraction"):
        IterativePruningCallback(strategy="uniform", max_rate=1.5)


def test_latency_readings_after_the_baseline_are_interleaved_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine gets twice as slow between the baseline and the step: single readings would see no speedup,
    readings interleaved with the kept baseline model see the real ratio."""
    import lightning_prune.pruning.latency_reading as reading_module

    slow = {"factor": 1.0}
    calls: list[list[str]] = []

    def fake_measure(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        width = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
        return type("R", (), {"median_ms": slow["factor"] * width})()

    def fake_compare(models: dict[str, nn.Module], *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(sorted(models))
        return {name: fake_measure(model) for name, model in models.items()}

    monkeypatch.setattr(reading_module, "measure_latency", fake_measure)
    monkeypatch.setattr(reading_module, "compare_latency", fake_compare)
    net = make_net()
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.3, target_metric="latency", strategy="uniform",
                             latency_corrections=0)
    pruner.check()
    baseline = pruner.baseline["latency"]
    slow["factor"] = 2.0  # everything now runs twice as slow
    step = pruner.step(0)
    assert calls and all(names == ["current", "reference"] for names in calls)
    assert step.latency_before == pytest.approx(baseline)  # the ratio, not the slowed-down single reading
    assert step.latency_after < baseline


def test_max_total_rate_caps_every_group_over_all_steps_and_corrections() -> None:
    """max_rate compounds over steps; max_total_rate bounds what the whole run removes from any group's original
    width (latency-aware global under a latency target, three steps plus corrections), and survives a resume."""
    net = make_net()
    ref: list = []
    pruner = IterativePruner(net, EXAMPLE, schedule=[0, 1, 2], target=0.6, target_metric="latency", cost="latency",
                             strategy="global", cost_table=ScriptedTable(DependencyGraph(make_net(), EXAMPLE)),
                             measure_latency=scripted_latency(ref, overhead=3.0, efficiency=0.6), max_rate=0.5,
                             max_total_rate=0.6, latency_corrections=2)
    ref.append(pruner)
    original = dict(pruner.original_sizes)
    pruner.check()
    for epoch in (0, 1, 2):
        pruner.step(epoch)
        for group in pruner.graph.groups:
            assert group.size >= math.ceil(0.4 * original[group.name] - 1e-9), (epoch, group.name, group.size)
    assert any(group.size < original[group.name] for group in pruner.graph.groups)
    fresh = IterativePruner(net, EXAMPLE, schedule=[0, 1, 2], target=0.6, max_total_rate=0.6)
    fresh.load_state_dict(pruner.state_dict())
    assert fresh.original_sizes == original
    with pytest.raises(ValueError, match="max_total_rate must be a fraction"):
        PruningConfig(max_total_rate=0.0)


def test_check_counts_max_total_rate_when_it_judges_a_target_reachable() -> None:
    """A target only uncapped pruning reaches fails at check() under max_total_rate, in one line naming it; the
    same target without the cap passes."""
    IterativePruner(make_net(), EXAMPLE, schedule=[0], target=0.8, strategy="uniform").check()
    capped = IterativePruner(make_net(), EXAMPLE, schedule=[0], target=0.8, strategy="uniform", max_total_rate=0.3)
    with pytest.raises(ValueError, match=r"unreachable: .* within max_total_rate=0.3 removes at most"):
        capped.check()
