"""The theory's second opinion on a checkup: where prediction and measurement disagree.

``gw.check`` measures ‖∂L/∂(layer output)‖ once, on one batch. :func:`second_opinion` predicts
the same numbers from the weights alone (:func:`gradwatch.theory.predict` on the same batch,
with the same read-out: ½‖y‖² for check's default loss, independent unit gradients
otherwise) and compares the two layer by layer, each relative to the output-side layer.

Mean-field theory is exact for wide random networks; one batch through one model scatters
around it by a few tenths of a decade (finite width). So a layer counts as a disagreement
when the measured and predicted ``‖δ_layer‖²/‖δ_last‖²`` differ by more than
:data:`MISMATCH_DECADES` decades, or :data:`MISMATCH_SHARE` of the predicted log when the
ratio is far from 1. Causes a user can act on: a custom layer or a forward that is not what
the structure says (a weight used in a way the graph does not show), weights that are not
random-looking any more (after training, or set by hand), inputs far from the batch's
statistics. The finding is a note (severity "info"): it changes no verdict.

Nothing is said when the theory does not apply (its verdict is "uncertain" or "nonfinite";
a convolutional chain predicted from its modules, whose closed form is per element and does
not count the positions that strides and pooling remove), for conv nets (the traced theory
costs seconds to tens of seconds on images, too much inside a checkup), for models that
reuse weights across depth (``nn.TransformerEncoder`` as built, shared blocks: their
cross-depth recursion costs seconds to minutes), or when it cannot
run on the batch (too many positions, an error): a second opinion must
never break a checkup.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from gradwatch.findings import Finding
from gradwatch.structure import is_recurrent
from gradwatch.wording import number

#: Conv nets: the traced theory follows them, but at image sizes it costs seconds to tens of
#: seconds (its moments are positions × positions), too much inside a checkup; skipped.
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Disagreement: |log10 measured − log10 predicted| of ‖δ‖²/‖δ_last‖² above this many decades...
MISMATCH_DECADES = 1.0
#: ... and above this share of |log10 predicted| (ratios far from 1 scatter more).
MISMATCH_SHARE = 0.25


def second_opinion(
    model: Any,
    inputs: tuple,
    table: pd.DataFrame,
    readout: str = "output",
    train_mode: bool = True,
) -> list[Finding]:
    """A "theory_mismatch" note when the measured gradient profile is far from the prediction.

    Args:
        model: the checked model (as check left it).
        inputs: the batch the checkup ran.
        table: the checkup's table (``layer``, ``backprop_norm``).
        readout: "output" for check's default loss (½‖y‖²/N), "random" for other losses.
        train_mode: the mode the checkup ran in.

    Returns:
        [] or one Finding of kind "theory_mismatch", severity "info".
    """
    from gradwatch.theory.predict import predict

    if any(isinstance(m, CONV) or is_recurrent(m) for m in model.modules()):
        return []  # recurrent: outside the theory; conv nets: too slow for a checkup
    if reuses_weights(model):
        return []  # the cross-depth recursion: seconds to minutes, too slow for a checkup
    try:
        pred = predict(model, inputs=inputs, readout=readout, train_mode=train_mode)
    except Exception:  # the theory cannot run here: say nothing rather than break the checkup
        return []
    if pred.verdict in ("uncertain", "nonfinite") or pred.method != "graph":
        return []  # a chain's closed form is per element: it does not count positions
    return compare(pred.table, table, pred.verdict)


def reuses_weights(model: nn.Module) -> bool:
    """Whether the model has identical copies or a module it holds at several places.

    Their prediction is the cross-depth recursion of :mod:`~gradwatch.theory.tied`: O(L²)
    branch interpretations (a 6-layer ``nn.TransformerEncoder`` as built: about 9 s of CPU).
    """
    from gradwatch.theory.graph_predict import identical_copies

    names = [id(m) for _, m in model.named_modules(remove_duplicate=False)]
    return len(names) != len(set(names)) or bool(identical_copies(model))


def compare(predicted: pd.DataFrame, measured: pd.DataFrame, verdict: str = "") -> list[Finding]:
    """Compare predicted attenuations with measured ``backprop_norm`` (see the module doc)."""
    att = predicted.set_index("layer")["attenuation"]
    bp = measured.set_index("layer")["backprop_norm"]
    names = [n for n in measured["layer"] if n in att.index]
    pairs = [(n, float(att[n]), float(bp[n]) ** 2) for n in names]
    pairs = [
        (n, p, m) for n, p, m in pairs if np.isfinite(p) and p > 0 and np.isfinite(m) and m > 0
    ]
    if len(pairs) < 2:
        return []
    last, p_last, m_last = pairs[-1]
    worst = None
    beyond = 0
    for n, p, m in pairs[:-1]:
        lp, lm = math.log10(p / p_last), math.log10(m / m_last)
        allowed = max(MISMATCH_DECADES, MISMATCH_SHARE * abs(lp))
        excess = abs(lm - lp) - allowed
        if excess > 0:
            beyond += 1
            if worst is None or excess > worst[0]:
                worst = (excess, n, lp, lm, allowed)
    if worst is None:
        return []
    _, layer, lp, lm, allowed = worst
    p_norm, m_norm = 10 ** (lp / 2), 10 ** (lm / 2)
    message = (
        f"theory and measurement disagree at layer '{layer}': mean-field theory predicts "
        f"‖δ‖ at {number(p_norm)}× the output-side layer's ('{last}'), the checkup measured "
        f"{number(m_norm)}× ({beyond} layer{'s' if beyond != 1 else ''} beyond "
        f"{number(allowed)} decade{'s' if allowed != 1 else ''} of ‖δ‖²); a custom layer, a "
        "forward that is not what the module structure says, or weights that are no longer "
        "random-looking can do this: trust the measurement"
    )
    return [
        Finding(
            kind="theory_mismatch",
            layers=(layer,),
            steps=None,
            severity="info",
            message=message,
            evidence={
                "layer": layer,
                "output_side_layer": last,
                "predicted_ratio": p_norm,
                "measured_ratio": m_norm,
                "predicted_log10_attenuation": lp,
                "measured_log10_attenuation": lm,
                "allowed_decades": allowed,
                "layers_beyond": beyond,
                "theory_verdict": verdict,
            },
        )
    ]
