"""Small helpers every layer of the package shares: walking nested tensor containers and calling models."""

from lightning_prune.utils.model import call_model, eval_mode, model_device
from lightning_prune.utils.tree import iter_tensors, map_tensors

__all__ = ["call_model", "eval_mode", "iter_tensors", "map_tensors", "model_device"]
