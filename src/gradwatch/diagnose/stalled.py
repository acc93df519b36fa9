"""Rule ``stalled``: a layer whose weights barely move while the others learn (runs only).

``update_ratio = ‖Δw‖/‖w‖`` over an optimizer step is the relative size of each update; a
commonly quoted healthy range is ~1e-3 per step. A layer orders of magnitude below the rest of
the network is not learning: the input-side layers of a net with vanishing gradients (He et
al. 2015: the 30-layer Xavier net "completely stalls"), a layer cut off by dead units, or one
whose learning rate is far too small. Needs an optimizer (``gw.watch(..., optimizer=opt)``).
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._advice import flow_remedies
from gradwatch.diagnose._view import (
    RunView,
    finite_loss,
    names,
    num,
    persists,
    step_span,
    when,
)
from gradwatch.findings import Finding
from gradwatch.wording import number

STALLED_RELATIVE = 1e-3
"""A layer whose update ratio is below this fraction of the median layer's is stalled."""

STALLED_ABSOLUTE = 1e-5
"""...or below this absolute update ratio, while the median layer is above it (the network as
a whole is learning): a ten-thousand-step run moves such a layer by at most ~10%."""

STALLED_MIN_STEPS = 3
"""The condition must hold at this many recorded update steps at least ("over many steps")."""

STALLED_MIN_FRACTION = 0.5
"""...and at half of the recorded update steps: a layer that stalls once is not stalled."""

CONVERGED = 1e-3
"""A step whose loss is below this fraction of the run's starting loss (the median of its first
three recorded) is past convergence and does not count: once the loss is (near) zero a layer's
gradient, and with Adam its update (ε then outweighs √v̂), falls toward zero because nothing
is left to learn, not because the gradient cannot reach it."""


def converged_steps(view: RunView) -> set[int]:
    """The recorded steps whose finite loss is below :data:`CONVERGED` of the starting loss."""
    steps, values = finite_loss(view)
    if len(values) < 3 or (start := float(np.median(values[:3]))) <= 0:
        return set()
    return {s for s, v in zip(steps, values, strict=True) if v < CONVERGED * start}


def rule(view: RunView) -> list[Finding]:
    """Report layers whose updates are far smaller than the others' over many steps."""
    if view.is_checkup:
        return []
    ur = view.wide("update_ratio")
    if ur.empty or ur.shape[1] < 2:
        return []
    gn = view.wide("grad_norm").reindex(index=ur.index, columns=ur.columns)
    arr = ur.to_numpy(dtype=np.float64)
    # frozen layers (no gradient recorded) are not stalled, they are frozen
    arr = np.where(np.isfinite(gn.to_numpy(dtype=np.float64)) & np.isfinite(arr), arr, np.nan)
    steps = [int(s) for s in ur.index]
    stalled = np.zeros_like(arr, dtype=bool)
    medians = np.full(len(steps), np.nan)
    past = converged_steps(view)
    for i in range(len(steps)):
        if steps[i] in past:
            continue
        row = arr[i]
        ok = np.isfinite(row)
        if ok.sum() < 2:
            continue
        med = float(np.median(row[ok]))
        medians[i] = med
        if med <= 0:
            continue
        low = (row < STALLED_RELATIVE * med) | ((row < STALLED_ABSOLUTE) & (med > STALLED_ABSOLUTE))
        stalled[i] = ok & low
    counts = stalled.sum(axis=0)
    n_ok = np.isfinite(medians).sum()
    need = max(STALLED_MIN_STEPS, int(np.ceil(STALLED_MIN_FRACTION * n_ok)))
    layers = [str(c) for c, k in zip(ur.columns, counts, strict=True) if k >= need]
    if not layers:
        return []
    cols = [list(ur.columns).index(ly) for ly in layers]
    held = [s for s, row in zip(steps, stalled[:, cols], strict=True) if row.any()]
    if not persists(held, steps):
        return []
    i = steps.index(held[-1])
    still = held[-1] == steps[-1]
    finite_now = np.isfinite(arr[i, cols])
    worst = layers[int(np.nanargmin(arr[i, cols]))] if finite_now.any() else layers[0]
    w = float(arr[i, list(ur.columns).index(worst)])
    message = (
        f"Layer{'s' if len(layers) > 1 else ''} {names(layers)} barely move"
        f"{'' if len(layers) > 1 else 's'}{when(view, held, steps)}: update ‖Δw‖/‖w‖ "
        f"{number(w)} at '{worst}' against a median of {number(float(medians[i]))}; fix the "
        "gradient flow into them or give them a larger learning rate (Adam does)."
    )
    evidence = {
        "update_ratio": {ly: num(arr[i, c]) for ly, c in zip(layers, cols, strict=True)},
        "median_update_ratio": num(medians[i]),
        "steps_stalled": {ly: int(counts[c]) for ly, c in zip(layers, cols, strict=True)},
        "steps_recorded": int(n_ok),
        "relative_threshold": STALLED_RELATIVE,
        "absolute_threshold": STALLED_ABSOLUTE,
        "persists": bool(still),
        "steps_converged": len(past & set(steps)),
    }
    return [
        Finding(
            "stalled",
            tuple(layers),
            step_span(view, held),
            "warning",
            message,
            evidence,
            (*flow_remedies(view, "vanishing"), "adam"),
        )
    ]
