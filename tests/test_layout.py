"""The package's layout: its layers, no import cycle between its modules, Lightning and ultralytics where they
belong, and no module reaching into another's private names.

Everything is checked statically (``ast``) over every module of ``lightning_prune``: imports at module level and
inside functions count alike (a lazy import that breaks a cycle at run time still ties the two modules together).
The layer, cycle and third-party checks count imports under ``if TYPE_CHECKING:`` too (an annotation ties a module
to another as much as a call does); the private-name check leaves them out.

The layers, lowest first (:data:`LAYERS`); a module imports only from its own subpackage, or from a lower layer:

1. ``utils`` — helpers every layer shares (the tensor-tree walker, ``call_model``, safe files, deprecation shims).
2. ``profiling`` — measures models (FLOPs, latency on each backend, layers timed alone at sampled widths); knows no
   dependency graph. ``data`` and ``models`` (generated data sets, model YAMLs) stand beside it: they import nothing
   of the package.
3. ``graph`` — the channel dependency graph and its surgery; counts FLOPs with ``profiling.flops``.
4. ``pruning`` — the Lightning-free core: selection (importance, sensitivity, scoring, strategies, allocations), the
   per-group latency model (``pruning.cost_table``, which reads the graph) and the loop.
5. ``checkpoint`` — plan history in checkpoints. Lightning-free too: ``PrunedCheckpointMixin`` works through
   Lightning's hook names (``on_load_checkpoint``) and imports no Lightning.
6. ``callbacks`` — the Lightning front-ends: the only modules besides ``integrations`` that import ``lightning``.
7. ``integrations`` — ultralytics (an optional extra): the only modules that import ``ultralytics``.

The package's ``__init__`` (the top-level API) stands above them all: it loads the front-ends on first use. Nothing
imports it but for ``__version__``. The deprecated shims at old paths (:data:`SHIMS`) name their new homes as strings
(:mod:`lightning_prune.utils.deprecation`) and import nothing else; no module of the package imports them.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = "lightning_prune"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}

#: the subpackages (and top-level modules) by layer, lowest first: see the module docstring
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils",),
    ("profiling", "data", "models"),
    ("graph",),
    ("pruning",),
    ("checkpoint",),
    ("callbacks",),
    ("integrations",),
)
LAYER = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}

#: deprecated shims at the paths modules moved from (they go in the release after next)
SHIMS = frozenset({"lightning_prune.importance", "lightning_prune.selection", "lightning_prune.sensitivity",
                   "lightning_prune.surgery", "lightning_prune.profiling.cost_table"})
#: third-party packages and the subpackages that alone may import them
CONFINED = {
    "lightning": ("callbacks", "integrations"),
    "pytorch_lightning": ("callbacks", "integrations"),
    "lightning_fabric": ("callbacks", "integrations"),
    "lightning_utilities": ("callbacks", "integrations"),
    "ultralytics": ("integrations",),
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST, type_checking: bool = False) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks (inside them too with ``type_checking``)."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return found


@functools.cache
def _tree(module: str) -> ast.AST:
    return ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def _imports(module: str, type_checking: bool = False) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every runtime import of ``module`` inside the
    package (and every ``TYPE_CHECKING`` one with ``type_checking``); ``from pkg import sub`` resolves to the
    submodule ``pkg.sub`` when there is one."""
    found = []
    for node in _runtime_nodes(_tree(module), type_checking):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (source, alias.name, node.lineno))
    return found


