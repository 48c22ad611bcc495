"""Train, validate, prune and export ultralytics YOLO detectors with PyTorch Lightning.

ultralytics is AGPL-3.0 and an optional extra (``pip install "lightning-prune[yolo]"``): this module imports it only
inside the functions that need it, so importing the module is cheap and works without it.

* :class:`YOLOModule` wraps an ultralytics ``DetectionModel`` (from a model YAML such as ``"yolov8n.yaml"``,
  ``"yolo11n.yaml"`` or ``"yolov7-tiny"``, or from a ``.pt`` checkpoint, pruned ones included), trains it with
  ultralytics' own detection loss and validates it with NMS and :class:`torchmetrics.detection.MeanAveragePrecision`,
  logging ``val/mAP50-95``, ``val/mAP50`` and ``val/loss``. It holds no shape-dependent state, so it keeps training
  after :class:`~lightning_prune.DependencyGraph` prunes its model in place.
* :class:`YOLODataModule` reads YOLO-format data sets (``data.yaml`` with ``train``/``val`` image folders and
  ``labels`` folders beside them), or generates :mod:`lightning_prune.data.synthetic` shapes when ``synthetic=True``.
* :func:`save_yolo` writes a checkpoint that ``ultralytics.YOLO(path)`` loads, predicts with and exports (pruned
  models too: the module object is pickled, not a state dict), and :func:`ultralytics_val_map` runs ultralytics' own
  validator on it, to cross-check our mAP.

Example (training a few epochs on the synthetic set, then saving for ultralytics)::

    import lightning.pytorch as pl
    from lightning_prune.integrations.ultralytics import YOLODataModule, YOLOModule, save_yolo

    data = YOLODataModule(synthetic=True, imgsz=160, batch_size=16)
    module = YOLOModule("yolov8n.yaml", nc=3, imgsz=160)
    pl.Trainer(max_epochs=10, accelerator="cpu").fit(module, data)
    save_yolo(module, "yolov8n-shapes.pt", data=data.data_yaml)  # ultralytics.YOLO("yolov8n-shapes.pt") loads it
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "IMAGE_SUFFIXES",
    "YOLODataModule",
    "YOLODataset",
    "YOLOModule",
    "build_detection_model",
    "coco_map",
    "letterbox",
    "load_data_yaml",
    "save_yolo",
    "ultralytics_val_map",
    "ultralytics_val_metrics",
    "yolo_collate",
]

_INSTALL_HINT = 'pip install "lightning-prune[yolo]"'
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
_PAD_VALUE = 114  # ultralytics' letterbox grey


# -- optional imports ----------------------------------------------------------------------------------------------
def _require_ultralytics() -> Any:
    """Import and return the ``ultralytics`` package, or raise a one-line ImportError saying how to install it."""
    try:
        import ultralytics
    except ImportError as err:
        raise ImportError(f"this needs ultralytics (AGPL-3.0), which is not installed: {_INSTALL_HINT}") from err
    return ultralytics


def _require_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(f"reading images needs Pillow, which is not installed: {_INSTALL_HINT}") from err
    return Image


# -- data sets -----------------------------------------------------------------------------------------------------
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
        pil = _require_pil()
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
        pil = _require_pil()
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


# -- the model -----------------------------------------------------------------------------------------------------
def _is_detection_model(model: Any) -> bool:
    layers = getattr(model, "model", None)
    return isinstance(model, nn.Module) and isinstance(layers, nn.Sequential) and hasattr(layers[-1], "stride")


def build_detection_model(model: str | os.PathLike | nn.Module, nc: int | None = None,
                          verbose: bool = False) -> nn.Module:
    """An ultralytics ``DetectionModel`` from a model YAML, a ``.pt`` checkpoint or an existing model.

    ``model`` may be a YAML path, an ultralytics model YAML name (``"yolov8n.yaml"``, ``"yolo11n"``), the name of a
    YAML shipped in :mod:`lightning_prune.models` (``"yolov7-tiny"``), a ``.pt`` checkpoint written by ultralytics
    or :func:`save_yolo` (its pickled module is used as is, so pruned architectures survive), or a ``DetectionModel``.
    ``nc`` overrides a YAML's class count; for a checkpoint or a model it must match (or be ``None``).
    """
    _require_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    if isinstance(model, nn.Module):
        if not _is_detection_model(model):
            raise TypeError(f"expected an ultralytics DetectionModel, got {type(model).__name__}")
        built = model
    elif str(model).endswith(".pt"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        from ultralytics.nn.tasks import load_checkpoint

        built, _ = load_checkpoint(str(path))
        if not _is_detection_model(built):
            raise TypeError(f"{path} holds a {type(built).__name__}, not a detection model")
        built.train()
        for p in built.parameters():  # ultralytics saves checkpoints with requires_grad=False
            p.requires_grad_(True)
    else:
        cfg = _resolve_yaml(str(model))
        try:
            built = DetectionModel(cfg, ch=3, nc=nc, verbose=verbose)
        except FileNotFoundError:
            from lightning_prune.models import available_model_yamls

            raise FileNotFoundError(
                f"model {str(model)!r} is not a file, a lightning_prune model ({', '.join(available_model_yamls())}) "
                f"or an ultralytics model YAML such as 'yolov8n.yaml'") from None
    head_nc = int(built.model[-1].nc)
    if nc is not None and nc != head_nc:
        raise ValueError(f"model {model if isinstance(model, str) else type(model).__name__!r} has nc={head_nc}, got "
                         f"nc={nc}: build it from a YAML to change the number of classes")
    return built


def _resolve_yaml(name: str) -> str:
    """A YAML file path, one of :mod:`lightning_prune.models`' names, or an ultralytics name (``.yaml`` added)."""
    from lightning_prune.models import available_model_yamls, model_yaml

    path = Path(name).expanduser()
    if path.is_file():
        return str(path)
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    if stem in available_model_yamls():
        return str(model_yaml(stem))
    return name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"


