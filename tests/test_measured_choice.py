"""``allocation="measured"``: candidate allocations of one FLOPs budget, timed on the backend, the fastest pruned.
The timing itself is scripted (a fake ``compare_latency``) wherever an assertion depends on which is faster."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_latency_aware import EXAMPLE, STEP, ScriptedTable, make_net, on_fast_widths
from torch import nn

import lightning_prune.pruning.measured_choice as measured_choice
from lightning_prune import DependencyGraph
from lightning_prune.profiling import LatencyResult
from lightning_prune.pruning import IterativePruner, PruningConfig, build_cost_table
from lightning_prune.pruning.allocation import cost_function
from lightning_prune.pruning.counts import plan_from_counts
from lightning_prune.pruning.measured_choice import fastest_plan
from lightning_prune.pruning.strategies import (
    Candidates,
    SelectionRules,
    allocation_candidates,
    candidate_groups,
    latency_options,
    score_channels,
    select_counts,
)


def scripted_timing(monkeypatch: pytest.MonkeyPatch, ms: Any) -> list[dict[str, nn.Module]]:
    """Replace the interleaved measurement: ``ms(name, model) -> float``; returns the model dicts it was given."""
    seen: list[dict[str, nn.Module]] = []

    def compare(models: dict[str, nn.Module], example_input: Any, backend: str = "eager", **_: Any) -> dict:
        seen.append(models)
        return {name: LatencyResult(backend, ms(name, model), 0.0, [ms(name, model)], 1, 1)
                for name, model in models.items()}

    monkeypatch.setattr(measured_choice, "compare_latency", compare)
    return seen


def width_sum(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def test_fastest_plan_picks_the_lowest_measured_and_leaves_the_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    group = candidate_groups(graph)[0]
    plans = {"none": {}, "some": {group.name: [0, 1]}, "more": {group.name: [0, 1, 2, 3]}}
    before = width_sum(net)
    seen = scripted_timing(monkeypatch, lambda name, model: float(width_sum(model)))  # narrower is faster
    choice = fastest_plan(graph, plans, EXAMPLE)
    assert choice.name == "more" and choice.plan == plans["more"]
    assert set(choice.ms) == set(plans) and choice.ms["more"] < choice.ms["some"] < choice.ms["none"]
    assert width_sum(net) == before and graph.model is net  # every candidate pruned a copy
    assert all(not m.training for m in seen[0].values())  # timed in the deployed (eval) form
    scripted_timing(monkeypatch, lambda name, model: 1.0)
    assert fastest_plan(graph, plans, EXAMPLE).name == "none"  # a tie goes to the first-named
    alone = fastest_plan(graph, {"only": plans["some"]}, EXAMPLE)
    assert alone.name == "only" and alone.ms == {}
    with pytest.raises(ValueError, match="at least one candidate"):
        fastest_plan(graph, {}, EXAMPLE)


def test_fastest_plan_retimes_the_finalists_and_pools_both_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Successive halving: all four candidates once, the two fastest again; a finalist whose second run is slow
    loses to one that stays fast (pooled medians), and the others keep their first medians."""
    graph = DependencyGraph(make_net(), EXAMPLE)
    group = candidate_groups(graph)[0]
    plans = {name: {group.name: list(range(index))} for index, name in enumerate("abcd")}
    runs = [{"a": [1.0, 1.0], "b": [2.0, 2.0], "c": [3.0, 3.0], "d": [4.0, 4.0]}, {"a": [9.0, 9.0], "b": [2.0, 2.0]}]
    seen: list[list[str]] = []

    def compare(models: dict[str, nn.Module], example_input: Any, backend: str = "eager", **_: Any) -> dict:
        times = runs[len(seen)]
        seen.append(list(models))
        return {name: LatencyResult(backend, float(torch.tensor(times[name]).median()), 0.0, times[name], 1, 1)
                for name in models}

    monkeypatch.setattr(measured_choice, "compare_latency", compare)
    choice = fastest_plan(graph, plans, EXAMPLE, finalists=2)
    assert seen == [["a", "b", "c", "d"], ["a", "b"]]
    assert choice.name == "b" and choice.ms == {"a": 5.0, "b": 2.0, "c": 3.0, "d": 4.0}
    with pytest.raises(ValueError, match="finalists must be >= 1"):
        fastest_plan(graph, plans, EXAMPLE, finalists=0)


