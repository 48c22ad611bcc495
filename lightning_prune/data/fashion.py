"""A detection set with real image content: Fashion-MNIST products composed onto cluttered scenes, in YOLO format.

Fashion-MNIST (Xiao et al. 2017, MIT licence) holds 70,000 greyscale 28 x 28 photos of ten kinds of product, several
of them easily confused (T-shirt, pullover, coat, shirt). Each image of this set is a textured, cluttered background
with one to ``max_objects`` products pasted on it at several scales (some small), tinted, possibly overlapping and
partly hiding each other; every product's visible box is a label of its Fashion-MNIST class.

Which products a split may use is fixed, so no item is ever both trained on and evaluated:

* ``train`` images use Fashion-MNIST's *train* partition minus every tenth item;
* ``val`` images use those held-back tenths of the train partition;
* ``test`` images use Fashion-MNIST's own *test* partition only.

Image ``i`` of a split depends only on ``(seed, split, i)`` (as in :mod:`lightning_prune.data.synthetic`): the same
arguments give byte-identical files, and asking for more images appends new ones.

The four ``*-idx?-ubyte.gz`` files are read with numpy from ``source`` (default: where Debian's
``dataset-fashion-mnist`` package puts them, ``/usr/share/datasets/fashion-mnist``); nothing is downloaded.

Example (with a tiny idx file written on the spot; a real run reads the Debian package's files):
    >>> import gzip, tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from lightning_prune.data.fashion import make_fashion_dataset, write_idx
    >>> src = Path(tempfile.mkdtemp())
    >>> items = np.zeros((20, 28, 28), np.uint8); items[:, 6:22, 8:20] = 200
    >>> for part in ("train", "t10k"):
    ...     write_idx(src / f"{part}-images-idx3-ubyte.gz", items)
    ...     write_idx(src / f"{part}-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8) % 10)
    >>> root = make_fashion_dataset(tempfile.mkdtemp(), num_train=2, num_val=1, num_test=1, imgsz=64, source=src)
    >>> sorted(p.name for p in (root / "images" / "train").iterdir())
    ['000000.png', '000001.png']
    >>> (root / "data.yaml").read_text().count("\\n  ")   # ten class names
    10

Command line::

    python -m lightning_prune.data.fashion --root datasets/fashion --num-train 2000 --num-val 300 --num-test 500 \
        --imgsz 160 --seed 0
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from lightning_prune.data.yolo_format import SplitWriter, data_set_parser, report_written, write_data_yaml

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_SOURCE",
    "FashionItems",
    "FashionMnistMissing",
    "draw_fashion_image",
    "load_fashion_items",
    "main",
    "make_fashion_dataset",
    "read_idx",
    "write_idx",
]

CLASS_NAMES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_VAL_EVERY = 10  # every tenth item of Fashion-MNIST's train partition is held back for the val split
_MIN_VISIBLE = 0.5  # a product must keep at least this share of its pixels visible after later ones cover it
_IDX_DTYPES = {0x08: np.uint8}


class FashionMnistMissing(FileNotFoundError):
    """The Fashion-MNIST idx files are not where they were looked for."""


# -- idx files -----------------------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (gzip-compressed or plain), as Fashion-MNIST and MNIST ship them, into a numpy array.

    Raises:
        ValueError: naming the file, when it is not an unsigned-byte idx file of the size its header says.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable idx file ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"{path}: holds {len(data) - header} bytes of data, its header says shape {shape}")
    return np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed idx file (the format :func:`read_idx` reads); for tests and demos."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@dataclass(frozen=True)
class FashionItems:
    """The products one split may use: ``images`` (``N x 28 x 28`` uint8) and their class ``labels`` (``N``)."""

    images: np.ndarray
    labels: np.ndarray


@lru_cache(maxsize=4)
def _partition(source: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(source)
    images_file = folder / f"{part}-images-idx3-ubyte.gz"
    labels_file = folder / f"{part}-labels-idx1-ubyte.gz"
    for file in (images_file, labels_file):
        if not file.is_file():
            raise FashionMnistMissing(
                f"Fashion-MNIST file {file} not found: install it with `{INSTALL_HINT}` (Debian/Ubuntu) or pass "
                f"source= a folder holding the four *-idx?-ubyte.gz files")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{images_file} and {labels_file}: expected N x H x W images and N labels, got "
                         f"{images.shape} and {labels.shape}")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise ValueError(f"{labels_file}: class ids must be 0..{len(CLASS_NAMES) - 1}, found {int(labels.max())}")
    return images, labels


def load_fashion_items(split: str, source: str | os.PathLike = DEFAULT_SOURCE) -> FashionItems:
    """The Fashion-MNIST products a split may use (see the module docstring for which ones).

    Raises:
        FashionMnistMissing: one line naming the missing file and how to install the package.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    if split == "test":
        images, labels = _partition(str(source), "t10k")
        return FashionItems(images, labels)
    images, labels = _partition(str(source), "train")
    held_back = np.arange(len(images)) % _VAL_EVERY == 0
    keep = held_back if split == "val" else ~held_back
    if not keep.any():
        raise ValueError(f"{source}: the train partition has too few items to hold back a val share")
    return FashionItems(images[keep], labels[keep])


