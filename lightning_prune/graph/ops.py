"""How each torch operation moves channel labels from its inputs to its outputs.

Every handler receives the tracer (typed as :class:`~lightning_prune.graph.protocol.Tracer`: this module never
imports the tracer, nor the tracer this one), the already-computed output, and the call's arguments. It either (a)
gives the outputs the labels they carry, binding parameter dimensions on the way, or (b) pins the channels it cannot
account for, with a reason naming the op and the module. It never guesses: an operation not listed here pins the
channels of every labelled input.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lightning_prune.graph.protocol import Handler, Tracer
from lightning_prune.graph.records import (
    ChannelInfo,
    LayerCall,
    OpCall,
    Role,
    SplitRecord,
    channel_info,
    set_channel_info,
)
from lightning_prune.profiling.flops import conv_flops, linear_flops
from lightning_prune.utils.tree import iter_tensors, map_tensors

__all__ = ["RESHAPES", "handle", "is_pointwise", "op_name"]

_HANDLERS: dict[str, Handler] = {}

# Pass-through ops whose aten twin has no ``pointwise`` tag but which act channel by channel.
_EXTRA_POINTWISE = {
    "hardswish", "hardsigmoid", "relu6", "celu", "selu", "elu", "softplus", "softsign", "logsigmoid", "tanhshrink",
    "threshold", "rrelu", "hardshrink", "softshrink", "silu", "mish", "gelu", "floor_divide", "copy",
}
_IDENTITY = {
    "contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda",
    "requires_grad", "data", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "identity",
}
_SPATIAL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "lp_pool1d", "lp_pool2d", "lp_pool3d",
    "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "fractional_max_pool2d",
    "fractional_max_pool3d",
}
_CREATORS = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like", "new_zeros",
    "new_ones", "new_full", "new_empty", "new_tensor", "dim", "numel", "dtype", "device", "grad",
    "is_contiguous", "stride", "storage_offset", "element_size", "data_ptr", "tolist", "item", "meshgrid",
}
_REDUCTIONS = {
    "sum", "mean", "amax", "amin", "max", "min", "std", "var", "prod", "logsumexp", "nansum", "nanmean", "median",
    "norm", "argmax", "argmin", "all", "any", "count_nonzero",
}
_DUNDER = {"truediv": "div", "floordiv": "floor_divide", "and": "bitwise_and", "or": "bitwise_or",
           "xor": "bitwise_xor", "invert": "bitwise_not", "lshift": "bitwise_left_shift",
           "rshift": "bitwise_right_shift", "abs": "abs", "neg": "neg", "pos": "positive"}


def op_name(func: Any) -> str:
    """A normalised name: ``Tensor.__iadd__`` -> ``add``, ``relu_`` -> ``relu``, ``Tensor.T.__get__`` -> ``T``."""
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        if core in _DUNDER:
            return _DUNDER[core]
        if core[:1] in ("r", "i") and core[1:] and (core[1:] in _DUNDER or _aten_pointwise(core[1:])):
            return _DUNDER.get(core[1:], core[1:])
        return core
    name = name.lstrip("_") or name
    return name[:-1] if name.endswith("_") else name


@functools.cache
def _aten_pointwise(name: str) -> bool:
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    try:
        return any(torch.Tag.pointwise in getattr(packet, overload).tags for overload in packet.overloads())
    except Exception:
        return False


def is_pointwise(name: str) -> bool:
    return name in _EXTRA_POINTWISE or _aten_pointwise(name)


def handle(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Propagate labels for one operation (the tracer has already run it and holds ``out``)."""
    handler = _HANDLERS.get(name)
    if handler is not None:
        handler(tracer, name, func, args, kwargs, out)
    elif name in _CREATORS or not any(True for _ in iter_tensors(out)):
        return  # a new constant or a Python value: channels are untouched
    elif name in _IDENTITY:
        _same_channels(tracer, args[0], out)
    elif name in _SPATIAL:
        _spatial(tracer, name, func, args, kwargs, out)
    elif name in _REDUCTIONS:
        _reduction(tracer, name, func, args, kwargs, out)
    elif is_pointwise(name):
        _pointwise(tracer, name, func, args, kwargs, out)
    else:
        _unsupported(tracer, name, args, kwargs, out)


def _register(*names: str) -> Callable[[Handler], Handler]:
    def decorate(fn: Handler) -> Handler:
        for name in names:
            _HANDLERS[name] = fn
        return fn

    return decorate


def _arg(args: tuple, kwargs: dict, index: int, key: str, default: Any = None) -> Any:
    if key in kwargs:
        return kwargs[key]
    return args[index] if len(args) > index else default


def _unsupported(tracer: Tracer, name: str, args: tuple, kwargs: dict, out: Any, why: str = "") -> None:
    reason = f"unsupported op '{name}' in {tracer.where}" + (f": {why}" if why else "")
    tracer.pin((args, list(kwargs.values())), reason)
    for tensor in iter_tensors(out):
        set_channel_info(tensor, None)


def _label(out: torch.Tensor, dim: int, labels: np.ndarray, taint: str | None) -> None:
    if not isinstance(out, torch.Tensor):
        return
    if dim < 0 or dim >= out.ndim or out.shape[dim] != len(labels):
        raise ValueError(f"labels do not fit output shape {tuple(out.shape)} at dim {dim}")
    set_channel_info(out, ChannelInfo(dim, labels, taint))


