"""Writing files safely: atomic replacement through an unpredictable temporary, and private per-user directories.

Everything the package writes (checkpoints, reports, cached cost tables, generated data sets) goes through here:

* :func:`atomic_write` writes a file through a temporary created with :func:`tempfile.mkstemp` in the target's own
  folder (an unpredictable name, created exclusively: a planted file or symlink is never followed), then renames it
  over the target. Readers see the old file or the new one, never half of one; on any failure — a full disk
  included — the temporary is removed and the error is one line naming the file.
* :func:`private_dir` creates a folder only its owner may use (mode ``0o700``) and refuses one that another user
  owns or that group or others may write to: whatever such a folder holds may have been planted.
* :func:`user_cache_dir` is the package's per-user cache (``$XDG_CACHE_HOME/lightning_prune``, else
  ``~/.cache/lightning_prune``), falling back to a fresh :func:`tempfile.mkdtemp` folder when that cannot be created.

Example:
    >>> import os, stat, tempfile
    >>> folder = private_dir(os.path.join(tempfile.mkdtemp(), "cache"))
    >>> oct(stat.S_IMODE(os.stat(folder).st_mode))
    '0o700'
    >>> path = atomic_write(folder / "report.json", '{"ok": true}')
    >>> path.read_text(), sorted(os.listdir(folder))
    ('{"ok": true}', ['report.json'])
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["InsecureDirectoryError", "atomic_write", "private_dir", "user_cache_dir"]

APP_NAME = "lightning_prune"


class InsecureDirectoryError(PermissionError):
    """A folder the package would read trusted data from is not private to the current user."""


def _first_line(err: BaseException) -> str:
    text = (str(err).strip() or type(err).__name__).splitlines()[0].strip()
    return text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], object], *,
                 private: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path`` (as a :class:`~pathlib.Path`).

    Args:
        path: the file to write; its folder must exist.
        data: the bytes or text (UTF-8) to write, or a function that writes into the open binary file
            (e.g. ``lambda f: torch.save(obj, f)``).
        private: ``True``: the file is readable by its owner only (``0o600``); ``False``: the permissions a plain
            ``open(path, "w")`` would give (``0o666`` less the umask).

    Raises:
        OSError: one line naming ``path`` when the file cannot be written (the temporary is gone then, and an
            existing ``path`` is unchanged); any other error of ``data`` (a pickling error, ...) passes unchanged,
            also after removing the temporary.

    Example:
        >>> import tempfile
        >>> path = atomic_write(os.path.join(tempfile.mkdtemp(), "a.bin"), lambda f: f.write(b"abc"), private=True)
        >>> path.read_bytes(), oct(path.stat().st_mode & 0o777)
        (b'abc', '0o600')
    """
    path = Path(path)
    folder = path.parent
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or _first_line(err)}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            if callable(data):
                data(file)
            else:
                file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600 if private else 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, OSError):
            raise OSError(err.errno, f"cannot write {path}: {err.strerror or _first_line(err)}") from None
        if isinstance(err, RuntimeError):  # torch.save's C++ writer reports a full disk as a RuntimeError
            raise OSError(errno.EIO, f"cannot write {path}: {_first_line(err)}") from None
        raise
    return path


def _check_private(path: Path) -> None:
    try:
        info = os.stat(path)
    except OSError as err:
        raise OSError(err.errno, f"cannot use the folder {path}: {err.strerror or _first_line(err)}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, f"{path} is not a folder")
    if not hasattr(os, "geteuid"):  # no POSIX ownership (Windows): the user's profile folders are private already
        return
    if info.st_uid != os.geteuid():
        raise InsecureDirectoryError(
            errno.EPERM, f"refusing the folder {path}: it belongs to user id {info.st_uid}, not to you "
                         f"({os.geteuid()}); remove it or choose another folder")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InsecureDirectoryError(
            errno.EPERM, f"refusing the folder {path}: group or others may write to it (mode "
                         f"{oct(stat.S_IMODE(info.st_mode))}); `chmod go-w` it or choose another folder")


def private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (mode ``0o700``; missing parents too) unless it exists, check that it is private, return it.

    Raises:
        InsecureDirectoryError: one line naming ``path`` when it belongs to another user or group or others may
            write to it (what it holds may have been planted).
        OSError: one line naming ``path`` when it cannot be created or is not a folder.
    """
    path = Path(path).expanduser()
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; keep exactly the owner's bits
        except FileExistsError:
            pass  # created meanwhile (another process): checked below
        except OSError as err:
            raise OSError(err.errno, f"cannot create the folder {path}: {err.strerror or _first_line(err)}") from None
    _check_private(path)
    return path


def _cache_base() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / APP_NAME


@functools.lru_cache(maxsize=1)
def _fallback_root() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{APP_NAME}-"))


def user_cache_dir(*parts: str) -> Path:
    """The package's per-user cache folder (``$XDG_CACHE_HOME/lightning_prune/<parts>``, else
    ``~/.cache/lightning_prune/<parts>``), every level created private (``0o700``) and checked.

    When the cache folder cannot be created (no home folder, a read-only file system), a fresh
    :func:`tempfile.mkdtemp` folder of this process is used instead, with a warning.

    Raises:
        InsecureDirectoryError: one line naming the folder when one of its levels exists but is not private.
    """
    try:
        root = private_dir(_cache_base())
    except InsecureDirectoryError:
        raise
    except (OSError, RuntimeError) as err:  # RuntimeError: Path.home() without a home folder
        root = _fallback_root()
        warnings.warn(f"lightning_prune: no per-user cache folder ({_first_line(err)}); using {root} for this run",
                      RuntimeWarning, stacklevel=2)
    path = root
    for part in parts:
        if not part or part in (".", "..") or os.sep in part or (os.altsep and os.altsep in part):
            raise ValueError(f"a cache folder name must be one plain path component, got {part!r}")
        path = private_dir(path / part)
    return path
