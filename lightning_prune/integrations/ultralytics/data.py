"""YOLO-format data sets for Lightning, built with ultralytics' own data pipeline.

:class:`YOLODataModule` reads a ``data.yaml`` with ultralytics' ``check_det_dataset`` and builds its splits with
``build_yolo_dataset`` (ultralytics' ``YOLODataset``: label caching, mosaic and the rest of its augmentation for
training, letterboxing for evaluation), for the ``detect``, ``segment``, ``pose`` and ``obb`` tasks. Mosaic is
switched off for the last ``close_mosaic`` epochs, as ultralytics' trainer does. What this module adds is strictness:
where ultralytics warns and skips (a corrupt label line, a class id outside the data set), it raises one
``ValueError`` naming the file and the cause, before any training.

Example::

    from lightning_prune.integrations.ultralytics import YOLODataModule

    data = YOLODataModule("path/to/data.yaml", imgsz=320, batch_size=16, close_mosaic=5)
    data = YOLODataModule(synthetic=True, imgsz=128)   # the synthetic shapes set, written on first use
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_prune.integrations.ultralytics.common import no_font_download, one_line, require_ultralytics
from lightning_prune.utils.files import private_dir, user_cache_dir

__all__ = ["TASKS", "DataConfig", "DataSetError", "EpochSampler", "Task", "YOLODataModule", "load_data_yaml",
           "yolo_collate"]

Task = Literal["detect", "segment", "pose", "obb"]
TASKS: tuple[str, ...] = ("detect", "segment", "pose", "obb")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class DataSetError(FileNotFoundError, ValueError):
    """A data set that cannot be used as given: a ``ValueError`` (and, for missing files, a ``FileNotFoundError``)."""


@dataclass(frozen=True)
class DataConfig:
    """A checked ``data.yaml``: its file, the data set root, the split paths, class names and ultralytics' dict.

    ``data`` is what ultralytics' ``check_det_dataset`` returned (absolute split paths, ``names``, ``nc``, and
    ``kpt_shape`` for pose sets); it is what :func:`build_yolo_dataset` and the validators read.
    """

    yaml_path: Path
    root: Path
    splits: dict[str, str]
    names: tuple[str, ...]
    data: dict[str, Any] = field(repr=False)

    @property
    def nc(self) -> int:
        return len(self.names)


def _names(raw: Any, nc: Any, path: Path) -> tuple[str, ...]:
    if raw is None:
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise DataSetError(f"{path}: missing key 'names' (or a positive integer 'nc')")
        return tuple(f"class_{i}" for i in range(nc))
    if isinstance(raw, Mapping):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise DataSetError(f"{path}: 'names' keys must be class indices 0..n-1") from None
        if keys != list(range(len(keys))):
            raise DataSetError(f"{path}: 'names' keys must be the class indices 0..{len(keys) - 1}, got {keys}")
        names = tuple(str(raw[k] if k in raw else raw[str(k)]) for k in keys)
    elif isinstance(raw, (list, tuple)):
        names = tuple(str(n) for n in raw)
    else:
        raise DataSetError(f"{path}: 'names' must be a list or a mapping of class index to name")
    if not names:
        raise DataSetError(f"{path}: 'names' is empty")
    if nc is not None and nc != len(names):
        raise DataSetError(f"{path}: 'nc: {nc}' does not match the {len(names)} entries of 'names'")
    return names


def _check_split(spec: Any, key: str, root: Path, yaml_path: Path) -> None:
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else spec
    if not isinstance(specs, (list, tuple)) or not specs or not all(isinstance(s, (str, os.PathLike)) for s in specs):
        raise DataSetError(f"{yaml_path}: '{key}' must be a path or a list of paths, got {spec!r}")
    for item in specs:
        path = Path(item).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.exists():
            raise DataSetError(f"{yaml_path}: '{key}' images not found: {path}")


def load_data_yaml(path: str | os.PathLike) -> DataConfig:
    """Read and check a YOLO ``data.yaml`` with ultralytics' ``check_det_dataset``; one-line errors.

    A missing file, invalid YAML, a missing ``train``/``val`` key, a split path (``train``, ``val``, optional
    ``test``) that does not exist, or ``names``/``nc`` that disagree raise :class:`DataSetError` (a ``ValueError``)
    naming the file and the key. Nothing is downloaded (ultralytics would fetch a missing data set or font).

    Example:
        >>> import tempfile
        >>> from lightning_prune.data import make_synthetic_dataset
        >>> root = make_synthetic_dataset(tempfile.mkdtemp(), num_train=1, num_val=1, num_test=1, imgsz=32)
        >>> config = load_data_yaml(root / "data.yaml")
        >>> config.names, sorted(config.splits)
        (('circle', 'square', 'triangle'), ['test', 'train', 'val'])
    """
    yaml_path = Path(path).expanduser()
    if not yaml_path.is_file():
        raise DataSetError(f"data set file not found: {yaml_path}")
    try:
        raw = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as err:
        raise DataSetError(f"{yaml_path}: not valid YAML ({one_line(err)})") from None
    if not isinstance(raw, dict):
        raise DataSetError(f"{yaml_path}: expected a mapping with keys 'train', 'val' and 'names'")
    for key in ("train", "val"):
        if not raw.get(key):
            raise DataSetError(f"{yaml_path}: missing key '{key}'")
    names = _names(raw.get("names"), raw.get("nc"), yaml_path)
    root = Path(str(raw["path"])).expanduser() if raw.get("path") else yaml_path.parent
    root = (root if root.is_absolute() else yaml_path.parent / root).resolve()
    if not root.is_dir():
        raise DataSetError(f"{yaml_path}: data set root 'path' not found: {root}")
    for key in SPLITS:
        if raw.get(key):
            _check_split(raw[key], key, root, yaml_path)
    require_ultralytics()
    from ultralytics.data.utils import check_det_dataset

    try:
        with no_font_download():
            data = check_det_dataset(str(yaml_path.resolve()), autodownload=False)
    except Exception as err:  # ultralytics' messages span lines and carry emojis
        raise DataSetError(f"{yaml_path}: {one_line(err)}") from None
    splits = {key: data[key] for key in SPLITS if data.get(key)}
    return DataConfig(yaml_path.resolve(), root, splits, names, data)


def yolo_collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """ultralytics' ``YOLODataset.collate_fn``, then ``img`` as float in 0-1 (what the model and loss read).

    The batch is ultralytics' dict: ``img`` (B x 3 x H x W), ``batch_idx`` (N,), ``cls`` (N x 1), ``bboxes``
    (N x 4 normalised xywh; N x 5 xywhr for obb), ``masks``/``keypoints`` for segment/pose, and ``im_file``,
    ``ori_shape``, ``resized_shape``, ``ratio_pad`` per image.
    """
    from ultralytics.data.dataset import YOLODataset

    batch = YOLODataset.collate_fn(list(items))
    batch["img"] = batch["img"].float().div_(255.0)
    return batch


class EpochSampler(Sampler):
    """A seeded per-epoch shuffle (or the file order) that also closes mosaic at ``close_at``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch, before the loader's workers start
    (workers are not persistent while mosaic may still be closed), so the dataset change reaches every worker.
    """

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int = 0, close_at: int | None = None,
                 hyp: Any = None) -> None:
        self.dataset, self.shuffle, self.seed, self.epoch = dataset, shuffle, seed, 0
        self.close_at, self.hyp, self.closed = close_at, hyp, False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.close_at is not None and self.epoch >= self.close_at and not self.closed:
            self.dataset.close_mosaic(self.hyp)
            self.closed = True

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)
        if not self.shuffle:
            return iter(range(size))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(size, generator=generator).tolist())


def _default_synthetic_root(imgsz: int, seed: int, num_train: int, num_val: int, num_test: int) -> Path:
    """The synthetic set's folder in the per-user cache (created private; refused when another user could have
    planted images, labels or a pickled ``labels/*.cache`` in it)."""
    name = f"synthetic-shapes-v2-{imgsz}px-seed{seed}-{num_train}-{num_val}-{num_test}"
    return user_cache_dir("data", name)


def _field_problem(label: Path, task: str, data: Mapping[str, Any]) -> str | None:
    """The first line of ``label`` whose number of fields does not fit ``task`` (``file:line: ...``), or None.

    Only read once ultralytics has reported the file corrupt, to say *which* line is wrong: ultralytics parses
    the whole file as one array, so a short line among good ones surfaces as a numpy shape error.
    """
    nkpt, ndim = (data.get("kpt_shape") or (0, 0))[:2]
    expected = {"detect": "5 ('cls cx cy w h')", "segment": "5, or an odd number >= 7 (a polygon)",
                "pose": f"{5 + nkpt * ndim} ('cls cx cy w h' + {nkpt}x{ndim} keypoint values)",
                "obb": "9 ('cls x1 y1 ... x4 y4')"}[task]
    try:
        lines = label.read_text().splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines, start=1):
        n = len(line.split())
        if not n:
            continue
        ok = {"detect": n == 5, "segment": n == 5 or (n >= 7 and n % 2 == 1), "pose": n == 5 + nkpt * ndim,
              "obb": n == 9 or n == 5}[task]
        if not ok:
            return f"{label}:{number}: expected {expected} fields, got {n}"
    return None


def _corrupt_message(msgs: Sequence[str], task: str, data: Mapping[str, Any]) -> str | None:
    """``"<label file>: <cause>"`` of the first corrupt entry in ultralytics' label-scan messages."""
    from ultralytics.data.utils import img2label_paths

    for msg in msgs:
        msg = one_line(msg)
        if "ignoring corrupt image/label: " in msg:
            where, _, cause = msg.partition(": ignoring corrupt image/label: ")
            image = where.split(": ")[-1].strip()
            label = Path(img2label_paths([image])[0]) if image else None
            if label is None or not label.is_file():
                return f"{image}: {cause}"
            return _field_problem(label, task, data) or f"{label}: {cause}"
    return None


class YOLODataModule(pl.LightningDataModule):
    """A YOLO-format data set for Lightning, with ultralytics' data pipeline (``build_yolo_dataset``).

    Args:
        data: path to a ``data.yaml`` (``path``, ``train``, ``val``, optional ``test``, ``names``; ``kpt_shape``
            for pose); checked in the constructor, so a bad path or key fails at once with one line.
        task: ``"detect"``, ``"segment"``, ``"pose"`` or ``"obb"``: which labels ultralytics reads.
        imgsz: training and evaluation image size (a multiple of 32).
        batch_size: images per batch (training and evaluation).
        num_workers: data loader worker processes.
        augment: ultralytics' training augmentation (mosaic, random perspective, HSV, flips); ``False``: letterbox
            only.
        mosaic: probability of ultralytics' 4-image mosaic.
        close_mosaic: turn mosaic (and mixup/copy-paste) off for the last this many epochs of ``fit``.
        hyp: more ultralytics hyperparameters (``{"scale": 0.3, "mixup": 0.1, "degrees": 5, ...}``).
        cache: ultralytics' image cache: ``False``, ``"ram"`` or ``"disk"``.
        seed: seeds the training shuffle.
        synthetic: use the synthetic shapes set of :mod:`lightning_prune.data.synthetic` instead of ``data``;
            :meth:`prepare_data` writes it to ``synthetic_root`` if it is not there yet.
        synthetic_root: where the synthetic set lives (default: a folder named after ``imgsz``, ``seed`` and the
            sizes in the per-user cache, ``$XDG_CACHE_HOME/lightning_prune/data`` or ``~/.cache/lightning_prune/data``,
            private to the user; a default folder another user owns or may write to is refused);
            ``synthetic_num_train``/``_val``/``_test``: its sizes.
        pin_memory: passed to the data loaders.

    :meth:`val_dataloader` reads ``val`` (what the pruning callback's sensitivity probes read), :meth:`test_dataloader`
    reads ``test`` when the set has one (else ``val``). Bad labels — a line with the wrong number of fields, a class
    id ≥ ``nc``, coordinates outside 0-1 — raise :class:`DataSetError` naming the file in :meth:`setup`.
    """

    def __init__(self, data: str | None = None, task: Task = "detect", imgsz: int = 160, batch_size: int = 16,
                 num_workers: int = 0, augment: bool = True, mosaic: float = 1.0, close_mosaic: int = 10,
                 hyp: dict[str, Any] | None = None, cache: bool | str = False, seed: int = 0,
                 synthetic: bool = False, synthetic_root: str | None = None, synthetic_num_train: int = 200,
                 synthetic_num_val: int = 50, synthetic_num_test: int = 50, pin_memory: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        if data is None and not synthetic:
            raise ValueError("YOLODataModule needs data=<path to data.yaml> or synthetic=True")
        if data is not None and synthetic:
            raise ValueError("YOLODataModule takes data=<path to data.yaml> or synthetic=True, not both")
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if synthetic and task != "detect":
            raise ValueError(f"the synthetic shapes set has box labels only (task 'detect'), got task={task!r}")
        if imgsz < 32 or imgsz % 32:
            raise ValueError(f"imgsz must be a positive multiple of 32 (the largest YOLO stride), got {imgsz}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if close_mosaic < 0:
            raise ValueError(f"close_mosaic must be >= 0 epochs, got {close_mosaic}")
        self.task = task
        self.imgsz = imgsz
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.hyp = self._make_hyp(hyp or {})
        self._private_root: Path | None = None
        if synthetic:
            if synthetic_root:
                root = Path(synthetic_root)
            else:
                root = self._private_root = _default_synthetic_root(imgsz, seed, synthetic_num_train,
                                                                    synthetic_num_val, synthetic_num_test)
            self.data_yaml = root.expanduser().resolve() / "data.yaml"
            self.config: DataConfig | None = None
        else:
            self.data_yaml = Path(str(data)).expanduser().resolve()
            self.config = load_data_yaml(self.data_yaml)
        self.datasets: dict[str, Dataset] = {}
        self._train_sampler: EpochSampler | None = None

    def _make_hyp(self, extra: Mapping[str, Any]) -> Any:
        require_ultralytics()
        from ultralytics.cfg import get_cfg
        from ultralytics.utils import DEFAULT_CFG_DICT

        unknown = sorted(set(extra) - set(DEFAULT_CFG_DICT))
        if unknown:
            raise ValueError(f"hyp: unknown ultralytics hyperparameter(s) {', '.join(unknown)}")
        overrides = {**extra, "task": self.task, "imgsz": self.imgsz, "mosaic": self.hparams.mosaic,
                     "cache": self.hparams.cache, "rect": False}
        return get_cfg(overrides=overrides)

    # -- metadata --------------------------------------------------------------------------------------------------
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

    @property
    def has_test(self) -> bool:
        """Whether the data set has a ``test`` split (the synthetic set does)."""
        return self.config is None or "test" in self.config.splits

    @property
    def mosaic_probability(self) -> float:
        """The training set's current mosaic probability (``0`` once ``close_mosaic`` switched it off)."""
        pending = [getattr(self.dataset("train"), "transforms", None)]
        while pending:
            transform = pending.pop()
            if type(transform).__name__ == "Mosaic":
                return float(transform.p)
            pending.extend(getattr(transform, "transforms", None) or [])
        return 0.0

    # -- Lightning hooks -------------------------------------------------------------------------------------------
    def _make_synthetic(self) -> None:
        if self._private_root is not None:
            private_dir(self._private_root)  # still private (checked again right before it is read or written)
        if self.hparams.synthetic and not self.data_yaml.is_file():
            from lightning_prune.data.synthetic import make_synthetic_dataset

            hp = self.hparams
            make_synthetic_dataset(self.data_yaml.parent, hp.synthetic_num_train, hp.synthetic_num_val, self.imgsz,
                                   hp.seed, num_test=hp.synthetic_num_test)

    def prepare_data(self) -> None:
        self._make_synthetic()

    def setup(self, stage: str | None = None) -> None:
        self._make_synthetic()  # when used without a Trainer (which calls prepare_data first)
        if self.config is None:
            self.config = load_data_yaml(self.data_yaml)
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("val",)}
        for split in splits.get(stage, SPLITS) if stage is not None else SPLITS:
            self.dataset(split)

    def dataset(self, split: str) -> Dataset:
        """ultralytics' ``YOLODataset`` of ``split`` (built once; ``test`` falls back to ``val`` when absent)."""
        if split == "test" and self.config is not None and "test" not in self.config.splits:
            split = "val"
        if split not in self.datasets:
            self._make_synthetic()
            if self.config is None:
                self.config = load_data_yaml(self.data_yaml)
            self.datasets[split] = self._build(split)
        return self.datasets[split]

    def _build(self, split: str) -> Dataset:
        from ultralytics.data import build_yolo_dataset
        from ultralytics.data.utils import load_dataset_cache_file

        assert self.config is not None
        path = self.config.splits[split]
        train = split == "train" and self.hparams.augment
        try:
            with no_font_download():
                dataset = build_yolo_dataset(self._hyp_copy(), path, self.batch_size, self.config.data,
                                             mode="train" if train else "val", stride=32)
        except Exception as err:
            raise DataSetError(f"{self.data_yaml}: '{split}' split: {one_line(err)}") from None
        files = getattr(dataset, "label_files", None) or []
        cache = Path(files[0]).parent.with_suffix(".cache") if files else None
        msgs: list[str] = []
        if cache is not None and cache.is_file():
            try:
                msgs = list(load_dataset_cache_file(cache).get("msgs", []))
            except Exception:  # an unreadable cache: ultralytics rebuilt it, nothing to report from it
                msgs = []
        problem = _corrupt_message(msgs, self.task, self.config.data)
        if problem is None and len(dataset.im_files) < len(files):
            problem = f"{len(files) - len(dataset.im_files)} corrupt image(s) or label file(s) in {path}"
        if problem is not None:
            if cache is not None:
                cache.unlink(missing_ok=True)  # the next run scans again instead of skipping the bad files
            raise DataSetError(f"{problem} ('{split}' split of {self.data_yaml})")
        return dataset

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        train = split == "train"
        sampler = EpochSampler(dataset, shuffle=train, seed=self.hparams.seed)
        persistent = self.num_workers > 0
        if train and self._train_sampler is not None and self._train_sampler.closed:
            dataset.transforms = dataset.build_transforms(self._hyp_copy())  # a new fit starts with mosaic again
        if train and self.hparams.augment and self.hparams.close_mosaic > 0 and self.hyp.mosaic > 0:
            max_epochs = getattr(self.trainer, "max_epochs", None) if self._trainer_attached() else None
            if max_epochs is not None and max_epochs > 0:
                sampler.close_at = max(max_epochs - self.hparams.close_mosaic, 0)
                sampler.hyp = self._hyp_copy()  # close_mosaic() writes into it
                persistent = False  # workers must be re-forked to see the closed mosaic
        if train:
            self._train_sampler = sampler
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=yolo_collate, pin_memory=self.hparams.pin_memory, persistent_workers=persistent,
                          drop_last=False)

    def _hyp_copy(self) -> Any:
        return type(self.hyp)(**vars(self.hyp))

    def _trainer_attached(self) -> bool:
        return getattr(self, "trainer", None) is not None

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val")