class _WarmupDecay:
    """LR factor per optimizer step: linear warm-up to 1, then cosine or linear decay to ``lrf``."""

    def __init__(self, warmup_steps: int, total_steps: float, kind: str | None, lrf: float) -> None:
        self.warmup_steps, self.total_steps, self.kind, self.lrf = warmup_steps, total_steps, kind, lrf

    def __call__(self, step: int) -> float:
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind is None or not math.isfinite(self.total_steps) or self.total_steps <= 0:
            return factor
        progress = min(1.0, step / self.total_steps)
        if self.kind == "cosine":
            decay = self.lrf + (1 - self.lrf) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            decay = 1 - (1 - self.lrf) * progress
        return factor * decay


def coco_map(result: Mapping[str, Any]) -> tuple[float, float]:
    """COCO mAP50-95 and mAP50 (area "all", the largest max-detections setting) from an extended-summary result.

    torchmetrics' ``map`` comes from pycocotools' summary, which always reads 100 detections per image (and gives
    -1 for other settings); ultralytics counts up to ``max_det`` (300), so read the precision table instead.
    Classes without ground truth are skipped, and no ground truth at all gives 0.
    """
    precision = result["precision"][:, :, :, 0, -1]  # IoU threshold x recall x class, area all, last max_det
    valid = precision > -1
    if not valid.any():
        return 0.0, 0.0
    map50 = precision[0][valid[0]].mean() if valid[0].any() else precision.new_zeros(())
    return float(precision[valid].mean()), float(map50)


