"""Rule ``healthy_deep``: a deep plain network whose gradients are healthy.

He et al. (2016, "Deep Residual Learning") found that plain networks with batch norm get
*worse* as they get deeper (a 56-layer net has higher training error than a 20-layer one)
although their gradients have healthy norms: the problem is optimisation difficulty, not
vanishing gradients, and residual connections cure it. So a deep network whose gradient flow
is fine must not be called "vanishing"; this rule adds an "info" note that, if it trains
badly, the cure is residual connections, not a new initialisation.
"""

from __future__ import annotations

from gradwatch.diagnose._flow import flow_steps
from gradwatch.diagnose._forward import forward_figures
from gradwatch.diagnose._view import RunView, num
from gradwatch.diagnose.exploding import exploding_severity
from gradwatch.diagnose.vanishing import vanishing_severity
from gradwatch.findings import Finding
from gradwatch.verdicts import EXPLODING_FACTOR, EXPLODING_RATIO, EXPLODING_RATIO_WITH_FACTOR
from gradwatch.wording import number, times

HEALTHY_DEEP_LAYERS = 20
"""Weight layers (normalisation layers not counted) from which a plain net counts as deep:
He et al.'s plain-20 is where their degradation curves start to separate."""



def rule(view: RunView) -> list[Finding]:
    """Note a deep network with healthy gradients (He et al. 2016)."""
    depth = len(view.weight_layers)
    if depth < HEALTHY_DEEP_LAYERS:
        return []
    steps = flow_steps(view)
    if not steps:
        return []
    if any(
        vanishing_severity(fs) or exploding_severity(fs, view)
        for fs in steps
    ):
        return []
    st = view.structure
    if view.residual is not False or st.get("shortcuts") or st.get("attention") or st.get(
        "recurrent"
    ):
        return []  # shortcuts (or not known to be plain): the note does not apply
    last = steps[-1]
    growing = bn_growth(view, last)
    message = (
        f"This {depth}-layer network's gradients are healthy (the back-propagated gradient "
        f"changes by {times(last.total)} from '{last.layers[-1]}' to '{last.layers[0]}'): "
        "if it trains worse than a shallower net, that is the degradation of plain deep nets "
        "(He et al. 2016), not vanishing gradients; add residual connections."
    )
    if growing:
        rel = forward_figures(view, last.step)
        step_size = ""
        if isinstance(rel["input_grad_over_weight"], float) and rel["input_grad_over_weight"] > 0:
            g = rel["input_grad_over_weight"]
            step_size = (f" ('{rel['input_grad_over_weight_layer']}' has ‖∇W‖/‖W‖ = "
                         f"{number(g)}: one SGD step at learning rate 0.1 moves it by "
                         f"{number(10 * g)}% of its size)")
        message = (
            f"In this {depth}-layer network without shortcuts the back-propagated gradient "
            f"grows {times(last.total)} from '{last.layers[-1]}' to '{last.layers[0]}' "
            f"({number(last.factor)} per layer): batch norm without shortcuts grows it with "
            "depth (Yang et al. 2019). Below "
            f"{times(EXPLODING_RATIO)} that is not a verdict on its own (a BN plain-34 grows "
            "~140× and trains at a learning rate of 0.01), but it makes the input-side layers' "
            f"steps the largest{step_size}: if it does not train, lower the learning rate or "
            "add residual connections, which bring the per-layer factor back to 1."
        )
    evidence = {
        **last.evidence(),
        "depth": depth,
        "depth_threshold": HEALTHY_DEEP_LAYERS,
        "min_backprop_ratio": num(min(fs.total for fs in steps)),
        "max_backprop_ratio": num(max(fs.total for fs in steps)),
    }
    evidence["bn_growth"] = growing
    span = None if view.is_checkup else (steps[0].step, steps[-1].step)
    remedies = ("lower_lr", "residual") if growing else ("residual",)
    return [Finding("healthy_deep", (), span, "info", message, evidence, remedies)]


def bn_growth(view: RunView, fs) -> bool:
    """Whether ``fs`` grows steadily through normalised layers without shortcuts.

    Past :data:`~gradwatch.verdicts.EXPLODING_RATIO_WITH_FACTOR` at more than
    :data:`~gradwatch.verdicts.EXPLODING_FACTOR` per layer: the growth Yang et al. (2019)
    predict for batch norm, not "healthy" gradients.
    """
    return (view.path == "normalized" and fs.total > EXPLODING_RATIO_WITH_FACTOR
            and fs.factor > EXPLODING_FACTOR)
