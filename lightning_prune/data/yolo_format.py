"""Writing a generated data set in the YOLO layout: deterministic PNG bytes, label files and ``data.yaml``.

Shared by :mod:`lightning_prune.data.synthetic` and :mod:`lightning_prune.data.fashion`. Only numpy is needed.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from lightning_prune.data.yolo_format import SplitWriter, write_data_yaml
    >>> root = tempfile.mkdtemp()
    >>> SplitWriter(root, "train", imgsz=32).write(2, lambda i: (np.zeros((32, 32, 3), np.uint8), [(0, 8, 8, 24, 24)]))
    >>> open(f"{root}/labels/train/000001.txt").read()
    '0 0.500000 0.500000 0.500000 0.500000\\n'
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["Box", "SplitWriter", "write_data_yaml", "write_png", "yolo_line"]

Box = tuple[int, float, float, float, float]
"""One object: class index and its pixel box ``x0, y0, x1, y1`` (exclusive right/bottom)."""


def yolo_line(box: Sequence[float], imgsz: int) -> str:
    """A YOLO label line ``cls cx cy w h`` (normalised by the image side) for ``(cls, x0, y0, x1, y1)``."""
    cls, x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz
    return f"{int(cls)} {cx:.6f} {cy:.6f} {(x1 - x0) / imgsz:.6f} {(y1 - y0) / imgsz:.6f}"


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an ``H x W x 3`` uint8 RGB (or ``H x W`` grey) array as a PNG; deterministic bytes for the same array."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"write_png needs an HxW or HxWx3 uint8 array, got shape {image.shape}")
    height, width = image.shape[:2]
    rows = image.reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()  # filter 0 on each row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


class SplitWriter:
    """Writes one split (``images/<split>/NNNNNN.png`` and ``labels/<split>/NNNNNN.txt``) of a data set root.

    Files of an earlier, larger run into the same root are removed, and so is ultralytics' label cache of the split
    (it would be stale).
    """

    def __init__(self, root: str | os.PathLike, split: str, imgsz: int) -> None:
        self.root, self.split, self.imgsz = Path(root), split, imgsz

    def write(self, count: int, draw: Callable[[int], tuple[np.ndarray, Sequence[Sequence[float]]]]) -> None:
        """Write images ``0..count-1``, image ``i`` and its boxes ``(cls, x0, y0, x1, y1)`` drawn by ``draw(i)``."""
        image_dir, label_dir = self.root / "images" / self.split, self.root / "labels" / self.split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        names = {f"{i:06d}" for i in range(count)}
        for stale in [*image_dir.glob("[0-9]" * 6 + ".png"), *label_dir.glob("[0-9]" * 6 + ".txt")]:
            if stale.stem not in names:
                stale.unlink()
        (self.root / "labels" / f"{self.split}.cache").unlink(missing_ok=True)
        for i in range(count):
            image, boxes = draw(i)
            write_png(image_dir / f"{i:06d}.png", image)
            (label_dir / f"{i:06d}.txt").write_text("".join(yolo_line(b, self.imgsz) + "\n" for b in boxes))


def write_data_yaml(root: str | os.PathLike, names: Sequence[str], title: str, test: bool) -> Path:
    """Write ``root/data.yaml`` (path, train, val, test when ``test``, nc, names) and return its path."""
    root = Path(root)
    lines = [
        f"# {title}",
        f"path: {json.dumps(str(root))}",  # a JSON string is a valid double-quoted YAML scalar
        "train: images/train",
        "val: images/val",
        *(["test: images/test"] if test else []),
        f"nc: {len(names)}",
        "names:",
        *(f"  {i}: {name}" for i, name in enumerate(names)),
    ]
    path = root / "data.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def data_set_parser(prog: str, description: str, num_train: int, num_val: int, num_test: int,
                    imgsz: int = 160) -> argparse.ArgumentParser:
    """The command line every generated set shares: ``--root``, the three split sizes, ``--imgsz`` and ``--seed``
    (with these defaults); a set adds its own options to it."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--root", required=True, help="output folder")
    for split, default, what in (("train", num_train, "training"), ("val", num_val, "validation"),
                                 ("test", num_test, "held-out test")):
        parser.add_argument(f"--num-{split}", type=int, default=default, help=f"{what} images (default: {default})")
    parser.add_argument("--imgsz", type=int, default=imgsz, help=f"image side in pixels (default: {imgsz})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def report_written(args: argparse.Namespace, root: Path) -> None:
    """The one line a generator prints after writing a set."""
    print(f"wrote {args.num_train} train + {args.num_val} val + {args.num_test} test images to {root}; "
          f"data set file: {root / 'data.yaml'}")