class YOLOModule(pl.LightningModule):
    """An ultralytics YOLO detector as a LightningModule: ultralytics' loss, NMS + torchmetrics mAP validation.

    Args:
        model: a model YAML (``"yolov8n.yaml"``, ``"yolo11n.yaml"``, ``"yolov7-tiny"``, a path), a ``.pt`` checkpoint
            (ultralytics' or :func:`save_yolo`'s, pruned ones included) or a ``DetectionModel``; see
            :func:`build_detection_model`.
        nc: number of classes (default: the YAML's or the checkpoint's).
        imgsz: input size of :attr:`example_input_array` (``1 x 3 x imgsz x imgsz``) and of saved checkpoints.
        optimizer: ``"SGD"`` (Nesterov), ``"AdamW"`` or ``"Adam"``; weights get ``weight_decay``, biases and norm
            parameters none.
        lr: peak learning rate; ``momentum``: SGD momentum, or Adam's ``beta1``.
        weight_decay: decoupled (AdamW) or L2 (SGD, Adam) weight decay of conv/linear weights.
        warmup_epochs: linear learning-rate warm-up, in epochs (fractions allowed).
        scheduler: ``"cosine"``, ``"linear"`` or ``None``: decay per step from ``lr`` to ``lr * lrf`` over the run.
        box_gain, cls_gain, dfl_gain: ultralytics' loss gains ``box``, ``cls`` and ``dfl``.
        conf, iou, max_det: validation NMS settings; the defaults are ultralytics' validator's (0.001, 0.7, 300).
        predict_conf: confidence threshold of :meth:`predict_step`.

    The model lives in :attr:`model`; :meth:`forward` is the ultralytics model's forward (a raw-prediction dict in
    training mode, ``(decoded, raw)`` in eval mode). Nothing here caches channel counts, so pruning :attr:`model`
    in place (parameters keep their identity) between steps is fine. Class names come from the data module's
    ``names`` when it has them.
    """

    def __init__(self, model: str | nn.Module = "yolov8n.yaml", nc: int | None = None, imgsz: int = 160,
                 optimizer: str = "AdamW", lr: float = 0.002, momentum: float = 0.9, weight_decay: float = 5e-4,
                 warmup_epochs: float = 1.0, scheduler: str | None = "cosine", lrf: float = 0.01,
                 box_gain: float = 7.5, cls_gain: float = 0.5, dfl_gain: float = 1.5, conf: float = 0.001,
                 iou: float = 0.7, max_det: int = 300, predict_conf: float = 0.25) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        if optimizer.lower() not in ("sgd", "adamw", "adam"):
            raise ValueError(f"optimizer must be 'SGD', 'AdamW' or 'Adam', got {optimizer!r}")
        if scheduler is not None and scheduler not in ("cosine", "linear"):
            raise ValueError(f"scheduler must be 'cosine', 'linear' or None, got {scheduler!r}")
        if imgsz < 32 or imgsz % 32:
            raise ValueError(f"imgsz must be a positive multiple of 32 (the largest YOLO stride), got {imgsz}")
        from ultralytics.utils import DEFAULT_CFG_DICT, IterableSimpleNamespace

        self.model = build_detection_model(model, nc)
        self.model.args = IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, "box": box_gain, "cls": cls_gain,
                                                     "dfl": dfl_gain, "imgsz": imgsz})
        self.model.criterion = None  # ultralytics' own cache; ours is below and follows the device
        self.example_input_array = torch.zeros(1, 3, imgsz, imgsz)
        self._criterion: Any = None
        self._criterion_key: tuple[Any, ...] | None = None
        self.val_map = self._make_metric()

    def _make_metric(self) -> nn.Module:
        try:
            from torchmetrics.detection import MeanAveragePrecision

            # extended_summary: the precision table, read at max_det below (pycocotools' own summary is fixed to 100)
            return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", extended_summary=True,
                                        max_detection_thresholds=[1, 10, int(self.hparams.max_det)])
        except ModuleNotFoundError as err:
            raise ImportError(f"mAP needs pycocotools (torchmetrics' detection backend): {_INSTALL_HINT}") from err

    @property
    def nc(self) -> int:
        return int(self.model.model[-1].nc)

    @property
    def criterion(self) -> Any:
        """ultralytics' detection loss for the model, rebuilt when the model moves (it keeps the device and strides)."""
        head = self.model.model[-1]
        key = (head.stride.device, head.stride.dtype, id(head.stride), head.nc)
        if self._criterion is None or self._criterion_key != key:
            self._criterion = self.model.init_criterion()
            self._criterion_key = key
        return self._criterion

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    # -- hooks -----------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "names", None)
        if names:
            if len(names) != self.nc:
                raise ValueError(f"the model predicts {self.nc} classes but the data set has {len(names)}: pass "
                                 f"nc={len(names)} to YOLOModule")
            self.model.names = dict(enumerate(names))
        imgsz = getattr(datamodule, "imgsz", None)
        if isinstance(imgsz, int) and imgsz != self.hparams.imgsz:
            rank_zero_warn(f"YOLOModule(imgsz={self.hparams.imgsz}) but the data module letterboxes to {imgsz}")

    def on_fit_start(self) -> None:
        self.model.args.epochs = max(int(self.trainer.max_epochs or 1), 1)  # E2E (YOLO26) loss decays over epochs
        self._criterion = None

    def on_train_epoch_end(self) -> None:
        update = getattr(self._criterion, "update", None)
        if callable(update):
            update()

    # -- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        preds = self.model(batch["img"])
        loss, items = self.criterion(preds, batch)
        batch_size = batch["img"].shape[0]
        if self._trainer is not None:  # also usable as a plain function, outside a Trainer
            self.log_dict({f"train/{name}": value for name, value in items.items()}, batch_size=batch_size)
            self.log("train/loss", sum(items.values()), prog_bar=True, batch_size=batch_size)
        return loss.sum()  # ultralytics' scale: summed components times batch size

    def _detections(self, decoded: Any, conf: float) -> list[torch.Tensor]:
        from ultralytics.utils.nms import non_max_suppression

        end2end = bool(getattr(self.model, "end2end", False))
        return non_max_suppression(decoded, conf, self.hparams.iou, multi_label=not end2end,
                                   max_det=self.hparams.max_det, end2end=end2end, max_time_img=10.0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        decoded, raw = self.model(batch["img"])
        batch_size = batch["img"].shape[0]
        loss, items = self.criterion(raw, batch)
        if self._trainer is not None:
            self.log("val/loss", sum(items.values()), on_epoch=True, prog_bar=True, batch_size=batch_size)
        detections = self._detections(decoded, self.hparams.conf)
        height, width = batch["img"].shape[2:]
        scale = torch.tensor([width, height, width, height], device=batch["bboxes"].device, dtype=torch.float32)
        preds, targets = [], []
        for i, det in enumerate(detections):
            det = det.float()
            preds.append({"boxes": det[:, :4], "scores": det[:, 4], "labels": det[:, 5].long()})
            mine = batch["batch_idx"] == i
            xywh = batch["bboxes"][mine].float() * scale
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
            targets.append({"boxes": xyxy, "labels": batch["cls"][mine].view(-1).long()})
        self.val_map.update(preds, targets)

    def on_validation_epoch_end(self) -> None:
        map50_95, map50 = coco_map(self.val_map.compute())
        self.val_map.reset()
        self.log("val/mAP50-95", map50_95, on_epoch=True, prog_bar=True)
        self.log("val/mAP50", map50, on_epoch=True, prog_bar=True)

    def predict_step(self, batch: Any, batch_idx: int) -> list[torch.Tensor]:
        """Detections per image, ``(n, 6)``: ``x1 y1 x2 y2 conf cls`` in letterboxed-image pixels."""
        images = batch["img"] if isinstance(batch, Mapping) else batch
        decoded = self.model(images)
        decoded = decoded[0] if isinstance(decoded, tuple) else decoded
        return self._detections(decoded, self.hparams.predict_conf)

    # -- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        name = hp.optimizer.lower()
        if name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        elif name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.momentum, 0.999))
        else:
            optimizer = torch.optim.Adam(groups, lr=hp.lr, betas=(hp.momentum, 0.999))
        if hp.scheduler is None and hp.warmup_epochs <= 0:
            return optimizer
        total = float("inf")
        steps_per_epoch = 0.0
        if self._trainer is not None:
            total = float(self.trainer.estimated_stepping_batches)
            epochs = self.trainer.max_epochs
            if math.isfinite(total) and epochs and epochs > 0:
                steps_per_epoch = total / epochs
        warmup = round(hp.warmup_epochs * steps_per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupDecay(warmup, total, hp.scheduler, hp.lrf))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


