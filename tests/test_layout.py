"""The package's layout: no import cycle between its modules, and no module reaching into another's private names.

Both are checked statically (``ast``) over every module of ``lightning_prune``: imports at module level and inside
functions count alike (a lazy import that breaks a cycle at run time still ties the two modules together); imports
under ``if TYPE_CHECKING:`` do not (they never run).
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


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return found


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every runtime import of ``module`` inside the
    package; ``from pkg import sub`` resolves to the submodule ``pkg.sub`` when there is one."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found = []
    for node in _runtime_nodes(tree):
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


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        targets = set()
        for target, _, _ in _imports(module):
            while target and target not in MODULES:  # `import a.b.c` of a name: the deepest module that exists
                target = target.rpartition(".")[0]
            if target and target != module:
                targets.add(target)
        edges[module] = targets
    return edges


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
