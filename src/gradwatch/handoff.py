"""Callbacks the package root hands down to the layers below it.

The Monitor sits below ``diagnose`` and ``report`` in gradwatch's layers, so it cannot import
the diagnosis rules (run at close) or the TensorBoard exporter (the live export). The package
root registers both here, as callables that import what they need only when they are called,
so that ``import gradwatch`` stays cheap (the command line's ``--help`` loads no torch) and a
Monitor made through ``gradwatch.monitor.watch`` still diagnoses at close. This module imports
nothing, so any layer may read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_DIAGNOSE: list[Callable[[Any], Any]] = []
_LIVE_SINK: list[Callable[[Any], Any]] = []
_RULES: list[Callable[[Any, bool], Any]] = []


def set_check_rules(fn: Callable[[Any, bool], Any] | None) -> None:
    """Register (or remove) ``rules(run, is_checkup) -> findings``, the checkup's default."""
    _RULES.clear()
    if fn is not None:
        _RULES.append(fn)


def check_rules() -> Callable[[Any, bool], Any] | None:
    """The registered default diagnosis rules of ``check``, or None."""
    return _RULES[0] if _RULES else None


def set_diagnose_at_close(fn: Callable[[Any], Any] | None) -> None:
    """Register (or, with None, remove) ``run_dir -> findings``, run when a Monitor closes."""
    _DIAGNOSE.clear()
    if fn is not None:
        _DIAGNOSE.append(fn)


def diagnose_at_close() -> Callable[[Any], Any] | None:
    """The registered ``run_dir -> findings`` callable, or None."""
    return _DIAGNOSE[0] if _DIAGNOSE else None


def set_live_sink_factory(factory: Callable[[Any], Any] | None) -> None:
    """Register (or, with None, remove) ``log_dir -> sink`` for ``watch(..., tensorboard=)``."""
    _LIVE_SINK.clear()
    if factory is not None:
        _LIVE_SINK.append(factory)


def live_sink_factory() -> Callable[[Any], Any] | None:
    """The registered ``log_dir -> sink`` factory, or None."""
    return _LIVE_SINK[0] if _LIVE_SINK else None
