"""The measured per-group latency model of a model's dependency graph: per prunable group, how the latency of the
layers it touches changes with its width, on the target backend at the model's input size (in the spirit of NVIDIA's
HALP latency tables). The layers are timed by :mod:`~lightning_prune.profiling.curves`; this module reads the graph.

How it is built (:func:`build_cost_table`):

1. One forward with hooks finds every ``nn.Conv2d``, its input size and the activation right after it
   (:func:`~lightning_prune.profiling.curves.discover_layers`).
2. The dependency graph's groups say which layers a group touches: its producers' output channels (weight dim 0) and
   its consumers' input channels (weight dim 1, e.g. the slice of a concatenation's consumer).
3. Each layer is timed *in isolation* at sampled widths along each axis a prunable group can change
   (:func:`~lightning_prune.profiling.curves.measure_curve`, a
   :class:`~lightning_prune.profiling.curves.LayerCurve`).
4. The weightless ops that move a group's channels — concatenations and splits along channels, poolings, resizes,
   residual adds, as the graph's trace recorded them (:attr:`~lightning_prune.graph.DependencyGraph.op_calls`) —
   are timed too, once each at their current size (:class:`~lightning_prune.profiling.curves.OpCost`), and taken to
   scale with the share of their channels that stays: on some backends they are a large part of the time a conv
   table does not see (eager PyTorch's max pooling in an SPPF block costs more than the convs around it).
5. A plan's cost is the sum over layers and ops of the predicted time saved (:meth:`CostTable.removed_ms`); a group's
   *fast widths* (:meth:`CostTable.fast_widths`) are the sampled widths that beat every larger one — the widths where
   the backend is fast, what latency-aware selection rounds to instead of one global ``round_to``.

Tables are cached on disk (``cache_dir``, a folder private to the user: created ``0o700``, refused when another user
owns it or may write to it) under a key of backend, input shape, the machine and an architecture hash, written
atomically and readable by the user only; a cached file that does not fit the model (another version, a truncated
list, a time that is not finite and non-negative, layers or groups that are not the model's) is measured again, with
a warning naming it; after a prune :meth:`CostTable.updated` re-measures only the layers whose shape changed (the
layers of the pruned groups) and reuses the rest.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune import DependencyGraph
    >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
    >>> graph = DependencyGraph(net, torch.randn(1, 3, 32, 32))
    >>> table = build_cost_table(graph, "eager", repeats=1)
    >>> sorted(table.layers), table.sizes
    (['0', '2'], {'0': 16})
    >>> table.removed_ms({"0": []}), table.removed_ms({"0": list(range(8))}) > 0
    (0.0, True)
    >>> table.fast_widths("0")[-1]
    16
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_prune.graph import DependencyGraph
from lightning_prune.profiling.backends import require_backend
from lightning_prune.profiling.curves import (
    LayerCurve,
    OpCost,
    checked_count,
    device_name,
    discover_layers,
    measure_curve,
    sample_widths,
)
from lightning_prune.profiling.isolated import LayerSpec, OpSpec, time_layers
from lightning_prune.pruning.communication import Communicator
from lightning_prune.utils.files import atomic_write, private_dir

__all__ = ["CostTable", "Relation", "SharedCostTable", "build_cost_table", "discover_ops"]

VERSION = 2


#: one group's hold on a layer: (layer name, "in" or "out", channels of the group the layer holds on that axis)
Relation = tuple[str, str, int]


@dataclass
class CostTable:
    """The measured cost model of one architecture on one backend (see the module docstring).

    Attributes:
        backend, input_shape, device: what it was measured for.
        arch: the architecture hash (layer shapes and group relations).
        layers: conv name -> :class:`LayerCurve`.
        relations: group name -> the layers (and ops) it touches, on which axis, holding how many of its channels.
        sizes: group name -> its current width.
        build_seconds, measured, reused: how long the build took, how many layers it timed and how many it took over
            from an earlier table or the disk cache.
    """

    backend: str
    input_shape: list[int]
    device: str
    arch: str
    layers: dict[str, LayerCurve]
    relations: dict[str, list[Relation]]
    sizes: dict[str, int]
    points: int = 16
    repeats: int = 5
    num_threads: int = 1
    cache_dir: str | None = None
    build_seconds: float = 0.0
    measured: int = 0
    reused: int = 0
    #: weightless op name -> :class:`OpCost` (an op's relations use the axis ``"out"``)
    ops: dict[str, OpCost] = field(default_factory=dict)

    # -- predictions ----------------------------------------------------------------------------------------------
    def total_ms(self) -> float:
        """Predicted time of every modelled layer and op at the current widths."""
        return sum(curve.full_ms for curve in self.layers.values()) + self.ops_ms()

    def ops_ms(self) -> float:
        """The part of :meth:`total_ms` that is weightless ops."""
        return sum(op.full_ms for op in self.ops.values())

    def _full_ms(self, name: str) -> float:
        return self.ops[name].full_ms if name in self.ops else self.layers[name].full_ms

    def _widths(self, removed: Mapping[str, float]) -> dict[str, tuple[float, float]]:
        changed: dict[str, list[float]] = {}
        for name, count in removed.items():
            size = self.sizes.get(name)
            if size is None:
                raise ValueError(f"group {name!r} is not in the cost table (stale table? call updated(graph))")
            if not count:
                continue
            for layer, axis, held in self.relations[name]:
                if layer in self.ops:
                    width = float(self.ops[layer].spec.channels)
                    entry = changed.setdefault(layer, [width, width])
                    entry[1] -= held * float(count) / size
                    continue
                spec = self.layers[layer].spec
                entry = changed.setdefault(layer, [float(spec.in_channels), float(spec.out_channels)])
                entry[0 if axis == "in" else 1] -= held * float(count) / size
        return {layer: (max(c_in, 0.0), max(c_out, 0.0)) for layer, (c_in, c_out) in changed.items()}

    def removed_ms(self, plan: Mapping[str, Sequence[int] | int | float]) -> float:
        """Predicted time saved by ``plan`` (group -> channel indices, or group -> how many channels).

        Example:
            >>> table = CostTable("eager", [1, 3, 8, 8], "cpu", "x", {}, {}, {})
            >>> table.removed_ms({})
            0.0
        """
        removed = {name: (value if isinstance(value, (int, float)) else len(value)) for name, value in plan.items()}
        saved = 0.0
        for layer, (c_in, c_out) in self._widths(removed).items():
            if layer in self.ops:
                saved += self.ops[layer].full_ms - self.ops[layer].ms(c_out)
            else:
                saved += self.layers[layer].full_ms - self.layers[layer].ms(c_in, c_out)
        return float(saved)

    def group_ms(self, group: str, width: float) -> float:
        """Predicted time of the layers ``group`` touches when it keeps ``width`` channels (the rest as now)."""
        touched = {layer for layer, _, _ in self.relations[group]}
        base = sum(self._full_ms(layer) for layer in touched)
        return base - self.removed_ms({group: self.sizes[group] - width})

    def group_curve(self, group: str) -> list[tuple[int, float]]:
        """``(width, ms)`` of the layers ``group`` touches at its sampled widths (the per-group latency table)."""
        return [(w, self.group_ms(group, w)) for w in sample_widths(self.sizes[group], self.points)]

    def fast_widths(self, group: str, min_channels: int = 1, multiple: int = 1) -> list[int]:
        """The sampled widths (at least ``min_channels``; multiples of ``multiple``) whose predicted time is below
        that of every larger such width, ascending; always ends with the current width.

        ``multiple`` keeps the choice to widths a backend's layout works in (e.g. 8 or 16 channels: ONNX Runtime's
        blocked NCHWc convs, tensor cores), whose effects between layers — layout reorders around a concatenation
        of off-block widths — the table, timing each layer alone, cannot see."""
        size = self.sizes[group]
        curve = [(w, ms) for w, ms in self.group_curve(group)
                 if w >= min(min_channels, size) and (w % max(int(multiple), 1) == 0 or w == size)]
        fast, best = [], math.inf
        for width, ms in reversed(curve):
            if ms < best or width == size:
                fast.append(width)
                best = min(best, ms)
        return sorted(fast)

    def removal_options(self, group: str, min_channels: int = 1, multiple: int = 1) -> list[int]:
        """Channel counts to remove from ``group`` that land on a fast width (a multiple of ``multiple``),
        ascending (``0`` first)."""
        size = self.sizes[group]
        return sorted({size - w for w in self.fast_widths(group, min_channels, multiple)})

    # -- persistence ----------------------------------------------------------------------------------------------
    def key(self) -> str:
        """The cache key: backend, input shape, machine, threads and architecture."""
        text = json.dumps([VERSION, self.backend, self.input_shape, self.device, self.num_threads, self.points,
                           self.arch])
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def filename(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape)
        return f"latency-{self.backend}-{shape}-{self.key()}.json"

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "backend": self.backend, "input_shape": self.input_shape, "device": self.device,
                "arch": self.arch, "points": self.points, "repeats": self.repeats, "num_threads": self.num_threads,
                "layers": {name: curve.to_dict() for name, curve in self.layers.items()},
                "ops": {name: op.to_dict() for name, op in self.ops.items()},
                "relations": {name: [list(r) for r in rel] for name, rel in self.relations.items()},
                "sizes": self.sizes}

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically (an unpredictable temporary file in the same folder, then renamed), readable
        by the user only (``0o600``; a missing folder is created ``0o700``)."""
        path = os.path.abspath(os.fspath(path))
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            private_dir(directory)
        atomic_write(path, json.dumps(self.to_dict()), private=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CostTable:
        """Read what :meth:`save` wrote; a one-line ``ValueError`` for a file that is not a cost table."""
        try:
            with open(path) as file:
                return cls.from_dict(json.load(file))
        except (OSError, ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"{os.fspath(path)} is not a readable cost table: {err}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostTable:
        """The table :meth:`to_dict` described (e.g. broadcast from rank 0); ``ValueError`` for anything else:
        another version, a missing or mistyped field, per-layer lists of different lengths, times that are not
        finite and non-negative, relations to layers the table does not hold."""
        try:
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            for key in ("backend", "device", "arch"):
                if not isinstance(data[key], str):
                    raise ValueError(f"{key} must be a string, got {data[key]!r}")
            layers = {str(name): LayerCurve.from_dict(c) for name, c in data["layers"].items()}
            ops = {str(name): OpCost.from_dict(op) for name, op in data.get("ops", {}).items()}
            relations: dict[str, list[Relation]] = {}
            for name, rel in data["relations"].items():
                relations[str(name)] = []
                for r in rel:
                    layer, axis, held = r
                    if layer not in layers and layer not in ops:
                        raise ValueError(f"group {name!r} touches {layer!r}, which the table does not hold")
                    if axis not in ("in", "out"):
                        raise ValueError(f"group {name!r}: axis must be 'in' or 'out', got {axis!r}")
                    relations[str(name)].append((layer, axis, checked_count(held, f"group {name!r} channels")))
            sizes = {str(name): checked_count(size, f"size of group {name!r}", 1)
                     for name, size in data["sizes"].items()}
            if set(sizes) != set(relations):
                raise ValueError("sizes and relations name different groups")
            return cls(data["backend"], [checked_count(s, "input_shape entry") for s in data["input_shape"]],
                       data["device"], data["arch"], layers, relations, sizes,
                       checked_count(data["points"], "points", 2), checked_count(data["repeats"], "repeats", 1),
                       checked_count(data["num_threads"], "num_threads", 1), ops=ops)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a cost table: {err}") from None

    def updated(self, graph: DependencyGraph) -> CostTable:
        """The table for ``graph``'s current architecture: the same table when nothing changed, else a rebuild that
        re-measures only the layers whose shape changed."""
        table = build_cost_table(graph, self.backend, cache_dir=self.cache_dir, previous=self, repeats=self.repeats,
                                 num_threads=self.num_threads, points=self.points, measure=False)
        if table.arch == self.arch:
            return self
        return build_cost_table(graph, self.backend, cache_dir=self.cache_dir, previous=self, repeats=self.repeats,
                                num_threads=self.num_threads, points=self.points)


class SharedCostTable:
    """The cost table of ``graph``'s current architecture on ``backend``, the same on every rank of
    ``communicator``: built on first use (cached in ``cache_dir``; under several processes rank 0 measures and the
    others get its table), rebuilt incrementally (only the changed layers) after a prune. A given ``table``
    (anything with ``removed_ms``, ``removal_options``, ``total_ms`` and ``updated(graph)``) is used instead of a
    built one; under several processes only a :class:`CostTable` is handed from rank 0."""

    def __init__(self, graph: DependencyGraph, backend: str, cache_dir: str | os.PathLike | None,
                 communicator: Communicator, table: Any = None) -> None:
        self.graph = graph
        self.backend = backend
        self.cache_dir = cache_dir
        self.communicator = communicator
        self._table = table

    @property
    def last(self) -> Any:
        """The table as last built or updated (``None`` before the first use), read without measuring anything."""
        return self._table

    def current(self) -> Any:
        """The table of the current architecture (built or updated now when it is not)."""
        comm = self.communicator
        if comm.world_size > 1 and (self._table is None or isinstance(self._table, CostTable)):
            table = self._measured() if comm.rank == 0 else None
            data = comm.broadcast(table.to_dict() if table is not None else None)
            self._table = table if table is not None else CostTable.from_dict(data)
            return self._table
        return self._measured()

    def _measured(self) -> Any:
        if self._table is None:
            self._table = build_cost_table(self.graph, self.backend, cache_dir=self.cache_dir)
        else:
            self._table = self._table.updated(self.graph)
        return self._table


# -- discovery ----------------------------------------------------------------------------------------------------
def discover_ops(graph: DependencyGraph) -> dict[str, tuple[OpSpec, dict[str, int]]]:
    """The weightless ops of ``graph``'s trace that move prunable channels: name (``<module>:<kind>``, ``#k`` for
    repeats) -> (the op as an :class:`~lightning_prune.profiling.isolated.OpSpec`, how many of its channels each
    prunable group holds).

    Example:
        >>> import torch
        >>> from lightning_prune import DependencyGraph
        >>> class Block(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1)
        ...     def forward(self, x):
        ...         y = self.a(x)
        ...         return self.b(y + torch.nn.functional.max_pool2d(y, 3, 1, 1))
        >>> ops = discover_ops(DependencyGraph(Block(), torch.randn(1, 3, 8, 8)))
        >>> [(name, spec.kind, owners) for name, (spec, owners) in ops.items()]
        [('<model>:max_pool2d', 'max_pool2d', {'a': 4}), ('<model>:add', 'add', {'a': 4})]
    """
    found: dict[str, tuple[OpSpec, dict[str, int]]] = {}
    for call in graph.op_calls:
        owners = graph.channel_owners(call.labels)
        if not owners:
            continue
        base = f"{call.module_name}:{call.kind}"
        name, k = base, 1
        while name in found:
            k += 1
            name = f"{base}#{k}"
        found[name] = (OpSpec(call.kind, tuple(call.input_shapes), dict(call.params)), owners)
    return found


def _relations(graph: DependencyGraph, specs: Mapping[str, LayerSpec],
               ops: Mapping[str, tuple[OpSpec, dict[str, int]]] | None = None) -> tuple[dict[str, list[Relation]],
                                                                                        dict[str, int]]:
    relations: dict[str, list[Relation]] = {}
    sizes: dict[str, int] = {}
    for group in graph.prunable_groups:
        held: dict[tuple[str, str], int] = {}
        for member in group.members:
            if member.param != "weight" or member.module not in specs or member.dim not in (0, 1):
                continue
            spec = specs[member.module]
            if member.dim == 1 and spec.depthwise:
                continue
            axis = "out" if member.dim == 0 else "in"
            count = int((member.channels >= 0).sum())
            held[(member.module, axis)] = max(held.get((member.module, axis), 0), count)
        for op, (_, owners) in (ops or {}).items():
            if owners.get(group.name):
                held[(op, "out")] = owners[group.name]
        relations[group.name] = [(layer, axis, count) for (layer, axis), count in sorted(held.items())]
        sizes[group.name] = int(group.size)
    return relations, sizes


def _arch_hash(specs: Mapping[str, LayerSpec], relations: Mapping[str, list[Relation]],
               ops: Mapping[str, tuple[OpSpec, dict[str, int]]] | None = None) -> str:
    text = json.dumps([[name, spec.key()] for name, spec in sorted(specs.items())]
                      + [[name, spec.key()] for name, (spec, _) in sorted((ops or {}).items())]
                      + [[name, [list(r) for r in rel]] for name, rel in sorted(relations.items())])
    return hashlib.sha1(text.encode()).hexdigest()


def _axes(relations: Mapping[str, list[Relation]]) -> dict[str, set[str]]:
    axes: dict[str, set[str]] = {}
    for rel in relations.values():
        for layer, axis, _ in rel:
            axes.setdefault(layer, set()).add(axis)
    return axes


def build_cost_table(graph: DependencyGraph, backend: str = "eager", *, cache_dir: str | os.PathLike | None = None,
                     previous: CostTable | None = None, repeats: int = 5, num_threads: int = 1, points: int = 16,
                     progress: Callable[[str], Any] | None = None, measure: bool = True) -> CostTable:
    """Measure (or load, or take over from ``previous``) the latency table of ``graph``'s model on ``backend``.

    Args:
        graph: the model's dependency graph (its ``example_inputs`` fix the input size).
        backend: one of :data:`~lightning_prune.profiling.backends.BACKENDS`.
        cache_dir: where tables are cached (one JSON file per backend, input shape, machine and architecture);
            ``None``: no disk cache.
        previous: an earlier table of the same model (e.g. before a prune): layers whose shape did not change are
            taken from it instead of being measured again.
        repeats, num_threads: per isolated layer (the fastest of ``repeats`` runs after one warm-up).
        points: sampled widths per layer axis (at most).
        progress: called with a line after each measured layer.
        measure: ``False`` only resolves the architecture (no timing; missing layers get empty curves).

    Returns:
        a :class:`CostTable`; bad input raises ``ValueError`` naming it.
    """
    require_backend(backend)
    if repeats < 1 or num_threads < 1 or points < 2:
        raise ValueError(f"need repeats >= 1, num_threads >= 1 and points >= 2, got {repeats}, {num_threads}, "
                         f"{points}")
    start = time.perf_counter()
    example = graph.example_inputs
    first = example if isinstance(example, torch.Tensor) else next(
        (t for t in (example.values() if isinstance(example, dict) else example) if isinstance(t, torch.Tensor)),
        None)
    input_shape = [int(s) for s in first.shape] if isinstance(first, torch.Tensor) else []
    specs = discover_layers(graph.model, example)
    ops = discover_ops(graph)
    relations, sizes = _relations(graph, specs, ops)
    axes = {layer: wanted for layer, wanted in _axes(relations).items() if layer not in ops}
    table = CostTable(backend, input_shape, device_name(backend), _arch_hash(specs, relations, ops), {}, relations,
                      sizes, points, repeats, num_threads, os.fspath(cache_dir) if cache_dir is not None else None)
    if not measure:
        return table
    path = None
    if table.cache_dir is not None:
        private_dir(table.cache_dir)  # created 0o700; refused when another user could plant tables in it
        path = os.path.join(table.cache_dir, table.filename())
    if path is not None and os.path.lexists(path):
        try:
            cached: CostTable | None = CostTable.load(path)
            problem = _cache_mismatch(cached, table, specs, axes, ops)
        except ValueError as err:
            cached, problem = None, str(err).removeprefix(f"{path} is ")
        if problem is None and cached is not None:
            cached.cache_dir, cached.reused, cached.measured = table.cache_dir, len(cached.layers), 0
            cached.build_seconds = time.perf_counter() - start
            return cached
        warnings.warn(f"{path}: {problem}; measuring the cost table again", RuntimeWarning, stacklevel=2)
    old: dict[str, LayerCurve] = {}
    old_ops: dict[str, OpCost] = {}
    if previous is not None and previous.backend == backend and previous.num_threads == num_threads:
        old = {curve.spec.key() + "".join(sorted(_curve_axes(curve))): curve for curve in previous.layers.values()}
        old_ops = {op.spec.key(): op for op in previous.ops.values()}
    table.ops = {name: old_ops[spec.key()] for name, (spec, _) in ops.items() if spec.key() in old_ops}
    missing = [(name, spec) for name, (spec, _) in ops.items() if name not in table.ops]
    if missing:
        # one batch (one graph on ONNX Runtime / OpenVINO); a backend that reports no kernel for an op (OpenVINO
        # concatenates in place) spends nothing on it
        times = time_layers([spec for _, spec in missing], backend, repeats=repeats, num_threads=num_threads)
        for (name, spec), ms in zip(missing, times):
            table.ops[name] = OpCost(spec, float(ms) if math.isfinite(ms) else 0.0)
        if progress is not None:
            progress(f"{len(missing)} weightless ops: {sum(table.ops[n].full_ms for n, _ in missing):.3f} ms")
    for layer in sorted(axes):
        spec, wanted = specs[layer], axes[layer]
        reuse = old.get(spec.key() + "".join(sorted(wanted)))
        if reuse is not None:
            table.layers[layer] = reuse
            table.reused += 1
            continue
        table.layers[layer] = measure_curve(spec, wanted, backend, repeats, num_threads, points)
        table.measured += 1
        if progress is not None:
            progress(f"{layer}: {spec.key()} {table.layers[layer].full_ms:.3f} ms")
    table.build_seconds = time.perf_counter() - start
    if path is not None:
        table.save(path)
    return table


def _cache_mismatch(cached: CostTable, table: CostTable, specs: Mapping[str, LayerSpec],
                    axes: Mapping[str, set[str]], ops: Mapping[str, tuple[OpSpec, dict[str, int]]]) -> str | None:
    """Why a cached table does not fit the model ``table`` was resolved from (``None``: it fits).

    Checked beyond the (file-name) key: the same layers and ops with the same shapes, each curve along exactly the
    axes a group changes and ending at the layer's current width, the same groups, relations and sizes."""
    if cached.key() != table.key():
        return "made for another backend, input size, machine or architecture"
    if set(cached.layers) != set(axes) or set(cached.ops) != set(ops):
        return "its layers and ops are not the model's"
    for name, curve in cached.layers.items():
        spec, wanted = specs[name], axes[name]
        if curve.spec.key() != spec.key():
            return f"layer {name!r} is {curve.spec.key()}, the model's is {spec.key()}"
        for axis, widths, width in (("out", curve.out_widths, spec.out_channels),
                                    ("in", curve.in_widths, spec.in_channels)):
            expected = axis in wanted and not (axis == "in" and spec.depthwise)
            if bool(widths) != expected or (widths and widths[-1] != width):
                return f"layer {name!r}: its {axis} curve does not fit its {width} channels"
    for name, op in cached.ops.items():
        if op.spec.key() != ops[name][0].key():
            return f"op {name!r} is {op.spec.key()}, the model's is {ops[name][0].key()}"
    if cached.sizes != table.sizes or cached.relations != table.relations:
        return "its groups are not the model's"
    return None


def _curve_axes(curve: LayerCurve) -> set[str]:
    return ({"out"} if curve.out_widths else set()) | ({"in"} if curve.in_widths else set())


