"""Measured latency: ``measure_latency`` (eager, ONNX Runtime), channel tables, and the ``LatencyProfiler`` callback.

Timing tests only compare two models measured inside the same test, interleaved, by their medians and with a wide
margin; no absolute time is ever asserted (the CI machine may be shared and slow).
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import math
import os
import sys
import warnings

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything (set before ultralytics can be imported)

import lightning.pytorch as pl  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402
from torch import nn  # noqa: E402

from lightning_prune import DependencyGraph, count_flops, count_params  # noqa: E402
from lightning_prune.callbacks.events import PruningStep, notify_pruning_step  # noqa: E402
from lightning_prune.callbacks.latency_profiler import LatencyProfiler  # noqa: E402
from lightning_prune.profiling import (  # noqa: E402
    ChannelSpeed,
    channel_speed_table,
    compare_latency,
    measure_latency,
    ort_outputs_match,
    suggest_round_to,
)
from lightning_prune.profiling.onnx_runtime import onnx_outputs, ort_max_abs_diff  # noqa: E402
from lightning_prune.pruning.importance import lowest_channels  # noqa: E402

HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='needs pip install "lightning-prune[onnx]"')


def small_cnn(width: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(width, 4, 1),
    )


def half_pruned(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with the lowest-L1 half of every prunable group removed."""
    pruned = copy.deepcopy(model)
    graph = DependencyGraph(pruned, x)
    graph.prune({g.name: lowest_channels(g, pruned, g.size // 2, "l1") for g in graph.prunable_groups})
    return pruned


# -- measure_latency ------------------------------------------------------------------------------------------------
def test_measure_latency_sane_and_restores_state() -> None:
    model = small_cnn().train()
    model[1].eval()  # a module in its own mode must come back in it
    previous_threads = torch.get_num_threads()
    result = measure_latency(model, torch.randn(1, 3, 16, 16), warmup=1, repeats=5, num_threads=1, batch_size=3,
                             per_layer=True)
    assert result.backend == "eager" and result.num_threads == 1 and result.batch_size == 3
    assert len(result.times_ms) == 5 and all(t > 0 for t in result.times_ms)
    assert min(result.times_ms) <= result.median_ms <= max(result.times_ms)
    assert 0 <= result.iqr_ms <= max(result.times_ms) - min(result.times_ms) + 1e-9
    assert torch.get_num_threads() == previous_threads
    assert model.training and model[0].training and not model[1].training
    assert {layer.name for layer in result.layers} == {"0", "3", "5"}
    assert all(layer.op_type == "Conv2d" and 0 < layer.share <= 1 for layer in result.layers)
    assert [layer.ms for layer in result.layers] == sorted((layer.ms for layer in result.layers), reverse=True)
    assert 0 < result.conv_share <= 1.0 + 1e-6
    assert "eager" in str(result)


@needs_onnx
def test_tuple_and_dict_outputs() -> None:
    class TupleOut(nn.Module):  # the ultralytics eval convention: (predictions, raw head outputs)
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor):  # noqa: ANN201
            y = self.conv(x)
            return y.flatten(2), {"raw": [y], "feats": y * 2}

    class DictOut(TupleOut):
        def forward(self, x: torch.Tensor):  # noqa: ANN201
            y = self.conv(x)
            return {"a": y, "b": (y.sum(1), y.mean(1))}

    x = torch.randn(1, 3, 12, 12)
    for model, n_outputs in ((TupleOut(), 1), (DictOut(), 3)):
        assert len(onnx_outputs(model(x))) == n_outputs
        for backend in ("eager", "onnxruntime"):
            assert measure_latency(model, x, backend, warmup=1, repeats=2).median_ms > 0
        assert ort_max_abs_diff(model, x) < 1e-4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown latency backend"):
        measure_latency(small_cnn(), torch.randn(1, 3, 8, 8), "tensorrt")
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(small_cnn(), torch.randn(1, 3, 8, 8), repeats=0)
    with pytest.raises(ValueError, match="backends"):
        LatencyProfiler(backends=["tvm"])


def test_half_pruned_conv_net_is_timed_interleaved() -> None:
    """Halving the middle conv halves the FLOPs, and both timing paths time both models. How much faster the pruned
    model runs is a benchmark's claim (``benchmarks/results/latency.md``), never a timed test's: on a loaded machine
    a speed assertion fails by chance."""
    torch.manual_seed(0)
    width = 128
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
    x = torch.randn(1, 3, 32, 32)
    pruned = half_pruned(model, x)
    assert pruned[2].out_channels == width // 2
    assert count_flops(pruned, x) < 0.5 * count_flops(model, x)
    # interleaved rounds (original, pruned, original, ...): drift of a shared machine hits both alike
    results = compare_latency({"original": model, "pruned": pruned}, x, rounds=5, warmup=1, repeats=4,
                              num_threads=1)
    assert len(results["pruned"].times_ms) == len(results["original"].times_ms) == 20
    assert all(math.isfinite(t) and t > 0 for r in results.values() for t in r.times_ms)
    # the same with separate measure_latency calls
    for net in (model, pruned):
        assert measure_latency(net, x, warmup=1, repeats=3, num_threads=1).median_ms > 0


# -- ONNX Runtime ---------------------------------------------------------------------------------------------------
@needs_onnx
def test_ort_matches_eager_small_cnn() -> None:
    model = small_cnn(16)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    assert ort_outputs_match(model, x, atol=1e-4)
    result = measure_latency(model, x, "onnxruntime", warmup=1, repeats=3, num_threads=1, per_layer=True)
    assert result.backend == "onnxruntime" and result.batch_size == 2 and result.median_ms > 0
    conv_names = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert result.layers and {layer.name for layer in result.layers} <= conv_names
    assert all("Conv" in layer.op_type and 0 <= layer.share <= 1 for layer in result.layers)


HAS_OPENVINO = HAS_ONNX and importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason='needs pip install "lightning-prune[onnx,openvino]"')


@needs_openvino
def test_openvino_per_layer_names_modules_and_sees_pruning() -> None:
    """OpenVINO's per-node profile gives every conv module a row (named after the module, fused activations and
    depthwise convs included), and a pruned conv's row shrinks."""
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1, groups=64),
                          nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 4, 1)).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned = half_pruned(model, x)
    results = compare_latency({"full": model, "half": pruned}, x, "openvino", rounds=2, warmup=1, repeats=5,
                              num_threads=1, per_layer=True)
    full, half = ({layer.name: layer for layer in results[key].layers} for key in ("full", "half"))
    assert set(full) == set(half) == {"0", "2", "4", "5"}
    assert full["2"].op_type == "GroupConvolution" and full["4"].op_type == "Convolution"
    assert all(0 < layer.ms and 0 <= layer.share <= 1 for layer in full.values())
    assert half["4"].ms < full["4"].ms  # 32 x 32 channels instead of 64 x 64


