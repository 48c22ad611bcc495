"""The Lightning-free core: IterativePruner in a plain loop, its state, its distributed decisions, latency targets."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn
from toy_modules import IMAGE_SIZE, ToyNet

from lightning_prune import DependencyGraph, count_flops
from lightning_prune.checkpoint import replay_history
from lightning_prune.pruning import IterativePruner, PruningConfig
from lightning_prune.pruning.result import compose_plans

pytestmark = pytest.mark.usefixtures("one_torch_thread")

X = torch.randn(32, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0].mean((1, 2)) > 0).long() + 2 * (X[:, 1].mean((1, 2)) > 0).long()
EXAMPLE = X[:1]


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ToyNet(32)


def accuracy_of(net: nn.Module) -> Any:
    def evaluate() -> float:
        net.eval()
        value = float((net(X).argmax(1) == Y).float().mean())
        net.train()
        return value

    return evaluate


def train(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(X), Y).backward()
        optimizer.step()


def test_the_core_imports_without_lightning() -> None:
    code = ("import sys, lightning_prune.pruning, lightning_prune.checkpoint; "
            "bad = [m for m in sys.modules if m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr[-2000:]


def test_plain_loop_runs_the_papers_method() -> None:
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    pruner = IterativePruner(net, EXAMPLE, schedule=[1, 2], target=0.5, strategy="sensitivity",
                             evaluate=accuracy_of(net), sensitivity_rates=(0.25, 0.5))
    pruner.check()
    results = []
    for epoch in range(4):
        if pruner.due(epoch):
            results.append(pruner.step(epoch, optimizers=[optimizer]))
        train(net, optimizer)
    assert [r.epoch for r in results] == [1, 2] and pruner.finished
    assert results[0].probes and results[0].picks
    assert results[-1].flops_ratio == pytest.approx(0.5, abs=0.03)
    assert count_flops(net, EXAMPLE) == results[-1].flops_after
    assert all(r.metric_before is not None and r.metric_after is not None for r in results)
    # optimizer state followed the surviving channels
    for parameter in net.parameters():
        assert optimizer.state[parameter]["momentum_buffer"].shape == parameter.shape


def test_state_round_trip_resumes_the_schedule() -> None:
    net = make_net()
    pruner = IterativePruner(net, EXAMPLE, schedule=[1, 3], target=0.4, strategy="uniform")
    pruner.step(1)
    state = copy.deepcopy(pruner.state_dict())
    fresh = make_net()
    replay_history(fresh, state["history"], EXAMPLE)
    resumed = IterativePruner(fresh, EXAMPLE, schedule=[1, 3], target=0.4, strategy="uniform")
    resumed.load_state_dict(state)
    assert resumed.pending() == [3] and resumed.baseline == pruner.baseline
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    a, b = pruner.step(3), resumed.step(3)
    assert a.plan == b.plan and a.flops_after == b.flops_after


def test_bad_input_is_named_before_anything_changes() -> None:
    net = make_net()
    with pytest.raises(ValueError, match="needs `evaluate`"):
        IterativePruner(net, EXAMPLE, strategy="sensitivity").check()
    with pytest.raises(ValueError, match="needs `accumulate_gradients`"):
        IterativePruner(net, EXAMPLE, strategy="uniform", criterion="taylor").check()
    with pytest.raises(ValueError, match="unreachable"):
        IterativePruner(net, EXAMPLE, strategy="uniform", target=0.9, min_channels=16).check()
    with pytest.raises(ValueError, match="no prunable group is left"):
        IterativePruner(net, EXAMPLE, strategy="uniform", ignore=["*"]).check()
    with pytest.raises(ValueError, match="unknown target_metric 'macs'"):
        PruningConfig(target_metric="macs")
    assert count_flops(net, EXAMPLE) == count_flops(make_net(), EXAMPLE)


def test_taylor_criterion_in_a_plain_loop() -> None:
    net = make_net()

    def gradients() -> None:
        nn.functional.cross_entropy(net(X), Y).backward()

    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.3, strategy="uniform", criterion="taylor",
                             accumulate_gradients=gradients)
    result = pruner.step()
    assert result.removed_channels > 0
    assert all(p.grad is None for p in net.parameters())


class RankOne:
    """Rank 1 of two: everything it is 'broadcast' comes from a script of rank 0's values."""

    rank, world_size = 1, 2

    def __init__(self, latencies: list[float]) -> None:
        self.latencies = list(latencies)
        self.received: list[Any] = []

    def broadcast(self, obj: Any) -> Any:
        self.received.append(obj)
        if obj is None and self.latencies:  # a latency reading: rank 1 never measured it itself
            return self.latencies.pop(0)
        return obj

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj, obj]


def flops_latency(net: nn.Module, efficiency: float = 0.5) -> Any:
    """A 'measured' latency that falls at half the rate of FLOPs (latency saturates)."""
    baseline = count_flops(net, EXAMPLE)

    def measure() -> float:
        return 10.0 * (1 - efficiency * (1 - count_flops(net, EXAMPLE) / baseline))

    return measure


