"""What the pruning callback needs from a Lightning strategy: a communicator, a surgery guard for DDP, and a
refusal of the sharded strategies it cannot prune under.

Two private members of Lightning's DDP strategy are used, both here and nowhere else: ``_setup_model`` (to wrap the
pruned module in a fresh ``DistributedDataParallel``) and ``_register_ddp_hooks`` (to re-register communication
hooks). ``tests/test_distributed.py`` fails loudly if Lightning renames them.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

__all__ = ["StrategyCommunicator", "check_strategy", "ddp_surgery_guard"]

_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def check_strategy(strategy: Any) -> None:
    """``ValueError`` for strategies that shard parameters (a pruned shard cannot be sliced consistently)."""
    for cls in type(strategy).__mro__:
        if cls.__name__ in _SHARDED:
            raise ValueError(f"IterativePruningCallback cannot prune under {type(strategy).__name__}: it shards the "
                             "parameters; use strategy='ddp' (or a single device)")


class StrategyCommunicator:
    """:class:`~lightning_prune.pruning.Communicator` over a Lightning strategy (objects, any picklable value)."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer
        self.rank = trainer.global_rank
        self.world_size = trainer.world_size

    def broadcast(self, obj: Any) -> Any:
        if self.world_size <= 1:
            return obj
        return self._trainer.strategy.broadcast(obj, src=0)

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world_size <= 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def ddp_surgery_guard(trainer: Any) -> Any:
    """A context-manager factory: drop the DDP wrapper before surgery and wrap again after. DDP's reducer keeps
    every parameter's gradient accumulator alive, and those remember the old shapes."""

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        from torch.nn.parallel import DistributedDataParallel

        strategy = trainer.strategy
        if not isinstance(strategy.model, DistributedDataParallel):
            yield
            return
        strategy.model = strategy.lightning_module
        gc.collect()
        try:
            yield
        finally:
            strategy.model = strategy._setup_model(strategy.lightning_module)
            register_hooks = getattr(strategy, "_register_ddp_hooks", None)
            if register_hooks is not None:
                register_hooks()

    return guard
