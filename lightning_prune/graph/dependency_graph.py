"""The public face of the graph: trace once, list groups, mask or prune them by plan."""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_prune.graph.attachments import Attachments, check_attachments, run_attachments
from lightning_prune.graph.conventions import default_output_filter
from lightning_prune.graph.groups import Group, build_groups
from lightning_prune.graph.records import OpCall, Role, TraceResult
from lightning_prune.graph.replay import SelectionReplay
from lightning_prune.graph.surgery import ParamChange, Surgery
from lightning_prune.graph.trace import flatten_output, trace_channels
from lightning_prune.utils.model import call_model, eval_mode

__all__ = ["DependencyGraph", "PruneResult", "Plan"]

Plan = Mapping[str, Sequence[int]]


@dataclass
class PruneResult:
    """What :meth:`DependencyGraph.prune` did.

    Attributes:
        removed: channels removed per group name (group-local indices, sorted).
        changes: every sliced tensor and the indices it kept, per dim; use :meth:`ParamChange.slice` to bring
            optimizer state or other per-parameter tensors along.
    """

    removed: dict[str, list[int]]
    changes: list[ParamChange]


class DependencyGraph:
    """Concat-aware channel dependency graph of a model, built from one real forward pass.

    Args:
        model: any ``nn.Module``; it is run once, in eval mode and without gradients, and left as it was.
        example_inputs: what ``model`` is called with: a tensor, a tuple of positional inputs, or a dict of
            keyword inputs.
        output_filter: maps the model's output to the part whose channels must keep their shape (default:
            everything, except the feature maps ultralytics heads pass through under ``"feats"``).
        attachments: modules outside the model that read a module's output (``name -> (module name, module)``,
            e.g. distillation projectors, see :mod:`~lightning_prune.graph.attachments`): pruning slices their
            inputs too, and the masked == pruned check covers their outputs.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_prune import DependencyGraph
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))
        >>> graph = DependencyGraph(net, torch.randn(1, 3, 32, 32))
        >>> [(g.name, g.size, g.prunable) for g in graph.groups]  # doctest: +NORMALIZE_WHITESPACE
        [('input:0', 3, False), ('0', 16, True), ('3', 8, False)]
        >>> _ = graph.prune({"0": [0, 1, 2, 3]})
        >>> net[0].out_channels, net[1].num_features, net[3].in_channels
        (12, 12, 12)
    """

    def __init__(self, model: nn.Module, example_inputs: Any,
                 output_filter: Callable[[Any], Any] | None = None,
                 attachments: Attachments | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"DependencyGraph needs an nn.Module, got {type(model).__name__}")
        if example_inputs is None:
            raise ValueError("DependencyGraph needs an example input: pass the tensor(s) the model's forward takes")
        check_attachments(model, attachments)
        self.model = model
        self.example_inputs = example_inputs
        self.output_filter = output_filter
        self.attachments: dict[str, tuple[str, nn.Module]] = dict(attachments or {})
        self.groups: list[Group] = []
        self.build_seconds = 0.0
        self._masking = 0
        #: groups pinned because pruning them broke the model (found by :meth:`prune`): name -> reason
        self.verification_pins: dict[str, str] = {}
        self._apply_trace(self._trace())

    # -- building -------------------------------------------------------------------------------------------------
    def _trace(self) -> TraceResult:
        start = time.perf_counter()
        result = trace_channels(self.model, self.example_inputs, self.output_filter, self.attachments)
        result.build_seconds = time.perf_counter() - start
        return result

    def _apply_trace(self, result: TraceResult) -> None:
        start = time.perf_counter()
        groups = build_groups(result)
        for group in groups:
            reason = self.verification_pins.get(group.name) if group.prunable else None
            if reason is not None:
                group.prunable, group.reason = False, reason
        forest = result.forest
        self._roots = np.fromiter((forest.find(i) for i in range(len(forest))), dtype=np.int64, count=len(forest))
        self._result = result
        self.groups = groups
        self._by_name = {group.name: group for group in groups}
        self._group_of_root = {int(root): group.name for group in groups for root in group.roots}
        self.build_seconds = result.build_seconds + time.perf_counter() - start

    def rebuild(self) -> None:
        """Trace the model again (after changing it outside this graph)."""
        self._apply_trace(self._trace())

    # -- queries ----------------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Group:
        return self.group(name)

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def group(self, name: str) -> Group:
        """The group called ``name``; ``KeyError`` with close matches otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(_unknown_group(name, self._by_name)) from None

    @property
    def prunable_groups(self) -> list[Group]:
        return [group for group in self.groups if group.prunable]

    # -- plans ------------------------------------------------------------------------------------------------------
    def _resolve(self, plan: Plan) -> dict[str, np.ndarray]:
        """Validate ``plan`` and return sorted channel indices per group; ``ValueError`` naming the cause."""
        if not isinstance(plan, Mapping):
            raise ValueError(f"a pruning plan maps group names to channel indices, got {type(plan).__name__}")
        resolved: dict[str, np.ndarray] = {}
        for name, indices in plan.items():
            if name not in self._by_name:
                raise ValueError(_unknown_group(name, self._by_name))
            group = self._by_name[name]
            if isinstance(indices, (torch.Tensor, np.ndarray)):
                indices = indices.tolist()
            if isinstance(indices, (str, bytes)) or not isinstance(indices, (Sequence, set, frozenset)):
                raise ValueError(f"plan for group '{name}' must be a list of channel indices, got {indices!r}")
            values = list(indices)
            bad = [i for i in values if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
            if bad:
                raise ValueError(f"plan for group '{name}' has a non-integer channel index {bad[0]!r}")
            if not values:
                continue
            if not group.prunable:
                raise ValueError(f"group '{name}' is pinned: {group.reason}")
            out_of_range = [i for i in values if not 0 <= i < group.size]
            if out_of_range:
                raise ValueError(
                    f"plan for group '{name}' has channel {out_of_range[0]} out of range 0..{group.size - 1}"
                )
            if len(set(values)) != len(values):
                duplicate = next(i for i in values if values.count(i) > 1)
                raise ValueError(f"plan for group '{name}' repeats channel {duplicate}")
            if len(values) >= group.size:
                raise ValueError(f"plan for group '{name}' removes all {group.size} channels; keep at least one")
            resolved[name] = np.asarray(sorted(int(i) for i in values), dtype=np.int64)
        return resolved

    def _removed_labels(self, resolved: Mapping[str, np.ndarray]) -> np.ndarray:
        removed_roots = np.zeros(len(self._roots), dtype=bool)
        for name, indices in resolved.items():
            removed_roots[self._by_name[name].roots[indices]] = True
        return removed_roots[self._roots]

    def estimate_removal(self, plan: Plan) -> tuple[float, float]:
        """(FLOPs, parameters) that ``plan`` would remove, predicted from the trace; nothing is changed.

        FLOPs are those of the traced conv/linear layers at the example input (a layer keeping a fraction ``a`` of
        its inputs and ``b`` of its outputs keeps ``a·b`` of its FLOPs); parameters are counted exactly. The model's
        own cost only: attachments (training-only, e.g. distillation projectors) are sliced, never counted.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 2, 1, bias=False))
            >>> graph = DependencyGraph(net, torch.randn(1, 3, 4, 4))
            >>> graph.estimate_removal({"0": [0, 1, 2, 3]})
            (640.0, 20.0)
        """
        removed = self._removed_labels(self._resolve(plan))
        flops = 0.0
        for call in self._result.cost_calls():
            has_in = call.in_labels is not None and len(call.in_labels) > 0
            kept_in = 1.0 - removed[call.in_labels].mean() if has_in else 1.0
            kept_out = 1.0 - removed[call.out_labels].mean() if call.out_labels is not None else 1.0
            flops += call.flops * (1.0 - kept_in * kept_out)
        kept: dict[int, list] = {}
        for binding in self._result.bindings.values():
            tensor = binding.tensor
            if isinstance(tensor, nn.Parameter) and binding.module_name not in self._result.attached_names:
                entry = kept.setdefault(id(tensor), [tensor.numel(), 1.0])
                entry[1] *= 1.0 - removed[binding.labels].mean()
        params = sum(numel * (1.0 - fraction) for numel, fraction in kept.values())
        return float(flops), float(round(params))

    @property
    def prunable_flops_share(self) -> float:
        """How much of the traced conv/linear FLOPs pruning can reach: the FLOPs-weighted mean, over layers, of the
        prunable fraction of their channel dims (input and output channels count half each; a depthwise layer, whose
        cost scales with its channels once, counts its output channels only). 1.0: every layer can shrink on both
        sides; a pinned residual stream or a pinned model input lowers it. The coverage figure of
        ``benchmarks/coverage.py``.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 2, 1, bias=False))
            >>> graph = DependencyGraph(net, torch.randn(1, 3, 4, 4))
            >>> graph.prunable_flops_share  # the input and the output are pinned: half of each conv can shrink
            0.5
        """
        prunable = np.zeros(len(self._roots), dtype=bool)
        for group in self.prunable_groups:
            prunable[group.roots] = True
        prunable = prunable[self._roots]
        total = reached = 0.0
        for call in self._result.cost_calls():
            sides = [prunable[labels].mean() for labels in (call.in_labels, call.out_labels)
                     if labels is not None and len(labels)]
            total += call.flops
            reached += call.flops * (sum(sides) / len(sides) if sides else 0.0)
        return float(reached / total) if total else 0.0

    @property
    def op_calls(self) -> list[OpCall]:
        """The weightless ops the trace saw moving channels (concatenations and splits along channels, poolings,
        resizes, residual adds), in call order; :meth:`channel_owners` says whose channels they move."""
        return list(self._result.op_calls)

    def channel_owners(self, labels: np.ndarray) -> dict[str, int]:
        """How many of the traced channel ``labels`` (e.g. an :class:`~lightning_prune.graph.records.OpCall`'s)
        each prunable group holds.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> class Net(nn.Module):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 2, 1), nn.Conv2d(6, 1, 1)
            ...     def forward(self, x):
            ...         return self.c(torch.cat([self.a(x), self.b(x)], 1))
            >>> graph = DependencyGraph(Net(), torch.randn(1, 3, 4, 4))
            >>> [(op.kind, graph.channel_owners(op.labels)) for op in graph.op_calls]
            [('cat', {'a': 4, 'b': 2})]
        """
        prunable = {group.name for group in self.groups if group.prunable}
        owners: dict[str, int] = {}
        for root in self._roots[np.asarray(labels, dtype=np.int64)].tolist():
            name = self._group_of_root.get(int(root))
            if name in prunable:
                owners[name] = owners.get(name, 0) + 1
        return owners

    @property
    def traced_flops(self) -> int:
        """FLOPs of the traced conv/linear layers at the example input."""
        return sum(call.flops for call in self._result.cost_calls())

    def check_finite(self, outputs: bool = True) -> None:
        """Raise ``ValueError``, in one line, naming the first parameter or floating-point buffer of the model that
        holds a NaN or an infinity and (with ``outputs``) the first output of an eval-mode forward on the example
        input that does; nothing is changed. Pruning cannot be verified on such a model, and importance scores
        computed from it mean nothing.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
            >>> graph = DependencyGraph(net, torch.randn(1, 3, 4, 4))
            >>> graph.check_finite()
            >>> with torch.no_grad():
            ...     net[1].bias[0] = float("nan")
            >>> graph.check_finite()
            Traceback (most recent call last):
            ...
            ValueError: parameter '1.bias' holds 1 NaN of 2 values: fix or reload the weights before pruning
        """
        for kind, named in (("parameter", self.model.named_parameters()), ("buffer", self.model.named_buffers())):
            for name, tensor in named:
                if tensor.is_floating_point() and (what := _non_finite(tensor)) is not None:
                    raise ValueError(f"{kind} '{name}' holds {what}: fix or reload the weights before pruning")
        if outputs:
            self._require_finite(self._eval_outputs(), "on the example input")

    def _require_finite(self, outputs: Sequence[torch.Tensor], where: str) -> None:
        """``ValueError`` naming the first non-finite parameter or buffer, else the first non-finite of ``outputs``
        (the filtered eval-mode outputs, :meth:`_eval_outputs`), when any of ``outputs`` is not finite."""
        for index, tensor in enumerate(outputs):
            if (what := _non_finite(tensor)) is not None:
                self.check_finite(outputs=False)
                raise ValueError(f"output {index} (shape {tuple(tensor.shape)}) of the model {where} holds {what}, "
                                 "with every parameter and buffer finite: pruning cannot be verified on it")

    @contextlib.contextmanager
    def masked(self, plan: Plan) -> Iterator[None]:
        """Zero the planned channels' producers (filters, biases, norm γ/β) inside the block; restore on exit.

        A cheap stand-in for pruning while probing sensitivity: for groups with :attr:`Group.exact` the model's
        eval-mode output inside the block equals the output after :meth:`prune` of the same plan.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
            >>> graph = DependencyGraph(net, torch.randn(1, 3, 8, 8))
            >>> with graph.masked({"0": [1]}):
            ...     float(net[0].weight[1].detach().abs().sum())
            0.0
            >>> float(net[0].weight[1].detach().abs().sum()) > 0
            True
        """
        removed = self._removed_labels(self._resolve(plan))
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._masking += 1
        try:
            with torch.no_grad():
                for binding in self._result.bindings.values():
                    if binding.role != Role.PRODUCER:
                        continue
                    hit = np.nonzero(removed[binding.labels])[0]
                    if len(hit):
                        tensor = binding.tensor
                        saved.append((tensor, tensor.detach().clone()))
                        tensor.data.index_fill_(binding.dim, torch.from_numpy(hit).to(tensor.device), 0)
            yield
        finally:
            self._masking -= 1
            with torch.no_grad():
                for tensor, original in reversed(saved):
                    tensor.data.copy_(original)

    def prune(self, plan: Plan, verify: bool = True) -> PruneResult:
        """Physically remove the planned channels everywhere they live; atomic.

        Producers, norms (with running statistics), consumers' input slices at their concat offsets, equal splits,
        and module attributes are all updated, then the model is traced again so the graph stays valid for the next
        prune. A bad plan raises ``ValueError`` before anything changes; a prune that would break the forward or
        change the output's shape is rolled back and raises ``ValueError``.

        With ``verify`` (and every planned group :attr:`Group.exact`), the eval-mode output on the example input
        after pruning must equal the output with the same channels masked: a module attribute or constant tied to a
        channel count that pruning did not update would otherwise change the model silently. A NaN or an infinity
        in the outputs to compare raises ``ValueError`` naming it (or the parameter or buffer that holds one) before
        anything changes, and pins no group.
        """
        if self._masking:
            raise ValueError("cannot prune inside graph.masked(): leave the masked block first")
        resolved = self._resolve(plan)
        if not resolved:
            return PruneResult({}, [])
        outcome = self._attempt(resolved, verify, keep=True)
        if isinstance(outcome, tuple):
            result, changes = outcome
            self._apply_trace(result)
            return PruneResult({name: idx.tolist() for name, idx in resolved.items()}, changes)
        culprits = self._culprits(resolved, verify) if len(resolved) > 1 else [next(iter(resolved))]
        error = (self._attempt({name: resolved[name] for name in culprits}, verify) if len(culprits) < len(resolved)
                 else None) or outcome
        message = _one_line(error)
        reason = f"pruning it breaks the model: {message}"
        for name in culprits:
            self.verification_pins[name] = reason
            group = self._by_name[name]
            group.prunable, group.reason = False, reason
        others = len(resolved) - len(culprits)
        named = ", ".join(repr(name) for name in culprits)
        raise ValueError(
            f"pruning {sorted(culprits)} breaks the model, left unchanged: {message}; {named} "
            f"{'are' if len(culprits) > 1 else 'is'} pinned now"
            + (f" (the plan's other {others} group(s) prune fine: prune them again)" if others else "")
        ) from error

    def _attempt(self, resolved: Mapping[str, np.ndarray], verify: bool,
                 keep: bool = False) -> tuple[TraceResult, list[ParamChange]] | Exception | None:
        """Prune ``resolved`` and check the model (forward, output shapes, masked == pruned outputs when verifying
        exact groups). On success with ``keep``: (new trace, changes); otherwise everything is rolled back and the
        result is the failure (``None`` when a trial succeeded)."""
        expected = None
        replay = SelectionReplay()  # the pruned forward selects (topk, argmax, ...) what the masked one selected
        if verify and all(self._by_name[name].exact for name in resolved):
            with self.masked({name: idx.tolist() for name, idx in resolved.items()}), replay:
                expected = self._eval_outputs()
            self._require_finite(expected, "with the planned channels masked")  # raised: not the plan's fault
        surgery = Surgery(self._result.bindings.values(), self._result.splits, self._removed_labels(resolved),
                          root=self.model)
        changes = surgery.apply()
        try:
            result = self._trace()
            if result.output_shapes != self._result.output_shapes:
                raise ValueError(
                    f"the model's output shapes change from {self._result.output_shapes} to {result.output_shapes}"
                )
            if expected is not None:
                with replay.replaying():
                    actual = self._eval_outputs()
                _check_same_outputs(expected, actual)
        except Exception as err:
            surgery.rollback()
            return err
        if keep:
            return result, changes
        surgery.rollback()
        return None

    def _culprits(self, resolved: Mapping[str, np.ndarray], verify: bool) -> list[str]:
        """The groups of a failing plan that fail on their own, found by bisection (each trial prunes, checks and
        rolls back); when only a combination fails, that combination."""
        names = list(resolved)
        while len(names) > 1:
            half = len(names) // 2
            for part in (names[:half], names[half:]):
                if self._attempt({name: resolved[name] for name in part}, verify) is not None:
                    names = part
                    break
            else:
                return names  # each half prunes fine alone: the failure needs both
        return names

    def _eval_outputs(self) -> list[torch.Tensor]:
        """The filtered outputs of one eval-mode forward on the example input (training flags restored)."""
        attached: list[Any] = []
        with contextlib.ExitStack() as stack:
            for _, module in self.attachments.values():
                stack.enter_context(eval_mode(module))
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(torch.no_grad())
            stack.enter_context(run_attachments(self.model, self.attachments, attached))
            output = self.run()
        output_filter = self.output_filter or default_output_filter(self.model)
        tensors = [*flatten_output(output_filter(output)), *flatten_output(attached)]
        return [t.detach().clone() for t in tensors if t.is_floating_point()]

    # -- reporting --------------------------------------------------------------------------------------------------
    def summary(self, max_rows: int | None = None) -> str:
        """A table of groups: name, size, prunable, FLOPs share and why a group is pinned or inexact."""
        prunable = self.prunable_groups
        params = sum(p.numel() for p in self.model.parameters())
        lines = [
            f"DependencyGraph of {type(self.model).__name__}: {len(self.groups)} groups, {len(prunable)} prunable "
            f"({sum(g.size for g in prunable)} of {sum(g.size for g in self.groups)} channels), "
            f"{params:,} parameters, built in {self.build_seconds * 1000:.0f} ms",
        ]
        name_width = min(48, max([len(g.name) for g in self.groups] + [5]))
        lines.append(f"{'group':<{name_width}}  {'size':>5}  {'prunable':<8}  {'FLOPs':>6}  reason")
        rows = self.groups if max_rows is None else self.groups[:max_rows]
        for group in rows:
            reason = group.reason or ("" if group.exact else f"(inexact mask: {group.note})")
            name = group.name if len(group.name) <= name_width else "…" + group.name[-name_width + 1:]
            lines.append(f"{name:<{name_width}}  {group.size:>5}  {'yes' if group.prunable else 'no':<8}  "
                         f"{group.flops_share:>6.1%}  {reason}")
        if max_rows is not None and len(self.groups) > max_rows:
            lines.append(f"... {len(self.groups) - max_rows} more groups")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (f"DependencyGraph({type(self.model).__name__}, groups={len(self.groups)}, "
                f"prunable={len(self.prunable_groups)})")

    def run(self) -> Any:
        """Run the model on its example input (handy for checks after pruning)."""
        return call_model(self.model, self.example_inputs)


def _check_same_outputs(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> None:
    for before, after in zip(expected, actual):
        scale = float(before.abs().max()) if before.numel() else 0.0
        if before.shape != after.shape or not torch.allclose(before, after, rtol=1e-3, atol=1e-4 * max(1.0, scale)):
            deviation = (before - after).abs().max() if before.shape == after.shape else "shape"
            raise ValueError(
                f"the kept channels' outputs changed (max deviation {deviation}): a module attribute or constant "
                "tied to a channel count was not updated"
            )


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _non_finite(tensor: torch.Tensor) -> str | None:
    """How many NaN and infinite values ``tensor`` holds (``"2 NaN and 1 Inf of 16 values"``); ``None`` if none."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    values = tensor.detach()
    if bool(torch.isfinite(values).all()):
        return None
    nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
    counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
    return f"{counts} of {values.numel()} values"


def _unknown_group(name: Any, known: Mapping[str, Group]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; see graph.groups"
    return f"unknown group {name!r}{hint}"