# -- drawing -------------------------------------------------------------------------------------------------------
def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D float array (pixel centres aligned, edges clamped)."""
    h, w = image.shape
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, imgsz: int, clutter: np.ndarray) -> np.ndarray:
    """A textured, cluttered background: a colour gradient, an oriented stripe texture, soft blobs and faint
    tiles cut from other products (so product-like edges also appear where there is nothing to detect)."""
    c0, c1 = rng.uniform(30, 225, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:imgsz, 0:imgsz].astype(np.float64) / max(imgsz - 1, 1)
    t = (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) / np.sqrt(0.5) / 2 + 0.5
    image = c0 + (c1 - c0) * t[..., None]
    freq, phase, theta = rng.uniform(4, 24), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * freq * (np.cos(theta) * xs + np.sin(theta) * ys) + phase)
    image += rng.uniform(5, 25) * stripes[..., None] * rng.uniform(0.5, 1.0, size=3)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0, imgsz, size=2)
        radius = rng.uniform(0.05, 0.3) * imgsz
        d2 = ((xs * (imgsz - 1) - cx) ** 2 + (ys * (imgsz - 1) - cy) ** 2) / radius**2
        image += rng.uniform(-45, 45, size=3) * np.exp(-d2)[..., None]
    for _ in range(int(rng.integers(2, 7))):  # clutter: low-contrast quarter tiles of random products
        src = clutter[int(rng.integers(0, len(clutter)))].astype(np.float64) / 255.0
        qy, qx = rng.integers(0, 2, size=2) * 14
        tile = src[qy:qy + 14, qx:qx + 14]
        side = int(rng.integers(max(4, imgsz // 16), max(5, imgsz // 5)))
        tile = _resize(tile, side, side)
        y, x = (int(v) for v in rng.integers(0, imgsz - side + 1, size=2))
        image[y:y + side, x:x + side] += rng.uniform(-60, 60, size=3) * tile[..., None]
    return image


def _product_color(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A tint that stands out from the local background colour."""
    for _ in range(20):
        color = rng.uniform(0, 255, size=3)
        if np.abs(color - background).sum() > 150:
            return color
    return 255.0 - background


