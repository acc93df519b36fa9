"""Plain sentences for the remedies ``gw.fix`` applied: what each changed, and why it helps.

Used by the demo, ``gradwatch fix`` and the HTML report, so that all three say the same thing.
The text is whole: a list of layers is summarised (count, first and last), never cut in the
middle of a token.
"""

from __future__ import annotations

import math
from typing import Any

#: Why each remedy helps, one or two sentences with its source.
WHY = {
    "init": (
        "A deep net keeps its signal only if each layer preserves the variance of activations "
        "forward and of gradients backward; these schemes draw the weights with that variance "
        "(Glorot & Bengio 2010; He et al. 2015; Saxe et al. 2014)."
    ),
    "lsuv": (
        "LSUV (Mishkin & Matas 2016) rescales each layer's weights, input side first, until its "
        "output has unit variance on the batch, so the forward signal neither fades nor grows "
        "with depth."
    ),
    "activation": (
        "The sigmoid's derivative is at most 1/4, so each layer multiplies the back-propagated "
        "gradient by at most 0.25·‖W‖ and a deep stack loses it geometrically (Glorot & Bengio "
        "2010); ReLU's derivative is 1 where a unit is active, and He init (He et al. 2015) "
        "keeps the gradient's variance from layer to layer."
    ),
    "normalization": (
        "A normalization layer after each hidden Linear/Conv re-centres and rescales the "
        "pre-activations, keeping units out of the flat tails and the signal at unit scale "
        "(Ioffe & Szegedy 2015; Ba et al. 2016)."
    ),
    "residual": (
        "Shortcuts add the identity to each block's Jacobian, so the gradient reaches the input "
        "side even when the blocks' own factor is small (He et al. 2016); zero-initialised "
        "blocks start as the identity (Fixup, Zhang et al. 2019)."
    ),
}


def describe_remedy(name: str, details: dict[str, Any]) -> str:
    """One complete phrase for an applied remedy: what it changed, and the check after it.

    Args:
        name: the remedy's function name (``"lsuv_init_"``, ``"swap_activation"``, ...).
        details: the details ``gw.fix`` recorded for it (``FixReport.applied``).

    Returns:
        e.g. ``"LSUV init of 17 layers ('0' … '32'), each output scaled to unit variance;
        check after it: vanishing (backprop_norm spread 6.4 decades)"``.
    """
    kind = details.get("kind")
    if kind == "init":
        text = _init_text(details)
    elif kind == "activation":
        swaps = details.get("swaps") or {}
        pairs = ", ".join(f"{old} → {new}" for old, new in swaps.items()) or "activations"
        text = f"swapped {pairs} in {layer_list(details.get('replaced', []))}"
        if details.get("reinit"):
            scheme = SCHEME_NAMES.get(str(details["reinit"]), str(details["reinit"]))
            text += f", with {scheme} re-init of the layers feeding them"
    elif kind == "normalization":
        text = f"{details.get('norm', '?')} norm inserted after each hidden Linear/Conv"
    elif kind == "residual":
        text = f"residual shortcuts around blocks of {details.get('block_size', '?')} modules"
        if details.get("zero_init"):
            text += ", each block's last layer zero-initialised"
    else:
        text = name
    if "verdict" in details:
        text += f"; check after it: {details['verdict']}"
        spread = details.get("backprop_spread")
        if isinstance(spread, int | float) and math.isfinite(spread):
            text += f" (backprop_norm spread {spread:.2g} decades over the layers)"
    return text


def why_remedy(details: dict[str, Any]) -> str:
    """Why the remedy described by ``details`` helps (one or two sentences, with sources)."""
    kind = details.get("kind")
    if kind == "init" and details.get("scheme") == "lsuv":
        return WHY["lsuv"]
    return WHY.get(str(kind), "")


def layer_list(layers: Any, most: int = 4) -> str:
    """``'0', '2', '4' and 13 more (17 layers)``: a readable, complete summary of layer names."""
    names = [str(ly) for ly in layers]
    if not names:
        return "no layer"
    quoted = [f"'{n}'" for n in names]
    if len(names) <= most:
        shown = ", ".join(quoted)
        return f"layer {shown}" if len(names) == 1 else f"layers {shown}"
    return f"{len(names)} layers ({', '.join(quoted[:2])} … {quoted[-1]})"


#: How an initialisation scheme is written in a sentence.
SCHEME_NAMES = {"lsuv": "LSUV", "he": "He", "xavier": "Xavier", "orthogonal": "orthogonal"}


def _init_text(details: dict[str, Any]) -> str:
    scheme = str(details.get("scheme", "?"))
    layers = details.get("layers")
    names = list(layers) if isinstance(layers, dict | list) else []
    label = SCHEME_NAMES.get(scheme, scheme)
    text = f"{label} init of {layer_list(names)}" if names else f"{label} init"
    gain = details.get("gain")
    if isinstance(gain, int | float):
        text += f" (gain {gain:g})"
    elif gain == "activation":
        text += " (gain of each following activation)"
    if scheme == "lsuv":
        text += ", each output scaled to unit variance on the batch"
    return text
