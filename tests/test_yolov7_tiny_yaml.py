"""The shipped YOLOv7-tiny YAML builds with ultralytics' parser, reference topology."""

from __future__ import annotations

import os

import pytest

from lightning_prune.models import available_model_yamls, model_yaml

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
tasks = pytest.importorskip("ultralytics.nn.tasks")
modules = pytest.importorskip("ultralytics.nn.modules")
Concat, Conv, Detect = modules.Concat, modules.Conv, modules.Detect
DetectionModel = tasks.DetectionModel

NC = 3
# Anchor points of a 64x64 input at strides 8, 16, 32: 8*8 + 4*4 + 2*2.
N_ANCHORS = 84
# Indices (into model.model) of the reference YOLOv7-tiny layers.
# 4-way concats inside the 8 ELAN-tiny blocks (4 backbone, 4 neck).
ELAN_CONCATS = [6, 13, 20, 27, 46, 56, 64, 72]
SPP_CSP_CONCATS = [34, 36]  # max-pool pyramid concat, CSP shortcut concat
PAN_FPN_CONCATS = [41, 51, 59, 67]  # 2 top-down (upsample + lateral), 2 bottom-up


@pytest.fixture(scope="module")
def model() -> tasks.DetectionModel:
    return DetectionModel(str(model_yaml("yolov7-tiny")), nc=NC, verbose=False)


def test_model_yaml_lookup() -> None:
    path = model_yaml("yolov7-tiny")
    assert path.is_file() and path.name == "yolov7-tiny.yaml"
    assert model_yaml("yolov7-tiny.yaml") == path
    assert "yolov7-tiny" in available_model_yamls()
    with pytest.raises(FileNotFoundError, match="yolov7-tiny"):
        model_yaml("no-such-model")


def test_builds_with_expected_layers(model: tasks.DetectionModel) -> None:
    layers = list(model.model)
    assert len(layers) == 78  # reference indices 0..77
    assert isinstance(layers[-1], Detect) and layers[-1].nc == NC
    assert list(layers[-1].f) == [74, 75, 76]
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    counts: dict[str, int] = {}
    for layer in layers:
        counts[type(layer).__name__] = counts.get(type(layer).__name__, 0) + 1
    assert counts == {
        "Conv": 55,
        "Concat": 14,
        "MaxPool2d": 6,
        "Upsample": 2,
        "Detect": 1,
    }
    pools = {
        i: layers[i].kernel_size
        for i in range(len(layers))
        if isinstance(layers[i], torch.nn.MaxPool2d)
    }
    assert pools == {8: 2, 15: 2, 22: 2, 31: 5, 32: 9, 33: 13}


def test_concat_topology(model: tasks.DetectionModel) -> None:
    layers = list(model.model)
    concats = [i for i, layer in enumerate(layers) if isinstance(layer, Concat)]
    assert len(concats) == 14
    assert concats == sorted(ELAN_CONCATS + SPP_CSP_CONCATS + PAN_FPN_CONCATS)
    for i in [*ELAN_CONCATS, 34]:
        assert len(layers[i].f) == 4, i
    for i in [36, *PAN_FPN_CONCATS]:
        assert len(layers[i].f) == 2, i
    # Each ELAN-tiny fusion conv sees all four branches: in_channels = 4 x branch width.
    for i in ELAN_CONCATS:
        branch, fusion = layers[i - 1].conv, layers[i + 1].conv
        assert fusion.in_channels == 4 * branch.out_channels, i


def test_leaky_relu_everywhere(model: tasks.DetectionModel) -> None:
    convs = [m for m in model.modules() if isinstance(m, Conv)]
    assert len(convs) == 55 + 12  # backbone/neck + Detect's cv2/cv3 branches
    for conv in convs:
        assert isinstance(conv.act, torch.nn.LeakyReLU)
        assert conv.act.negative_slope == pytest.approx(0.1)


def test_forward_eval_and_train(model: tasks.DetectionModel) -> None:
    x = torch.zeros(1, 3, 64, 64)
    feat_shapes = [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    reg_max = model.model[-1].reg_max
    try:
        model.eval()
        with torch.no_grad():
            y, raw = model(x)
        assert y.shape == (1, 4 + NC, N_ANCHORS)
        assert [tuple(f.shape) for f in raw["feats"]] == feat_shapes

        model.train()
        preds = model(x)
        assert preds["boxes"].shape == (1, 4 * reg_max, N_ANCHORS)
        assert preds["scores"].shape == (1, NC, N_ANCHORS)
        assert [tuple(f.shape) for f in preds["feats"]] == feat_shapes
    finally:
        model.eval()


def test_param_count_nc80() -> None:
    m = DetectionModel(
        str(model_yaml("yolov7-tiny")), verbose=False
    )  # nc=80 from the YAML
    total = sum(p.numel() for p in m.parameters())
    body = sum(p.numel() for layer in list(m.model)[:-1] for p in layer.parameters())
    # Backbone + neck match the reference YOLOv7-tiny: 6.2 M with its IDetect head,
    # ~0.23 M of which is IDetect.
    assert 5.9e6 < body < 6.1e6, body
    # ultralytics' decoupled anchor-free Detect head adds ~2.1 M on top
    # (8,144,864 in total with ultralytics 8.4).
    assert 7.8e6 < total < 8.5e6, total
