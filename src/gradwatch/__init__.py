"""gradwatch: find, explain and fix vanishing and exploding gradients in PyTorch models."""

from __future__ import annotations

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
from gradwatch.monitor.sinks import set_live_sink_factory
from gradwatch.remedies.fix import fix
from gradwatch.report.tensorboard import LiveTensorBoard
from gradwatch.store import Run, load
from gradwatch.version import __version__

# diagnosis at close is handed down to the Monitor (it sits below diagnose in the layers)
set_default_diagnose(lambda run_dir: diagnose(load(run_dir)))
# so is the live TensorBoard export (the Monitor sits below report)
set_live_sink_factory(LiveTensorBoard)

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