def draw_fashion_image(rng: np.random.Generator, items: FashionItems, imgsz: int = 160, max_objects: int = 6,
                       size_range: tuple[float, float] = (0.1, 0.45), max_overlap: float = 0.5,
                       noise: float = 6.0) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """Draw one image (``imgsz x imgsz x 3`` uint8 RGB) and return it with its labels.

    Args:
        rng: the only source of randomness; the same generator state gives the same image.
        items: the products this image may show (and cut clutter from).
        imgsz: image side in pixels.
        max_objects: at most this many products (at least one).
        size_range: a product's side (its 28 x 28 frame) as a fraction of ``imgsz``, drawn log-uniformly so small
            products are as common as large ones.
        max_overlap: the most a new product's frame may cover of one already placed (relative to the smaller).
        noise: standard deviation of the Gaussian pixel noise added last.

    Returns:
        The image and one ``(cls, x0, y0, x1, y1)`` per visible product: its tight pixel box, clipped to what
        later products leave visible.
    """
    image = _background(rng, imgsz, items.images)
    owner = np.full((imgsz, imgsz), -1, dtype=np.int64)  # which product each pixel shows, for occlusion
    placed: list[tuple[int, np.ndarray, tuple[float, float, float, float]]] = []  # cls, own mask, frame
    lo, hi = np.log(size_range[0] * imgsz), np.log(size_range[1] * imgsz)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        index = int(rng.integers(0, len(items.labels)))
        side = max(8, int(round(float(np.exp(rng.uniform(lo, hi))))))
        side = min(side, imgsz)
        for _attempt in range(20):
            x0, y0 = (int(v) for v in rng.integers(0, imgsz - side + 1, size=2))
            frame = (x0, y0, x0 + side, y0 + side)
            if all(_overlap(frame, other) <= max_overlap for _, _, other in placed):
                break
        else:
            continue
        product = _resize(items.images[index].astype(np.float64) / 255.0, side, side)
        if rng.random() < 0.5:
            product = product[:, ::-1]
        alpha = np.clip(product * 3.0, 0.0, 1.0)  # the product's silhouette; its grey levels shade the tint
        region = image[y0:y0 + side, x0:x0 + side]
        color = _product_color(rng, region.mean(axis=(0, 1)))
        shade = (0.35 + 0.65 * product)[..., None] * color
        image[y0:y0 + side, x0:x0 + side] = region * (1 - alpha[..., None]) + shade * alpha[..., None]
        mask = np.zeros((imgsz, imgsz), dtype=bool)
        mask[y0:y0 + side, x0:x0 + side] = alpha > 0.5
        owner[mask] = len(placed)
        placed.append((int(items.labels[index]), mask, frame))
    labels = []
    for k, (cls, mask, _frame) in enumerate(placed):
        visible = owner == k
        if not mask.any() or visible.sum() < _MIN_VISIBLE * mask.sum():
            continue  # mostly hidden by later products: not a fair label
        rows, cols = np.nonzero(visible)
        labels.append((cls, float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)))
    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller of the two boxes' areas."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


# -- writing -------------------------------------------------------------------------------------------------------
def make_fashion_dataset(root: str | os.PathLike, num_train: int = 2000, num_val: int = 300, num_test: int = 500,
                         imgsz: int = 160, seed: int = 0, source: str | os.PathLike = DEFAULT_SOURCE,
                         max_objects: int = 6) -> Path:
    """Write the Fashion-MNIST detection set in YOLO format under ``root`` and return ``root`` (absolute).

    Args:
        root: output folder (created if missing); same layout and ``data.yaml`` as
            :func:`~lightning_prune.data.make_synthetic_dataset`.
        num_train, num_val, num_test: images per split (``num_test=0``: no ``test`` split).
        imgsz: image side in pixels.
        seed: image ``i`` of a split uses ``numpy.random.default_rng([seed, split, i])``.
        source: folder with Fashion-MNIST's four ``*-idx?-ubyte.gz`` files.
        max_objects: at most this many products per image.

    Raises:
        FashionMnistMissing: the idx files are not in ``source`` (one line saying how to install them); nothing
            is written then.
    """
    if num_train < 1 or num_val < 1 or num_test < 0:
        raise ValueError(f"need >= 1 train and val image and >= 0 test images, got {num_train}, {num_val}, "
                         f"{num_test}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be at least 32 pixels, got {imgsz}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    splits = {"train": num_train, "val": num_val, **({"test": num_test} if num_test else {})}
    sources = {split: load_fashion_items(split, source) for split in splits}  # fail before writing anything
    root = Path(root).expanduser().resolve()
    for split, count in splits.items():
        items = sources[split]

        def draw(i: int, split: str = split, items: FashionItems = items):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            return draw_fashion_image(rng, items, imgsz, max_objects=max_objects)

        SplitWriter(root, split, imgsz).write(count, draw)
    write_data_yaml(root, CLASS_NAMES, f"Fashion-MNIST scenes ({imgsz}x{imgsz}, seed {seed}) written by "
                    "lightning_prune.data.fashion", test="test" in splits)
    return root


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point: ``python -m lightning_prune.data.fashion --root DIR``."""
    parser = data_set_parser("python -m lightning_prune.data.fashion",
                             "Write the Fashion-MNIST scenes detection data set (YOLO format).", 2000, 300, 500)
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help=f"idx files folder (default: {DEFAULT_SOURCE})")
    args = parser.parse_args(argv)
    try:
        root = make_fashion_dataset(args.root, args.num_train, args.num_val, args.num_test, args.imgsz, args.seed,
                                    args.source)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    report_written(args, root)
    return root


if __name__ == "__main__":
    main()
