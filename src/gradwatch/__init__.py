"""gradwatch: find, explain and fix vanishing and exploding gradients in PyTorch models.

The public names are imported on first use (PEP 562 ``__getattr__``), so that ``import
gradwatch.errors`` and ``gradwatch --help`` do not load torch; ``gw.watch``, ``gw.check`` and
the rest behave exactly as ordinary attributes.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from gradwatch import handoff
from gradwatch.errors import (
    DistributedFlushError,
    GradwatchError,
    GradwatchTypeError,
    GradwatchValueError,
    OutputError,
    RunDirectoryError,
    RunLockedError,
)
from gradwatch.version import __version__


def _diagnose_run_dir(run_dir: Any) -> Any:
    """Diagnose a closed run directory: what ``watch(..., diagnose=True)`` does at close."""
    from gradwatch.diagnose import diagnose
    from gradwatch.store import load

    return diagnose(load(run_dir))


def _live_tensorboard(log_dir: Any) -> Any:
    """The live TensorBoard export of ``watch(..., tensorboard=LOGDIR)``."""
    from gradwatch.report.tensorboard import LiveTensorBoard

    return LiveTensorBoard(log_dir)


def _check_rules(run: Any, is_checkup: bool) -> Any:
    """The diagnosis rules ``check`` applies when given none (``gradwatch.diagnose``'s)."""
    from gradwatch.diagnose import diagnose_run

    return diagnose_run(run, is_checkup)


# The Monitor sits below diagnose and report, and check below diagnose: what they need from
# above is handed down, imported only when used (so that the CLI's --help loads no torch).
handoff.set_diagnose_at_close(_diagnose_run_dir)
handoff.set_check_rules(_check_rules)
handoff.set_live_sink_factory(_live_tensorboard)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from gradwatch import remedies, theory
    from gradwatch.check import Checkup, check
    from gradwatch.diagnose import diagnose, store_findings
    from gradwatch.findings import Finding
    from gradwatch.monitor import Monitor, watch
    from gradwatch.remedies.fix import fix
    from gradwatch.store import Run, load

#: Public name -> the module that defines it (None: the name is a subpackage).
_LAZY = {
    "Checkup": "gradwatch.check",
    "check": "gradwatch.check",
    "diagnose": "gradwatch.diagnose",
    "store_findings": "gradwatch.diagnose",
    "Finding": "gradwatch.findings",
    "Monitor": "gradwatch.monitor",
    "watch": "gradwatch.monitor",
    "fix": "gradwatch.remedies.fix",
    "Run": "gradwatch.store",
    "load": "gradwatch.store",
    "remedies": None,
    "theory": None,
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it as a module attribute."""
    if name not in _LAZY:
        raise AttributeError(f"module 'gradwatch' has no attribute {name!r}")
    where = _LAZY[name]
    value = (
        importlib.import_module(f"gradwatch.{name}") if where is None
        else getattr(importlib.import_module(where), name)
    )
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


#: Submodules that share their name with a public function: ``gw.check`` is the function.
_SHADOWED = frozenset({"check", "diagnose"})


class _Package(types.ModuleType):
    """This package's module type: importing ``gradwatch.check`` must not hide ``gw.check``.

    Python binds each imported submodule as an attribute of its package; the eager
    ``from gradwatch.check import check`` used to overwrite that binding with the function,
    and this keeps it so now that the function is imported lazily.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the function of the same name is found by __getattr__
        super().__setattr__(name, value)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickle as a reference to the package, as pickle does for any module.

        Ray, joblib and multiprocessing send functions that use ``gw`` to other processes.
        """
        return importlib.import_module, (self.__name__,)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "Checkup",
    "DistributedFlushError",
    "Finding",
    "GradwatchError",
    "GradwatchTypeError",
    "GradwatchValueError",
    "Monitor",
    "OutputError",
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
