"""Run by tests/test_distributed.py: a 2-process CPU (gloo) DDP fit with IterativePruningCallback.

Lightning's "ddp" strategy re-launches this script for rank 1; every rank writes its final architecture and
pruning history to ``<out>/rank<k>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_prune import count_flops
from lightning_prune.callbacks import IterativePruningCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "toy"))
from toy import ConcatNet, SyntheticClasses  # noqa: E402


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = ConcatNet()
    flops_before = count_flops(model, model.example_input_array)
    pruning = IterativePruningCallback(schedule=[1, 2], target=0.4, strategy="sensitivity", monitor="val/acc",
                                       sensitivity_batches=2, verbose=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, limit_train_batches=4,
                         limit_val_batches=2, callbacks=[pruning], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    data = SyntheticClasses()
    trainer.fit(model, data.train_dataloader(), data.val_dataloader())
    result = {
        "rank": trainer.global_rank,
        "shapes": {name: list(p.shape) for name, p in model.named_parameters()},
        "history": [{"epoch": e["epoch"], "plan": e["plan"]} for e in pruning.history],
        "flops_ratio": count_flops(model, model.example_input_array.to(model.device)) / flops_before,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
