"""How the loop talks to other processes: rank 0 decides, everyone gets the same answer.

The core loop never imports ``torch.distributed`` strategies itself: a front-end hands it a :class:`Communicator`
(Lightning's strategy, ultralytics' DDP, ...). Everything random or measured — plans, latency readings, the decision
to make one more correction — is computed on rank 0 and broadcast, so ranks cannot diverge.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Communicator", "LocalCommunicator", "TorchDistributedCommunicator"]


@runtime_checkable
class Communicator(Protocol):
    """What the loop needs from a process group."""

    rank: int
    world_size: int

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""


class LocalCommunicator:
    """One process.

    Example:
        >>> comm = LocalCommunicator()
        >>> comm.broadcast(3), comm.all_gather("a")
        (3, ['a'])
    """

    rank = 0
    world_size = 1

    def broadcast(self, obj: Any) -> Any:
        return obj

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]


class TorchDistributedCommunicator:
    """The default process group of ``torch.distributed`` (picklable objects)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(gathered, obj)
        return gathered