def test_openvino_node_names_map_to_modules() -> None:
    from lightning_prune.profiling.openvino_runtime import module_of_node

    names = {"/model.0/conv/Conv": "model.0.conv", "/model.0/conv/Conv_output_0": "model.0.conv",
             "/model.1/Conv": "model.1"}
    assert module_of_node("/model.0/conv/Conv/WithoutBiases", names) == "model.0.conv"
    assert module_of_node("/model.1/Conv", names) == "model.1"
    assert module_of_node("/model.1/Conv_fused_Swish", names) == "model.1"
    assert module_of_node("input_0_abcd_acdb_/model.0/conv/Conv/WithoutBiases", names) is None
    assert module_of_node("/model.2/Conv", names) is None


@needs_onnx
def test_ort_matches_eager_yolov8n() -> None:
    ultralytics = pytest.importorskip("ultralytics")
    model = ultralytics.YOLO("yolov8n.yaml").model.train()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert ort_max_abs_diff(model, x) <= 1e-4
    assert model.training and all(m.training for m in model.modules())  # restored after export


def test_onnxruntime_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "lightning-prune\[onnx\]"') as info:
        measure_latency(small_cnn(), torch.randn(1, 3, 8, 8), "onnxruntime")
    assert "\n" not in str(info.value)
    with pytest.raises(ImportError, match=r"lightning-prune\[onnx\]"):
        LatencyProfiler(backends=["eager", "onnxruntime"])
    LatencyProfiler(backends=["eager"])  # eager alone needs nothing extra


