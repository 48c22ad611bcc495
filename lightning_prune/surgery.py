"""Deprecated: moved to :mod:`lightning_prune.graph.surgery`; this path goes in the next release."""

from lightning_prune.utils.deprecation import moved_names, moving

__getattr__ = moved_names(__name__, moving(["ParamChange", "Surgery", "sync_module_attributes"],
                                           "lightning_prune.graph.surgery"))