def _same_channels(tracer: Tracer, source: Any, out: Any) -> None:
    info = channel_info(source)
    if info is None or not isinstance(out, torch.Tensor):
        return
    if out.ndim == source.ndim and out.shape[info.dim] == len(info.labels):
        _label(out, info.dim, info.labels, info.taint)
    else:
        tracer.pin(source, f"op in {tracer.where} changed the channel layout")


def _record_op(tracer: Tracer, kind: str, inputs: list[torch.Tensor], labels: np.ndarray, **params: Any) -> None:
    """Remember a weightless op that moves channels ``labels`` (for the latency cost model; 4-d tensors, channels on
    dim 1, the layout the cost model re-runs ops in)."""
    if all(isinstance(t, torch.Tensor) and t.ndim == 4 for t in inputs) and len(labels):
        tracer.result.op_calls.append(OpCall(kind, tracer.where, [tuple(int(s) for s in t.shape) for t in inputs],
                                             params, np.asarray(labels)))


def _as_pair(value: Any) -> list[int]:
    if isinstance(value, (tuple, list)):
        return [int(v) for v in value] * (2 if len(value) == 1 else 1)
    return [int(value)] * 2


def _record_spatial(tracer: Tracer, name: str, args: tuple, kwargs: dict, x: torch.Tensor,
                    out: torch.Tensor, info: ChannelInfo) -> None:
    if info.dim != 1 or x.ndim != 4:
        return
    if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        kernel = _as_pair(_arg(args, kwargs, 1, "kernel_size"))
        stride = _arg(args, kwargs, 2, "stride")
        params: dict[str, Any] = {"kernel": kernel, "stride": _as_pair(stride) if stride not in (None, [], ()) else
                                  kernel, "padding": _as_pair(_arg(args, kwargs, 3, "padding", 0)),
                                  "ceil_mode": bool(_arg(args, kwargs, 5 if name != "avg_pool2d" else 4, "ceil_mode",
                                                         False))}
        if name == "avg_pool2d":
            params["count_include_pad"] = bool(_arg(args, kwargs, 5, "count_include_pad", True))
        else:
            params["dilation"] = _as_pair(_arg(args, kwargs, 4, "dilation", 1))
        _record_op(tracer, "avg_pool2d" if name == "avg_pool2d" else "max_pool2d", [x], info.labels, **params)
    elif name in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
        mode = _arg(args, kwargs, 3, "mode", "nearest") if name in ("interpolate", "upsample") else name[9:]
        align = _arg(args, kwargs, 4, "align_corners", None)
        if mode in ("nearest", "bilinear"):
            _record_op(tracer, "resize", [x], info.labels, size=[int(s) for s in out.shape[2:]], mode=mode,
                       align_corners=bool(align))


