"""Small helpers every layer of the package shares: walking nested tensor containers, calling models and writing
files safely (atomically, into private per-user folders)."""

from lightning_prune.utils.files import InsecureDirectoryError, atomic_write, private_dir, user_cache_dir
from lightning_prune.utils.model import call_model, eval_mode, model_device
from lightning_prune.utils.tree import iter_tensors, map_tensors

__all__ = ["InsecureDirectoryError", "atomic_write", "call_model", "eval_mode", "iter_tensors", "map_tensors",
           "model_device", "private_dir", "user_cache_dir"]
