"""What each arm trains. An arm is a model to start from, an ultralytics training, and (for the pruning arms) the
pruning and distillation set on the model before it trains.

The arms that need the distillation of issue 37 join this registry as that lands; ``ARMS`` lists those that run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.prune_vs_small.config import PROTOCOL, Protocol, TrainConfig


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison.

    Attributes:
        name: folder and table name.
        summary: one line for the report.
        train: the training's configuration (its ``extra`` may name files of other arms, resolved at run time).
        start: ``"base-yaml"``, ``"small-yaml"`` (random init from the YAML) or ``"base-weights"`` (the same seed's
            finished base).
        needs: arms of the same seed that must have finished first.
        setup: called with the ultralytics ``YOLO`` model and a context dict before ``train`` (adds pruning).
    """

    name: str
    summary: str
    train: TrainConfig
    start: str
    needs: tuple[str, ...] = ()
    setup: Callable[[Any, dict], None] | None = field(default=None, compare=False)


def small_yaml(protocol: Protocol, folder: Path) -> Path:
    """ultralytics' narrower sibling of the base: the base YAML at ``small_width``, written to ``folder``."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = copy.deepcopy(yaml_model_load(protocol.base_model))
    scale = cfg.get("scale") or next(iter(cfg["scales"]))
    depth, _, max_channels = cfg["scales"][scale]
    cfg["scales"] = {scale: [depth, protocol.small_width, max_channels]}
    for key in ("yaml_file", "ch"):
        cfg.pop(key, None)
    path = folder / f"{Path(protocol.base_model).stem}-w{protocol.small_width:g}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _arms(protocol: Protocol) -> dict[str, Arm]:
    arms = [
        Arm("base", f"{protocol.base_model} from scratch to its plateau ({protocol.base_epochs} epochs)",
            TrainConfig(epochs=protocol.base_epochs), start="base-yaml"),
        Arm("small", f"the narrower sibling (width {protocol.small_width:g}) from scratch to its plateau "
            f"({protocol.small_epochs} epochs)", TrainConfig(epochs=protocol.small_epochs), start="small-yaml"),
    ]
    return {arm.name: arm for arm in arms}


ARMS: dict[str, Arm] = _arms(PROTOCOL)
