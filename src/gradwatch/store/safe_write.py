"""Writing a file atomically, without following a symlink someone planted where it goes.

The files of a run directory (``meta.json``, ``findings.jsonl``, the Parquet parts) and the
reports (HTML, figures) are written through :func:`write_with`, the one implementation: the
content goes to a new temporary file in the same folder, created by :func:`open_new` (which
removes whatever was at that name and never opens an existing file or link), and
``os.replace`` then renames it onto the target. ``os.replace`` renames over the *name*: a
symlink at the target is replaced by the new file, and the file it pointed to is left
untouched. Readers see the old file or the new one, never half of it; on any failure the
temporary file is removed.

Two flavours:

- the run directory's own files (:func:`write_bytes_atomic`, :func:`write_json_atomic`, the
  parts) use the fixed temporary name ``.NAME.tmp``, so a file a killed writer left behind
  is replaced by the next write (and a new run removes it), and get no ``fsync``, since they
  are rewritten while training runs;
- :func:`write_atomic` (reports, figures, ``store_findings``) uses a random temporary name,
  so two writers of one folder never share it, and an ``fsync`` of the file before the
  rename.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.jsonable import jsonable


def open_new(path: Path) -> int:
    """Open ``path`` for writing as a new file of this process, never through a symlink.

    Whatever is at ``path`` (a leftover temporary file, or a symlink someone planted) is
    removed first, without touching a link's target; then the file is created with
    ``O_EXCL | O_NOFOLLOW``, so a link planted in between makes the open fail instead of
    writing elsewhere.

    Returns:
        a file descriptor open for writing.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags, 0o644)


def write_with(
    path: Path, write: Callable[[BinaryIO], Any], *, fsync: bool = False, unique: bool = False
) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file, then a rename.

    The temporary file is opened with :func:`open_new`, so neither it nor ``path`` is ever
    written through a symlink (a rename replaces a link, not its target); on any failure (a
    full disk, a read-only filesystem) it is removed, so no empty or partial temporary file
    is left behind.

    Args:
        path: the file to write; its folder must exist.
        write: fills the open binary file handle.
        fsync: flush the file to disk (``os.fsync``) before the rename.
        unique: a random temporary name ``.NAME.<hex>.tmp`` instead of ``.NAME.tmp``.
    """
    suffix = f".{secrets.token_hex(6)}.tmp" if unique else ".tmp"
    tmp = path.with_name(f".{path.name}{suffix}")
    fd = open_new(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (see :func:`write_with`)."""
    write_with(path, lambda fh: fh.write(data))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (see :func:`write_with`).

    Numbers follow :mod:`gradwatch.jsonable`'s convention (NaN and ±inf as strings).
    """
    data = (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode("utf-8")
    write_bytes_atomic(path, data)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically and durably, replacing a symlink there, not its target.

    :func:`write_with` with a random temporary name and an ``fsync`` before the rename.

    Args:
        path: the file to write; its folder must exist.
        data: the content; a str is encoded as UTF-8.

    Returns:
        ``path`` as a Path.

    Raises:
        GradwatchTypeError: ``data`` is neither bytes nor str.
        GradwatchValueError: ``path`` is an existing folder.
        OSError: the folder is missing or not writable (the temporary file is removed).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise GradwatchTypeError(f"data must be bytes or str, got {type(data).__name__}")
    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        raise GradwatchValueError(f"path {str(target)!r} is a folder; give a file name")
    write_with(target, lambda fh: fh.write(data), fsync=True, unique=True)
    return target
