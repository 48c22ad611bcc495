"""LightningCLI entry point for the toy example.

    python examples/toy/main.py fit --config examples/toy/config.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toy import ConcatNet, SyntheticClasses  # noqa: E402


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(ConcatNet, SyntheticClasses, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
