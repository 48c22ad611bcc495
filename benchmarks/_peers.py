"""The peer tools, driven the way their own documentation and examples drive them, for the benchmark scripts.

* Torch-Pruning (``torch-pruning`` on PyPI, MIT): ``tp.pruner.MagnitudePruner`` with ``MagnitudeImportance(p=1)``
  (L1 of each filter's weights, the same criterion as our ``l1``), the output head left alone through
  ``ignored_layers`` as in its examples, and its ``iterative_steps`` idiom to reach a FLOPs target: step the pruning
  ratio up until the model's FLOPs fall to the target.
* Torch-Pruning cannot prune ultralytics' ``C2f``/``C3k2``/``C2PSA`` blocks as written (their ``chunk``/``split`` of
  one conv's output breaks its index mapping); its YOLOv8 example first rewrites those blocks so that the split is
  two separate convs. :func:`split_csp_blocks` does that rewrite here (our own code, same outputs): the model "it can
  handle".
* Lightning's ``ModelPruning`` callback: ``torch.nn.utils.prune.ln_structured`` (L1 over whole filters, ``dim=0``)
  on every conv/linear weight but the output layers. It zeroes filters behind masks and never removes them, so the
  model keeps its FLOPs, parameter count and latency.

Only the benchmarks import this module; the peers are benchmark-only dependencies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_prune import count_flops

__all__ = [
    "output_layers",
    "split_csp_blocks",
    "tp_pruner",
    "tp_prune_to_flops",
    "tp_step_keeping_params",
    "modelpruning_targets",
    "modelpruning_apply",
    "zeroed_filter_fraction",
]


# -- which layers a peer must leave alone ------------------------------------------------------------------------------
def _is_ultralytics(model: nn.Module) -> bool:
    return isinstance(getattr(model, "model", None), nn.Sequential) and hasattr(model.model[-1], "stride")


def output_layers(model: nn.Module) -> list[nn.Module]:
    """What a peer user marks as not-to-be-pruned: an ultralytics model's whole output head (``model.model[-1]``,
    as Torch-Pruning's YOLOv8 example does), or a classifier's last ``nn.Linear``."""
    if _is_ultralytics(model):
        return [model.model[-1]]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _inside(module: nn.Module, roots: list[nn.Module]) -> bool:
    return any(module is sub for root in roots for sub in root.modules())


# -- Torch-Pruning ---------------------------------------------------------------------------------------------------
class _SplitCSP(nn.Module):
    """An ultralytics CSP block (``cv1`` → split in two → ``m`` → ``cv2``) with ``cv1``'s two halves as two convs
    (``cv1a``, ``cv1b``) instead of one conv whose output is split; subclasses give the block's forward."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.cv1a, self.cv1b = _halves(block.cv1, block.c)
        self.m, self.cv2 = block.m, block.cv2
        _copy_routing(block, self)


class _SplitC2f(_SplitCSP):
    """``C2f``/``C3k2`` without ``chunk(2, 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1a(x), self.cv1b(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class _SplitC2PSA(_SplitCSP):
    """``C2PSA`` without ``split((c, c), 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1a(x), self.m(self.cv1b(x))
        return self.cv2(torch.cat((a, b), 1))


def _halves(conv_block: nn.Module, c: int) -> tuple[nn.Module, nn.Module]:
    """Two copies of an ultralytics ``Conv`` (conv + BN + act) keeping output channels ``[:c]`` and ``[c:]``."""
    halves = []
    for part in (slice(0, c), slice(c, 2 * c)):
        half = copy.deepcopy(conv_block)
        conv, bn = half.conv, half.bn
        conv.weight = nn.Parameter(conv.weight.data[part].clone())
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[part].clone())
        conv.out_channels = c
        bn.weight = nn.Parameter(bn.weight.data[part].clone())
        bn.bias = nn.Parameter(bn.bias.data[part].clone())
        bn.running_mean = bn.running_mean[part].clone()
        bn.running_var = bn.running_var[part].clone()
        bn.num_features = c
        halves.append(half)
    return halves[0], halves[1]


def _copy_routing(src: nn.Module, dst: nn.Module) -> None:
    # ultralytics' DetectionModel routes tensors by these attributes of each top-level layer
    for attr in ("f", "i", "type", "np"):
        if hasattr(src, attr):
            setattr(dst, attr, getattr(src, attr))
    dst.train(src.training)


def split_csp_blocks(model: nn.Module) -> int:
    """Rewrite every ultralytics ``C2f``/``C3k2``/``C2PSA`` in ``model`` so ``cv1``'s output is not split (in place,
    same outputs); returns how many blocks were rewritten. Torch-Pruning needs this; lightning_prune does not."""
    try:
        from ultralytics.nn.modules.block import C2PSA, C2f
    except ImportError:
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, C2f) and type(child).forward is C2f.forward:
                setattr(parent, name, _SplitC2f(child))
            elif isinstance(child, C2PSA):
                setattr(parent, name, _SplitC2PSA(child))
            else:
                continue
            count += 1
    return count


