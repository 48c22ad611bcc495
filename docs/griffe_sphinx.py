"""A griffe extension for the API pages: reads the project's Google-style docstrings, which use Sphinx's roles.

mkdocstrings renders docstrings as Markdown. Before it does, this extension (named in ``mkdocs.yml``) rewrites:

* Sphinx roles (``:class:`~lightning_prune.graph.DependencyGraph```, ``:func:`measure_latency```, ``:mod:`.data```)
  into optional cross-references: a link where the target is documented, plain code where it is not (so a role
  pointing outside the API pages never fails ``mkdocs build --strict``). Bare and relative names are resolved
  against the enclosing class, module and package, as Sphinx would;
* doctest runs (``>>>``) into highlighted ``pycon`` blocks, wherever they stand (griffe only does it under an
  ``Examples:`` header), without ``# doctest:`` flags;
* a literal block introduced by ``::`` into a highlighted ``python`` block (``yaml`` when its intro says YAML);
* an ``Args:`` entry whose names wrap onto the next lines (``a, b, c,`` / ``d: description``) into one line.

Only the text griffe hands to the renderer changes; the source files are not touched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|attr|data|exc|obj|const):`(?P<body>[^`]+)`")
SECTION = re.compile(r"^(?P<indent>\s*)(?:Args|Arguments|Parameters|Attributes|Other Parameters):\s*$")
SECTION_HEADER = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")  # a Google-style section: "Example:", "Returns:"
DOCTEST_FLAGS = re.compile(r"\s*#\s*doctest:.*$")


def _scopes(obj: griffe.Object) -> list[griffe.Object]:
    """The object, then each enclosing class/module/package, innermost first."""
    scopes: list[griffe.Object] = []
    current: Any = obj
    while current is not None:
        scopes.append(current)
        current = current.parent
    return scopes


def _resolve(target: str, obj: griffe.Object) -> str:
    """The full dotted path a role's target most likely means, seen from ``obj``."""
    if target.startswith("."):
        module = obj.module
        return module.path + target
    head = target.split(".", 1)[0]
    if head in {"lightning_prune", "torch", "lightning", "numpy", "ultralytics", "onnx", "onnxruntime", "openvino"}:
        return target
    for scope in _scopes(obj):
        try:
            members = scope.members
        except Exception:  # an alias that cannot be resolved has no members to look into
            continue
        if head in members:
            member = members[head]
            base = member.target_path if member.is_alias else member.path  # where it is documented
            return base + target[len(head):]
    return f"{obj.module.path}.{target}"


def _roles(text: str, obj: griffe.Object) -> str:
    def replace(match: re.Match[str]) -> str:
        body = match["body"].strip()
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", body)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target.lstrip(".")
        identifier = _resolve(target.lstrip("~"), obj)
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    return ROLE.sub(replace, text)


def _wrapped_names(lines: list[str]) -> list[str]:
    """Join an Args entry's names that wrap onto the following, deeper-indented lines, up to the first colon."""
    out: list[str] = []
    item_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        section = SECTION.match(line)
        if section:
            item_indent = len(section["indent"]) + 4
            out.append(line)
            i += 1
            continue
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if item_indent is not None and stripped and indent < item_indent:
            item_indent = None  # the section ended
        if item_indent is not None and stripped and indent == item_indent and ":" not in stripped:
            joined, j = stripped, i + 1
            while j < len(lines) and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) > item_indent:
                joined += " " + lines[j].strip()
                j += 1
                if ":" in joined:
                    break
            if ":" in joined:
                out.append(" " * item_indent + joined)
                i = j
                continue
        out.append(line)
        i += 1
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _code_blocks(lines: list[str]) -> list[str]:
    """Fence doctest runs (``>>>`` lines up to a blank line) as ``pycon`` and ``text::`` literal blocks as ``python``.

    A block indented under a prose line is dedented to that line (Markdown would read the indentation as an
    unhighlighted code block with the fence inside it); one directly under a section header keeps its indentation.
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        previous = next((p for p in reversed(out) if p.strip()), "")
        base = _indent(line) if SECTION_HEADER.match(previous) else min(_indent(line), _indent(previous))
        if line.lstrip().startswith(">>>"):
            j = i
            while j < len(lines) and lines[j].strip():
                j += 1
            block = lines[i:j]
            dedent = min(_indent(b) for b in block)
            if out and out[-1].strip():
                out.append("")
            out.append(" " * base + "```pycon")
            out.extend(" " * base + DOCTEST_FLAGS.sub("", b[dedent:]).rstrip() for b in block)
            out.append(" " * base + "```")
            i = j
            continue
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > _indent(line)):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1  # trailing blank lines stay outside the block
            block = [b for b in lines[i + 1 : j]]
            while block and not block[0].strip():
                block.pop(0)
            if block:
                text = line.rstrip()[:-2].rstrip()
                fence = " " * _indent(line)
                dedent = min(_indent(b) for b in block if b.strip())
                language = "yaml" if "yaml" in text.lower() else "python"
                out.extend([text + ":" if text.strip() else "", "", fence + "```" + language])
                out.extend(fence + b[dedent:] if b.strip() else "" for b in block)
                out.append(fence + "```")
                i = j
                continue
        out.append(line)
        i += 1
    return out


def _outside_fences(text: str, rewrite: Any) -> str:
    """Apply ``rewrite`` to the text outside fenced code blocks."""
    parts, prose, fenced = [], [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            if not fenced:
                parts.append(rewrite("\n".join(prose)))
                prose = []
            else:
                parts.append(line)
                fenced = False
                continue
            fenced = True
        if fenced:
            parts.append(line)
        else:
            prose.append(line)
    if prose:
        parts.append(rewrite("\n".join(prose)))
    return "\n".join(parts)


class SphinxToMarkdown(griffe.Extension):
    """Rewrite each docstring once the whole object tree is known (so names resolve across modules)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.is_alias or obj.docstring is None:
            return
        lines = obj.docstring.value.splitlines()
        # griffe parses an "Examples:" section's ">>>" lines itself, which would break the fences added below
        lines = [re.sub(r"^(\s*)Examples:\s*$", r"\1Example:", line) for line in lines]
        lines = _code_blocks(_wrapped_names(lines))
        obj.docstring.value = _outside_fences("\n".join(lines), lambda text: _roles(text, obj))
