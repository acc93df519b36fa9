"""gradwatch: find, explain and fix vanishing and exploding gradients in PyTorch models."""

from __future__ import annotations

__version__ = "0.1.0"

from gradwatch.errors import (
    GradwatchError,
    GradwatchTypeError,
    GradwatchValueError,
    RunDirectoryError,
    RunLockedError,
)
from gradwatch.findings import Finding
from gradwatch.monitor import Monitor, watch
from gradwatch.store import Run, load

__all__ = [
    "Finding",
    "GradwatchError",
    "GradwatchTypeError",
    "GradwatchValueError",
    "Monitor",
    "Run",
    "RunDirectoryError",
    "RunLockedError",
    "__version__",
    "load",
    "watch",
]
