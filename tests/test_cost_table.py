"""The measured latency cost model: layer discovery, group relations, predictions, the disk cache (atomic, keyed)
and the incremental rebuild after a prune; isolated-layer timing on every CPU backend; the deployed form. No timing
assertions: only shapes, signs and bookkeeping."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch
from torch import nn
from toy_modules import IMAGE_SIZE, ToyNet

from lightning_prune import DependencyGraph
from lightning_prune.profiling import (
    CostTable,
    LayerSpec,
    build_cost_table,
    deployed_copy,
    require_backend,
    time_layers,
)
from lightning_prune.profiling.cost_table import discover_layers, monotone, sample_widths

EXAMPLE = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _single_threaded() -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_graph(seed: int = 0) -> DependencyGraph:
    torch.manual_seed(seed)
    return DependencyGraph(ToyNet(16), EXAMPLE)


def test_sampled_widths_are_few_end_at_the_width_and_monotone_pools() -> None:
    for size in (1, 3, 16, 17, 64, 100, 256, 1000):
        widths = sample_widths(size)
        assert widths[-1] == size and widths == sorted(set(widths)) and len(widths) <= 16 and widths[0] >= 1
    assert monotone([3.0, 1.0]) == [2.0, 2.0]
    assert monotone([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]


def test_layers_relations_and_predictions() -> None:
    graph = make_graph()
    specs = discover_layers(graph.model, EXAMPLE)
    assert all(isinstance(spec, LayerSpec) for spec in specs.values())
    table = build_cost_table(graph, "eager", repeats=1, points=4)
    assert set(table.sizes) == {g.name for g in graph.prunable_groups}
    for name, size in table.sizes.items():
        touched = table.relations[name]
        assert touched, name
        assert any(axis == "out" for _, axis, _ in touched)  # its producer
        assert table.removed_ms({name: 0}) == 0.0
        assert table.removed_ms({name: size // 2}) >= 0.0
        assert table.fast_widths(name)[-1] == size
        options = table.removal_options(name)
        assert options[0] == 0 and all(0 <= o < size for o in options)
        assert [w for w, _ in table.group_curve(name)] == sample_widths(size, 4)
    everything = {name: size - 1 for name, size in table.sizes.items()}
    assert 0 < table.removed_ms(everything) <= table.total_ms() + 1e-9
    with pytest.raises(ValueError, match="not in the cost table"):
        table.removed_ms({"nope": 1})


def test_cache_is_keyed_atomic_and_reused(tmp_path: Any) -> None:
    graph = make_graph()
    first = build_cost_table(graph, "eager", cache_dir=tmp_path, repeats=1, points=4)
    files = os.listdir(tmp_path)
    assert files == [first.filename()] and first.filename().startswith("latency-eager-1x3x")
    assert first.measured == len(first.layers) and first.reused == 0
    second = build_cost_table(graph, "eager", cache_dir=tmp_path, repeats=1, points=4)
    assert second.measured == 0 and second.reused == len(first.layers)
    assert second.to_dict() == first.to_dict()
    loaded = CostTable.load(tmp_path / first.filename())
    assert loaded.key() == first.key() and loaded.removed_ms({"stem.0": 4}) == first.removed_ms({"stem.0": 4})
    # another input size is another table
    other = DependencyGraph(graph.model, torch.randn(1, 3, IMAGE_SIZE // 2, IMAGE_SIZE // 2))
    assert build_cost_table(other, "eager", repeats=1, points=4, measure=False).key() != first.key()
    # a broken file: one line naming it, and a rebuild replaces it (no temporary files left behind)
    (tmp_path / first.filename()).write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable cost table"):
        CostTable.load(tmp_path / first.filename())
    rebuilt = build_cost_table(graph, "eager", cache_dir=tmp_path, repeats=1, points=4)
    assert rebuilt.measured == len(first.layers)
    assert os.listdir(tmp_path) == [first.filename()]
    json.loads((tmp_path / first.filename()).read_text())


def test_rebuild_after_a_prune_measures_only_changed_layers() -> None:
    graph = make_graph()
    table = build_cost_table(graph, "eager", repeats=1, points=4)
    assert table.updated(graph) is table  # nothing changed: the same table
    name = "block2.pw.0"
    touched = {layer for layer, _, _ in table.relations[name]}
    graph.prune({name: [0, 1, 2, 3]})
    updated = table.updated(graph)
    assert updated.arch != table.arch and updated.sizes[name] == table.sizes[name] - 4
    assert 0 < updated.measured <= len(touched) and updated.reused == len(table.layers) - updated.measured


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "openvino"])
def test_isolated_layers_time_on_every_cpu_backend(backend: str) -> None:
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    if backend == "openvino":
        pytest.importorskip("openvino")
    specs = [LayerSpec(8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, (16, 16), "silu"),
             LayerSpec(8, 8, (3, 3), (2, 2), (1, 1), (1, 1), 8, False, (16, 16), "relu"),
             LayerSpec(8, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1, False, (16, 16), None)]
    times = time_layers(specs, backend, repeats=2)
    assert len(times) == 3 and all(t > 0 for t in times)
    table = build_cost_table(make_graph(), backend, repeats=1, points=3)
    assert table.backend == backend and table.total_ms() > 0


def test_cuda_backends_fail_in_one_line_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        require_backend("eager-cuda")
    with pytest.raises(ValueError, match="unknown latency backend 'tpu'"):
        build_cost_table(make_graph(), "tpu")


def test_the_deployed_form_folds_batchnorm_into_a_copy() -> None:
    net = ToyNet(16).train()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    deployed = deployed_copy(net)
    assert net.training and not deployed.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    net.eval()
    torch.testing.assert_close(deployed(EXAMPLE), net(EXAMPLE), atol=1e-4, rtol=1e-4)


def test_only_rank_zero_measures_the_table_the_others_get_its_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_prune.pruning.pruner as pruner_module
    from lightning_prune.pruning import IterativePruner

    measured = build_cost_table(make_graph(), "eager", repeats=1, points=4)
    sent = measured.to_dict()

    class RankOne:
        rank, world_size = 1, 2

        def broadcast(self, obj: Any) -> Any:
            return sent if obj is None else obj

        def all_gather(self, obj: Any) -> list[Any]:
            return [obj, obj]

    def no_measuring(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("rank 1 measured a cost table")

    monkeypatch.setattr(pruner_module, "build_cost_table", no_measuring)
    torch.manual_seed(0)
    pruner = IterativePruner(ToyNet(), EXAMPLE, strategy="uniform", cost="latency", communicator=RankOne())
    assert pruner.last_cost_table is None  # reading what was measured measures nothing
    table = pruner.cost_table
    assert pruner.last_cost_table is table
    assert isinstance(table, CostTable)
    assert table.total_ms() == pytest.approx(measured.total_ms())
    assert table.key() == measured.key()
    with pytest.raises(ValueError, match="not a cost table"):
        CostTable.from_dict({"version": -1})