# -- channel counts -------------------------------------------------------------------------------------------------
def test_channel_speed_table_and_round_to() -> None:
    rows = channel_speed_table(nn.Conv2d(8, 16, 3, padding=1), (8, 8), channels=[12, 4, 8, 16], warmup=1, repeats=2,
                               num_threads=1)
    assert [row.channels for row in rows] == [4, 8, 12, 16]
    assert all(row.ms > 0 and math.isclose(row.ms_per_channel, row.ms / row.channels) for row in rows)
    depthwise = channel_speed_table(nn.Conv2d(16, 16, 3, groups=16), (8, 8), channels=[8, 16], repeats=1)
    assert [row.channels for row in depthwise] == [8, 16]

    def stairs(step: int, counts: range, noise: float = 0.0) -> list[ChannelSpeed]:
        out = []
        for i, c in enumerate(counts):
            ms = math.ceil(c / step) * 0.1 * (1 + noise * (-1) ** i)
            out.append(ChannelSpeed(c, ms, ms / c))
        return out

    assert suggest_round_to(stairs(8, range(64, 129))) == 8
    assert suggest_round_to(stairs(16, range(64, 129), noise=0.005)) == 16
    assert suggest_round_to(stairs(1, range(8, 33))) == 1  # latency ∝ channels, few channels: padding is never free
    assert suggest_round_to([(16, 1.0, 1 / 16)]) == 1  # too little data to judge anything


