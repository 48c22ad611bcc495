"""Train a YOLO detector with Lightning and prune it iteratively to half its FLOPs — from a YAML config.

    YOLO_OFFLINE=1 python examples/yolo/main.py fit --config examples/yolo/quick.yaml

The data set is the deterministic synthetic shapes set (generated on first use), so nothing is downloaded. After
``fit`` the pruned detector is written with :func:`~lightning_prune.integrations.ultralytics.save_yolo` to
``--save_yolo`` (default ``pruned.pt`` in the run's log folder): ``ultralytics.YOLO(path)`` loads it, predicts and
exports it.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from lightning_prune.integrations.ultralytics import YOLODataModule, YOLOModule, save_yolo  # noqa: E402


class PruneYOLOCLI(LightningCLI):
    """LightningCLI that also saves the (pruned) detector for ultralytics after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--save_yolo", type=str | None, default=None,
                            help="where to write the ultralytics checkpoint after fit (default: <log dir>/pruned.pt)")
        parser.link_arguments("data.imgsz", "model.imgsz")

    def after_fit(self) -> None:
        target = self.config[self.subcommand].get("save_yolo")
        if target is None:
            target = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "pruned.pt"
        if self.trainer.is_global_zero:
            path = save_yolo(self.model, target, data=getattr(self.datamodule, "data_yaml", None))
            print(f"pruned detector saved for ultralytics: {path}  (ultralytics.YOLO('{path}'))")


def main(args: list[str] | None = None) -> PruneYOLOCLI:
    return PruneYOLOCLI(YOLOModule, YOLODataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
