"""Rewrite LightningCLI YAML files that give :class:`~lightning_prune.callbacks.IterativePruningCallback` the
deprecated flat keywords (``sensitivity_batches``, ``latency_backend``, ``max_rate``, ...) into the nested groups
(``sensitivity: {batches: ...}``, ``latency: {backend: ...}``, ``limits: {max_rate: ...}``).

In Python the flat keywords still work for this release, with a ``DeprecationWarning``; in a YAML file LightningCLI
refuses them, since jsonargparse accepts only the signature's parameters (``Problem with given class_path
'lightning_prune.callbacks.IterativePruningCallback': Option 'sensitivity_batches' is not accepted``). Like
Lightning's ``python -m lightning.pytorch.utilities.upgrade_checkpoint``::

    python -m lightning_prune.callbacks.upgrade_config config.yaml [more.yaml ...]
    python -m lightning_prune.callbacks.upgrade_config --check config.yaml   # report only; exit 1 if needed

Every ``IterativePruningCallback`` entry under ``trainer.callbacks`` (a list entry or a single mapping; also under
a subcommand, ``fit: {trainer: ...}``) has its ``init_args`` (and a ``config:`` mapping inside them) upgraded with
the map :data:`lightning_prune.pruning.config.FLAT_KEYWORDS`; everything else stays as it was. Each file gets one
line: what moved, or ``nothing to upgrade``. An upgraded file is written atomically, after a backup ``PATH.bak``
(unless ``--no-backup``; an existing ``PATH.bak`` with other content is never overwritten). A file that cannot be
read or parsed, or where a flat key and its nested spelling both hold different values, gets one line naming the
cause and stays untouched; the exit status is then 2.

The file is read and written with PyYAML: **comments and the layout (flow style, quoting) are not kept** — the
backup has them; the values and the order of the keys are kept.

Example:
    >>> init_args, moves = upgrade_init_args({"schedule": [0, 3], "sensitivity_batches": 2, "max_rate": 0.5})
    >>> init_args
    {'schedule': [0, 3], 'sensitivity': {'batches': 2}, 'limits': {'max_rate': 0.5}}
    >>> moves
    ['sensitivity_batches -> sensitivity.batches', 'max_rate -> limits.max_rate']
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_prune.pruning.config import FLAT_KEYWORDS, PruningConfig
from lightning_prune.utils.files import atomic_write

__all__ = ["UpgradeConflict", "main", "upgrade_document", "upgrade_file", "upgrade_init_args"]

CALLBACK = "IterativePruningCallback"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
COMMENTS_NOTE = "comments and layout are not kept"


class UpgradeConflict(ValueError):
    """A flat keyword and its nested spelling both set, to different values (or the group is not a mapping)."""


def _parameters() -> frozenset[str]:
    """The callback's own parameters: a flat keyword that is one of them is not moved."""
    from lightning_prune.callbacks.iterative_pruning import IterativePruningCallback

    return frozenset(inspect.signature(IterativePruningCallback.__init__).parameters)


def upgrade_init_args(init_args: Mapping[str, Any], keep: frozenset[str] = frozenset(),
                      where: str = "init_args") -> tuple[dict[str, Any], list[str]]:
    """``init_args`` with every flat keyword of :data:`~lightning_prune.pruning.config.FLAT_KEYWORDS` (but those in
    ``keep``) moved into its group, which takes the place of the first key moved into it when it is new; and the
    moves, as ``"old -> group.field"``.

    Raises:
        UpgradeConflict: a flat key and the nested field both set to different values, or the group set to
            something other than a mapping (or null).
    """
    moves: dict[str, tuple[str, str]] = {key: FLAT_KEYWORDS[key] for key in init_args
                                         if key in FLAT_KEYWORDS and key not in keep}
    if not moves:
        return dict(init_args), []
    groups: dict[str, dict[str, Any]] = {}
    for key, (group, name) in moves.items():
        if group not in groups:
            base = init_args.get(group)
            if base is not None and not isinstance(base, Mapping):
                raise UpgradeConflict(f"{where}.{key} belongs in {where}.{group}, which is {base!r}, not a mapping")
            groups[group] = dict(base or {})
        nested = groups[group]
        if name in nested and nested[name] != init_args[key]:
            raise UpgradeConflict(f"{where}.{key}: {init_args[key]!r} and {where}.{group}.{name}: {nested[name]!r} "
                                  "disagree; keep one")
        nested[name] = init_args[key]
    upgraded: dict[str, Any] = {}
    for key, value in init_args.items():
        if key in moves:
            group = moves[key][0]
            if group not in init_args and group not in upgraded:
                upgraded[group] = groups[group]
        elif key in groups:
            upgraded[key] = groups[key]
        else:
            upgraded[key] = value
    return upgraded, [f"{key} -> {group}.{name}" for key, (group, name) in moves.items()]


def _callback_entries(document: Any) -> Iterator[dict[str, Any]]:
    """Every ``IterativePruningCallback`` entry (a ``class_path``/``init_args`` mapping) of a LightningCLI YAML."""
    if not isinstance(document, dict):
        return
    roots = [document] + [document[s] for s in SUBCOMMANDS if isinstance(document.get(s), dict)]
    for root in roots:
        trainer = root.get("trainer")
        callbacks = trainer.get("callbacks") if isinstance(trainer, dict) else None
        entries = callbacks if isinstance(callbacks, list) else [callbacks]
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("class_path"), str) \
                    and entry["class_path"].split(".")[-1] == CALLBACK:
                yield entry


