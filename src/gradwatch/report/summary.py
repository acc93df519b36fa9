"""The numbers that sum a training run up, with one definition each.

The demo's terminal output, its JSON result and the HTML report all quote these, so a run's
"final loss" is the same number wherever it is printed:

- **first loss**: the training loss recorded at the run's first recorded step (the model as
  initialised, on its first batch);
- **final loss**: the mean of the training losses recorded at the last :data:`LOSS_WINDOW`
  recorded steps (one minibatch loss is noisy; a mean over a few steps says where training
  ended up). It is NaN or Inf when one of those losses is: a run that blew up does not get a
  finite final loss from the steps before the blow-up.

Both are None when the run recorded no loss (``mon.step(loss=...)`` was never given one).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradwatch.errors import GradwatchValueError
from gradwatch.report._data import as_run

#: How many of the last recorded steps the final loss averages.
LOSS_WINDOW = 20
#: What "first loss" means, for column titles and printed lines.
FIRST_LOSS_TEXT = "training loss at the first step"
#: What "final loss" means, for column titles and printed lines.
FINAL_LOSS_TEXT = f"mean training loss of the last {LOSS_WINDOW} steps"


def first_loss(run: Any) -> float | None:
    """The training loss at the first recorded step of ``run``.

    Args:
        run: a Run, a run directory path, or a Checkup.

    Returns:
        the loss (NaN or Inf if it was), or None when the run recorded no loss.
    """
    values = as_run(run).loss().to_numpy(dtype=float)
    return float(values[0]) if len(values) else None


def final_loss(run: Any, window: int = LOSS_WINDOW) -> float | None:
    """The mean of the training losses of the last ``window`` recorded steps.

    Args:
        run: a Run, a run directory path, or a Checkup.
        window: how many of the last recorded steps to average (default :data:`LOSS_WINDOW`).

    Returns:
        the mean (NaN or Inf when one of those losses is), or None when the run recorded no
        loss.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise GradwatchValueError(f"window must be a positive integer, got {window!r}")
    values = as_run(run).loss().to_numpy(dtype=float)[-window:]
    return float(np.mean(values)) if len(values) else None


def format_loss(value: float | None) -> str:
    """A loss as the report and the demo print it: 3 decimals; "–" when none was recorded."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.3f}"
