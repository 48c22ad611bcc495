"""The deployed form of a model, what latency targets are measured on: a deep copy in eval mode with every
convolution's BatchNorm folded into it (the model itself is never touched).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    >>> deployed = deployed_copy(net)
    >>> [type(m).__name__ for m in deployed], net.training, deployed.training
    (['Conv2d', 'Identity', 'ReLU'], True, False)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> torch.allclose(deployed(x), net.eval()(x), atol=1e-5)
    True
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["deployed_copy", "fuse_batchnorms"]


def _fusable(conv: object, bn: object) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fuse_batchnorms(model: nn.Module) -> int:
    """Fold, in place and in eval mode, each BatchNorm that directly follows a conv: an ``nn.Sequential``'s
    ``Conv2d, BatchNorm2d`` pair, and a module with ``conv`` and ``bn`` attributes whose forward is
    ``act(bn(conv(x)))`` (ultralytics ``Conv``; its ``forward_fuse`` is used afterwards). Returns how many."""
    model.eval()
    fused = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, conv), (bn_name, bn) in zip(children, children[1:]):
                if _fusable(conv, bn):
                    fused_conv = fuse_conv_bn_eval(conv, bn)
                    conv.weight, conv.bias = fused_conv.weight, fused_conv.bias
                    setattr(module, bn_name, nn.Identity())
                    fused += 1
        elif _fusable(getattr(module, "conv", None), getattr(module, "bn", None)) \
                and hasattr(module, "forward_fuse"):
            fused_conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.conv.weight, module.conv.bias = fused_conv.weight, fused_conv.bias
            delattr(module, "bn")
            module.forward = module.forward_fuse
            fused += 1
    return fused


def deployed_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with its BatchNorms folded (see :func:`fuse_batchnorms`).

    A Lightning module's trainer is shared, not copied.
    """
    memo: dict[int, object] = {}
    trainer = model.__dict__.get("_trainer")
    if trainer is not None:
        memo[id(trainer)] = trainer
    clone = copy.deepcopy(model, memo)
    fuse_batchnorms(clone)
    return clone.eval()
