"""Writing a file without following a symlink someone planted where it goes.

:func:`write_atomic` writes to a new temporary file in the same folder (created with
``O_CREAT | O_EXCL``, so it never opens an existing file or link), then ``os.replace``s it
onto the target. ``os.replace`` renames over the *name*: a symlink at the target is replaced
by the new file, and the file it pointed to is left untouched. Readers see the old file or
the new one, never half of it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gradwatch.errors import GradwatchTypeError, GradwatchValueError


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically, replacing a symlink there rather than its target.

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
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