def test_compare_latency_rotates_which_model_leads_each_round(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_prune.profiling.timing as timing

    labels: list[str] = []
    real = timing._time_calls

    def recording(run: Any, warmup: int, repeats: int, threads: int, label: str) -> Any:
        labels.append(label.split(" ")[0])
        return real(run, warmup, repeats, threads, label)

    monkeypatch.setattr(timing, "_time_calls", recording)
    models = {name: nn.Conv2d(3, 4, 3) for name in "abc"}
    timing.compare_latency(models, torch.randn(1, 3, 8, 8), rounds=3, repeats=1, warmup=0)
    assert labels == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_allocation_candidates_are_distinct_meet_the_budget_and_keep_their_multiples() -> None:
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    table = ScriptedTable(graph)
    groups = candidate_groups(graph)
    scores, ranking = score_channels(groups, net, "l1")
    budget = 0.4 * graph.traced_flops
    candidates = Candidates(graph, groups, scores, ranking)
    found = allocation_candidates(candidates, SelectionRules(budget_cost="flops", max_rate=0.75), budget, table)
    assert "threshold/1" in found and set(found) <= {f"{a}/{m}" for a in ("threshold", "knapsack") for m in (1, 8, 16)}
    # lower caps (a rate above max_rate is never tried) and the knapsack's cost-only weight widen the set
    wider = allocation_candidates(candidates, SelectionRules(budget_cost="flops", max_rate=0.75), budget, table,
                                  rates=(1.0, 0.5), weights=(1.0, 0.0))
    assert set(found) <= set(wider) and not any("@1" in name for name in wider)
    assert all("@0.5" in name or "~w0" in name for name in set(wider) - set(found))
    assert not any(name.startswith("threshold") and "~w" in name for name in wider)
    assert len({tuple(sorted(c.items())) for c in wider.values()}) == len(wider)
    flops = cost_function(graph, "flops")
    for name, counts in wider.items():
        multiple = int(name.split("/")[1].split("@")[0].split("~")[0])
        cap = float(name.split("@")[1].split("~")[0]) if "@" in name else 0.75
        assert 0.8 * budget <= flops(plan_from_counts(ranking, counts)) <= 1.2 * budget, name
        for group in groups:
            width = group.size - counts.get(group.name, 0)
            assert width == group.size or (width % STEP == 0 and width % multiple == 0), (name, group.name)
            assert counts.get(group.name, 0) <= cap * group.size
    # round_to=8: only multiples of 8 and 16 are tried
    assert {n.split("/")[1] for n in allocation_candidates(candidates, SelectionRules(budget_cost="flops", round_to=8),
                                                           budget, table)} <= {"8", "16"}


def test_round_to_keeps_latency_widths_to_its_multiples() -> None:
    graph = DependencyGraph(make_net(), EXAMPLE)
    table = build_cost_table(graph, "eager", repeats=1, points=8)
    groups = candidate_groups(graph)
    for group in groups:
        widths = table.fast_widths(group.name, multiple=8)
        assert widths[-1] == group.size and all(w % 8 == 0 for w in widths[:-1])
        assert set(widths) <= {w for w, _ in table.group_curve(group.name)}
    options = latency_options(table, groups, round_to=8)
    assert all((g.size - c) % 8 == 0 or c == 0 for g in groups for c in options[g.name])


def test_the_pruner_prunes_what_the_backend_measured_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: each step times the distinct candidates and prunes the fastest (here: scripted, the widest
    candidate, so the pick is not simply what the threshold would take); the step and its history name it; other
    strategies select as "threshold"; select_counts refuses "measured" in one line."""
    seen = scripted_timing(monkeypatch, lambda name, model: -float(width_sum(model)))
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    original = {g.name: g.size for g in graph.prunable_groups}
    pruner = IterativePruner(net, EXAMPLE, schedule=[0, 1], target=0.4, cost="latency", strategy="global",
                             cost_table=ScriptedTable(graph), max_rate=0.75, allocation="measured")
    pruner.check()
    for epoch in (0, 1):
        before = width_sum(net)
        result = pruner.step(epoch)
        timed, final = seen[-2:]  # every candidate, then the three fastest again
        assert result.allocation in final and set(final) <= set(timed) and len(final) == 3
        assert set(result.candidates_ms) == set(timed) and len(timed) > 3
        assert any("@0.5" in name for name in timed)  # the lower caps are tried too
        widest = max(width_sum(m) for m in timed.values())
        assert width_sum(net) == widest < before
        assert pruner.history[-1]["allocation"] == result.allocation
        assert f"allocation {result.allocation}" in result.summary()
    assert len(seen) == 4 and on_fast_widths(pruner.graph, original)
    assert result.flops_after <= 0.6 * 1.15 * pruner.baseline["flops"]
    assert net(EXAMPLE).shape[0] == 1

    with pytest.raises(ValueError, match="allocation 'measured' applies to strategy 'global' only"):
        IterativePruner(make_net(), EXAMPLE, schedule=[0], target=0.4, cost="latency", strategy="uniform",
                        cost_table=ScriptedTable(DependencyGraph(make_net(), EXAMPLE)), allocation="measured")
    assert len(seen) == 4  # refused in one line at construction (it used to fall back silently)
    groups = candidate_groups(graph)
    with pytest.raises(ValueError, match="allocation 'measured' times candidate plans"):
        select_counts(Candidates(graph, groups, {}, {}), SelectionRules("global", "latency", allocation="measured"),
                      1.0)
    assert PruningConfig(strategy="global", allocation="measured", cost="latency").allocation == "measured"


def test_measured_allocation_times_real_copies_on_the_eager_backend() -> None:
    """Unscripted: the candidates are really timed (no assertion on which wins) and the pruned model runs."""
    torch.manual_seed(0)
    net = make_net()
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.4, cost="latency", strategy="global",
                             allocation="measured", latency_repeats=4)
    result = pruner.step(0)
    assert result.allocation in result.candidates_ms and all(ms > 0 for ms in result.candidates_ms.values())
    assert 0.45 <= result.flops_ratio <= 0.75
    assert net(EXAMPLE).shape[0] == 1


def test_the_callback_takes_allocation_measured_and_logs_the_candidates(tmp_path: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Lightning: the callback passes allocation="measured" on; the step's candidates reach TensorBoard as a
    text table naming the chosen one."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger
    from toy_modules import ToyData, ToyModule

    import lightning_prune.callbacks.reporting as reporting
    from lightning_prune.callbacks import IterativePruningCallback

    texts: dict[str, str] = {}
    real = reporting.log_text
    monkeypatch.setattr(reporting, "log_text", lambda trainer, tag, text: texts.update({tag: text})
                        or real(trainer, tag, text))
    callback = IterativePruningCallback(schedule=[1], target=0.3, strategy="global", cost="latency",
                                        allocation="measured", latency_repeats=4, cost_table_dir=str(tmp_path),
                                        verbose=False)
    trainer = Trainer(accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path), enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, max_epochs=2, limit_train_batches=1,
                      limit_val_batches=1, num_sanity_val_steps=0, callbacks=[callback])
    trainer.fit(ToyModule(width=16), ToyData(n=32))
    chosen = callback.history[-1]["allocation"]
    table = texts["pruning/allocation_step_1"]
    assert f"| `{chosen}` |" in table and "✓" in table and table.count("\n") >= 2



def scripted_backend(monkeypatch: pytest.MonkeyPatch, net: nn.Module,
                     ms: Any) -> tuple[list[dict[str, nn.Module]], Any]:
    """Every latency the pruner reads by itself, scripted from a model's FLOPs share of ``net``'s:
    ``ms(share) -> float`` for the baseline, its interleaved readings and a correction's ladder. Returns the model
    dicts the ladder timed and the scripted ``latency(model)``."""
    import lightning_prune.pruning.latency_reading as reading_module
    from lightning_prune import count_flops

    base = count_flops(net, EXAMPLE)

    def latency(model: nn.Module) -> float:
        return float(ms(count_flops(model, EXAMPLE) / base))

    def result(model: nn.Module, backend: str = "eager") -> LatencyResult:
        return LatencyResult(backend, latency(model), 0.0, [latency(model)], 1, 1)

    seen = scripted_timing(monkeypatch, lambda name, model: latency(model))
    monkeypatch.setattr(reading_module, "compare_latency",
                        lambda models, *args, **kwargs: {name: result(m) for name, m in models.items()})
    monkeypatch.setattr(reading_module, "measure_latency", lambda model, *args, **kwargs: result(model))
    return seen, latency


def test_a_latency_correction_prunes_the_least_its_measured_ladder_finds_enough(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The final step's correction times the plans for several multiples of the budget the learned efficiency
    asks for, against the unpruned model, and prunes the least of them that meets the goal: here latency drops by a
    further 1 ms below 45 % of the FLOPs (a layout change the FLOPs cannot foresee), so the learned budget would
    overshoot and the ladder's smallest rung lands nearest the goal."""
    from lightning_prune.pruning.latency_reading import CORRECTION_SCALES

    net = make_net()

    def ms(share: float) -> float:
        return 2.0 + 8.0 * share - (1.0 if share < 0.45 else 0.0)

    seen, latency = scripted_backend(monkeypatch, net, ms)
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.5, target_metric="latency", strategy="global",
                             latency_corrections=1, latency_tolerance=0.05)
    pruner.check()
    assert pruner.baseline["latency"] == pytest.approx(10.0)
    result = pruner.step(0)
    assert len(result.plans) == 2 and result.latency_before == pytest.approx(10.0)  # the prune and one correction
    ladders = [models for models in seen if "reference" in models]
    assert len(ladders) == 1
    rungs = {name: latency(model) for name, model in ladders[0].items() if name != "reference"}
    assert list(rungs) == [f"x{s:g}" for s in CORRECTION_SCALES][: len(rungs)] and len(rungs) >= 2
    assert latency(ladders[0]["reference"]) == pytest.approx(10.0)
    assert max(rungs.values()) <= 5.0 * 1.05  # every rung meets the goal ...
    assert result.latency_after == pytest.approx(rungs["x0.5"])  # ... so the least pruning is kept
    assert result.latency_after > rungs["x1"]  # not what the learned efficiency asked for


