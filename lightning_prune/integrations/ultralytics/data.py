"""YOLO-format data sets for Lightning: ``data.yaml`` checks, labels, letterboxing and :class:`YOLODataModule`."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_prune.integrations.ultralytics.common import require_pil

__all__ = ["IMAGE_SUFFIXES", "DataConfig", "EpochSampler", "YOLODataModule", "YOLODataset", "label_path",
           "letterbox", "load_data_yaml", "read_labels", "yolo_collate"]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
_PAD_VALUE = 114  # ultralytics' letterbox grey


@dataclass(frozen=True)
class DataConfig:
    """A parsed, checked ``data.yaml``: the file, the data set root, image files per split, and class names."""

    yaml_path: Path
    root: Path
    train: tuple[Path, ...]
    val: tuple[Path, ...]
    names: tuple[str, ...]

    @property
    def nc(self) -> int:
        return len(self.names)


def _names(raw: Any, nc: Any, path: Path) -> tuple[str, ...]:
    if raw is None:
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise ValueError(f"{path}: missing key 'names' (or a positive integer 'nc')")
        return tuple(f"class_{i}" for i in range(nc))
    if isinstance(raw, Mapping):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: 'names' keys must be class indices 0..n-1") from None
        if keys != list(range(len(keys))):
            raise ValueError(f"{path}: 'names' keys must be the class indices 0..{len(keys) - 1}, got {keys}")
        names = tuple(str(raw[k] if k in raw else raw[str(k)]) for k in keys)
    elif isinstance(raw, (list, tuple)):
        names = tuple(str(n) for n in raw)
    else:
        raise ValueError(f"{path}: 'names' must be a list or a mapping of class index to name")
    if not names:
        raise ValueError(f"{path}: 'names' is empty")
    if nc is not None and nc != len(names):
        raise ValueError(f"{path}: 'nc: {nc}' does not match the {len(names)} entries of 'names'")
    return names


def _image_files(spec: Any, key: str, root: Path, yaml_path: Path) -> tuple[Path, ...]:
    """Image files of one split: folders (searched recursively), ``.txt`` image lists, or single image files."""
    if isinstance(spec, (str, os.PathLike)):
        specs = [spec]
    elif isinstance(spec, (list, tuple)) and spec and all(isinstance(s, (str, os.PathLike)) for s in spec):
        specs = list(spec)
    else:
        raise ValueError(f"{yaml_path}: '{key}' must be a path or a list of paths, got {spec!r}")
    files: list[Path] = []
    for item in specs:
        path = Path(item).expanduser()
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file() and path.suffix.lower() == ".txt":
            for line in path.read_text().splitlines():
                line = line.strip()
                if line:
                    entry = Path(line)
                    files.append(entry if entry.is_absolute() else
                                 path.parent / line[2:] if line.startswith("./") else root / entry)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        else:
            raise FileNotFoundError(f"{yaml_path}: '{key}' images not found: {path}")
    if not files:
        raise FileNotFoundError(f"{yaml_path}: no images ({', '.join(IMAGE_SUFFIXES)}) found for '{key}' in {specs}")
    return tuple(files)


def load_data_yaml(path: str | Path) -> DataConfig:
    """Read and check a YOLO ``data.yaml``; one-line ``FileNotFoundError``/``ValueError`` naming the path or key.

    ``path`` (the data set root) defaults to the YAML's folder; a relative ``path`` is taken relative to the YAML's
    folder. ``train`` and ``val`` (required) are folders, ``.txt`` image lists or lists of either, relative to the
    root. Class names come from ``names`` (list or ``{index: name}``), or ``nc`` alone (``class_0``, ...).
    """
    yaml_path = Path(path).expanduser()
    if not yaml_path.is_file():
        raise FileNotFoundError(f"data set file not found: {yaml_path}")
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{yaml_path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{yaml_path}: expected a mapping with keys 'train', 'val' and 'names'")
    for key in ("train", "val"):
        if not data.get(key):
            raise ValueError(f"{yaml_path}: missing key '{key}'")
    names = _names(data.get("names"), data.get("nc"), yaml_path)
    root = Path(str(data["path"])).expanduser() if data.get("path") else yaml_path.parent
    root = (root if root.is_absolute() else yaml_path.parent / root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{yaml_path}: data set root 'path' not found: {root}")
    train = _image_files(data["train"], "train", root, yaml_path)
    val = _image_files(data["val"], "val", root, yaml_path)
    return DataConfig(yaml_path.resolve(), root, train, val, names)


def label_path(image: Path) -> Path:
    """The YOLO label file of an image: the last ``images`` folder becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_labels(path: Path, nc: int) -> np.ndarray:
    """Read one YOLO label file as an ``(n, 5)`` float32 array ``cls cx cy w h``; a missing file means no objects.

    Polygon lines (``cls x1 y1 x2 y2 ...``, the segmentation format) become their bounding boxes. A malformed line,
    a class outside ``0..nc-1`` or coordinates outside 0-1 raise ``ValueError`` naming ``file:line``.
    """
    if not path.is_file():
        return np.zeros((0, 5), dtype=np.float32)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise ValueError(f"{path}:{number}: expected numbers 'cls cx cy w h', got {line.strip()!r}") from None
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < nc:
            raise ValueError(f"{path}:{number}: class {fields[0]} is not one of 0..{nc - 1}")
        if len(values) == 5:
            box = values[1:]
        elif len(values) >= 7 and len(values) % 2 == 1:  # polygon
            xs, ys = values[1::2], values[2::2]
            box = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        else:
            raise ValueError(f"{path}:{number}: expected 5 values 'cls cx cy w h', got {len(values)}")
        if min(values[1:]) < -0.01 or max(values[1:]) > 1.01:
            raise ValueError(f"{path}:{number}: box coordinates must be normalised to 0-1, got {line.strip()!r}")
        rows.append([cls, *box])
    labels = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
    labels[:, 1:] = labels[:, 1:].clip(0.0, 1.0)
    return labels[(labels[:, 3] > 0) & (labels[:, 4] > 0)]