def upgrade_document(document: Any) -> list[str]:
    """Upgrade a parsed LightningCLI YAML in place; the moves made (empty: nothing to upgrade).

    Raises:
        UpgradeConflict: see :func:`upgrade_init_args` (the document is unchanged then).
    """
    keep = _parameters()
    config_fields = frozenset(f.name for f in dataclasses.fields(PruningConfig))
    changes: list[tuple[dict[str, Any], str, dict[str, Any]]] = []  # (parent, key, new value)
    moved: list[str] = []
    for number, entry in enumerate(_callback_entries(document)):
        init_args = entry.get("init_args")
        if not isinstance(init_args, dict):
            continue
        where = f"{CALLBACK}[{number}].init_args" if number else f"{CALLBACK}.init_args"
        upgraded, moves = upgrade_init_args(init_args, keep, where)
        config = upgraded.get("config")
        if isinstance(config, dict):  # a whole PruningConfig, plain or as class_path/init_args
            plain = not isinstance(config.get("init_args"), dict)
            inner, inner_moves = upgrade_init_args(config if plain else config["init_args"], config_fields,
                                                   f"{where}.config")
            if inner_moves:
                upgraded["config"] = inner if plain else {**config, "init_args": inner}
                moves += [f"config.{move}" for move in inner_moves]
        if moves:
            changes.append((entry, "init_args", upgraded))
            moved += moves
    for parent, key, value in changes:  # only after every entry upgraded without a conflict
        parent[key] = value
    return moved


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, indenting a list under its key as LightningCLI's examples do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True  # a value the file shared through an anchor is written out where it is used


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    """A list of plain values in flow style (``schedule: [0, 3]``), any other list in block style."""
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _dump(document: Any) -> str:
    """The YAML text: keys in their order, mappings in block style, lists of plain values in flow style."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=120)


def _backup(path: Path, original: bytes) -> str:
    """Write ``PATH.bak`` (never over other content); what the line says about it."""
    backup = path.with_name(path.name + ".bak")
    if backup.exists() or backup.is_symlink():
        with contextlib.suppress(OSError):
            if backup.is_file() and backup.read_bytes() == original:
                return f"backup {backup} (already there)"
        raise OSError(f"{backup} exists with other content: move it away or pass --no-backup")
    atomic_write(backup, original)
    return f"backup {backup}"


def upgrade_file(path: str | os.PathLike, *, check: bool = False, backup: bool = True) -> tuple[int, str]:
    """Upgrade one file; ``(status, line)``: 0 upgraded or nothing to do, 1 needs upgrading (``check``), 2 failed
    (the file untouched)."""
    path = Path(path)
    try:
        original = path.read_bytes()
        document = yaml.safe_load(original.decode("utf-8"))
        moved = upgrade_document(document)
        if not moved:
            return 0, f"{path}: nothing to upgrade"
        if check:
            return 1, (f"{path}: needs upgrading: {', '.join(moved)} (run without --check to rewrite it; "
                       f"{COMMENTS_NOTE})")
        target = path.resolve()  # a symlink: its file is rewritten, the link stays
        mode = stat.S_IMODE(target.stat().st_mode)
        saved = _backup(path, original) if backup else "no backup"
        atomic_write(target, _dump(document), private=not mode & 0o077)
        with contextlib.suppress(OSError):
            os.chmod(target, mode)
    except UpgradeConflict as err:
        return 2, f"{path}: conflict, not upgraded: {err}"
    except yaml.YAMLError as err:
        text = " ".join(str(err).split())
        return 2, f"{path}: not valid YAML, not upgraded: {text}"
    except UnicodeDecodeError as err:
        return 2, f"{path}: not UTF-8 text, not upgraded: {err.reason} at byte {err.start}"
    except OSError as err:
        return 2, f"{path}: not upgraded: {err.strerror or err}"
    return 0, f"{path}: moved {', '.join(moved)} ({saved}; rewritten by PyYAML: {COMMENTS_NOTE})"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: upgrade (or ``--check``) each path, one line each; the exit status (0, 1 or 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_prune.callbacks.upgrade_config",
        description="Move the deprecated flat keywords of IterativePruningCallback (sensitivity_batches, "
                    "latency_backend, max_rate, ...) in LightningCLI YAML files into their nested groups "
                    "(sensitivity:, latency:, limits:), which LightningCLI requires. The files are rewritten with "
                    "PyYAML: comments and layout are not kept (the backup PATH.bak has them).",
        epilog="Exit status: 0 done (or nothing to do), 1 with --check when a file needs upgrading, 2 when a file "
               "could not be read or parsed, or a flat key conflicts with its nested spelling (that file untouched).")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="LightningCLI YAML files to upgrade in place")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when a file needs upgrading")
    parser.add_argument("--no-backup", action="store_true", help="do not write PATH.bak before rewriting PATH")
    args = parser.parse_args(argv)
    status = 0
    for path in args.paths:
        code, line = upgrade_file(path, check=args.check, backup=not args.no_backup)
        print(line, file=sys.stderr if code == 2 else sys.stdout, flush=True)
        status = max(status, code)
    return status


if __name__ == "__main__":
    sys.exit(main())
