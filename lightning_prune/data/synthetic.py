"""A deterministic synthetic object-detection data set: coloured shapes on noisy backgrounds, in YOLO format.

Three classes (``0`` circle, ``1`` square, ``2`` triangle) of several sizes (15-40 % of the image side by default),
one to four objects per image that may overlap a little, drawn with anti-aliased edges on coloured backgrounds with
a colour gradient, a few faint distractor blobs and pixel noise. Everything is drawn with numpy and written as PNG by
a small built-in encoder, so the package core needs neither Pillow nor OpenCV, and the same ``seed`` gives
byte-identical files on every run. Image ``i`` of a split depends only on ``(seed, split, i)``: asking for more
images appends new ones and leaves the first ones unchanged.

Layout (the YOLO convention ultralytics and :class:`~lightning_prune.integrations.ultralytics.YOLODataModule` read)::

    root/
      data.yaml                      # path, train, val, test (when num_test > 0), nc, names
      images/train/000000.png ...    # RGB, imgsz x imgsz
      labels/train/000000.txt ...    # one "cls cx cy w h" line per object, normalised to 0-1
      images/val/...  labels/val/...
      images/test/... labels/test/...  # held out: tune (and probe sensitivity) on val, report on test

Example:
    >>> import tempfile
    >>> from lightning_prune.data import make_synthetic_dataset
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), num_train=2, num_val=1, imgsz=64, num_test=1)
    >>> sorted(p.name for p in (root / "images" / "train").iterdir())
    ['000000.png', '000001.png']
    >>> sorted(p.name for p in (root / "images").iterdir())
    ['test', 'train', 'val']
    >>> (root / "data.yaml").is_file()
    True

Command line::

    python -m lightning_prune.data.synthetic --root datasets/shapes --num-train 200 --num-val 50 --num-test 50 \
        --imgsz 160 --seed 0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_prune.data.yolo_format import (
    SplitWriter,
    data_set_parser,
    report_written,
    write_data_yaml,
    write_png,
    yolo_line,
)

__all__ = ["CLASS_NAMES", "SyntheticObject", "draw_synthetic_image", "main", "make_synthetic_dataset", "write_png"]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle")

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SUPERSAMPLE = 4  # sub-pixel samples per axis for anti-aliased shape edges
_MAX_OVERLAP = 0.3  # most a new object's box may cover of a smaller box already placed (and vice versa)


@dataclass(frozen=True)
class SyntheticObject:
    """One drawn object: class index and its tight box in pixels (``x0, y0, x1, y1``, exclusive right/bottom)."""

    cls: int
    x0: float
    y0: float
    x1: float
    y1: float

    def yolo_line(self, imgsz: int) -> str:
        """The object's YOLO label line: ``cls cx cy w h``, normalised by the image side."""
        return yolo_line((self.cls, self.x0, self.y0, self.x1, self.y1), imgsz)


# -- drawing -------------------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """A coloured, noisy background: a linear gradient between two colours plus a few faint soft blobs."""
    c0, c1 = rng.uniform(20, 235, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:imgsz, 0:imgsz].astype(np.float64) / max(imgsz - 1, 1)
    t = (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) / np.sqrt(0.5) / 2 + 0.5  # 0..1 along the angle
    image = c0 + (c1 - c0) * t[..., None]
    for _ in range(int(rng.integers(0, 4))):  # low-contrast distractor blobs, not objects
        cx, cy = rng.uniform(0, imgsz, size=2)
        radius = rng.uniform(0.05, 0.25) * imgsz
        tint = rng.uniform(-40, 40, size=3)
        d2 = ((xs * (imgsz - 1) - cx) ** 2 + (ys * (imgsz - 1) - cy) ** 2) / radius**2
        image += tint * np.exp(-d2)[..., None]
    return image