def letterbox(image: np.ndarray, imgsz: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``image`` (HWC uint8) so its long side is ``imgsz``, then pad it to a centred ``imgsz`` square.

    Follows ultralytics (``load_image`` + ``LetterBox``): grey ``114`` padding, ``round(d -/+ 0.1)`` pad split.
    Returns the square image, the scale ratio and the ``(left, top)`` padding.
    """
    h0, w0 = image.shape[:2]
    ratio = imgsz / max(h0, w0)
    if ratio != 1:
        w, h = min(math.ceil(w0 * ratio), imgsz), min(math.ceil(h0 * ratio), imgsz)
        pil = require_pil()
        image = np.asarray(pil.fromarray(image).resize((w, h), pil.Resampling.BILINEAR))
    h, w = image.shape[:2]
    dw, dh = (imgsz - w) / 2, (imgsz - h) / 2
    top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
    if top or bottom or left or right:
        image = np.pad(image, ((top, bottom), (left, right), (0, 0)), constant_values=_PAD_VALUE)
    return image, ratio, (left, top)


class YOLODataset(Dataset):
    """Letterboxed images and YOLO labels; with ``augment``, a seeded horizontal flip and colour jitter.

    Items are dicts ``img`` (3xHxW uint8), ``cls`` (n x 1), ``bboxes`` (n x 4, normalised xywh in the letterboxed
    image), ``ori_shape``, ``ratio_pad`` and ``im_file``; :func:`yolo_collate` batches them. An item may be asked for
    as ``index`` or ``(index, epoch)`` (what :class:`EpochSampler` yields): the augmentation of an item depends only
    on ``(seed, epoch, index)``, so it is the same with any number of workers.
    """

    def __init__(self, images: Sequence[Path], nc: int, imgsz: int, augment: bool = False, fliplr: float = 0.5,
                 brightness: float = 0.25, saturation: float = 0.4, seed: int = 0) -> None:
        self.images = [Path(p) for p in images]
        self.labels = [read_labels(label_path(p), nc) for p in self.images]  # parsed up front: bad files fail early
        self.imgsz = imgsz
        self.augment = augment
        self.fliplr = fliplr
        self.brightness = brightness
        self.saturation = saturation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int) -> np.ndarray:
        pil = require_pil()
        with pil.open(self.images[index]) as image:
            return np.asarray(image.convert("RGB"))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        image = self._load(index)
        h0, w0 = image.shape[:2]
        image, ratio, (left, top) = letterbox(image, self.imgsz)
        labels = self.labels[index].copy()
        boxes = labels[:, 1:]
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] * w0 * ratio + np.array([left, 0])) / self.imgsz
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] * h0 * ratio + np.array([top, 0])) / self.imgsz
        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index])
            if rng.random() < self.fliplr:
                image = image[:, ::-1]
                boxes[:, 0] = 1.0 - boxes[:, 0]
            image = self._jitter(image, rng)
        return {
            "img": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "cls": torch.from_numpy(labels[:, :1]),
            "bboxes": torch.from_numpy(np.ascontiguousarray(boxes)),
            "ori_shape": (h0, w0),
            "ratio_pad": ((ratio, ratio), (left, top)),
            "im_file": str(self.images[index]),
        }

    def _jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        value = 1.0 + rng.uniform(-self.brightness, self.brightness)
        sat = 1.0 + rng.uniform(-self.saturation, self.saturation)
        pixels = image.astype(np.float32)
        grey = pixels.mean(axis=2, keepdims=True)
        pixels = (grey + (pixels - grey) * sat) * value
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def yolo_collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch :class:`YOLODataset` items into the dict ultralytics' loss and validator use.

    ``img`` float BxCxHxW in 0-1, ``batch_idx`` (N,), ``cls`` (N, 1), ``bboxes`` (N, 4) normalised xywh,
    ``ori_shape``/``ratio_pad``/``im_file`` lists.
    """
    counts = [len(item["cls"]) for item in items]
    return {
        "img": torch.stack([item["img"] for item in items]).float().div_(255.0),
        "batch_idx": torch.repeat_interleave(torch.arange(len(items), dtype=torch.float32), torch.tensor(counts)),
        "cls": torch.cat([item["cls"] for item in items]).float().reshape(-1, 1),
        "bboxes": torch.cat([item["bboxes"] for item in items]).float().reshape(-1, 4),
        "ori_shape": [item["ori_shape"] for item in items],
        "ratio_pad": [item["ratio_pad"] for item in items],
        "im_file": [item["im_file"] for item in items],
    }


class EpochSampler(Sampler):
    """Yields ``(index, epoch)``: a seeded per-epoch shuffle (or the plain order) that tells items their epoch.

    Lightning calls :meth:`set_epoch` at the start of every training epoch.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle else range(
            self.size)
        return iter([(int(i), self.epoch) for i in order])


def _default_synthetic_root(imgsz: int, seed: int, num_train: int, num_val: int) -> Path:
    name = f"synthetic-shapes-{imgsz}px-seed{seed}-{num_train}-{num_val}"
    return Path(tempfile.gettempdir()) / "lightning_prune" / name


class YOLODataModule(pl.LightningDataModule):
    """A YOLO-format detection data set for Lightning: letterboxed ``imgsz`` batches in ultralytics' dict format.

    Args:
        data: path to a ``data.yaml`` (keys ``path``, ``train``, ``val``, ``names``); checked in the constructor,
            so a bad path or a missing key fails at once with a one-line error naming it.
        imgsz: images are letterboxed to ``imgsz x imgsz`` (a multiple of the model stride, 32).
        batch_size: images per batch (training and validation).
        num_workers: data loader worker processes.
        augment: random horizontal flip and brightness/saturation jitter on the training split.
        fliplr: flip probability; ``brightness``, ``saturation``: largest relative jitter.
        seed: seeds the training shuffle and augmentation (a function of seed, epoch and image index).
        synthetic: use the synthetic shapes set of :mod:`lightning_prune.data.synthetic` instead of ``data``;
            :meth:`prepare_data` writes it to ``synthetic_root`` if it is not there yet.
        synthetic_root: where the synthetic set lives (default: a folder in the system temp directory named after
            ``imgsz``, ``seed`` and the sizes); ``synthetic_num_train``, ``synthetic_num_val``: its sizes.
        pin_memory: passed to the data loaders.
    """

    def __init__(self, data: str | None = None, imgsz: int = 160, batch_size: int = 16, num_workers: int = 0,
                 augment: bool = True, fliplr: float = 0.5, brightness: float = 0.25, saturation: float = 0.4,
                 seed: int = 0, synthetic: bool = False, synthetic_root: str | None = None,
                 synthetic_num_train: int = 200, synthetic_num_val: int = 50, pin_memory: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        if data is None and not synthetic:
            raise ValueError("YOLODataModule needs data=<path to data.yaml> or synthetic=True")
        if data is not None and synthetic:
            raise ValueError("YOLODataModule takes data=<path to data.yaml> or synthetic=True, not both")
        if imgsz < 32 or imgsz % 32:
            raise ValueError(f"imgsz must be a positive multiple of 32 (the largest YOLO stride), got {imgsz}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.imgsz = imgsz
        self.batch_size = batch_size
        self.num_workers = num_workers
        if synthetic:
            root = Path(synthetic_root) if synthetic_root else _default_synthetic_root(
                imgsz, seed, synthetic_num_train, synthetic_num_val)
            self.data_yaml = root.expanduser().resolve() / "data.yaml"
            self.config: DataConfig | None = None
        else:
            self.data_yaml = Path(str(data)).expanduser().resolve()
            self.config = load_data_yaml(self.data_yaml)
        self.train_dataset: YOLODataset | None = None
        self.val_dataset: YOLODataset | None = None

    @property
    def names(self) -> list[str]:
        """Class names (the synthetic set's are known before it is written)."""
        if self.config is not None:
            return list(self.config.names)
        from lightning_prune.data.synthetic import CLASS_NAMES

        return list(CLASS_NAMES)

    @property
    def nc(self) -> int:
        return len(self.names)

    def _make_synthetic(self) -> None:
        if self.hparams.synthetic and not self.data_yaml.is_file():
            from lightning_prune.data.synthetic import make_synthetic_dataset

            make_synthetic_dataset(self.data_yaml.parent, self.hparams.synthetic_num_train,
                                   self.hparams.synthetic_num_val, self.imgsz, self.hparams.seed)

    def prepare_data(self) -> None:
        self._make_synthetic()

    def setup(self, stage: str | None = None) -> None:
        self._make_synthetic()  # when used without a Trainer (which calls prepare_data first)
        if self.config is None:
            self.config = load_data_yaml(self.data_yaml)
        hp = self.hparams
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = YOLODataset(self.config.train, self.config.nc, self.imgsz, hp.augment, hp.fliplr,
                                             hp.brightness, hp.saturation, hp.seed)
        if stage in (None, "fit", "validate", "test", "predict") and self.val_dataset is None:
            self.val_dataset = YOLODataset(self.config.val, self.config.nc, self.imgsz)

    def _loader(self, dataset: YOLODataset | None, train: bool) -> DataLoader:
        if dataset is None:
            self.setup("fit" if train else "validate")
            dataset = self.train_dataset if train else self.val_dataset
        return DataLoader(dataset, batch_size=self.batch_size,
                          sampler=EpochSampler(len(dataset), shuffle=train, seed=self.hparams.seed),
                          num_workers=self.num_workers, collate_fn=yolo_collate, pin_memory=self.hparams.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)