# -- ultralytics checkpoints ---------------------------------------------------------------------------------------
def _names_dict(names: Any, nc: int) -> dict[int, str]:
    if isinstance(names, Mapping):
        out = {int(k): str(v) for k, v in names.items()}
    else:
        out = dict(enumerate(str(n) for n in names))
    if sorted(out) != list(range(nc)):
        raise ValueError(f"names must name the model's {nc} classes 0..{nc - 1}, got {len(out)}: {out}")
    return out


def save_yolo(module_or_model: nn.Module, path: str | os.PathLike,
              names: Sequence[str] | Mapping[int, str] | None = None, imgsz: int | None = None,
              data: str | os.PathLike | None = None, half: bool = False) -> Path:
    """Write a checkpoint ``ultralytics.YOLO(path)`` loads, predicts with, validates and exports (pruned or not).

    The model module itself is pickled (as ultralytics does), so a pruned model keeps its pruned channel counts;
    only ultralytics and torch classes end up in the file. The live model is not changed.

    Args:
        module_or_model: a :class:`YOLOModule` (or any LightningModule with a ``model``), or a ``DetectionModel``.
        path: the ``.pt`` file to write (folders are created).
        names: class names (list or ``{index: name}``); default: the model's ``names`` (set from the data set by
            :class:`YOLOModule` during fit).
        imgsz: image size stored for ultralytics (default: the module's ``imgsz``, else 640).
        data: the ``data.yaml`` stored as ``train_args["data"]``, so ``YOLO(path).val()`` finds the data set.
        half: store fp16 weights like ultralytics' final checkpoints (default: fp32, exactly what was trained).

    Returns:
        The written path.
    """
    ultralytics = _require_ultralytics()
    from ultralytics.utils import DEFAULT_CFG_DICT

    model = module_or_model if _is_detection_model(module_or_model) else getattr(module_or_model, "model", None)
    if not _is_detection_model(model):
        raise TypeError(f"save_yolo needs a YOLOModule or an ultralytics DetectionModel, got "
                        f"{type(module_or_model).__name__}")
    if imgsz is None:
        hparams = getattr(module_or_model, "hparams", {})
        imgsz = int(hparams.get("imgsz", 640)) if isinstance(hparams, Mapping) else 640
    nc = int(model.model[-1].nc)
    export = copy.deepcopy(model).cpu()
    export.names = _names_dict(names if names is not None else getattr(model, "names", range(nc)), nc)
    export.criterion = None
    export.task = "detect"
    for module in export.modules():  # hooks (profilers, summaries) may hold unpicklable closures
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            getattr(module, hooks, {}).clear()
    for p in export.parameters():
        p.requires_grad_(False)
        p.grad = None
    export = export.half() if half else export.float()
    export.eval()
    train_args = {"task": "detect", "imgsz": int(imgsz), "data": str(data) if data is not None else None,
                  "model": str(path), "box": DEFAULT_CFG_DICT["box"], "cls": DEFAULT_CFG_DICT["cls"],
                  "dfl": DEFAULT_CFG_DICT["dfl"]}
    old_args = getattr(model, "args", None)
    for key in ("box", "cls", "dfl"):
        value = old_args.get(key) if isinstance(old_args, Mapping) else getattr(old_args, key, None)
        if value is not None:
            train_args[key] = value
    export.args = {**DEFAULT_CFG_DICT, **train_args}
    from lightning_prune import __version__ as lp_version

    checkpoint = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": export,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": train_args,
        "train_metrics": {},
        "lightning_prune": {"version": lp_version,
                            "parameters": int(sum(p.numel() for p in export.parameters()))},
    }
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _no_font_download() -> Iterator[None]:
    """ultralytics' data set check fetches Arial.ttf for plots; validation here makes no plots, so skip it."""
    import ultralytics.data.utils as data_utils

    original = data_utils.check_font
    data_utils.check_font = lambda *args, **kwargs: None
    try:
        yield
    finally:
        data_utils.check_font = original