def test_a_user_measured_latency_corrects_without_a_ladder(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``measure_latency`` given, which reads only the model itself, a correction prunes the learned budget."""
    from lightning_prune import count_flops

    net = make_net()
    seen, latency = scripted_backend(monkeypatch, net, lambda share: 2.0 + 8.0 * share)
    base = count_flops(net, EXAMPLE)
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.5, target_metric="latency", strategy="global",
                             latency_corrections=2, latency_tolerance=0.05,
                             measure_latency=lambda: 2.0 + 8.0 * count_flops(net, EXAMPLE) / base)
    pruner.check()
    result = pruner.step(0)
    assert len(result.plans) >= 2 and not [models for models in seen if "reference" in models]
    assert result.latency_after <= 5.0 * 1.05


def test_proxy_tables_propose_knapsack_candidates_the_backend_then_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """``latency_proxies``: another backend's table proposes knapsack allocations (named ``<proxy>:...``, at
    multiples of 8 and 16 channels) beside the target's own; all are timed on the target backend and the fastest is
    pruned, whichever table proposed it. A proxy that is the target itself is dropped; by default only OpenVINO has
    proxies."""
    proxy_graph = DependencyGraph(make_net(), EXAMPLE)
    built: list[str] = []

    def fake_build(graph: DependencyGraph, backend: str, **_: Any) -> ScriptedTable:
        built.append(backend)
        names = sorted(g.name for g in proxy_graph.prunable_groups)  # the target's costs in reverse
        return ScriptedTable(proxy_graph, {name: float(len(names) - i) for i, name in enumerate(names)})

    monkeypatch.setattr(measured_choice, "build_cost_table", fake_build)
    # the proxy's candidates are the narrowest here: make them the fastest, so the pick comes from the proxy
    seen = scripted_timing(monkeypatch, lambda name, model: float(width_sum(model)))
    net = make_net()
    graph = DependencyGraph(net, EXAMPLE)
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.4, cost="latency", strategy="global",
                             cost_table=ScriptedTable(graph), allocation="measured",
                             latency_proxies=["onnxruntime", "eager"])
    result = pruner.step(0)
    timed = seen[0]
    proposed = [name for name in timed if name.startswith("onnxruntime:")]
    assert built == ["onnxruntime"] and proposed  # "eager" is the target: no proxy of itself
    assert all(name.split(":", 1)[1].startswith("knapsack/") for name in proposed)
    assert all(name.split(":", 1)[1].split("/")[1].split("@")[0] in ("8", "16") for name in proposed)
    assert set(result.candidates_ms) == set(timed) and result.allocation in timed
    assert width_sum(net) == min(width_sum(m) for m in timed.values())

    from lightning_prune.pruning.strategies import default_proxies

    assert default_proxies("openvino") == ("eager", "onnxruntime") and default_proxies("onnxruntime") == ()
    assert PruningConfig(latency_backend="openvino", latency_proxies=["openvino", "eager", "eager"]) \
        .latency_proxies == ("eager",)
    with pytest.raises(ValueError, match="unknown latency_proxies 'tensorrt'"):
        PruningConfig(latency_proxies=["tensorrt"])
    with pytest.raises(ValueError, match="must be a list of backends"):
        PruningConfig(latency_proxies="onnxruntime")


def test_allocation_candidates_can_keep_one_family() -> None:
    graph = DependencyGraph(make_net(), EXAMPLE)
    groups = candidate_groups(graph)
    scores, ranking = score_channels(groups, graph.model, "l1")
    table = ScriptedTable(graph)
    budget = 0.4 * graph.traced_flops
    candidates = Candidates(graph, groups, scores, ranking)
    knapsack = allocation_candidates(candidates, SelectionRules(budget_cost="flops"), budget, table,
                                     allocations=("knapsack",))
    assert knapsack and all(name.startswith("knapsack/") for name in knapsack)
    with pytest.raises(ValueError, match="allocations must be some of"):
        allocation_candidates(candidates, SelectionRules(budget_cost="flops"), budget, table, allocations=("greedy",))
