"""Rule ``vanishing``: the back-propagated signal decays geometrically toward the input.

Through a chain of layers the gradient is a product of per-layer Jacobians, so it shrinks
(or grows) geometrically with depth (Bengio et al. 1994; Hochreiter 1991). Glorot & Bengio
(2010) showed it with sigmoid and tanh nets under "standard" init, He et al. (2015) for ReLU
nets under Xavier init (variance ×1/2 per layer), and mean-field theory puts it as
``E[δ_l²] ∝ χ1^(L-l)`` with χ1 < 1 in the ordered phase (Schoenholz et al. 2017).

The rule reads ``backprop_norm`` (‖∂L/∂output‖ of each layer), not the weight gradients:
Glorot & Bengio found the weight gradients can look flat while the back-propagated signal
vanishes. Both ratios go into the evidence.
"""

from __future__ import annotations

from gradwatch.diagnose._flow import FlowStep, flow_steps
from gradwatch.diagnose._view import RunView, names, num, persists, pow10, step_span, when
from gradwatch.findings import Finding

VANISHING_RATIO = 1e-3
"""Input-side over output-side ``backprop_norm`` below this is vanishing (severity error).

Three orders of magnitude: the input-side layers then learn ~1000× slower than the top ones
with one global learning rate, He et al.'s (2015) "completely stalls" regime (30 ReLU layers
under Xavier init lose 2^-15 ≈ 3×10^-5 in norm).
"""

VANISHING_FACTOR = 0.85
"""A fitted per-layer factor below this is a geometric decay (a warning when the total ratio
is also below :data:`VANISHING_RATIO_WITH_FACTOR`). Glorot & Bengio's standard init shrinks
the gradient by ~√(1/3) ≈ 0.58 per layer in the linear regime; He et al.'s ReLU + Xavier by
1/√2 ≈ 0.71; a healthy (critical) network stays near 1.
"""

VANISHING_RATIO_WITH_FACTOR = 1e-2
"""Total attenuation that, with a steady per-layer decay, is already worth a warning."""

VANISHING_LAYER_RATIO = 1e-2
"""Layers whose ``backprop_norm`` is below this fraction of the output-side layer's are named
in the finding: they get under 1% of the top layers' signal."""


def vanishing_severity(fs: FlowStep) -> str | None:
    """Return "error", "warning" or None for one step's gradient flow."""
    if fs.total < VANISHING_RATIO:
        return "error"
    if fs.factor < VANISHING_FACTOR and fs.total < VANISHING_RATIO_WITH_FACTOR:
        return "warning"
    return None


def remedies_for(families: set[str]) -> tuple[tuple[str, ...], str]:
    """Remedy names for the activation families present, and a phrase for the message."""
    if "sigmoid" in families:
        return (
            ("relu", "he_init", "batchnorm", "residual", "lsuv"),
            "swap the sigmoid for ReLU with He init, or add batch norm",
        )
    if "tanh" in families:
        return (
            ("xavier_init", "relu", "he_init", "batchnorm", "residual", "lsuv"),
            "use Xavier init, or swap tanh for ReLU with He init",
        )
    return (
        ("he_init", "relu", "batchnorm", "residual", "lsuv"),
        "try He init or LSUV, batch norm or residual connections",
    )


def rule(view: RunView) -> list[Finding]:
    """Report a back-propagated signal that shrinks toward the input."""
    steps = flow_steps(view)
    held = [fs for fs in steps if vanishing_severity(fs)]
    held_steps = [fs.step for fs in held]
    recorded = [fs.step for fs in steps]
    if not persists(held_steps, recorded):
        return []
    last = held[-1]
    severity = vanishing_severity(last) or "warning"
    still = held_steps[-1] == recorded[-1]
    if not still:
        severity = "warning"
    pairs = zip(last.layers, last.ratios, strict=True)
    layers = [ly for ly, r in pairs if r < VANISHING_LAYER_RATIO]
    layers = layers or [last.layers[0]]
    remedies, advice = remedies_for(view.families)
    flat = ""
    if last.grad_total == last.grad_total and last.grad_total > 10 * last.total:
        flat = (
            f" (their weight gradients shrink only by {pow10(last.grad_total)}, so they look "
            "flatter)"
        )
    message = (
        f"The back-propagated gradient shrinks by {pow10(last.total)} from layer "
        f"'{last.layers[-1]}' to '{last.layers[0]}' (×{last.factor:.2g} per layer)"
        f"{when(view, held_steps, recorded)}: the input-side layers {names(layers)} barely "
        f"learn{flat}; {advice}."
    )
    evidence = {
        **last.evidence(),
        "layers_below": list(layers),
        "layer_threshold": VANISHING_LAYER_RATIO,
        "ratio_threshold": VANISHING_RATIO,
        "steps_held": len(held_steps),
        "steps_recorded": len(recorded),
        "persists": bool(still),
        "min_backprop_ratio": num(min(fs.total for fs in held)),
    }
    return [
        Finding(
            kind="vanishing",
            layers=tuple(layers),
            steps=step_span(view, held_steps),
            severity=severity,  # type: ignore[arg-type]
            message=message,
            evidence=evidence,
            remedies=remedies,
        )
    ]
