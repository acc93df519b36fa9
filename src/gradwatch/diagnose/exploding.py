"""Rule ``exploding``: gradients grow toward the input, or blow up over training steps.

Across depth: the mirror image of vanishing. In the chaotic phase of mean-field theory
(χ1 > 1; e.g. tanh with σw² = 4) ``E[δ_l²] ∝ χ1^(L-l)`` grows toward the input (Schoenholz
et al. 2017). Over steps: Pascanu, Mikolov & Bengio (2013) describe gradient norms that jump
by orders of magnitude (cliffs in the loss surface); their remedy is clipping by norm.

Batch-normalised nets are treated apart: their back-propagated signal grows by ~1.2 per block
at initialisation by construction (Yang et al. 2019, "A Mean Field Theory of Batch
Normalization"), yet He et al. (2016) report their gradients as healthy for plain nets of
20-34 layers. Only the strong threshold applies to them.
"""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose._flow import FlowStep, flow_steps
from gradwatch.diagnose._view import RunView, names, num, persists, pow10, step_span, when
from gradwatch.findings import Finding

EXPLODING_RATIO = 1e3
"""Input-side over output-side ``backprop_norm`` above this is exploding (severity error):
the input-side layers get steps 1000× larger than the top ones."""

EXPLODING_FACTOR = 1.1
"""A fitted per-layer growth above this is geometric explosion (a warning when the total is
also above :data:`EXPLODING_RATIO_WITH_FACTOR`); χ1 = 1.21 gives 1.1 per layer in norm.
Not applied to nets with normalisation layers (see the module docstring)."""

EXPLODING_RATIO_WITH_FACTOR = 10.0
"""Total growth that, with a steady per-layer growth, is worth a warning: tanh at σw² = 4
(χ1 ≈ 1.36) grows ~15× over 20 layers."""

EXPLODING_LAYER_RATIO = 10.0
"""Layers whose ``backprop_norm`` is above this multiple of the output-side layer's are named."""

EXPLODING_GROWTH = 1e3
"""Over a training run: the total gradient norm (over all layers) exceeding this multiple of
its value at the first recorded steps (median of the first three) is an explosion in time
(Pascanu et al. 2013)."""

GRAD_NORM_HUGE = 1e6
"""A total gradient norm above this is exploding whatever its history: with a loss of order 1
no healthy network has gradients this large (a scaled loss is unscaled by the Monitor)."""

REMEDIES = ("clip_grad_norm", "xavier_init", "orthogonal", "lower_lr", "batchnorm")


def exploding_severity(fs: FlowStep, has_norm: bool) -> str | None:
    """Return "error", "warning" or None for one step's gradient flow across depth."""
    if fs.total > EXPLODING_RATIO:
        return "error"
    if not has_norm and fs.factor > EXPLODING_FACTOR and fs.total > EXPLODING_RATIO_WITH_FACTOR:
        return "warning"
    return None


def rule(view: RunView) -> list[Finding]:
    """Report gradients that grow toward the input, or over training steps."""
    return _across_depth(view) + _over_steps(view)


def _across_depth(view: RunView) -> list[Finding]:
    steps = flow_steps(view)
    held = [fs for fs in steps if exploding_severity(fs, view.has_norm)]
    held_steps, recorded = [fs.step for fs in held], [fs.step for fs in steps]
    if not persists(held_steps, recorded):
        return []
    last = held[-1]
    still = held_steps[-1] == recorded[-1]
    severity = (exploding_severity(last, view.has_norm) or "warning") if still else "warning"
    pairs = zip(last.layers, last.ratios, strict=True)
    layers = [ly for ly, r in pairs if r > EXPLODING_LAYER_RATIO]
    layers = layers or [last.layers[0]]
    message = (
        f"The back-propagated gradient grows by {pow10(last.total)} from layer "
        f"'{last.layers[-1]}' to '{last.layers[0]}' (×{last.factor:.3g} per layer)"
        f"{when(view, held_steps, recorded)}: the input-side layers {names(layers)} get the "
        "largest updates and training may blow up; clip the gradient norm, use Xavier or "
        "orthogonal init, or lower the learning rate."
    )
    evidence = {
        **last.evidence(),
        "axis": "depth",
        "layers_above": list(layers),
        "ratio_threshold": EXPLODING_RATIO,
        "steps_held": len(held_steps),
        "steps_recorded": len(recorded),
        "persists": bool(still),
    }
    return [
        Finding(
            "exploding",
            tuple(layers),
            step_span(view, held_steps),
            severity,  # type: ignore[arg-type]
            message,
            evidence,
            REMEDIES,
        )
    ]


def _over_steps(view: RunView) -> list[Finding]:
    if view.is_checkup:
        return []
    gn = view.wide("grad_norm")
    if len(gn) < 3:
        return []
    arr = gn.to_numpy(dtype=np.float64)
    finite = np.isfinite(arr)
    total = np.sqrt(np.sum(np.where(finite, arr, 0.0) ** 2, axis=1))  # over layers
    ok = finite.any(axis=1)
    steps = [int(s) for s in gn.index]
    base = float(np.median(total[ok][:3])) if ok.any() else 0.0
    growth = total / base if base > 0 else np.full_like(total, np.nan)
    hot = ok & ((growth > EXPLODING_GROWTH) | (total > GRAD_NORM_HUGE))
    held = [s for s, h in zip(steps, hot, strict=True) if h]
    recorded = [s for s, o in zip(steps, ok, strict=True) if o]
    if not persists(held, recorded):
        return []
    i = steps.index(held[-1])
    row = arr[i]
    first = arr[int(np.argmax(ok))]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_layer = np.where(np.isfinite(row) & (first > 0), row / first, np.nan)
    order = np.argsort(-np.nan_to_num(per_layer, nan=-1.0))
    leaders = [str(gn.columns[j]) for j in order[:3] if np.isfinite(per_layer[j])]
    still = held[-1] == recorded[-1]
    message = (
        f"The total gradient norm grew {pow10(float(growth[i]))}-fold"
        f"{when(view, held, recorded)} (to {pow10(float(total[i]))}), led by layer "
        f"{names(leaders[:1]) or 'all layers'}: clip the gradient norm or lower the learning rate."
    )
    evidence = {
        "axis": "steps",
        "growth": num(growth[i]),
        "grad_norm_total": num(total[i]),
        "baseline_grad_norm": num(base),
        "growth_threshold": EXPLODING_GROWTH,
        "huge_threshold": GRAD_NORM_HUGE,
        "leading_layers": leaders,
        "steps_held": len(held),
        "persists": bool(still),
    }
    return [
        Finding(
            "exploding",
            tuple(leaders[:3]),
            step_span(view, held),
            "error" if still else "warning",
            message,
            evidence,
            ("clip_grad_norm", "lower_lr", "xavier_init", "orthogonal", "batchnorm"),
        )
    ]
