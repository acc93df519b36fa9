"""Rules ``underflow`` and ``overflow``: what a cast to the training's low-precision format loses.

They judge the format the run was watched for (``gw.watch(..., precision="fp16")`` or
``gw.check(..., precision="fp16")``; nothing without one), from the statistics of
:mod:`gradwatch.stats.precision`, taken at the loss scale the cast sees.

- ``underflow``: a layer where at least :data:`UNDERFLOW_FRACTION` of the parameter-gradient
  entries, or of the back-propagated signal's, are nonzero and flush to zero in the format
  (Micikevicius et al. 2018: without loss scaling 67% of an SSD detector's activation
  gradients flush in fp16). Error from :data:`UNDERFLOW_ERROR` (most of the layer's update
  is lost), warning below. When the back-propagated signal itself shrinks by more than
  :data:`~gradwatch.verdicts.VANISHING_RATIO_WITH_FACTOR` from the output side to the layer,
  the cause is the vanishing gradient: fixing it (init, activation) comes first, and the
  message says so. Otherwise the loss scale is too low for the format.
- ``overflow``: a layer with any entry that is NaN/Inf or rounds beyond the format's largest
  finite value (fp16, bf16, e5m2: inf; e4m3fn, which torch saturates: clipped to ±448).
  An error at loss scale 1 (the values themselves exceed the format); a note under a
  GradScaler or a loss scale above 1, which a GradScaler lowers until the values fit (it
  skips those steps: routine in the first steps of fp16 training).

In a training run a condition is reported when it holds at the last recorded detail step or
at a fifth of them (:func:`~gradwatch.diagnose._view.persists`); cleared by the end, it is a
note.
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._advice import advice, flow_remedies
from gradwatch.diagnose._view import RunView, names, num, persists, step_span, when
from gradwatch.findings import Finding
from gradwatch.verdicts import VANISHING_RATIO_WITH_FACTOR
from gradwatch.wording import number

UNDERFLOW_FRACTION = 0.1
"""A tenth of a layer's gradient (or back-propagated) entries flushed to zero: a finding."""

UNDERFLOW_ERROR = 0.5
"""Half of them flushed: an error (most of the layer's update is lost)."""

OVERFLOW_FRACTION = 0.0
"""Any entry over the format's range is a finding: one inf poisons the update."""

FORMAT_NAMES = {"fp16": "fp16", "bf16": "bf16", "e4m3": "fp8 e4m3", "e5m2": "fp8 e5m2"}


def _format(view: RunView) -> str | None:
    settings = view.meta.get("settings") or {}
    fmt = settings.get("precision") or view.checkup.get("precision")
    return fmt if fmt in FORMAT_NAMES else None


def _scaler(view: RunView) -> bool:
    return bool((view.meta.get("settings") or {}).get("scaler"))


def _over(view: RunView, stats: tuple[str, ...], threshold: float):
    """Per step and layer, the largest of ``stats``; the layers over ``threshold``, if it persists.

    Returns (values over at the last step held, that row, held steps, recorded steps, which
    statistic was largest per layer at that step) or None.
    """
    tables = [view.wide(s) for s in stats]
    tables = [t for t in tables if not t.empty]
    if not tables:
        return None
    index = sorted(set().union(*(t.index for t in tables)))
    cols = [c for c in view.layers if any(c in t.columns for t in tables)]
    arrs = [np.nan_to_num(t.reindex(index=index, columns=cols).to_numpy(dtype=np.float64),
                          nan=0.0) for t in tables]
    stack = np.stack(arrs)
    arr = stack.max(axis=0)
    steps = [int(s) for s in index]
    hot = (arr > threshold).any(axis=1)
    held = [s for s, h in zip(steps, hot, strict=True) if h]
    if not persists(held, steps):
        return None
    i = steps.index(held[-1])
    row = arr[i]
    over = {str(c): float(v) for c, v in zip(cols, row, strict=True) if v > threshold}
    which = {str(c): stats[int(np.argmax(stack[:, i, j]))] for j, c in enumerate(cols)}
    return over, row, held, steps, which


def _shrink(view: RunView, layers: list[str], step: int) -> float | None:
    """``backprop_norm`` of the most input-side of ``layers`` over the output-side layer's."""
    bp = view.wide("backprop_norm")
    if bp.empty or step not in bp.index:
        return None
    row = bp.loc[step]
    ok = [c for c in bp.columns if np.isfinite(row[c]) and row[c] > 0]
    first = next((ly for ly in layers if ly in ok), None)
    if first is None or not ok or ok[-1] == first:
        return None
    return float(row[first] / row[ok[-1]])


def _condition(view: RunView, kind: str, threshold: float):
    """The watched format's ``grad_<kind>_<fmt>``/``bp_<kind>_<fmt>`` over ``threshold``.

    Returns (format, {layer: value}, held steps, recorded steps, {layer: statistic},
    layers input side first, the worst layer), or None (no format, or it does not persist).
    """
    fmt = _format(view)
    if fmt is None:
        return None
    got = _over(view, (f"grad_{kind}_{fmt}", f"bp_{kind}_{fmt}"), threshold)
    if got is None:
        return None
    values, _row, held, steps, which = got
    layers = [ly for ly in view.layers if ly in values]
    return fmt, values, held, steps, which, layers, max(layers, key=lambda ly: values[ly])