# -- the callback ---------------------------------------------------------------------------------------------------
class TinyModule(pl.LightningModule):
    def __init__(self, example: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1))
        if example:
            self.example_input_array = torch.randn(1, 3, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FakePruner(pl.Callback):
    """Prunes half of every prunable group at the start of epoch 1 and announces it like the real pruner."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: TinyModule) -> None:
        if trainer.current_epoch != 1:
            return
        x = pl_module.example_input_array
        flops_before, params_before = count_flops(pl_module, x), count_params(pl_module)
        graph = DependencyGraph(pl_module.net, x)
        plan = {g.name: lowest_channels(g, pl_module.net, g.size // 2) for g in graph.prunable_groups}
        graph.prune(plan)
        notify_pruning_step(trainer, pl_module, PruningStep(
            step=1, epoch=1, plan=plan, flops_before=flops_before, flops_after=count_flops(pl_module, x),
            params_before=params_before, params_after=count_params(pl_module), baseline_flops=flops_before,
            baseline_params=params_before, example_input=x), sender=self)


def make_trainer(tmp_path, callbacks: list, loggers: list | bool = False, epochs: int = 2) -> pl.Trainer:  # noqa: ANN001
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=2, limit_val_batches=0,
                      callbacks=callbacks, logger=loggers, default_root_dir=tmp_path, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.randn(4, 3, 16, 16), batch_size=2)


def test_profiler_logs_scalars_figure_and_table(tmp_path) -> None:  # noqa: ANN001
    profiler = LatencyProfiler(warmup=1, repeats=3, num_threads=1, every_n_epochs=1, top_layers=3)
    csv_logger = CSVLogger(tmp_path, name="csv")
    tb_logger = TensorBoardLogger(tmp_path, name="tb")
    module = TinyModule()
    trainer = make_trainer(tmp_path, [profiler, FakePruner()], [csv_logger, tb_logger])
    trainer.fit(module, loader())
    assert module.training and trainer.state.finished

    reasons = [(row["reason"], row["epoch"]) for row in profiler.history]
    assert reasons == [("fit_start", 0), ("epoch_end", 0), ("pruning_step", 1), ("epoch_end", 1)]
    assert {"epoch", "step", "backend", "ms", "flops", "params"} <= set(profiler.history[0])
    pruned = profiler.history[2]
    assert pruned["pruning_step"] == 1 and pruned["flops"] < profiler.history[0]["flops"]
    assert pruned["params"] < profiler.history[0]["params"]
    assert profiler.history[0]["speedup"] == 1.0 and pruned["speedup"] > 0
    assert profiler.baseline["eager"]["ms"] == profiler.history[0]["ms"]

    with open(os.path.join(csv_logger.log_dir, "metrics.csv")) as file:
        rows = list(csv.DictReader(file))
    keys = {"latency/eager_ms", "latency/eager_speedup", "latency/flops", "latency/params"}
    assert keys <= set(rows[0])
    logged = [row for row in rows if row["latency/eager_speedup"]]
    assert len(logged) == 4 and all(float(row["latency/eager_ms"]) > 0 for row in logged)
    assert float(logged[2]["latency/flops"]) == pruned["flops"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb_logger.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0}).Reload()
    assert keys <= set(events.Tags()["scalars"])
    assert "latency/latency_vs_flops" in events.Tags()["images"]
    assert any("slowest_layers" in tag for tag in events.Tags()["tensors"])
    assert "net.3" in profiler.slowest_layers_markdown()

    resumed = LatencyProfiler(warmup=1, repeats=3)  # a resumed run keeps its baseline and history
    resumed.load_state_dict(copy.deepcopy(profiler.state_dict()))
    assert resumed.baseline == profiler.baseline and resumed.history == profiler.history


def test_profiler_direct_pruning_step_logs_speedup(tmp_path) -> None:  # noqa: ANN001
    """A hand-made ``PruningStep`` sent to the callback measures at once and logs the speedup."""
    profiler = LatencyProfiler(warmup=1, repeats=2, num_threads=1, per_layer=False)
    module = TinyModule()
    csv_logger = CSVLogger(tmp_path, name="direct")
    trainer = make_trainer(tmp_path, [profiler], [csv_logger], epochs=1)
    trainer.fit(module, loader())
    x = module.example_input_array
    step = PruningStep(step=3, epoch=0, plan={}, flops_before=1, flops_after=1, params_before=1, params_after=1,
                       baseline_flops=1, baseline_params=1, example_input=x)
    profiler.on_pruning_step(trainer, module, step)
    assert profiler.history[-1]["reason"] == "pruning_step" and profiler.history[-1]["pruning_step"] == 3
    metrics = profiler.measure(trainer, module, reason="manual")
    assert metrics["latency/eager_speedup"] > 0 and metrics["latency/flops"] == count_flops(module, x)


@needs_onnx
def test_profiler_export_failure_warns_once_and_skips(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    def broken_export(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    profiler = LatencyProfiler(backends=["eager", "onnxruntime"], warmup=1, repeats=2, num_threads=1,
                               every_n_epochs=1, per_layer=False)
    trainer = make_trainer(tmp_path, [profiler])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyModule(), loader())
    ours = [w for w in caught if "LatencyProfiler" in str(w.message)]
    assert len(ours) == 1 and "onnxruntime backend failed" in str(ours[0].message)
    assert "frobnicate" in str(ours[0].message)
    assert trainer.state.finished and trainer.current_epoch == 2
    assert {row["backend"] for row in profiler.history} == {"eager"} and len(profiler.history) == 3
    assert profiler.active_backends == ["eager"]


@needs_onnx
def test_profiler_onnxruntime_backend_in_training(tmp_path) -> None:  # noqa: ANN001
    profiler = LatencyProfiler(backends=["eager", "onnxruntime"], warmup=1, repeats=2, num_threads=1)
    module = TinyModule()
    make_trainer(tmp_path, [profiler], epochs=1).fit(module, loader())
    assert [row["backend"] for row in profiler.history] == ["eager", "onnxruntime"]
    assert set(profiler.last_layers) == {"eager", "onnxruntime"}
    assert module.training


def test_profiler_without_example_input_fails_at_fit_start(tmp_path) -> None:  # noqa: ANN001
    trainer = make_trainer(tmp_path, [LatencyProfiler(repeats=1)], epochs=1)
    with pytest.raises(ValueError, match="needs an example input") as info:
        trainer.fit(TinyModule(example=False), loader())
    assert "\n" not in str(info.value)
    profiler = LatencyProfiler(input_shape=[1, 3, 16, 16], batch_size=2, repeats=1, per_layer=False)
    make_trainer(tmp_path, [profiler], epochs=1).fit(TinyModule(example=False), loader())
    assert profiler.history[0]["flops"] == count_flops(TinyModule().net, torch.randn(2, 3, 16, 16))


def test_profiler_resume_keeps_baseline(tmp_path) -> None:  # noqa: ANN001
    first = LatencyProfiler(repeats=2, num_threads=1, per_layer=False)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                         callbacks=[first, checkpoint], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(TinyModule(), loader())
    resumed = LatencyProfiler(repeats=2, num_threads=1, per_layer=False)
    make_trainer(tmp_path, [resumed], epochs=2).fit(TinyModule(), loader(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.baseline == first.baseline
    assert resumed.history[: len(first.history)] == first.history
    assert resumed.history[-1]["reason"] == "fit_start" and len(resumed.history) == len(first.history) + 1
    assert resumed.history[-1]["speedup"] == first.baseline["eager"]["ms"] / resumed.history[-1]["ms"]
