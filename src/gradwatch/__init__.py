"""gradwatch: find, explain and fix vanishing and exploding gradients in PyTorch models."""

from __future__ import annotations

__version__ = "0.1.0"

from gradwatch import remedies, theory
from gradwatch.check import Checkup, check
from gradwatch.diagnose import diagnose, store_findings
from gradwatch.errors import (
    DistributedFlushError,
    GradwatchError,
    GradwatchTypeError,
    GradwatchValueError,
    RunDirectoryError,
    RunLockedError,
)
from gradwatch.findings import Finding
from gradwatch.monitor import Monitor, set_default_diagnose, watch
from gradwatch.remedies.fix import fix
from gradwatch.store import Run, load

# diagnosis at close is handed down to the Monitor (it sits below diagnose in the layers)
set_default_diagnose(lambda run_dir: diagnose(load(run_dir)))

__all__ = [
    "Checkup",
    "DistributedFlushError",
    "Finding",
    "GradwatchError",
    "GradwatchTypeError",
    "GradwatchValueError",
    "Monitor",
    "Run",
    "RunDirectoryError",
    "RunLockedError",
    "__version__",
    "check",
    "diagnose",
    "fix",
    "load",
    "remedies",
    "store_findings",
    "theory",
    "watch",
]