def underflow(view: RunView) -> list[Finding]:
    """Report layers whose gradients flush to zero in the watched format."""
    got = _condition(view, "underflow", UNDERFLOW_FRACTION)
    if got is None:
        return []
    fmt, values, held, steps, which, layers, worst_layer = got
    worst = values[worst_layer]
    still = held[-1] == steps[-1]
    severity = ("error" if worst >= UNDERFLOW_ERROR else "warning") if still else "info"
    shrink = _shrink(view, layers, held[-1])
    vanishing = shrink is not None and shrink < VANISHING_RATIO_WITH_FACTOR
    scaler = _scaler(view)
    scale = (view.meta.get("settings") or {}).get("loss_scale") or 1.0
    what = "gradient" if which[worst_layer].startswith("grad_") else "back-propagated gradient"
    name = FORMAT_NAMES[fmt]
    at_scale = "under the GradScaler's scale" if scaler else (
        "without loss scaling" if scale == 1.0 else f"at loss scale {number(scale)}")
    message = (
        f"{worst:.0%} of the {what} entries of layer '{worst_layer}' would flush to zero in {name} "
        f"{at_scale}{when(view, held, steps)}; {len(layers)} layer"
        f"{'s' if len(layers) > 1 else ''} lose at least {UNDERFLOW_FRACTION:.0%}: "
        f"{names(layers)}."
    )
    precision_fixes: tuple[str, ...]
    if fmt == "fp16":
        precision_fixes = ("grad_scaler", "bf16", "fp32_layers", "unit_scaling")
    elif fmt == "bf16":
        precision_fixes = ("fp32_layers", "unit_scaling")
    else:
        precision_fixes = ("unit_scaling", "grad_scaler", "fp32_layers")
    if vanishing:
        flow = flow_remedies(view, "vanishing")
        message += (
            f" The cause is the vanishing gradient: the back-propagated signal at "
            f"'{layers[0]}' is {number(shrink)} of the output side's; fix that first "
            f"({advice(flow, 2)}), then the format."
        )
        remedies = (*flow, *precision_fixes)
    else:
        message += (
            " The whole signal sits below the format's range: "
            + ("raise the loss scale (GradScaler's init_scale)" if scaler or fmt != "bf16"
               else "keep these layers in fp32")
            + ("" if fmt == "bf16" else ", or use bf16" if fmt == "fp16" else
               ", or scale each tensor (unit scaling)")
            + "."
        )
        remedies = precision_fixes
    evidence = {
        "format": fmt,
        "loss_scale": None if scaler else num(scale),
        "fraction": {ly: num(values[ly]) for ly in layers},
        "statistic": {ly: which[ly] for ly in layers},
        "threshold": UNDERFLOW_FRACTION,
        "backprop_ratio": None if shrink is None else num(shrink),
        "cause": "vanishing" if vanishing else "loss_scale",
        "persists": bool(still),
    }
    return [Finding("underflow", tuple(layers), step_span(view, held), severity, message,
                    evidence, tuple(dict.fromkeys(remedies)))]


def overflow(view: RunView) -> list[Finding]:
    """Report layers whose gradients overflow the watched format."""
    got = _condition(view, "overflow", OVERFLOW_FRACTION)
    if got is None:
        return []
    fmt, values, held, steps, which, layers, worst_layer = got
    worst = values[worst_layer]
    still = held[-1] == steps[-1]
    scaler = _scaler(view)
    scale = (view.meta.get("settings") or {}).get("loss_scale") or 1.0
    # at a loss scale (GradScaler, or loss_scale > 1) an overflow is the scale's: a GradScaler
    # skips the step and halves it until it fits (a note); at scale 1 the values themselves
    # exceed the format
    scaled = scaler or scale > 1.0
    severity = "error" if still and not scaled else "info"
    name = FORMAT_NAMES[fmt]
    what = "gradient" if which[worst_layer].startswith("grad_") else "back-propagated gradient"
    becomes = "are clipped to ±448 (e4m3 has no inf)" if fmt == "e4m3" else "become inf"
    message = (
        f"{number(worst)} of the {what} entries of layer '{worst_layer}' exceed {name}'s range and "
        f"{becomes}{when(view, held, steps)}; layers {names(layers)}. "
        + ("GradScaler skips such steps and lowers its scale; " if scaler else
           f"at loss scale {number(scale)} a GradScaler would skip steps and halve its scale "
           "until they fit; " if scaled else "")
        + "lower the loss scale, clip the gradient norm, or keep these layers in fp32"
        + (" (or use bf16, whose range is float32's)." if fmt != "bf16" else ".")
    )
    remedies = ("lower_loss_scale", "clip_grad_norm", "fp32_layers")
    if fmt != "bf16":
        remedies = (*remedies, "bf16")
    evidence = {
        "format": fmt,
        "fraction": {ly: num(values[ly]) for ly in layers},
        "statistic": {ly: which[ly] for ly in layers},
        "scaler": scaler,
        "persists": bool(still),
    }
    return [Finding("overflow", tuple(layers), step_span(view, held), severity, message,
                    evidence, remedies)]