def _shape_color(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A saturated colour that stands out from the local background colour."""
    for _ in range(20):
        color = rng.uniform(0, 255, size=3)
        color[rng.integers(0, 3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])  # some saturation
        if np.abs(color - background).sum() > 180:
            return color
    return 255.0 - background  # the complement always contrasts


def _coverage(cls: int, box: tuple[float, float, float, float], flip: bool, xs: np.ndarray,
              ys: np.ndarray) -> np.ndarray:
    """Fraction (0-1) of each pixel of the ``xs`` x ``ys`` grid (pixel indices) the shape covers."""
    x0, y0, x1, y1 = box
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    sx = (xs[:, None] + offsets[None, :]).reshape(-1)  # sub-sample x positions, len(xs) * S
    sy = (ys[:, None] + offsets[None, :]).reshape(-1)
    py, px = np.meshgrid(sy, sx, indexing="ij")
    if cls == 0:  # circle
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        inside = (px - cx) ** 2 + (py - cy) ** 2 <= r * r
    elif cls == 1:  # square
        inside = (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
    else:  # triangle: apex at the top (or the bottom when flipped), base on the opposite side
        v = (py - y0) / (y1 - y0)  # 0 at the top, 1 at the bottom
        v = 1 - v if flip else v
        half = v * (x1 - x0) / 2
        cx = (x0 + x1) / 2
        inside = (v >= 0) & (v <= 1) & (np.abs(px - cx) <= half)
    s = _SUPERSAMPLE
    return inside.reshape(len(ys), s, len(xs), s).mean(axis=(1, 3))


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller of the two boxes' areas."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def draw_synthetic_image(rng: np.random.Generator, imgsz: int = 160, max_objects: int = 4,
                         size_range: tuple[float, float] = (0.15, 0.4),
                         noise: float = 8.0) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Draw one image (``imgsz x imgsz x 3`` uint8 RGB) and return it with its objects.

    Args:
        rng: the only source of randomness; the same generator state gives the same image.
        imgsz: image side in pixels.
        max_objects: at most this many objects (at least one).
        size_range: object size as a fraction of ``imgsz`` (the box side; triangles may be a little flatter).
        noise: standard deviation of the Gaussian pixel noise added last.
    """
    image = _background(rng, imgsz)
    objects: list[SyntheticObject] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        flip = bool(rng.integers(0, 2))
        for _attempt in range(30):
            w = rng.uniform(*size_range) * imgsz
            h = w if cls != 2 else w * rng.uniform(0.75, 1.0)
            x0, y0 = rng.uniform(0, imgsz - w), rng.uniform(0, imgsz - h)
            box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
            if all(_overlap(box, other) <= _MAX_OVERLAP for other in boxes):
                break
        else:
            continue  # no room: fewer objects in this image
        xa, ya = int(np.floor(box[0])), int(np.floor(box[1]))
        xb, yb = min(int(np.ceil(box[2])), imgsz), min(int(np.ceil(box[3])), imgsz)
        alpha = _coverage(cls, box, flip, np.arange(xa, xb), np.arange(ya, yb))[..., None]
        region = image[ya:yb, xa:xb]
        color = _shape_color(rng, region.mean(axis=(0, 1)))
        shade = color + rng.uniform(-15, 15)  # a slightly different shade makes fills less flat
        fill = np.where((np.add.outer(np.arange(ya, yb), np.arange(xa, xb)) % 8 < 4)[..., None], color, shade)
        image[ya:yb, xa:xb] = region * (1 - alpha) + fill * alpha
        boxes.append(box)
        objects.append(SyntheticObject(cls, *box))
    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


# -- writing -------------------------------------------------------------------------------------------------------
def _write_split(root: Path, split: str, count: int, imgsz: int, seed: int) -> None:
    def draw(i: int):
        image, objects = draw_synthetic_image(np.random.default_rng([seed, _SPLIT_IDS[split], i]), imgsz)
        return image, [(o.cls, o.x0, o.y0, o.x1, o.y1) for o in objects]

    SplitWriter(root, split, imgsz).write(count, draw)


def make_synthetic_dataset(root: str | Path, num_train: int = 200, num_val: int = 50, imgsz: int = 160,
                           seed: int = 0, num_test: int = 0) -> Path:
    """Write the synthetic shapes data set in YOLO format under ``root`` and return ``root`` (absolute).

    Existing files of the same names are overwritten, so the same arguments always leave the same bytes.

    Args:
        root: output folder (created if missing).
        num_train: number of training images.
        num_val: number of validation images.
        num_test: number of held-out test images (``0``: no ``test`` split); drawn like the others, from their own
            seeds, so no test image repeats a training or validation image.
        imgsz: image side in pixels (images are square).
        seed: seed of :func:`numpy.random.default_rng`; image ``i`` of a split uses ``default_rng([seed, split, i])``.

    Returns:
        The absolute data set root; ``root / "data.yaml"`` describes it.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"need at least one training and one validation image, got {num_train} and {num_val}")
    if num_test < 0:
        raise ValueError(f"num_test must be >= 0, got {num_test}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be at least 32 pixels, got {imgsz}")
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    _write_split(root, "train", num_train, imgsz, seed)
    _write_split(root, "val", num_val, imgsz, seed)
    if num_test:
        _write_split(root, "test", num_test, imgsz, seed)
    write_data_yaml(root, CLASS_NAMES, f"Synthetic shapes ({imgsz}x{imgsz}, seed {seed}) written by "
                    "lightning_prune.data.synthetic", test=num_test > 0)
    return root


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point: ``python -m lightning_prune.data.synthetic --root DIR``."""
    parser = data_set_parser("python -m lightning_prune.data.synthetic",
                             "Write a deterministic synthetic shapes detection data set (YOLO format).", 200, 50, 50)
    args = parser.parse_args(argv)
    try:
        root = make_synthetic_dataset(args.root, args.num_train, args.num_val, args.imgsz, args.seed, args.num_test)
    except ValueError as err:
        parser.error(str(err))
    report_written(args, root)
    return root


if __name__ == "__main__":
    main()