# -- layers with weights ------------------------------------------------------------------------------------------
@_register("conv1d", "conv2d", "conv3d")
def _conv(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, weight, bias = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    _weighted_layer(tracer, name, x, weight, bias, groups, out, in_dim=1, out_dim=0)


@_register("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_transpose(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, weight, bias = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    _weighted_layer(tracer, name, x, weight, bias, groups, out, in_dim=0, out_dim=1)


def _weighted_layer(tracer: Tracer, name: str, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None, groups: int, out: torch.Tensor, in_dim: int, out_dim: int) -> None:
    info = channel_info(x)
    channel_dim = out.ndim - (weight.ndim - 2) - 1  # batched or not, channels precede the spatial dims
    computed = None
    if tracer.owner(weight) is None:
        own = getattr(tracer.current_module, "weight", None)
        if not (isinstance(own, torch.Tensor) and own.shape == weight.shape and tracer.owner(own) is not None):
            _unsupported(tracer, name, (x,), {}, out, "its weight is computed, not a parameter")
            return
        # e.g. timm's StdConv2d/ScaledStdConv2d (NF-ResNet): each filter standardised over its input channels
        computed = (f"{name} in {tracer.where} computes its weight from its parameter "
                    f"({type(tracer.current_module).__name__}, e.g. weight standardisation): removing a channel would "
                    "change every kept filter; prunable once the weight transform acts per channel")
        weight = own
    if info is not None and info.dim != channel_dim:
        tracer.pin(x, f"{name} in {tracer.where} reads channels from dim {info.dim}")
        info = None
    if info is not None:
        tracer.consume(info)
    in_channels, out_channels = x.shape[channel_dim], out.shape[channel_dim]
    depthwise = groups > 1 and groups == in_channels and out_channels == in_channels
    per_group_in, per_group_out = in_channels // groups, out_channels // groups
    in_labels = None if info is None else info.labels  # for the FLOPs model: input channels the cost scales with
    if groups == 1:
        if info is not None:
            tracer.bind(weight, in_dim, info.labels, Role.CONSUMER)
        labels = tracer.produce(weight, out_dim)
    elif depthwise:
        # depthwise: filter k reads and writes channel k only, so output channels are input channels
        in_labels = None  # its cost scales with its channels once, not with input x output
        if info is not None:
            labels = info.labels
            tracer.bind(weight, 0, labels, Role.PRODUCER)
        else:  # its channels are those of an input the trace lost: they cannot shrink on their own
            labels = tracer.produce(weight, 0)
            tracer.forest.pin(labels, f"depthwise {name} in {tracer.where} reads untraced channels")
    elif per_group_in == 1:
        # each group reads one channel and writes `per_group_out` (a channel multiplier): a group goes as a whole,
        # with its input channel
        in_labels = None
        if info is not None:
            group_labels = info.labels
        else:
            group_labels = tracer.forest.allocate(groups, tracer.block_name(tracer.owner(weight)[0]))
            tracer.forest.pin(group_labels, f"grouped {name} in {tracer.where} reads untraced channels")
        labels = np.repeat(group_labels, per_group_out)
        tracer.bind(weight, 0, labels if in_dim == 1 else group_labels, Role.PRODUCER)
    else:
        # grouped: prune the same in-group positions in every group, so that the conv keeps `groups` equal groups
        # (channel i of group 0 goes with channel i of every other group, inputs and outputs alike)
        if info is not None:
            _lock_step(tracer, info.labels, groups)
            tracer.bind(weight, in_dim, info.labels if in_dim == 0 else info.labels[:per_group_in], Role.CONSUMER)
        if in_dim == 1:
            labels = tracer.produce(weight, out_dim)
        else:  # transposed: the weight holds one group's outputs
            labels = tracer.forest.allocate(out_channels, tracer.block_name(tracer.owner(weight)[0]))
        _lock_step(tracer, labels, groups)
        tracer.bind(weight, out_dim, labels if in_dim == 1 else labels[:per_group_out], Role.PRODUCER)
    if bias is not None:
        tracer.bind(bias, 0, labels, Role.PRODUCER)
    if computed is not None:
        tracer.forest.pin(labels, computed)
        if info is not None:
            tracer.forest.pin(info.labels, computed)
    # the cost model of count_flops (torch.utils.flop_counter's formulas)
    flops = conv_flops(tuple(x.shape), tuple(weight.shape), tuple(out.shape), transposed=in_dim == 0)
    tracer.result.layer_calls.append(LayerCall(tracer.owner(weight)[0], flops, in_labels, labels))
    _label(out, channel_dim, labels, None)


def _lock_step(tracer: Tracer, labels: np.ndarray, groups: int) -> None:
    """Unite channel ``i`` of the first of ``groups`` equal blocks of ``labels`` with channel ``i`` of every block."""
    size = len(labels) // groups
    for g in range(1, groups):
        tracer.forest.unite_arrays(labels[:size], labels[g * size:(g + 1) * size])


@_register("linear")
def _linear(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, weight, bias = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    if tracer.owner(weight) is None:
        _unsupported(tracer, name, (x,), {}, out, "its weight is computed, not a parameter")
        return
    info = channel_info(x)
    if info is not None and info.dim != x.ndim - 1:
        tracer.pin(x, f"linear in {tracer.where} reads features from dim {x.ndim - 1}, channels are at {info.dim}")
        info = None
    if info is not None:
        tracer.consume(info)
        tracer.bind(weight, 1, info.labels, Role.CONSUMER)
    labels = tracer.produce(weight, 0)
    if bias is not None:
        tracer.bind(bias, 0, labels, Role.PRODUCER)
    flops = linear_flops(tuple(x.shape), tuple(weight.shape))
    tracer.result.layer_calls.append(LayerCall(tracer.owner(weight)[0], flops, None if info is None else info.labels,
                                               labels))
    _label(out, out.ndim - 1, labels, None)


def _per_channel_norm(tracer: Tracer, x: torch.Tensor, out: torch.Tensor, params: list[Any],
                      stats: list[Any], clears_taint: bool) -> None:
    info = channel_info(x)
    if info is None:
        return
    if info.dim != (1 if x.ndim > 1 else 0):
        tracer.pin(x, f"normalisation in {tracer.where} runs over dim 1, channels are at dim {info.dim}")
        return
    for tensor in params:
        if tensor is not None:
            tracer.bind(tensor, 0, info.labels, Role.PRODUCER)
    for tensor in stats:
        if tensor is not None:
            tracer.bind(tensor, 0, info.labels, Role.STAT)
    # with γ and β zeroed a masked channel leaves the norm as exact zero; without an affine part it does not
    affine = any(tensor is not None for tensor in params)
    taint = None if (affine and clears_taint) else (info.taint or (None if affine else f"norm in {tracer.where}"))
    _label(out, info.dim, info.labels, taint)


@_register("batch_norm")
def _batch_norm(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    params = [_arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")]
    stats = [_arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")]
    _per_channel_norm(tracer, args[0], out, params, stats, clears_taint=True)


@_register("instance_norm")
def _instance_norm(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    params = [_arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")]
    stats = [_arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")]
    info = channel_info(args[0])
    _per_channel_norm(tracer, args[0], out, params, stats, clears_taint=True)
    if info is not None and channel_info(out) is not None and all(p is None for p in params):
        channel_info(out).taint = info.taint  # a zero channel normalises to zero on its own statistics


@_register("group_norm")
def _group_norm(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, num_groups = args[0], int(_arg(args, kwargs, 1, "num_groups"))
    params = [_arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")]
    info = channel_info(x)
    if info is not None and num_groups != x.shape[1]:
        tracer.pin(x, f"GroupNorm in {tracer.where} normalises {x.shape[1] // num_groups} channels together")
        _label(out, info.dim, info.labels, info.taint)
        return
    _per_channel_norm(tracer, x, out, params, [], clears_taint=True)


@_register("layer_norm", "rms_norm")
def _layer_norm(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    info = channel_info(x)
    shape = _arg(args, kwargs, 1, "normalized_shape")
    normalized = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    if info is None:
        return
    if info.dim >= x.ndim - normalized:
        tracer.pin(x, f"{name} in {tracer.where} normalises across channels (removing one changes the mean and "
                      "variance of the kept ones: no exact mask; prunable only without the exactness guarantee)")
        _label(out, info.dim, info.labels, info.taint)
        return
    bias = _arg(args, kwargs, 3, "bias") if name == "layer_norm" else None
    _label(out, info.dim, info.labels, f"{name} bias in {tracer.where}" if bias is not None else info.taint)


@_register("prelu")
def _prelu(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, weight = args[0], _arg(args, kwargs, 1, "weight")
    info = channel_info(x)
    if info is None:
        return
    if weight.numel() > 1:
        if info.dim != 1 or not tracer.bind(weight, 0, info.labels, Role.CONSUMER):
            _unsupported(tracer, name, args, kwargs, out, "per-channel slopes not bound to a parameter")
            return
    _label(out, info.dim, info.labels, info.taint)


# -- element-wise -------------------------------------------------------------------------------------------------
def _probe_zero(func: Any, args: tuple, kwargs: dict, in_place: bool, masked: frozenset[int] = frozenset()) -> bool:
    """Does the op map masked (zero) channels to zero? Evaluate it on scalars standing in for labelled inputs (and
    for the per-channel parameters in ``masked``, by id, which masking zeroes with them)."""

    def stand_in(tensor: torch.Tensor) -> torch.Tensor:
        info = channel_info(tensor)
        if id(tensor) in masked:
            return torch.zeros((), dtype=tensor.dtype, device=tensor.device)
        if info is None:
            return tensor.clone() if in_place else tensor
        value = 0.5 if info.taint else 0.0
        return torch.full((), value, dtype=tensor.dtype, device=tensor.device)

    try:
        result = func(*map_tensors(args, stand_in), **map_tensors(kwargs, stand_in))
    except Exception:
        return False
    if isinstance(result, torch.Tensor):
        return bool(torch.all(result == 0))
    return False


def _pointwise(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    outputs = [t for t in iter_tensors(out)]
    if not outputs:
        return
    operands = [t for t in iter_tensors((args, list(kwargs.values())))]
    labelled = [(t, channel_info(t)) for t in operands if channel_info(t) is not None]
    from_right = {t.ndim - info.dim for t, info in labelled}
    result = outputs[0]
    if len(from_right) != 1:
        _unsupported(tracer, name, args, kwargs, out, "operands carry channels on different dims")
        return
    offset = from_right.pop()
    out_dim = result.ndim - offset
    if out_dim < 0:
        _unsupported(tracer, name, args, kwargs, out, "channels vanish")
        return
    width = result.shape[out_dim]
    labels = None
    for _, info in labelled:
        if len(info.labels) == width:
            if labels is None:
                labels = info.labels
            else:  # element-wise: channel k of every operand becomes channel k of the result
                tracer.forest.unite_arrays(labels, info.labels)
        else:
            tracer.forest.pin(info.labels, f"'{name}' in {tracer.where} broadcasts {len(info.labels)} channel(s)")
    if labels is None:
        for tensor in outputs:
            set_channel_info(tensor, None)
        return
    bound = set()
    for tensor in operands:
        if channel_info(tensor) is not None or tensor.ndim < offset or width == 1:
            continue
        if tensor.shape[tensor.ndim - offset] == width:  # a per-channel operand without labels of its own
            if tracer.bind(tensor, tensor.ndim - offset, labels, Role.PRODUCER):
                bound.add(id(tensor))  # a per-channel parameter (or a view of one): masking zeroes it too
            else:
                tracer.forest.pin(labels, f"'{name}' in {tracer.where} combines channels with a per-channel tensor "
                                          "that is neither a parameter nor traced (prunable once the op that "
                                          "computed it is understood)")
    in_place = name + "_" == getattr(func, "__name__", "").lstrip("_") or getattr(func, "__name__", "").startswith(
        "__i")
    taint = None if _probe_zero(func, args, kwargs, in_place, frozenset(bound)) else f"'{name}' in {tracer.where}"
    for tensor in outputs:
        if tensor.ndim > out_dim and tensor.shape[out_dim] == width:
            _label(tensor, out_dim, labels, taint)
    full = [t for t, _ in labelled if t.shape == result.shape]
    if name in ("add", "sub", "mul") and len(full) == 2 and out_dim == 1:  # e.g. a residual add
        _record_op(tracer, "mul" if name == "mul" else "add", full, labels)


def _spatial(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    info = channel_info(x)
    if info is None:
        return
    for tensor in iter_tensors(out):
        if tensor.ndim == x.ndim and tensor.shape[info.dim] == len(info.labels):
            _label(tensor, info.dim, info.labels, info.taint)
        else:
            _unsupported(tracer, name, args, kwargs, out, "channel count changed")
            return
    first = next(iter_tensors(out), None)
    if first is not None:
        _record_spatial(tracer, name, args, kwargs, x, first, info)


@_register("pad")
def _pad(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    info = channel_info(x)
    if info is None:
        return
    pad = list(_arg(args, kwargs, 1, "pad"))
    first_padded = x.ndim - len(pad) // 2
    if info.dim >= first_padded:
        k = x.ndim - 1 - info.dim
        if pad[2 * k] != 0 or pad[2 * k + 1] != 0:
            _unsupported(tracer, name, args, kwargs, out, "pads the channel dim")
            return
    mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    taint = info.taint if mode != "constant" or not value else f"pad value {value} in {tracer.where}"
    _label(out, info.dim, info.labels, taint)


def _reduction(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    info = channel_info(x)
    if info is None:
        return
    dim = _arg(args, kwargs, 2 if name == "norm" else 1, "dim")
    if isinstance(dim, torch.Tensor) or (dim is not None and not isinstance(dim, (int, tuple, list))):
        dim = None  # e.g. max(a, b) is element-wise, not a reduction
        if name in ("max", "min") and isinstance(_arg(args, kwargs, 1, "other"), torch.Tensor):
            _pointwise(tracer, name, func, args, kwargs, out)
            return
    if dim is None:
        _unsupported(tracer, name, args, kwargs, out, "reduces over all dims, channels included")
        return
    dims = [d % x.ndim for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
    if info.dim in dims:
        _unsupported(tracer, name, args, kwargs, out, "reduces over channels")
        return
    keepdim = bool(_arg(args, kwargs, 3 if name == "norm" else 2, "keepdim", False))
    new_dim = info.dim if keepdim else info.dim - sum(d < info.dim for d in dims)
    for tensor in iter_tensors(out):
        if tensor.is_floating_point():
            _label(tensor, new_dim, info.labels, info.taint)


@_register("softmax", "log_softmax", "softmin", "cumsum", "cumprod", "logcumsumexp", "cummax", "cummin")
def _along_dim(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    info = channel_info(x)
    if info is None:
        return
    dim = _arg(args, kwargs, 1, "dim")
    if dim is None or int(dim) % x.ndim == info.dim:
        _unsupported(tracer, name, args, kwargs, out, "mixes channels")
        return
    taint = f"'{name}' in {tracer.where}" if "soft" in name else info.taint
    for tensor in iter_tensors(out):
        if tensor.is_floating_point():
            _label(tensor, info.dim, info.labels, taint)


# -- shape --------------------------------------------------------------------------------------------------------
def _reshaped(in_shape: tuple, dim: int, out_shape: tuple) -> tuple[int, int] | None:
    """Where channel dim ``dim`` of ``in_shape`` lands in ``out_shape``: (new dim, features per channel).

    Channels survive a reshape when every dim before them keeps its total size, and the channel dim stays whole:
    either alone, or flattened together with the dims right after it (each channel then spans a run of features).
    """
    before = math.prod(in_shape[:dim])
    channels = in_shape[dim]
    prefix = 1
    for new_dim, size in enumerate(out_shape):
        if prefix == before:
            run = 1
            for trailing in range(dim + 1, len(in_shape) + 1):
                if size == channels * run and (size != 1 or channels == 1):
                    return new_dim, run
                if trailing < len(in_shape):
                    run *= in_shape[trailing]
        if prefix > before:
            return None
        prefix *= size
    return None


def _split_channel_dim(in_shape: tuple, dim: int, out_shape: tuple) -> tuple[int, int] | None:
    """``(new dim, k)`` when a reshape splits channel dim ``dim`` into ``(k, C / k)`` in place (the dims before and
    after it keep their sizes), else None."""
    channels = in_shape[dim]
    if len(out_shape) != len(in_shape) + 1 or tuple(out_shape[:dim]) != tuple(in_shape[:dim]):
        return None
    if tuple(out_shape[dim + 2:]) != tuple(in_shape[dim + 1:]):
        return None
    blocks, per_block = out_shape[dim], out_shape[dim + 1]
    if blocks < 2 or per_block < 2 or blocks * per_block != channels:
        return None
    return dim + 1, blocks


RESHAPES = ("view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
            "expand", "expand_as", "broadcast_to", "atleast_2d", "atleast_3d", "ravel")


@_register("shape", "size")
def _shape_read(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    info = channel_info(x)
    dim = _arg(args, kwargs, 1, "dim") if name == "size" else None
    if info is None or (dim is not None and int(dim) % x.ndim != info.dim):
        return
    tracer.shape_reads.setdefault(tracer.where, []).append((len(info.labels), info.labels))


@_register(*RESHAPES)
def _reshape(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    info = channel_info(x)
    if info is None or not isinstance(out, torch.Tensor):
        return
    if name in ("expand", "expand_as", "broadcast_to"):
        new_dim = out.ndim - (x.ndim - info.dim)
        if out.shape[new_dim] == len(info.labels):
            _label(out, new_dim, info.labels, info.taint)
        else:
            _unsupported(tracer, name, args, kwargs, out, "broadcasts the channel dim")
        return
    mapped = _reshaped(tuple(x.shape), info.dim, tuple(out.shape))
    if mapped is None:
        split = _split_channel_dim(tuple(x.shape), info.dim, tuple(out.shape))
        # the block sizes follow pruning only when the code computes them from this tensor's shape
        # (`B, C, H, W = x.shape; x.view(B, k, C // k, H, W)`), not when they are written in code
        read = any(len(labels) == len(info.labels) and np.array_equal(labels, info.labels)
                   for _, labels in tracer.shape_reads.get(tracer.where, []))
        if split is not None and not read:
            _unsupported(tracer, name, args, kwargs, out,
                         f"reshape {tuple(x.shape)} -> {tuple(out.shape)} splits the channel dim with sizes fixed in "
                         "code (prunable when they are computed from the tensor's shape)")
            return
        if split is not None:
            # (C,) -> (k, C/k): channel i of every one of the k blocks goes together (attention heads, the paths of
            # a selective kernel, a channel shuffle), the C/k dim carries the channels
            new_dim, blocks = split
            _lock_step(tracer, info.labels, blocks)
            _label(out, new_dim, info.labels[:len(info.labels) // blocks], info.taint)
            return
        _unsupported(tracer, name, args, kwargs, out,
                     f"reshape {tuple(x.shape)} -> {tuple(out.shape)} splits or merges the channel dim")
        return
    new_dim, run = mapped
    labels = info.labels if run == 1 else np.repeat(info.labels, run)
    _label(out, new_dim, labels, info.taint)


def _permuted(tracer: Tracer, x: torch.Tensor, out: Any, order: list[int]) -> None:
    info = channel_info(x)
    if info is None or not isinstance(out, torch.Tensor):
        return
    _label(out, order.index(info.dim), info.labels, info.taint)


@_register("permute")
def _permute(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    dims = args[1:] if len(args) > 2 or not isinstance(_arg(args, kwargs, 1, "dims"), (list, tuple, torch.Size)) \
        else _arg(args, kwargs, 1, "dims")
    x = args[0]
    _permuted(tracer, x, out, [int(d) % x.ndim for d in dims])


@_register("transpose", "swapaxes", "swapdims")
def _transpose(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    a, b = int(_arg(args, kwargs, 1, "dim0")) % x.ndim, int(_arg(args, kwargs, 2, "dim1")) % x.ndim
    order = list(range(x.ndim))
    order[a], order[b] = order[b], order[a]
    _permuted(tracer, x, out, order)


@_register("T", "mT", "t")
def _matrix_transpose(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    order = list(range(x.ndim))
    if name == "mT":
        order[-1], order[-2] = order[-2], order[-1]
    else:
        order.reverse()
    _permuted(tracer, x, out, order)


@_register("movedim", "moveaxis")
def _movedim(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    source, destination = _arg(args, kwargs, 1, "source"), _arg(args, kwargs, 2, "destination")
    source = [source] if isinstance(source, int) else list(source)
    destination = [destination] if isinstance(destination, int) else list(destination)
    source = [s % x.ndim for s in source]
    destination = [d % x.ndim for d in destination]
    order = [None] * x.ndim
    for s, d in zip(source, destination):
        order[d] = s
    rest = iter(d for d in range(x.ndim) if d not in source)
    order = [o if o is not None else next(rest) for o in order]
    _permuted(tracer, x, out, order)


@_register("cat", "concat", "concatenate", "stack")
def _cat(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    tensors = list(_arg(args, kwargs, 0, "tensors"))
    dim = int(_arg(args, kwargs, 1, "dim", 0))
    infos = [channel_info(t) for t in tensors]
    ref = next(t for t, info in zip(tensors, infos) if info is not None)
    ref_info = channel_info(ref)
    dim = dim % (ref.ndim + (1 if name == "stack" else 0))
    if name != "stack" and dim == ref_info.dim:
        parts = []
        for tensor, info in zip(tensors, infos):
            if info is not None and info.dim == dim:
                parts.append(info.labels)
            else:  # channels of a constant in the concat: a block of their own that nothing can prune
                block = tracer.forest.allocate(tensor.shape[dim], tracer.block_name(f"{tracer.where}:{name}-const"))
                tracer.forest.pin(block, f"constant channels concatenated in {tracer.where}")
                parts.append(block)
        taints = [info.taint for info in infos if info is not None and info.taint]
        labels = np.concatenate(parts)
        _label(out, dim, labels, taints[0] if taints else None)
        if dim == 1:
            _record_op(tracer, "cat", tensors, labels)
        return
    # concatenating along another dim: channel k of the result comes from channel k of every input
    new_dim = ref_info.dim + (1 if name == "stack" and dim <= ref_info.dim else 0)
    _pointwise_like_union(tracer, name, tensors, infos, ref_info, out, new_dim)


def _pointwise_like_union(tracer: Tracer, name: str, tensors: list, infos: list, ref_info: ChannelInfo,
                          out: torch.Tensor, new_dim: int) -> None:
    labels = ref_info.labels
    taint = None
    for tensor, info in zip(tensors, infos):
        if info is not None and info.dim == ref_info.dim and len(info.labels) == len(labels):
            tracer.forest.unite_arrays(labels, info.labels)
            taint = taint or info.taint
        elif info is not None:
            tracer.forest.pin(np.concatenate([labels, info.labels]), f"'{name}' in {tracer.where} mixes channel dims")
        elif not tracer.bind(tensor, ref_info.dim, labels, Role.PRODUCER):
            tracer.forest.pin(labels, f"'{name}' in {tracer.where} joins channels with an untraced tensor")
    _label(out, new_dim, labels, taint)


def _pieces_along(tracer: Tracer, name: str, x: torch.Tensor, pieces: list[torch.Tensor], dim: int) -> None:
    """Label the outputs of chunk/split/unbind along ``dim``."""
    info = channel_info(x)
    if dim != info.dim:
        for piece in pieces:
            if piece.ndim == x.ndim:
                _label(piece, info.dim, info.labels, info.taint)
            else:  # unbind removes the dim
                _label(piece, info.dim - (1 if dim < info.dim else 0), info.labels, info.taint)
        return
    sizes = [piece.shape[dim] if piece.ndim == x.ndim else 1 for piece in pieces]
    if len(set(sizes)) != 1 or name == "unbind":
        _unsupported(tracer, name, (x,), {}, pieces, f"unequal channel pieces {sizes} have sizes fixed in code")
        return
    size = sizes[0]
    parts = [info.labels[i * size:(i + 1) * size] for i in range(len(pieces))]
    # Equal pieces must stay equal after pruning (chunk(2) splits at the middle), so channel k of every piece is
    # pruned together with channel k of the others.
    for part in parts[1:]:
        tracer.forest.unite_arrays(parts[0], part)
    module = tracer.current_module
    attrs = _size_attributes(module, size)
    # the piece size follows the module attributes its code passes to split (ultralytics C2f.c), and no others
    tracer.result.splits.append(SplitRecord(module, attrs, parts[0]))
    for piece, part in zip(pieces, parts):
        _label(piece, dim, part, info.taint)


def _independent_pieces(tracer: Tracer, x: torch.Tensor, pieces: list[torch.Tensor], dim: int, module: Any,
                        attrs: list[str], sizes: list[int]) -> None:
    """Pieces whose sizes come from a list attribute (``self.splits``): each piece shrinks on its own, and the list
    follows."""
    info = channel_info(x)
    offsets = np.cumsum([0, *sizes])
    parts = [info.labels[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
    tracer.result.splits.append(SplitRecord(module, [], parts[0], {"sequence_attrs": attrs, "pieces": parts}))
    for piece, part in zip(pieces, parts):
        _label(piece, dim, part, info.taint)


def _size_attributes(module: Any, size: int) -> list[str]:
    """Integer attributes of ``module`` equal to ``size`` that its class's code passes as a split size."""
    return [key for key in split_size_attributes(type(module))
            if type(getattr(module, key, None)) is int and getattr(module, key) == size]


_SPLIT_METHODS = {"split": ("split_size_or_sections", "split_size"), "split_with_sizes": ("split_sizes",)}


def _self_attribute(node: Any) -> str | None:
    """``name`` for an ``ast`` node ``self.<name>`` (public names only)."""
    import ast

    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            and not node.attr.startswith("_")):
        return node.attr
    return None


@functools.cache
def _class_size_attributes(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """(split-size attributes, slice-bound attributes) that the source of ``cls`` and its bases uses directly."""
    import ast
    import inspect
    import textwrap

    splits: set[str] = set()
    bounds: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or klass.__module__.startswith("torch."):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError, IndentationError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript):
                for part in ast.walk(node.slice):
                    if isinstance(part, ast.Slice):
                        bounds.update(a for a in (_self_attribute(part.lower), _self_attribute(part.upper)) if a)
                continue
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            method = node.func.attr
            if method not in _SPLIT_METHODS:
                continue
            # x.split(sizes, dim) or torch.split(x, sizes, dim)
            is_function = isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "F")
            position = 1 if is_function else 0
            sizes = [node.args[position]] if len(node.args) > position else []
            sizes += [kw.value for kw in node.keywords if kw.arg in _SPLIT_METHODS[method]]
            for size in sizes:  # `self.c`, or a tuple/list of `self.c` entries: not an expression of them
                entries = size.elts if isinstance(size, (ast.Tuple, ast.List)) else [size]
                splits.update(a for a in map(_self_attribute, entries) if a)
    return frozenset(splits), frozenset(bounds)


def split_size_attributes(cls: type) -> frozenset[str]:
    """Attributes ``self.<name>`` that the source of ``cls`` (and its bases) passes as the sizes of a ``split``
    (``x.split(self.c, 1)``, ``x.split((self.c, self.c), 1)``, ``torch.split(x, self.splits, 1)``).

    This is what ties an attribute to a split: ultralytics ``C2f`` runs ``x.chunk(2, 1)`` in ``forward`` and
    ``x.split((self.c, self.c), 1)`` in ``forward_split``, so ``c`` is the piece size and must follow pruning. An
    attribute that merely equals the piece size (``self.scale = 8``), or that enters a size through an expression
    (``self.reg_max * 4``), is never touched. Classes without readable source yield nothing (their literal split
    sizes are then pinned).

    Example:
        >>> import torch
        >>> sorted(split_size_attributes(torch.nn.Conv2d))  # torch's own modules are never read
        []
    """
    return _class_size_attributes(cls)[0]


def slice_bound_attributes(cls: type) -> frozenset[str]:
    """Attributes ``self.<name>`` that the source of ``cls`` (and its bases) uses directly as a slice bound
    (``x[:, :self.num_1x1_c]``): a channel slice bounded by one follows pruning through it.

    Example:
        >>> import torch
        >>> sorted(slice_bound_attributes(torch.nn.Linear))
        []
    """
    return _class_size_attributes(cls)[1]


@_register("chunk", "split", "split_with_sizes", "tensor_split", "unbind", "unsafe_split", "unsafe_chunk")
def _split(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    if channel_info(x) is None:
        return
    default = 0
    dim = int(_arg(args, kwargs, 1 if name == "unbind" else 2, "dim", default)) % x.ndim
    pieces = list(out)
    info = channel_info(x)
    if name in ("split", "split_with_sizes") and dim == info.dim:
        sizes = _arg(args, kwargs, 1, "split_size_or_sections" if name == "split" else "split_sizes")
        # sizes given in code must come from a module attribute we can update, or they break after pruning
        literal = [sizes] if isinstance(sizes, int) else [int(size) for size in sizes]
        module = tracer.current_module
        sequences = [key for key in split_size_attributes(type(module))
                     if isinstance(getattr(module, key, None), (list, tuple))
                     and [int(v) for v in getattr(module, key)] == literal]
        if sequences and len(literal) > 1:  # e.g. timm MixedConv2d: torch.split(x, self.splits, 1)
            _independent_pieces(tracer, x, pieces, dim, module, sequences, literal)
            _record_split(tracer, x, pieces, dim, info)
            return
        for size in set(literal):
            attrs = _size_attributes(tracer.current_module, size)
            if not attrs:
                _unsupported(tracer, name, (x,), {}, pieces, f"split size {size} is fixed in code (not a module "
                             "attribute passed to split, which pruning could update)")
                return
    if name == "tensor_split" and dim == info.dim:
        _unsupported(tracer, name, (x,), {}, pieces, "split points are fixed in code")
        return
    _pieces_along(tracer, name, x, pieces, dim)
    _record_split(tracer, x, pieces, dim, info)


def _record_split(tracer: Tracer, x: torch.Tensor, pieces: list, dim: int, info: ChannelInfo) -> None:
    if dim == info.dim == 1 and all(channel_info(piece) is not None for piece in pieces):
        _record_op(tracer, "split", [x], info.labels, sizes=[int(piece.shape[1]) for piece in pieces])


def _index_entries(index: Any, ndim: int) -> list[Any] | None:
    """Expand a ``__getitem__`` index into one entry per input dim (None entries insert dims)."""
    entries = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for e in entries if e is not None and e is not Ellipsis)
    expanded: list[Any] = []
    for entry in entries:
        if entry is Ellipsis:
            expanded.extend([slice(None)] * (ndim - consumed))
        else:
            expanded.append(entry)
    while sum(1 for e in expanded if e is not None) < ndim:
        expanded.append(slice(None))
    return expanded


@_register("getitem")
def _getitem(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x, index = args[0], args[1]
    info = channel_info(x)
    if info is None or not isinstance(out, torch.Tensor):
        return
    entries = _index_entries(index, x.ndim)
    if any(isinstance(e, (torch.Tensor, list)) or (e is not None and not isinstance(e, (int, slice)))
           for e in entries):
        _unsupported(tracer, name, args, kwargs, out, "advanced indexing")
        return
    in_dim, out_dim = 0, 0
    for entry in entries:
        if entry is None:
            out_dim += 1
            continue
        if in_dim == info.dim:
            break
        in_dim += 1
        if not isinstance(entry, int):
            out_dim += 1
    entry = entries[[i for i, e in enumerate(entries) if e is not None][info.dim]]
    labels = info.labels
    if isinstance(entry, int):
        tracer.forest.pin(labels[entry:entry + 1] if entry >= 0 else labels[entry:][:1],
                          f"channel {entry} is picked by index in {tracer.where}")
        return
    start, stop, step = entry.indices(len(labels))
    if (start, stop, step) == (0, len(labels), 1):
        _label(out, out_dim, labels, info.taint)
        return
    if step != 1:
        _unsupported(tracer, name, args, kwargs, out, "strided channel slice")
        return
    module = tracer.current_module
    bounds = [b for b in (entry.start, entry.stop) if b is not None and 0 < b < len(labels)]
    known = {b: [a for a in slice_bound_attributes(type(module)) if type(getattr(module, a, None)) is int
                 and getattr(module, a) == b] for b in bounds}
    if bounds and all(len(attrs) == 1 for attrs in known.values()) and all(b >= 0 for b in bounds):
        # bounds that are module attributes (timm DPN: x[:, :self.num_1x1_c]): they follow the channels before them
        for bound, attrs in known.items():
            tracer.result.splits.append(SplitRecord(module, attrs, labels[:bound]))
        _label(out, out_dim, labels[start:stop], info.taint)
        return
    # bounds written in code: channels before the last fixed bound cannot move without changing what is sliced
    fixed = max(start, stop if entry.stop is not None else 0)
    tracer.forest.pin(labels[:fixed], f"channel slice [{entry.start}:{entry.stop}] in {tracer.where} has fixed bounds "
                                      "(prunable when a bound is a module attribute its code slices with)")
    _label(out, out_dim, labels[start:stop], info.taint)


@_register("narrow")
def _narrow(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    dim = int(_arg(args, kwargs, 1, "dim")) % x.ndim
    start, length = int(_arg(args, kwargs, 2, "start")), int(_arg(args, kwargs, 3, "length"))
    index = tuple([slice(None)] * dim + [slice(start, start + length)])
    _getitem(tracer, "getitem", func, (x, index), {}, out)


@_register("select")
def _select(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    dim = int(_arg(args, kwargs, 1, "dim")) % x.ndim
    index = tuple([slice(None)] * dim + [int(_arg(args, kwargs, 2, "index"))])
    _getitem(tracer, "getitem", func, (x, index), {}, out)


@_register("setitem")
def _setitem(tracer: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    target, value = args[0], args[2] if len(args) > 2 else None
    tracer.pin((target, value), f"in-place indexed assignment in {tracer.where}")