def _edges(module: str, type_checking: bool = False) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of ``module`` inside the package, but ``__version__`` from the
    top level; ``import a.b.c`` of a name counts as the deepest module that exists."""
    found = []
    for target, name, line in _imports(module, type_checking):
        if target == PACKAGE and name == "__version__":
            continue
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.append((target, line))
    return found


def _graph(type_checking: bool = False) -> dict[str, set[str]]:
    return {module: {target for target, _ in _edges(module, type_checking)} for module in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_the_walk_sees_the_package() -> None:
    assert {"lightning_prune.graph.tracer", "lightning_prune.profiling.timing", "lightning_prune.utils.tree"} <= set(
        MODULES)
    edges = _graph()
    assert "lightning_prune.graph.ops" in edges["lightning_prune.graph.trace"]
    assert "lightning_prune.utils.tree" in edges["lightning_prune.graph.ops"]


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_counting_type_checking_imports() -> None:
    cycles = _cycles(_graph(type_checking=True))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _layer(module: str) -> int | None:
    """The layer of ``module``; ``None`` for the top level (above every layer) and the shims (checked apart)."""
    if module == PACKAGE or module in SHIMS:
        return None
    part = module.split(".")[1]
    assert part in LAYER, f"{module} is in no layer: add {part!r} to LAYERS (and to the module docstring)"
    return LAYER[part]


def _layer_violations() -> list[str]:
    found = []
    for module in MODULES:
        rank = _layer(module)
        if rank is None:
            continue
        for target, line in _edges(module, type_checking=True):
            if target in SHIMS:
                continue  # test_no_module_imports_a_shim
            target_rank = _layer(target)
            part, target_part = module.split(".")[1], target.split(".")[1] if "." in target else target
            if target_rank is None or target_rank > rank or (target_rank == rank and target_part != part):
                found.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line} ({part}) imports {target}"
                             f" ({'the top level' if target_rank is None else target_part})")
    return found


def test_layers_hold() -> None:
    """Every module imports only from its own subpackage or a lower layer (``TYPE_CHECKING`` imports included)."""
    bad = _layer_violations()
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_layer_check_is_not_vacuous() -> None:
    assert _layer("lightning_prune.graph.ops") < _layer("lightning_prune.pruning.strategies")
    assert _layer("lightning_prune.profiling.timing") < _layer("lightning_prune.graph.ops")
    assert _layer("lightning_prune.callbacks.iterative_pruning") < _layer("lightning_prune.integrations.ultralytics")
    assert "lightning_prune.graph" in _graph(type_checking=True)["lightning_prune.pruning.pruner"]
    assert "lightning_prune.callbacks" in _graph(type_checking=True)[PACKAGE]
    assert "lightning_prune.callbacks" not in _graph()[PACKAGE]  # the front-ends load on first use


def test_ops_and_tracer_import_neither_each_other() -> None:
    """The op handlers type against ``graph.protocol``; ``graph.trace`` puts the tracer and the handlers together."""
    edges = _graph(type_checking=True)
    assert "lightning_prune.graph.tracer" not in edges["lightning_prune.graph.ops"]
    assert "lightning_prune.graph.ops" not in edges["lightning_prune.graph.tracer"]
    assert {"lightning_prune.graph.ops", "lightning_prune.graph.tracer"} <= edges["lightning_prune.graph.trace"]


def _third_party(module: str) -> list[tuple[str, int]]:
    """``(top-level package, line)`` of every import of ``module`` outside the package, ``TYPE_CHECKING`` ones
    included."""
    found = []
    for node in _runtime_nodes(_tree(module), type_checking=True):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return [(name, line) for name, line in found if name != PACKAGE]


def test_lightning_and_ultralytics_are_imported_only_where_they_belong() -> None:
    bad = []
    for module in MODULES:
        part = module.split(".")[1] if "." in module else ""
        for name, line in _third_party(module):
            if name in CONFINED and part not in CONFINED[name]:
                bad.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line} imports {name} (only "
                           f"{' and '.join(f'{p}/' for p in CONFINED[name])} may)")
    assert not bad, "\n".join(bad)
    assert "lightning" in {name for name, _ in _third_party("lightning_prune.callbacks.iterative_pruning")}


def test_every_shim_only_names_its_new_home() -> None:
    for shim in sorted(SHIMS):
        assert {target for target, _ in _edges(shim, type_checking=True)} == {"lightning_prune.utils.deprecation"}, shim
        assert any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__getattr__" for t in node.targets)
                   for node in _tree(shim).body), f"{shim} defines no module __getattr__"


def test_no_module_imports_a_shim() -> None:
    bad = [f"{MODULES[module].relative_to(ROOT.parent)}:{line} imports {target}"
           for module in MODULES for target, line in _edges(module, type_checking=True)
           if target in SHIMS]
    assert not bad, "deprecated paths imported inside the package: " + "; ".join(bad)


def test_cycle_detection_is_not_vacuous() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@functools.cache
def _private_imports() -> list[str]:
    found = []
    for module, path in MODULES.items():
        for target, name, line in _imports(module):
            if name is not None and name.startswith("_") and not name.startswith("__") and target != module:
                found.append(f"{path.relative_to(ROOT.parent)}:{line} imports {name} from {target}")
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module: str) -> None:
    bad = [line for line in _private_imports() if line.startswith(str(MODULES[module].relative_to(ROOT.parent)))]
    assert not bad, "private names imported across modules: " + "; ".join(bad)
