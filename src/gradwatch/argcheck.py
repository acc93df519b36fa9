"""Argument checks shared by the public functions.

Each raises a gradwatch error that names the argument, says what was wrong and how to fix it.

This module sits with :mod:`gradwatch.errors` at the bottom of the import order, so every
layer may use it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradwatch.errors import GradwatchError, GradwatchTypeError, GradwatchValueError, OutputError


def _hint(hint: str) -> str:
    return f"; {hint}" if hint else ""


def check_bool(name: str, value: Any, hint: str = "") -> bool:
    """``value`` must be True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise GradwatchTypeError(
            f"{name} must be True or False, got {type(value).__name__} {value!r}{_hint(hint)}"
        )
    return value


def check_int(name: str, value: Any, minimum: int = 1, hint: str = "") -> int:
    """``value`` must be a whole number (not a bool, not a float) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise GradwatchTypeError(
            f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}"
            f"{_hint(hint)}"
        )
    if value < minimum:
        raise GradwatchValueError(f"{name} must be >= {minimum}, got {value}{_hint(hint)}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    allow_inf: bool = False,
    hint: str = "",
) -> float:
    """``value`` must be a real number (not a bool), finite unless ``allow_inf``.

    It must also be ``> above`` and ``>= at_least`` when those are given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GradwatchTypeError(
            f"{name} must be a number, got {type(value).__name__} {value!r}{_hint(hint)}"
        )
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise GradwatchValueError(f"{name} must be a finite number, got {x}{_hint(hint)}")
    if above is not None and not x > above:
        raise GradwatchValueError(f"{name} must be > {above}, got {x}{_hint(hint)}")
    if at_least is not None and not x >= at_least:
        raise GradwatchValueError(f"{name} must be >= {at_least}, got {x}{_hint(hint)}")
    return x


#: Longest file or folder name (bytes, as the file system stores it) and longest path that
#: Linux and macOS file systems take; past them every file operation fails.
NAME_MAX = 255
PATH_MAX = 4096


def check_path_length(name: str, path: str | os.PathLike[str]) -> None:
    """Refuse a path no file system holds: a name over 255 bytes, or 4096 bytes in all.

    Raises:
        GradwatchValueError: naming ``name``, the component and the limit.
    """
    text = os.fspath(path)
    for part in Path(text).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise GradwatchValueError(
                f"{name} has a file or folder name of {size} bytes ({part[:24]!r}...); names "
                f"are at most {NAME_MAX} bytes on this file system: shorten it"
            )
    size = len(os.fsencode(text))
    if size >= PATH_MAX:
        raise GradwatchValueError(
            f"{name} is a path of {size} bytes; paths are shorter than {PATH_MAX} bytes on "
            "this file system: give a shorter one"
        )


def check_path(name: str, value: Any, hint: str = "") -> Path:
    """``value`` must be a non-empty path (a str or os.PathLike)."""
    if not isinstance(value, str | os.PathLike):
        raise GradwatchTypeError(
            f"{name} must be a path (str or pathlib.Path), got {type(value).__name__}"
            f"{_hint(hint)}"
        )
    text = os.fspath(value)
    if not text:
        raise GradwatchValueError(f"{name} is an empty path; give a file or folder name")
    if "\x00" in str(text):
        raise GradwatchValueError(f"{name} {text!r} contains a NUL byte, which no path may hold")
    check_path_length(name, text)
    return Path(value)


def _file_above(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists and is not a folder, if any."""
    for parent in path.parents:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def check_out_file(name: str, value: Any) -> Path:
    """``value`` must be a path where a file can be written: not a folder, not below a file."""
    path = check_path(name, value)
    if path.is_dir():
        raise GradwatchValueError(f"{name} {str(path)!r} is a folder; give a file name in it")
    blocker = _file_above(path)
    if blocker is not None:
        raise GradwatchValueError(
            f"{name} {str(path)!r} lies below {str(blocker)!r}, which is a file, not a folder; "
            "give a path in a folder"
        )
    return path


def check_out_dir(name: str, value: Any) -> Path:
    """``value`` must be a folder, or a path where one can be made: not a file, not below one."""
    path = check_path(name, value)
    if path.exists() and not path.is_dir():
        raise GradwatchValueError(
            f"{name} {str(path)!r} is a file, not a folder; give a folder (it is created if "
            "missing)"
        )
    blocker = _file_above(path)
    if blocker is not None:
        raise GradwatchValueError(
            f"{name} {str(path)!r} lies below {str(blocker)!r}, which is a file, not a folder; "
            "give another folder"
        )
    return path


@contextlib.contextmanager
def writing(name: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failure to write ``path`` (the argument ``name``) into one clear error.

    Raises:
        OutputError: the folder or file cannot be created or written; the message names the
            argument, the path, the reason and the fix.
    """
    try:
        yield
    except OSError as exc:
        if isinstance(exc, GradwatchError):
            raise
        raise OutputError(
            f"{name} {os.fspath(path)!r} cannot be written ({exc.strerror or exc}); choose a "
            "folder you can write to, with room on its disk"
        ) from exc


def refuse_symlink(name: str, path: Path) -> Path:
    """Refuse an output folder that is a symbolic link: gradwatch never writes through one."""
    if path.is_symlink():
        raise GradwatchValueError(
            f"{name} {str(path)!r} is a symbolic link; give a real folder (gradwatch does not "
            "write through links, which may have been planted to redirect its output)"
        )
    return path


def check_names(name: str, value: Any, hint: str = "") -> list[str]:
    """``value`` must be one string or an iterable of strings; returns them as a list."""
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise GradwatchTypeError(
            f"{name} must be a name or a list of names, got {type(value).__name__}{_hint(hint)}"
        ) from None
    bad = [v for v in items if not isinstance(v, str)]
    if bad:
        raise GradwatchTypeError(
            f"{name} must hold names (strings), got {type(bad[0]).__name__} {bad[0]!r}"
            f"{_hint(hint)}"
        )
    return items
