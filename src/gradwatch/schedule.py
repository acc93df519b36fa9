"""Which training steps the Monitor records.

A schedule is a callable ``step -> bool``. ``every=k`` records steps 0, k, 2k, ...;
``every="log"`` records every one of the first steps, then a fixed number per decade, so that
early blow-ups are never missed while a long run stays small on disk.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradwatch.errors import GradwatchTypeError, GradwatchValueError


@dataclass(frozen=True)
class Every:
    """Record every ``k``-th step (steps 0, k, 2k, ...)."""

    k: int = 1

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is recorded."""
        return step % self.k == 0


@dataclass(frozen=True)
class LogSpaced:
    """Record all of the first ``first`` steps, then about ``per_decade`` steps per decade.

    Step ``s >= first`` is recorded when ``floor(per_decade * log10(s))`` differs from that
    of ``s - 1``: steps 10, 12, 15, 19, 25, 31, 39, 50, 63, 79, 100, ... for the defaults.
    """

    first: int = 10
    per_decade: int = 10

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is recorded."""
        if step < max(self.first, 2):
            return True
        return math.floor(self.per_decade * math.log10(step)) != math.floor(
            self.per_decade * math.log10(step - 1)
        )


@dataclass(frozen=True)
class Predicate:
    """A schedule given as a callable ``step -> bool``, its answers checked."""

    fn: Callable[[int], bool]
    name: str = "every"

    def __call__(self, step: int) -> bool:
        """Whether ``step`` is recorded: ``fn(step)``, which must be True or False.

        Raises:
            GradwatchTypeError: ``fn`` returned something else (a tensor, a number, None).
        """
        out = self.fn(step)
        if isinstance(out, bool | np.bool_):
            return bool(out)
        raise GradwatchTypeError(
            f"{self.name} must return True or False for each step, got "
            f"{type(out).__name__} {str(out)[:40]} for step {step}; return a Python bool, e.g. "
            f"{self.name}=lambda step: step % 10 == 0"
        )


def _one_argument(fn: Callable, name: str) -> Callable:
    """``fn`` if it can be called with one positional argument (the step)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return fn
    try:
        sig.bind(0)
    except TypeError:
        raise GradwatchTypeError(
            f"{name} must be a callable of one argument, the step number (step -> bool), got "
            f"{getattr(fn, '__name__', type(fn).__name__)}{sig}; e.g. "
            f"{name}=lambda step: step % 10 == 0"
        ) from None
    return fn


def make_schedule(every: int | str | Callable[[int], bool], name: str = "every") -> Callable:
    """Turn the ``every=`` argument of :func:`gradwatch.watch` into a schedule.

    Args:
        every: a positive int k (every k-th step), "log" (log-spaced, all first steps),
            or a callable ``step -> bool``.
        name: the argument's name, for error messages.

    Raises:
        GradwatchValueError: k < 1 or an unknown string.
        GradwatchTypeError: any other type, a callable that cannot take one argument, or
            one whose answer for step 0 is not True or False.
    """
    if isinstance(every, bool):
        raise GradwatchTypeError(f"{name} must be a positive int, 'log' or a callable, got bool")
    if isinstance(every, int):
        if every < 1:
            raise GradwatchValueError(
                f"{name} must be >= 1 (record every k-th step), got {every}; "
                f"use {name}=1 to record every step"
            )
        return Every(every)
    if isinstance(every, str):
        if every == "log":
            return LogSpaced()
        raise GradwatchValueError(
            f"{name} must be a positive int, 'log' or a callable, got {every!r}"
        )
    if callable(every):
        schedule = Predicate(_one_argument(every, name), name)
        schedule(0)  # a wrong answer shows now, not at some step of the training
        return schedule
    raise GradwatchTypeError(
        f"{name} must be a positive int, 'log' or a callable step -> bool, "
        f"got {type(every).__name__}"
    )
