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
from gradwatch.diagnose._view import RunView, num
from gradwatch.diagnose.exploding import exploding_severity
from gradwatch.diagnose.vanishing import vanishing_severity
from gradwatch.findings import Finding
from gradwatch.wording import times

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
    message = (
        f"This {depth}-layer network's gradients are healthy (the back-propagated gradient "
        f"changes by {times(last.total)} from '{last.layers[-1]}' to '{last.layers[0]}'): "
        "if it trains worse than a shallower net, that is the degradation of plain deep nets "
        "(He et al. 2016), not vanishing gradients; add residual connections."
    )
    evidence = {
        **last.evidence(),
        "depth": depth,
        "depth_threshold": HEALTHY_DEEP_LAYERS,
        "min_backprop_ratio": num(min(fs.total for fs in steps)),
        "max_backprop_ratio": num(max(fs.total for fs in steps)),
    }
    span = None if view.is_checkup else (steps[0].step, steps[-1].step)
    return [Finding("healthy_deep", (), span, "info", message, evidence, ("residual",))]