def tp_pruner(model: nn.Module, example_input: torch.Tensor, pruning_ratio: float, iterative_steps: int,
              round_to: int | None = None) -> Any:
    """Torch-Pruning's magnitude (L1) pruner over ``model`` with its output layers ignored (``round_to``: its own
    option, channel counts in multiples of it)."""
    import torch_pruning as tp

    return tp.pruner.MagnitudePruner(model, example_input, importance=tp.importance.MagnitudeImportance(p=1),
                                     pruning_ratio=pruning_ratio, iterative_steps=iterative_steps,
                                     ignored_layers=output_layers(model), round_to=round_to)


def tp_prune_to_flops(model: nn.Module, example_input: torch.Tensor, target: float = 0.5, max_ratio: float = 0.9,
                      steps: int = 90, flops: Callable[[nn.Module], int] | None = None,
                      round_to: int | None = None) -> dict[str, Any]:
    """Prune ``model`` in place with Torch-Pruning until its FLOPs are at most ``(1 - target)`` of the start.

    Torch-Pruning's knob is a per-layer channel ratio, not FLOPs; its documented way to hit a FLOPs budget is to
    raise the ratio in ``iterative_steps`` and stop at the first step under budget (here: steps of
    ``max_ratio / steps`` = 1 % of channels). Returns the channel ratio reached, the steps taken and the FLOPs
    before and after (our counter, ``torch.utils.flop_counter``, for every tool alike).
    """
    flops = flops or (lambda m: count_flops(m, example_input))
    model.eval()
    base = flops(model)
    pruner = tp_pruner(model, example_input, max_ratio, steps, round_to)
    after, taken = base, 0
    for taken in range(1, steps + 1):  # noqa: B007 - the count is the result
        pruner.step()
        after = flops(model)
        if after <= (1.0 - target) * base:
            break
    return {"ratio": max_ratio * taken / steps, "steps": taken, "flops_before": base, "flops_after": after}


def tp_step_keeping_params(pruner: Any, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """One ``pruner.step()``, then the optimizer is pointed at the new parameters Torch-Pruning created (their
    optimizer state is dropped: its shapes no longer fit).

    Torch-Pruning swaps in new ``nn.Parameter`` objects, so its examples build a new optimizer after pruning — which
    also restarts a learning-rate schedule. Swapping the parameters inside the existing optimizer keeps the schedule
    running, as our callback does. (Keeping the old objects and assigning ``.data`` does not work here: the pruner
    keeps the autograd graph of its tracing forward alive, and with it each parameter's gradient accumulator, whose
    recorded shape then no longer matches.)"""
    before = {(id(mod), name): (mod, name, p) for mod in model.modules()
              for name, p in mod.named_parameters(recurse=False)}
    pruner.step()
    if optimizer is None:
        return
    swapped = {}
    for mod, name, old in before.values():
        new = getattr(mod, name, None)
        if isinstance(new, nn.Parameter) and new is not old:
            swapped[id(old)] = new
            optimizer.state.pop(old, None)
    for group in optimizer.param_groups:
        group["params"] = [swapped.get(id(p), p) for p in group["params"]]


# -- Lightning's ModelPruning ----------------------------------------------------------------------------------------
def modelpruning_targets(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` of every conv/linear outside the output layers: what ``ModelPruning`` masks."""
    keep = output_layers(model)
    return [(m, "weight") for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not _inside(m, keep)]


def modelpruning_apply(model: nn.Module, amount: float) -> Any:
    """Lightning's ``ModelPruning`` (structured L1 over filters, per layer) applied once, outside a Trainer, and
    made permanent; returns the callback."""
    from lightning.pytorch.callbacks import ModelPruning

    callback = ModelPruning("ln_structured", parameters_to_prune=modelpruning_targets(model), amount=amount,
                            use_global_unstructured=False, pruning_dim=0, pruning_norm=1,
                            use_lottery_ticket_hypothesis=False, verbose=0)
    callback.apply_pruning(amount)
    callback.make_pruning_permanent(model)
    return callback


def zeroed_filter_fraction(model: nn.Module) -> float:
    """Fraction of conv/linear output filters (outside the output layers) whose weights are all zero."""
    zero = total = 0
    for module, name in modelpruning_targets(model):
        weight = getattr(module, name).detach()
        per_filter = weight.flatten(1).abs().sum(1)
        zero += int((per_filter == 0).sum())
        total += per_filter.numel()
    return zero / total if total else 0.0