def test_latency_decisions_are_rank_zeros() -> None:
    net = make_net()
    measured: list[float] = []

    def measure() -> float:
        measured.append(1.0)
        return 1.0

    comm = RankOne(latencies=[10.0, 10.0, 6.0, 5.0])
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.5, target_metric="latency", strategy="uniform",
                             measure_latency=measure, communicator=comm, latency_corrections=2,
                             evaluate=accuracy_of(net))  # a metric, so that only latency readings are None
    result = pruner.step(0)
    assert measured == []  # rank 1 never timed anything
    assert result.baseline["latency"] == 10.0 and result.latency_after == 5.0
    assert len(result.plans) == 2  # one correction, decided from rank 0's readings


def test_latency_target_is_met_with_corrections_and_the_plan_is_composed() -> None:
    net = make_net()
    pruner = IterativePruner(net, EXAMPLE, schedule=[0, 1], target=0.3, target_metric="latency",
                             strategy="uniform", measure_latency=flops_latency(net), latency_corrections=3,
                             latency_tolerance=0.02)
    pruner.step(0)
    sizes = {g.name: g.size for g in pruner.graph.groups}
    before = copy.deepcopy(net)
    result = pruner.step(1)
    assert result.latency_after <= 10.0 * 0.7 * 1.02
    assert len(result.plans) > 1
    assert result.plan == compose_plans(result.plans, sizes)
    # the composed plan, applied at once, gives the same model as the plans applied one by one
    DependencyGraph(before, EXAMPLE).prune(result.plan)
    net.eval()
    before.eval()
    torch.testing.assert_close(before(X), net(X))


# -- probes you can trust -----------------------------------------------------------------------------------------
def masked_groups(net: nn.Module) -> set[str]:
    """The prunable groups whose producing conv has zeroed filters right now (inside ``graph.masked``)."""
    names = ("stem.0", "block1.pw.0", "block1.fuse.0", "block2.pw.0", "block2.fuse.0")
    return {name for name in names if (net.get_submodule(name).weight.flatten(1).abs().sum(1) == 0).any()}


def scripted_metric(net: nn.Module, noise: dict[str, float]) -> Any:
    """1.0 unmasked; masking block1.pw.0 or block2.pw.0 (equal FLOPs: a tie) costs nothing but this batch set's
    ``noise``; masking any other group costs 0.2 (clearly worse)."""

    def evaluate() -> float:
        value = 1.0
        for name in masked_groups(net):
            value += noise.get(name, 0.0) if name.endswith("pw.0") else -0.2
        return value

    return evaluate


def first_pick(noise_a: dict[str, float], noise_b: dict[str, float], remeasure: bool) -> tuple[str, Any]:
    net = make_net()
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.02, strategy="sensitivity",
                             sensitivity_rates=(0.5,), params_layers=0, flops_layers=1, remeasure_fraction=0.4,
                             evaluate=scripted_metric(net, noise_a),
                             remeasure=scripted_metric(net, noise_b) if remeasure else None)
    result = pruner.step()
    return result.picks[0], result


def test_remeasured_probes_keep_the_picks_stable_across_batches() -> None:
    a = {"block1.pw.0": 0.004, "block2.pw.0": -0.004}
    b = {"block1.pw.0": -0.004, "block2.pw.0": 0.004}
    # one batch set's noise decides a tie: two runs on different batches disagree
    assert first_pick(a, b, remeasure=False)[0] != first_pick(b, a, remeasure=False)[0]
    # the probes nearest the cut are measured again on the other batches: both runs pick the same group
    (pick1, result1), (pick2, _) = first_pick(a, b, remeasure=True), first_pick(b, a, remeasure=True)
    assert pick1 == pick2
    again = [p for p in result1.probes if p.repeats == 2]
    assert sorted(p.group for p in again) == ["block1.pw.0", "block2.pw.0"]


def test_remeasuring_costs_at_most_the_configured_share() -> None:
    net = make_net()
    calls = {"evaluate": 0, "remeasure": 0}

    def counted(key: str) -> Any:
        def evaluate() -> float:
            calls[key] += 1
            return 1.0 - 0.01 * len(masked_groups(net))

        return evaluate

    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.2, strategy="sensitivity",
                             evaluate=counted("evaluate"), remeasure=counted("remeasure"))
    result = pruner.step()
    probes = len(result.probes)
    assert calls["evaluate"] == probes + 2  # the probes, plus the metric before and after the step
    assert calls["remeasure"] <= 0.2 * probes + 1  # + 1: the unpruned model on the other batches


def test_a_zero_baseline_metric_warns_with_what_to_do() -> None:
    net = make_net()
    pruner = IterativePruner(net, EXAMPLE, schedule=[0], target=0.2, strategy="sensitivity", evaluate=lambda: 0.0)
    with pytest.warns(UserWarning, match="cannot tell groups apart.*train the model before pruning"):
        pruner.step()


def test_global_strategy_splits_tied_scores() -> None:
    """A fresh model's BatchNorm scales are all 1: the global threshold must still reach the budget."""
    net = make_net()
    result = IterativePruner(net, EXAMPLE, schedule=[0], target=0.3, strategy="global", criterion="bn_scale").step()
    assert result.flops_ratio == pytest.approx(0.7, abs=0.05)
