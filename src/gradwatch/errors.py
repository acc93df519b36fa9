"""Errors raised by gradwatch.

Every error a user can cause is a :class:`GradwatchError`. The concrete classes also derive
from the matching built-in (``ValueError``, ``TypeError``, ...) so that code catching the
built-in keeps working. Messages name the argument, say what was wrong and how to fix it.
"""

from __future__ import annotations


class GradwatchError(Exception):
    """Base class of every error gradwatch raises on purpose."""


class GradwatchValueError(GradwatchError, ValueError):
    """An argument has the right type but a wrong value."""


class GradwatchTypeError(GradwatchError, TypeError):
    """An argument has the wrong type."""


class RunDirectoryError(GradwatchError, OSError):
    """A run directory is missing, corrupt, foreign, or from a newer gradwatch."""


class RunLockedError(RunDirectoryError):
    """Another writer holds the run directory."""


class OutputError(GradwatchError, OSError):
    """A report, figure or export cannot be written where it was asked (read-only, full)."""


class DistributedFlushError(GradwatchError, RuntimeError):
    """A collective flush under ``torch.distributed`` failed: another rank stopped."""


def check_type(name: str, value: object, types: type | tuple[type, ...], hint: str = "") -> None:
    """Raise :class:`GradwatchTypeError` unless ``value`` is an instance of ``types``."""
    if not isinstance(value, types):
        expected = (
            " or ".join(t.__name__ for t in types) if isinstance(types, tuple) else types.__name__
        )
        msg = f"{name} must be a {expected}, got {type(value).__name__}"
        raise GradwatchTypeError(msg + (f"; {hint}" if hint else ""))
