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
from lightning_prune.profiling import deployed_copy, require_backend
from lightning_prune.profiling.curves import discover_layers, monotone, sample_widths
from lightning_prune.profiling.isolated import LayerSpec, time_layers
from lightning_prune.pruning import CostTable, build_cost_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLE = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


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
    with pytest.warns(RuntimeWarning, match="not a readable cost table.*measuring the cost table again"):
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
    import lightning_prune.pruning.cost_table as cost_table_module
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

    monkeypatch.setattr(cost_table_module, "build_cost_table", no_measuring)
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


class PoolBlock(nn.Module):
    """An SPPF-like block (max pools concatenated), a nearest 2x resize and a residual add: the weightless ops that
    move channels and that a conv-only table would not see."""

    def __init__(self) -> None:
        super().__init__()
        self.cv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU())
        self.cv2 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.SiLU())
        self.up = nn.Upsample(scale_factor=2)
        self.cv3 = nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        z = self.cv2(torch.cat([y, nn.functional.max_pool2d(y, 5, 1, 2)], 1))
        return self.cv3(self.up(z + y))


def test_weightless_ops_are_traced_timed_and_scale_with_the_channels_that_stay(tmp_path: Any) -> None:
    graph = DependencyGraph(PoolBlock(), EXAMPLE)
    kinds = [(op.kind, op.module_name, graph.channel_owners(op.labels)) for op in graph.op_calls]
    assert [k for k, _, _ in kinds] == ["max_pool2d", "cat", "add", "resize"]
    assert kinds[1][2] == {"cv1.0": 16}  # the concatenation holds cv1's channels twice; cv2 and cv1 share a group
    assert graph.op_calls[0].params == {"kernel": [5, 5], "stride": [1, 1], "padding": [2, 2], "ceil_mode": False,
                                        "dilation": [1, 1]}
    assert graph.op_calls[3].params["size"] == [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]
    table = build_cost_table(graph, "eager", repeats=1, points=4, cache_dir=tmp_path)
    assert sorted(table.ops) == ["<model>:add", "<model>:cat", "<model>:max_pool2d", "up:resize"]
    assert all(op.full_ms > 0 for op in table.ops.values())
    assert table.total_ms() == pytest.approx(sum(c.full_ms for c in table.layers.values()) + table.ops_ms())
    # removing half of the group saves half of every op it fills, on top of what its convs save
    convs_only = CostTable(table.backend, table.input_shape, table.device, table.arch, table.layers,
                           {g: [r for r in rel if r[0] not in table.ops] for g, rel in table.relations.items()},
                           table.sizes)
    half = {"cv1.0": 4}
    assert table.removed_ms(half) == pytest.approx(convs_only.removed_ms(half) + table.ops_ms() / 2)
    assert table.removed_ms({"cv1.0": 0}) == 0.0
    # cached with the table (a new format version), and taken over by the rebuild after a prune when unchanged
    again = build_cost_table(graph, "eager", repeats=1, points=4, cache_dir=tmp_path)
    assert again.to_dict() == table.to_dict() and again.to_dict()["version"] == 2
    graph.prune({"cv1.0": [0, 1]})
    updated = table.updated(graph)
    assert sorted(op.spec.channels for op in updated.ops.values()) == [6, 6, 6, 12]
    assert updated.ops_ms() > 0 and updated.removed_ms({"cv1.0": 3}) > 0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_weightless_ops_compute_the_same_in_onnx_and_time_on_the_graph_backends(backend: str) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if backend == "openvino":
        pytest.importorskip("openvino")
    from onnx import TensorProto, helper

    from lightning_prune.profiling.isolated import OpSpec

    specs = [OpSpec("cat", ((1, 4, 6, 6), (1, 2, 6, 6))), OpSpec("split", ((1, 6, 6, 6),), {"sizes": [2, 4]}),
             OpSpec("max_pool2d", ((1, 4, 7, 7),), {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                                    "ceil_mode": False, "dilation": [1, 1]}),
             OpSpec("avg_pool2d", ((1, 4, 6, 6),), {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                                    "ceil_mode": False, "count_include_pad": True}),
             OpSpec("resize", ((1, 4, 5, 5),), {"size": [10, 10], "mode": "nearest", "align_corners": False}),
             OpSpec("resize", ((1, 4, 5, 5),), {"size": [10, 10], "mode": "bilinear", "align_corners": False}),
             OpSpec("add", ((1, 4, 6, 6), (1, 4, 6, 6))), OpSpec("mul", ((1, 4, 6, 6), (1, 4, 6, 6)))]
    for spec in specs:  # an oracle for the isolated ONNX graph: it computes what the eager op computes
        nodes, consts = spec.onnx_nodes("b0")
        inputs = spec.inputs()
        graph = helper.make_graph(
            nodes, "op", [helper.make_tensor_value_info(f"b0_x{j}", TensorProto.FLOAT, list(t.shape))
                          for j, t in enumerate(inputs)],
            [helper.make_tensor_value_info(f"b0_y{k}", TensorProto.FLOAT, list(shape))
             for k, shape in enumerate(spec.output_shapes())], consts)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = min(model.ir_version, 8)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {f"b0_x{j}": t.numpy() for j, t in enumerate(inputs)})
        expected = spec.function()(*inputs)
        expected = expected if isinstance(expected, (tuple, list)) else [expected]
        for a, b in zip(got, expected):
            torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-5, rtol=1e-5, msg=spec.key())
    times = time_layers(specs, backend, repeats=2)
    assert len(times) == len(specs) and all(t > 0 or t != t for t in times)  # NaN: a kernel the backend elides
    assert build_cost_table(DependencyGraph(PoolBlock(), EXAMPLE), backend, repeats=1, points=3).ops_ms() >= 0


def test_an_op_spec_of_an_unknown_kind_fails_in_one_line() -> None:
    from lightning_prune.profiling.isolated import OpSpec

    with pytest.raises(ValueError, match="unknown op kind 'gather'"):
        OpSpec("gather", ((1, 2, 3, 3),))


def test_yolov8n_s_pools_resizes_concatenations_and_splits_are_in_the_trace() -> None:
    pytest.importorskip("ultralytics")
    from collections import Counter

    from ultralytics.nn.tasks import DetectionModel

    graph = DependencyGraph(DetectionModel("yolov8n.yaml", verbose=False), torch.randn(1, 3, 64, 64))
    assert Counter(op.kind for op in graph.op_calls) == {"cat": 13, "split": 8, "add": 6, "max_pool2d": 3,
                                                        "resize": 2}
    # SPPF's three pools move the channels of its first conv, all of them
    assert [graph.channel_owners(op.labels) for op in graph.op_calls if op.kind == "max_pool2d"] == [
        {"model.9.cv1.conv": 128}] * 3
