"""Checking a callback's watch options when the callback is made, not when training starts.

A trainer callback builds its Monitor only at the start of training, minutes later and deep
inside the trainer; a typo in ``every=`` or ``stats=`` should fail where it was written. So
the constructors hand their options to :func:`check_watch_options`, which runs
:func:`gradwatch.watch`'s own validation on a one-layer probe kept in memory (so the rules are
never written twice) and checks ``run_dir`` without creating it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gradwatch.argcheck import check_path
from gradwatch.errors import GradwatchValueError
from gradwatch.monitor import watch


def check_watch_options(owner: str, run_dir: Any, own: tuple[str, ...], **options: Any) -> None:
    """Raise the gradwatch error ``watch`` would raise for these options.

    Args:
        owner: the callback's class name, for the message about options it sets itself.
        run_dir: the run directory (None keeps the run in memory); it is not created here.
        own: options the callback takes from the trainer (``optimizer``, ``scaler``).
        **options: the other options of :func:`gradwatch.watch`.

    Raises:
        GradwatchTypeError, GradwatchValueError: an option is wrong; the message names it.
        RunDirectoryError: as ``watch`` would raise for ``run_dir``.
    """
    given = sorted(set(own) & set(options))
    if given:
        raise GradwatchValueError(
            f"{owner} takes {', '.join(given)} from the Trainer; remove "
            f"{', '.join(f'{g}=' for g in given)} from its arguments"
        )
    if run_dir is not None:
        path = check_path("run_dir", run_dir, hint="or None to keep the run in memory")
        if path.exists() and not path.is_dir():
            raise GradwatchValueError(
                f"run_dir {str(path)!r} is a file, not a folder; give a folder for the run"
            )
    probe = nn.Linear(1, 1)
    # The probe's Monitor validates every option; its in-memory run is dropped at once. It is
    # never distributed: closing it must not wait for other ranks.
    skip = ("overwrite", "tensorboard", "distributed", "process_group")
    options = {k: v for k, v in options.items() if k not in skip}
    watch(probe, run_dir=None, distributed=False, **options).close()