def ultralytics_val_metrics(weights: str | os.PathLike, data: str | os.PathLike, imgsz: int = 160, batch: int = 16,
                            device: str = "cpu", conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                            rect: bool = False) -> dict[str, float]:
    """Run ultralytics' own validator (``YOLO(weights).val(...)``) and return its box metrics.

    ``rect=False`` letterboxes every image to ``imgsz x imgsz`` exactly like :class:`YOLODataModule`, so the model
    sees the same pixels in both; ultralytics' default ``rect=True`` pads each batch by half a stride more. Nothing
    is plotted or downloaded, and run artefacts go to a temporary folder (ultralytics still writes its label cache
    ``labels/<split>.cache`` next to the data set).

    Returns:
        ``{"mAP50-95", "mAP50", "precision", "recall"}`` as floats in 0-1.
    """
    ultralytics = _require_ultralytics()
    threads = torch.get_num_threads()  # ultralytics' CPU device selection resets the process-wide thread count
    try:
        with tempfile.TemporaryDirectory() as tmp, _no_font_download():
            metrics = ultralytics.YOLO(str(weights), task="detect").val(
                data=str(data), imgsz=imgsz, batch=batch, device=device, conf=conf, iou=iou, max_det=max_det,
                rect=rect, plots=False, save_json=False, verbose=False, project=tmp, name="val", workers=0)
    finally:
        torch.set_num_threads(threads)
    box = metrics.box
    return {"mAP50-95": float(box.map), "mAP50": float(box.map50), "precision": float(box.mp),
            "recall": float(box.mr)}


def ultralytics_val_map(weights_path: str | os.PathLike, data_yaml: str | os.PathLike, imgsz: int = 160,
                        batch: int = 16, device: str = "cpu", rect: bool = False) -> float:
    """mAP50-95 of ``weights_path`` on ``data_yaml``'s val split by ultralytics' own validator (conf 0.001, iou 0.7).

    See :func:`ultralytics_val_metrics`; used to cross-check :class:`YOLOModule`'s torchmetrics ``val/mAP50-95``.
    """
    return ultralytics_val_metrics(weights_path, data_yaml, imgsz, batch, device, rect=rect)["mAP50-95"]
