"""Remedies that fit the model: never what it already has, and the ones its family needs.

A finding's ``remedies`` are chosen from what the run recorded about the model
(``meta["structure"]`` from :func:`gradwatch.structure.describe`, and the activation
families):

- transformers (attention): pre-LN blocks, learning-rate warmup, a lower learning rate and
  gradient clipping (Xiong et al. 2020, "On Layer Normalization in the Transformer
  Architecture": post-LN needs warmup, pre-LN trains without);
- recurrent nets: forget-gate bias 1 for an LSTM (Jozefowicz et al. 2015), an LSTM/GRU for a
  vanilla RNN (Hochreiter & Schmidhuber 1997), clipping and a shorter truncation (Pascanu et
  al. 2013);
- residual nets: zero-init of the last norm of each block (Goyal et al. 2017; "Fixup", Zhang
  et al. 2019, without norms);
- plain nets: the init that fits the activation (He for rectifiers, Xavier/orthogonal for
  tanh), a rectifier for sigmoid nets, then batch norm and residual connections if absent.
"""

from __future__ import annotations

from gradwatch.diagnose._view import RunView

#: Plain phrases for the remedy names, used to write the advice in a message.
PHRASES = {
    "pre_ln": "move the layer norm to the start of each block (pre-LN)",
    "warmup": "warm the learning rate up",
    "lower_lr": "lower the learning rate",
    "clip_grad_norm": "clip the gradient norm",
    "forget_gate_bias": "set the LSTM forget-gate bias to 1",
    "lstm_or_gru": "use an LSTM or GRU",
    "orthogonal": "use orthogonal init",
    "shorter_truncation": "back-propagate through fewer time steps",
    "zero_init_last_norm": "zero-init the last norm of each residual block",
    "fixup": "use Fixup init",
    "he_init": "use He init",
    "xavier_init": "use Xavier init",
    "lsuv": "use LSUV init",
    "relu": "swap the sigmoid for ReLU with He init",
    "leaky_relu": "use leaky ReLU",
    "batchnorm": "add batch norm",
    "residual": "add residual connections",
    "check_inputs": "check the inputs",
    "grad_scaler": "use a GradScaler or raise its init_scale",
    "bf16": "train in bf16 instead of fp16",
    "fp32_layers": "keep these layers in fp32",
    "unit_scaling": "scale each tensor (unit scaling)",
    "lower_loss_scale": "lower the loss scale",
}


def family(view: RunView) -> str:
    """"transformer", "recurrent", "residual" or "plain"."""
    st = view.structure
    if st.get("attention"):
        return "transformer"
    if st.get("recurrent"):
        return "recurrent"
    if st.get("residual"):
        return "residual"
    return "plain"


def recurrent_remedies(view: RunView) -> tuple[str, ...]:
    """Remedies for gradients that vanish or explode through time."""
    st = view.structure
    types = {str(v.get("type")) for v in (st.get("recurrent_layers") or {}).values()}
    out: list[str] = []
    forget = st.get("lstm_forget_bias") or {}
    if "LSTM" in types and any(float(b) < 0.5 for b in forget.values()):
        out.append("forget_gate_bias")
    if not types & {"LSTM", "GRU", "LSTMCell", "GRUCell"}:
        out += ["lstm_or_gru", "orthogonal"]
    return (*out, "clip_grad_norm", "shorter_truncation")


def flow_remedies(view: RunView, direction: str) -> tuple[str, ...]:
    """Remedies for a signal that vanishes (``direction="vanishing"``) or explodes across depth."""
    fam = family(view)
    if fam == "transformer":
        return ("pre_ln", "warmup", "lower_lr", "clip_grad_norm")
    if fam == "recurrent":
        return recurrent_remedies(view)
    out: list[str] = []
    if fam == "residual":
        out.append("zero_init_last_norm" if view.has_norm else "fixup")
    families = view.families
    if direction == "exploding":
        out += ["clip_grad_norm", "lower_lr"]
    if "sigmoid" in families:
        out += ["relu", "he_init"]
    elif "tanh" in families:
        out += ["xavier_init", "orthogonal"]
    else:
        out += ["he_init", "lsuv"]
    if not view.has_norm:
        out.append("batchnorm")
    if fam == "plain" and view.residual is not True:
        out.append("residual")
    return tuple(dict.fromkeys(out))


def advice(remedies: tuple[str, ...], limit: int = 3) -> str:
    """``"use He init, use LSUV init or add batch norm"`` from the first remedies."""
    said = [PHRASES.get(r, r.replace("_", " ")) for r in remedies[:limit]]
    if len(said) <= 1:
        return "".join(said)
    return ", ".join(said[:-1]) + " or " + said[-1]
