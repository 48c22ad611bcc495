"""The Fashion-MNIST scenes set (:mod:`lightning_prune.data.fashion`) and the shared YOLO writer.

Nothing here reads ``/usr/share/datasets``: every test writes its own tiny idx files with :func:`write_idx` and
passes ``source=``. The fake Fashion-MNIST marks each partition so split separation can be read off the output:

* train partition, index % 10 == 0 (held back for ``val``): class 3, grey level 180;
* train partition, other items (``train``): class 1, grey level 100;
* t10k partition (``test``): class 7, grey level 250.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything (before ultralytics can be imported)

from lightning_prune.data import fashion  # noqa: E402
from lightning_prune.data.fashion import (  # noqa: E402
    CLASS_NAMES,
    FashionItems,
    FashionMnistMissing,
    draw_fashion_image,
    load_fashion_items,
    main,
    make_fashion_dataset,
    read_idx,
    write_idx,
)
from lightning_prune.data.synthetic import make_synthetic_dataset  # noqa: E402
from lightning_prune.data.yolo_format import write_png  # noqa: E402

IMGSZ = 64
N_TRAIN_PART, N_TEST_PART = 40, 20
TRAIN_CLS, VAL_CLS, TEST_CLS = 1, 3, 7
TRAIN_GREY, VAL_GREY, TEST_GREY = 100, 180, 250


# -- helpers ---------------------------------------------------------------------------------------------------------
def _items(n: int, grey: np.ndarray) -> np.ndarray:
    """``n`` 28 x 28 products: a large block (most of the frame, so box sizes follow the frame) of grey ``grey[i]``
    with a darker stripe (some texture)."""
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 2:26, 3:25] = grey[:, None, None]
    images[:, 12:14, 3:25] = grey[:, None, None] // 2
    return images


def write_source(folder: Path) -> Path:
    """The fake Fashion-MNIST of the module docstring: the four gzip idx files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    held_back = np.arange(N_TRAIN_PART) % 10 == 0
    write_idx(folder / "train-images-idx3-ubyte.gz", _items(N_TRAIN_PART, np.where(held_back, VAL_GREY, TRAIN_GREY)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.where(held_back, VAL_CLS, TRAIN_CLS))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", _items(N_TEST_PART, np.full(N_TEST_PART, TEST_GREY)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(N_TEST_PART, TEST_CLS))
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_source(tmp_path_factory.mktemp("fashion-src"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    """A few dozen 64 px images, shared by the label, split and data module tests (read only)."""
    return make_fashion_dataset(tmp_path_factory.mktemp("scenes"), num_train=24, num_val=8, num_test=8,
                                imgsz=IMGSZ, seed=0, source=source)


def _files(root: Path) -> dict[str, bytes]:
    """Every image and label file under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".png", ".txt")}


def _labels(root: Path, split: str) -> dict[str, list[tuple[int, float, float, float, float]]]:
    out = {}
    for path in sorted((root / "labels" / split).glob("*.txt")):
        out[path.stem] = [(int(c), *map(float, rest)) for c, *rest in (line.split() for line in
                                                                    path.read_text().splitlines())]
    return out


def _read_png(path: Path) -> np.ndarray:
    """Decode a PNG as :func:`write_png` writes it (8-bit RGB, one IDAT, filter 0 on every row)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (depth, color) == (8, 2)
    idat_len = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    raw = np.frombuffer(zlib.decompress(data[41:41 + idat_len]), np.uint8).reshape(height, 1 + width * 3)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(height, width, 3)


def _xyxy(box: tuple[int, float, float, float, float]) -> tuple[float, float, float, float]:
    _, cx, cy, w, h = box
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


# -- determinism -----------------------------------------------------------------------------------------------------
def test_same_arguments_same_bytes_and_prefix_stable(tmp_path: Path, source: Path) -> None:
    args = dict(num_val=2, num_test=2, imgsz=IMGSZ, seed=5, source=source)
    a = _files(make_fashion_dataset(tmp_path / "a", num_train=3, **args))
    b = _files(make_fashion_dataset(tmp_path / "b", num_train=3, **args))
    assert len(a) == 2 * (3 + 2 + 2) and a == b
    assert len({v for k, v in a.items() if k.startswith("images/train/")}) == 3  # images differ from each other
    more = _files(make_fashion_dataset(tmp_path / "more", num_train=6, **args))
    assert len(more) == 2 * (6 + 2 + 2)
    assert {k: more[k] for k in a} == a  # the first three train images (and val/test) are unchanged
    other = _files(make_fashion_dataset(tmp_path / "other", num_train=3, **{**args, "seed": 6}))
    assert other.keys() == a.keys()
    differ = [k for k in a if k.endswith(".png") and a[k] != other[k]]
    assert len(differ) == 7  # every image changes with the seed


def test_rerun_into_same_root_with_fewer_images_removes_stale_files(tmp_path: Path, source: Path) -> None:
    root = make_fashion_dataset(tmp_path, num_train=4, num_val=2, num_test=1, imgsz=32, source=source)
    make_fashion_dataset(root, num_train=2, num_val=1, num_test=1, imgsz=32, source=source)
    assert sorted(p.name for p in (root / "images" / "train").iterdir()) == ["000000.png", "000001.png"]
    assert sorted(p.name for p in (root / "labels" / "val").iterdir()) == ["000000.txt"]


# -- split separation ------------------------------------------------------------------------------------------------
def test_load_fashion_items_partitions(source: Path) -> None:
    all_train = read_idx(source / "train-images-idx3-ubyte.gz")
    train, val = load_fashion_items("train", source), load_fashion_items("val", source)
    test = load_fashion_items("test", source)
    assert isinstance(train, FashionItems)
    assert len(train.labels) == 36 and set(train.labels.tolist()) == {TRAIN_CLS}
    assert len(val.labels) == 4 and set(val.labels.tolist()) == {VAL_CLS}
    assert len(test.labels) == N_TEST_PART and set(test.labels.tolist()) == {TEST_CLS}
    np.testing.assert_array_equal(val.images, all_train[::10])
    np.testing.assert_array_equal(train.images, np.delete(all_train, np.arange(0, N_TRAIN_PART, 10), axis=0))
    np.testing.assert_array_equal(test.images, read_idx(source / "t10k-images-idx3-ubyte.gz"))
    assert train.images.shape == (36, 28, 28) and train.images.dtype == np.uint8
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_items("dev", source)


def test_splits_only_show_their_own_partition(scenes: Path) -> None:
    """Labelled products: train images show only class 1 (train partition minus the held-back tenth), val only
    class 3 (the held-back tenth), test only class 7 (t10k); every split shows some."""
    expected = {"train": TRAIN_CLS, "val": VAL_CLS, "test": TEST_CLS}
    for split, cls in expected.items():
        labels = _labels(scenes, split)
        seen = {box[0] for boxes in labels.values() for box in boxes}
        assert seen == {cls}, split


def test_clutter_comes_from_the_split_own_items(tmp_path: Path, source: Path, monkeypatch) -> None:
    """The background clutter (tiles cut from products) obeys the same separation as the labelled products."""
    greys: list[set[int]] = []
    background = fashion._background

    def spy(rng, imgsz, clutter):
        greys.append(set(np.unique(clutter).tolist()) - {0})
        return background(rng, imgsz, clutter)

    monkeypatch.setattr(fashion, "_background", spy)
    make_fashion_dataset(tmp_path, num_train=3, num_val=2, num_test=2, imgsz=32, source=source)
    assert greys == [{TRAIN_GREY, TRAIN_GREY // 2}] * 3 + [{VAL_GREY, VAL_GREY // 2}] * 2 + \
        [{TEST_GREY, TEST_GREY // 2}] * 2


# -- labels ----------------------------------------------------------------------------------------------------------
def test_label_lines_are_valid_yolo(scenes: Path) -> None:
    line = re.compile(r"^\d \d\.\d{6} \d\.\d{6} \d\.\d{6} \d\.\d{6}$")
    count = 0
    for split in ("train", "val", "test"):
        images = sorted((scenes / "images" / split).glob("*.png"))
        labels = sorted((scenes / "labels" / split).glob("*.txt"))
        assert [p.stem for p in images] == [p.stem for p in labels] and images
        for path in labels:
            text = path.read_text()
            assert text.endswith("\n") and text.strip(), path  # every image shows at least one product
            for row in text.splitlines():
                assert line.match(row), (path, row)
                cls, cx, cy, w, h = (int(row.split()[0]), *map(float, row.split()[1:]))
                assert 0 <= cls < len(CLASS_NAMES)
                assert w > 0 and h > 0
                x0, y0, x1, y1 = _xyxy((cls, cx, cy, w, h))
                assert -1e-6 <= x0 and -1e-6 <= y0 and x1 <= 1 + 1e-6 and y1 <= 1 + 1e-6, (path, row)
                count += 1
        for path in images:
            assert _read_png(path).shape == (IMGSZ, IMGSZ, 3)
    assert count >= 40


def test_scales_and_overlap(scenes: Path) -> None:
    boxes = [box for split in ("train", "val", "test") for image in _labels(scenes, split).values() for box in image]
    sides = np.array([max(b[3], b[4]) for b in boxes])
    assert (sides < 0.15).sum() >= 3, sorted(sides)  # small products (8-9 px frames at 64 px) ...
    assert (sides > 0.3).sum() >= 3, sorted(sides)  # ... and large ones
    assert len(np.unique(np.round(sides * IMGSZ))) >= 8  # many sizes in between

    def intersect(a, b) -> bool:
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _xyxy(a), _xyxy(b)
        return min(ax1, bx1) - max(ax0, bx0) > 1e-6 and min(ay1, by1) - max(ay0, by0) > 1e-6

    overlapping = [name for split in ("train", "val", "test") for name, image in _labels(scenes, split).items()
                   if any(intersect(a, b) for i, a in enumerate(image) for b in image[i + 1:])]
    assert overlapping  # products overlap (and partly hide each other) in some images
    counts = [len(image) for split in ("train", "val", "test") for image in _labels(scenes, split).values()]
    assert max(counts) >= 3 and min(counts) >= 1


def test_box_covers_the_drawn_product(source: Path, monkeypatch) -> None:
    """On a flat background without noise, one product's pixels lie in its box (up to its soft one-pixel edge),
    and the box is tight: its first/last rows and columns show the product."""
    flat = np.full(3, 128.0)
    monkeypatch.setattr(fashion, "_background", lambda rng, imgsz, clutter: np.broadcast_to(
        flat, (imgsz, imgsz, 3)).copy())
    items = load_fashion_items("train", source)
    for i in range(12):
        image, labels = draw_fashion_image(np.random.default_rng([9, i]), items, imgsz=IMGSZ, max_objects=1,
                                           noise=0.0)
        assert len(labels) == 1
        cls, x0, y0, x1, y1 = labels[0]
        assert cls == TRAIN_CLS and 0 <= x0 < x1 <= IMGSZ and 0 <= y0 < y1 <= IMGSZ
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        changed = np.abs(image.astype(int) - 128).max(axis=2) > 3
        inside = changed[y0:y1, x0:x1]
        assert inside.mean() > 0.5  # the box is mostly product
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        outside = changed.copy()
        outside[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = False
        assert not outside.any(), (i, labels)


# -- bad input -------------------------------------------------------------------------------------------------------
def test_missing_source_raises_one_line_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "out"
    with pytest.raises(FashionMnistMissing) as info:
        make_fashion_dataset(root, num_train=2, num_val=1, num_test=1, imgsz=32, source=tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "apt-get install dataset-fashion-mnist" in message
    assert "\n" not in message
    assert not root.exists()


def test_missing_test_partition_fails_before_writing(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src")
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    root = tmp_path / "out"
    with pytest.raises(FashionMnistMissing, match="t10k-labels-idx1-ubyte.gz"):
        make_fashion_dataset(root, num_train=2, num_val=1, num_test=1, imgsz=32, source=src)
    assert not root.exists()
    # without a test split the t10k files are not needed
    make_fashion_dataset(root, num_train=1, num_val=1, num_test=0, imgsz=32, source=src)
    assert "test:" not in (root / "data.yaml").read_text() and not (root / "images" / "test").exists()


def test_truncated_idx_raises_value_error(tmp_path: Path) -> None:
    good = tmp_path / "good.gz"
    write_idx(good, np.ones((3, 28, 28), np.uint8))
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(ValueError, match="short.gz"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "cut.gz").write_bytes(good.read_bytes()[:-12])  # a broken gzip stream
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="tiny"):
        read_idx(tmp_path / "tiny")
    assert read_idx(good).shape == (3, 28, 28)
    (tmp_path / "plain").write_bytes(raw)  # an uncompressed idx file reads too
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), read_idx(good))


def test_wrong_magic_raises_value_error(tmp_path: Path) -> None:
    raw = bytearray(gzip.decompress(_gz_idx(tmp_path)))
    raw[2] = 0x0D  # float32 idx: not what Fashion-MNIST ships
    (tmp_path / "float.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match=r"float\.gz.*magic"):
        read_idx(tmp_path / "float.gz")
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"not an idx file at all"))
    with pytest.raises(ValueError, match=r"text\.gz"):
        read_idx(tmp_path / "text.gz")


def _gz_idx(folder: Path) -> bytes:
    write_idx(folder / "x.gz", np.zeros((2, 4), np.uint8))
    return (folder / "x.gz").read_bytes()


def test_truncated_source_file_names_it(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src")
    bad = src / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-100]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        make_fashion_dataset(tmp_path / "out", num_train=1, num_val=1, num_test=0, imgsz=32, source=src)
    assert not (tmp_path / "out").exists()


def test_labels_out_of_range_raise(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src")
    write_idx(src / "train-labels-idx1-ubyte.gz", np.full(N_TRAIN_PART, 10))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz.*0\.\.9.*10"):
        load_fashion_items("train", src)


def test_image_label_count_mismatch_raises(tmp_path: Path) -> None:
    src = write_source(tmp_path / "src")
    write_idx(src / "t10k-labels-idx1-ubyte.gz", np.zeros(N_TEST_PART - 1))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_items("test", src)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_train=0), "train and val"),
    (dict(num_val=0), "train and val"),
    (dict(num_test=-1), "test"),
    (dict(imgsz=31), "imgsz"),
    (dict(max_objects=0), "max_objects"),
])
def test_bad_arguments_raise(tmp_path: Path, source: Path, kwargs: dict, match: str) -> None:
    args = {**dict(num_train=1, num_val=1, num_test=0, imgsz=32, source=source), **kwargs}
    with pytest.raises(ValueError, match=match):
        make_fashion_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


# -- command line ----------------------------------------------------------------------------------------------------
def test_command_line_writes_the_set(tmp_path: Path, source: Path, capsys) -> None:
    root = main(["--root", str(tmp_path / "cli"), "--source", str(source), "--num-train", "2", "--num-val", "1",
                 "--num-test", "1", "--imgsz", "32", "--seed", "4"])
    assert root == (tmp_path / "cli").resolve()
    assert "wrote 2 train + 1 val + 1 test images" in capsys.readouterr().out
    assert len(list((root / "images" / "train").glob("*.png"))) == 2
    assert len(list((root / "labels" / "test").glob("*.txt"))) == 1
    yaml_text = (root / "data.yaml").read_text()
    assert yaml_text.startswith("# Fashion-MNIST scenes (32x32, seed 4)")
    assert "nc: 10\n" in yaml_text and "  9: ankle-boot\n" in yaml_text
    same = make_fashion_dataset(tmp_path / "api", num_train=2, num_val=1, num_test=1, imgsz=32, seed=4,
                                source=source)
    assert _files(same) == _files(root)


def test_command_line_missing_source_exits_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--root", str(tmp_path / "cli"), "--source", str(tmp_path / "nope")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "apt-get install dataset-fashion-mnist" in err and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "cli").exists()


# -- with the Lightning data module ----------------------------------------------------------------------------------
def test_yolo_datamodule_reads_the_set(scenes: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from lightning_prune.integrations.ultralytics import YOLODataModule
    from lightning_prune.integrations.ultralytics.data import load_data_yaml

    config = load_data_yaml(scenes / "data.yaml")
    assert config.nc == 10 and config.names == CLASS_NAMES and sorted(config.splits) == ["test", "train", "val"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = YOLODataModule(data=str(scenes / "data.yaml"), imgsz=IMGSZ, batch_size=2)
        assert data.nc == 10
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
    finally:
        torch.set_num_threads(threads)
    assert batch["img"].shape == (2, 3, IMGSZ, IMGSZ) and batch["img"].dtype == torch.float32
    n = batch["cls"].shape[0]
    assert n >= 1 and batch["cls"].shape == (n, 1) and batch["bboxes"].shape == (n, 4)
    assert 0 <= int(batch["cls"].min()) and int(batch["cls"].max()) < 10
    assert set(batch["cls"].flatten().int().tolist()) == {TRAIN_CLS}  # train batches show train products only


# -- the shapes set after the shared-writer refactor -----------------------------------------------------------------
# What lightning_prune.data.synthetic wrote before data/yolo_format.py existed (seed 0, 64 px, 3 + 2 + 1 images).
SHAPES_LABELS = {
    "test/000000": "1 0.671612 0.886209 0.164711 0.164711\n1 0.191282 0.557527 0.226462 0.226462\n",
    "train/000000": "1 0.612214 0.590996 0.395209 0.395209\n1 0.793523 0.294797 0.247905 0.247905\n"
                    "2 0.247657 0.147532 0.163005 0.138740\n",
    "train/000001": "2 0.396502 0.830414 0.183546 0.146977\n",
    "train/000002": "1 0.356437 0.657634 0.357539 0.357539\n1 0.380669 0.249855 0.243167 0.243167\n"
                    "1 0.779933 0.242953 0.265999 0.265999\n",
    "val/000000": "0 0.565248 0.348386 0.181890 0.181890\n",
    "val/000001": "0 0.524938 0.686728 0.366309 0.366309\n1 0.790789 0.706125 0.371310 0.371310\n"
                  "1 0.323206 0.539616 0.343786 0.343786\n",
}


def test_shapes_set_unchanged_by_shared_writer(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, num_train=3, num_val=2, imgsz=64, seed=0, num_test=1)
    labels = {p.relative_to(root / "labels").with_suffix("").as_posix(): p.read_text()
              for p in sorted((root / "labels").glob("*/*.txt"))}
    assert labels == SHAPES_LABELS
    for text in labels.values():
        for row in text.splitlines():
            assert re.fullmatch(r"[0-2]( \d\.\d{6}){4}", row), row
    assert (root / "data.yaml").read_text() == (
        "# Synthetic shapes (64x64, seed 0) written by lightning_prune.data.synthetic\n"
        f'path: "{root}"\ntrain: images/train\nval: images/val\ntest: images/test\nnc: 3\nnames:\n'
        "  0: circle\n  1: square\n  2: triangle\n")
    for path in sorted((root / "images").glob("*/*.png")):
        image = _read_png(path)
        assert image.shape == (64, 64, 3)
        copy = tmp_path / "copy.png"
        write_png(copy, image)
        assert copy.read_bytes() == path.read_bytes()  # the same PNG encoding (filter 0, zlib level 6)
