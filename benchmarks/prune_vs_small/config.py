"""The protocol's numbers, in one place: the data set, the models and each training's length."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "prune_vs_small"


@dataclass(frozen=True)
class DataConfig:
    """The Fashion-MNIST scenes set every arm trains on (train), selects on (val) and is reported on (test)."""

    imgsz: int = 160
    num_train: int = 1200
    num_val: int = 300
    num_test: int = 500
    seed: int = 0

    def folder_name(self) -> str:
        return f"fashion-{self.imgsz}px-seed{self.seed}-{self.num_train}-{self.num_val}-{self.num_test}"


@dataclass(frozen=True)
class TrainConfig:
    """One ultralytics training (the same trainer and defaults for every arm; only epochs and extras differ)."""

    epochs: int
    batch: int = 16
    close_mosaic: int = 20
    optimizer: str = "auto"
    extra: dict = field(default_factory=dict)  # further ultralytics train() arguments (distill_model, dis, ...)


@dataclass(frozen=True)
class Protocol:
    """What the regime check and the comparison rest on.

    ``base_epochs`` and ``small_epochs`` are fixed lengths with ultralytics' linear LR decay to ``lrf``; the report
    checks the plateau criterion on each run's validation history: the best val mAP50-95 of the last
    ``plateau_window`` epochs is less than ``plateau_gain`` above the best before them.
    """

    data: DataConfig = DataConfig()
    base_model: str = "yolov8n.yaml"
    small_width: float = 0.125  # ultralytics' narrower sibling of YOLOv8n: half its width_multiple (0.25)
    base_epochs: int = 100  # the first length; the base now trains LENGTHS.base (see :class:`Lengths`)
    small_epochs: int = 100  # the first length; the small arms now train LENGTHS.small (see :class:`Lengths`)
    finetune_epochs: int = 25  # the first length (a quarter of the first base's); now LENGTHS.finetune
    plateau_window: int = 10
    plateau_gain: float = 0.005
    regime_gap: float = 0.03  # the base must beat the small model by this much mAP50-95 on test
    deploy_imgsz: int = 160
    threads: int = 1

    def digest(self, arm: str, seed: int, train: TrainConfig, spec: dict | None = None) -> str:
        """A short hash of everything that decides an arm's result (the revision is recorded beside it); ``spec``:
        the arm's own settings beyond its training (pruning schedule, ...)."""
        content = {"protocol": dataclasses.asdict(self), "arm": arm, "seed": seed, "train": dataclasses.asdict(train)}
        if spec:
            content["spec"] = spec
        payload = json.dumps(content, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


PROTOCOL = Protocol()


@dataclass(frozen=True)
class Pruning:
    """How the pruning arms prune: steps at the start of these fine-tuning epochs (kept out of :class:`Protocol`
    so that adding it left the digests of the base and small runs as they were)."""

    schedule: tuple[int, ...] = (0, 4, 8)
    close_mosaic: int = 10


PRUNING = Pruning()


@dataclass(frozen=True)
class Lengths:
    """How long the base and the small arms train, revised after finished runs missed the plateau criterion (kept
    out of :class:`Protocol` so that runs a revision does not touch keep their digests; a revised arm's digest
    changes with its epochs, and so do the digests of the arms that start from it or learn from it).

    - small: 100 epochs (``Protocol.small_epochs``) left the small model, seed 0, 0.59 points over the best before
      its last 10 epochs (criterion < 0.5); at 150 it is at its plateau (+0.23).
    - base: 100 epochs (``Protocol.base_epochs``) passed on seed 0 (+0.16) but not on seed 1 (+0.68); the base
      trains 150, as long as the small model then.
    - small, again: at 150 epochs seed 0 passed (+0.23) but seed 1 did not (+0.63); the small arms train 200.
    - finetune: the pruning arms' fine-tuning, at most a quarter of the base's epochs (the issue's cap): 25 of the
      first 100, now 37 of 150 — set before any pruning arm of the comparison ran (in the exploration, uniform L1 +
      distillation and Torch-Pruning were still gaining 3.6-3.9 points over their last 10 of 25 epochs).
    - base, again: at 150 epochs seeds 0 and 2 passed (-0.14, +0.16) but seed 1 did not (+0.51); the base trains
      200, as long as the small model, and the pruning arms fine-tune 50 (a quarter of it, the cap as before).
      Decided before any 200-epoch run: this is the last revision. A run that misses the criterion at these lengths
      is reported as missing it (the regime check then says not passed, with the gain), the lengths do not grow again.
    """

    base: int = 200
    small: int = 200
    finetune: int = 50


LENGTHS = Lengths()
