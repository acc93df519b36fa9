"""Remedies chosen from what the model has and what the evidence says.

A finding's ``remedies`` are chosen from what the run recorded about the model
(``meta["structure"]`` from :func:`gradwatch.structure.describe`: its norms, shortcuts,
residual branches and their scale, recurrent layers, the measured scale of its weights) and
the activation types. A remedy the model already has is never offered:

- ``batchnorm`` to a model with normalization layers; ``residual`` to a model with shortcuts
  (residual additions, or the concatenations of a DenseNet or a U-Net, which carry ``x`` to
  the output as a shortcut does);
- ``zero_init_last_norm`` (Goyal et al. 2017) or ``fixup`` (Zhang et al. 2019) to residual
  branches that already start near zero (a last norm at γ = 0, a layer scale of 1e-6:
  :data:`gradwatch.structure.SMALL_BRANCH`);
- ``he_init`` to weights already drawn at He scale (``fan·Var(W) ≈ 2``, fan in or fan out,
  measured), or to a net of smooth rectifiers (GELU, SiLU, ...), for which He's gain is not
  derived: LSUV measures the gain instead (Mishkin & Matas 2016); ``xavier_init`` to weights
  at Xavier scale;
- no init at all (``he_init``, ``xavier_init``, ``lsuv``, ``orthogonal``) to a net whose weights
  a parametrization computes (spectral norm, weight norm, ...: ``parametrized_layers``),
  which sets their scale at every forward pass whatever they were drawn at;
- ``forget_gate_bias`` to an LSTM whose forget-gate bias is already ≥ 0.5;
- for a signal that *vanishes* (across depth or through time) never clipping, lowering the
  learning rate or a shorter truncation, which only shrink steps: a gate is opened by its
  bias (a forget-gate bias, Jozefowicz et al. 2015; chrono init, Tallec & Ollivier 2018),
  a linear recurrence's decay by its initial value (Orvieto et al. 2023, "Resurrecting
  recurrent neural networks for long sequences": |λ| near 1).

By family: transformers (attention) get pre-LN blocks, warmup, a lower learning rate and
clipping (Xiong et al. 2020); plain, normalised and residual nets the init that fits the
activation, a rectifier for sigmoid nets, normalization and shortcuts where absent.

Each message says which measured figure its remedies address (:func:`advice`'s ``figure``).
"""

from __future__ import annotations

from gradwatch.diagnose._view import RunView
from gradwatch.structure import HE_SCALE, SMALL_BRANCH, XAVIER_SCALE, drawn_at

#: Plain phrases for the remedy names, used to write the advice in a message.
PHRASES = {
    "pre_ln": "move the layer norm to the start of each block (pre-LN)",
    "warmup": "warm the learning rate up",
    "lower_lr": "lower the learning rate",
    "clip_grad_norm": "clip the gradient norm",
    "forget_gate_bias": "set the LSTM forget-gate bias to 1",
    "chrono_init": "use chrono init of the gate biases",
    "slow_decay_init": "start the recurrence's decay near 1",
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
    "qk_layernorm": "add qk-layernorm (a LayerNorm on each head's queries and keys)",
    "z_loss": "add z-loss (1e-4 · (log Z)² of the output logits) to the loss",
    "adam_eps": "lower Adam's ε (to 1e-15)",
    "grad_scaler": "use a GradScaler or raise its init_scale",
    "bf16": "train in bf16 instead of fp16",
    "fp32_layers": "keep these layers in fp32",
    "unit_scaling": "scale each tensor (unit scaling)",
    "lower_loss_scale": "lower the loss scale",
}

#: Activation module types whose derivative is not ReLU's 0/1 step: He's gain 2 is derived
#: for ReLU (He et al. 2015) and not for these.
SMOOTH_RECTIFIERS = ("GELU", "SiLU", "Mish", "ELU", "CELU", "SELU", "Softplus", "Hardswish")

#: An LSTM forget-gate bias from which ``forget_gate_bias`` is not offered.
FORGET_BIAS_SET = 0.5

GATED = ("LSTM", "GRU", "LSTMCell", "GRUCell")


def family(view: RunView) -> str:
    """"transformer", "recurrent", "residual" or "plain"."""
    st = view.structure
    if st.get("attention"):
        return "transformer"
    if st.get("recurrent"):
        return "recurrent"
    if st.get("residual") or st.get("shortcuts"):
        return "residual"
    return "plain"


def has_shortcuts(view: RunView) -> bool:
    """Residual additions or dense concatenations (or a registered residual block type)."""
    st = view.structure
    return bool(st.get("shortcuts") or st.get("residual") or st.get("dense_joins"))


def branches_start_small(view: RunView) -> bool:
    """Whether most residual branches start near zero (zero-init last norm, layer scale)."""
    scales = [s for s in view.structure.get("branch_scales") or () if isinstance(s, int | float)]
    if not scales:
        return False
    return sorted(scales)[len(scales) // 2] <= SMALL_BRANCH


def at_scale(view: RunView, scale: float) -> bool:
    """Whether the weights were drawn at ``fan·E[W²] ≈ scale`` (fan in or fan out)."""
    return drawn_at(view.structure.get("init_scale"), scale)


def _activation_types(view: RunView) -> set[str]:
    acts = view.meta.get("activations") or {}
    return {str(a.get("type")) for a in acts.values() if isinstance(a, dict)}


def weights_parametrized(view: RunView) -> bool:
    """Whether most weight layers' weights are computed by a parametrization."""
    param = view.structure.get("parametrized_layers") or {}
    layers = view.weight_layers
    hit = sum("weight" in (param.get(ly) or ()) for ly in layers)
    return bool(layers) and 2 * hit >= len(layers)


def init_remedies(view: RunView) -> list[str]:
    """The init that fits the activations, unless the weights already have it."""
    if weights_parametrized(view):
        return []  # the parametrization sets the weights' scale, not their init
    families = view.families
    out: list[str] = []
    if "sigmoid" in families:
        out += ["relu"] + ([] if at_scale(view, HE_SCALE) else ["he_init"])
    elif "tanh" in families:
        out += ([] if at_scale(view, XAVIER_SCALE) else ["xavier_init"]) + ["orthogonal"]
    elif _activation_types(view) and _activation_types(view) <= set(SMOOTH_RECTIFIERS):
        pass  # LSUV below measures the gain
    elif not at_scale(view, HE_SCALE):
        out.append("he_init")
    out.append("lsuv")
    return out


def recurrent_remedies(view: RunView | None, direction: str = "vanishing") -> tuple[str, ...]:
    """Remedies for gradients that vanish or explode through time.

    Exploding: clipping caps the steps (Pascanu et al. 2013); orthogonal init and a shorter
    truncation shrink the product of Jacobians. Vanishing: what opens the carry (see the
    module doc); never clipping.
    """
    if direction == "exploding" or view is None:
        return ("clip_grad_norm", "orthogonal", "shorter_truncation")
    st = view.structure
    types = {str(v.get("type")) for v in (st.get("recurrent_layers") or {}).values()}
    out = []
    forget = st.get("lstm_forget_bias") or {}
    if "LSTM" in types and any(float(b) < FORGET_BIAS_SET for b in forget.values()):
        out.append("forget_gate_bias")
    if types & set(GATED):
        out.append("chrono_init")
    if types - set(GATED):
        out += ["lstm_or_gru", "orthogonal"]
    if not types:
        out.append("slow_decay_init")  # a recurrence gradwatch does not know: its decay
    return tuple(dict.fromkeys(out))


def flow_remedies(
    view: RunView, direction: str, *, forward_exploding: bool = False
) -> tuple[str, ...]:
    """Remedies for a signal that vanishes (``direction="vanishing"``) or explodes across depth.

    ``forward_exploding``: the forward signal explodes too (a loss far above chance): the
    cure is at the init or the normalization, and clipping only hides it.
    """
    fam = family(view)
    if fam == "transformer":
        return ("pre_ln", "warmup", "lower_lr", "clip_grad_norm")
    if fam == "recurrent":
        return recurrent_remedies(view)
    out: list[str] = []
    shortcuts = has_shortcuts(view)
    if shortcuts and view.residual and not branches_start_small(view):
        out.append("zero_init_last_norm" if view.has_norm else "fixup")
    if direction == "exploding" and view.path == "normalized":
        # batch norm without shortcuts: its growth is not the init's (Yang et al. 2019)
        out += ["residual", "lower_lr", "clip_grad_norm"]
        return tuple(dict.fromkeys(out))
    if direction == "exploding" and not forward_exploding:
        out += ["clip_grad_norm", "lower_lr"]
    out += init_remedies(view)
    if not view.has_norm:
        out.append("batchnorm")
    if not shortcuts and view.residual is False:  # known from the graph to have none
        out.append("residual")
    if direction == "exploding" and forward_exploding:
        out += ["lower_lr", "clip_grad_norm"]
    return tuple(dict.fromkeys(out))


def advice(remedies: tuple[str, ...], limit: int = 3, figure: str = "") -> str:
    """The first remedies in words, after the measured figure they address.

    ``advice(("he_init", "lsuv"), figure="to lift the per-layer factor 0.71 toward 1")`` is
    ``"to lift the per-layer factor 0.71 toward 1, use He init or use LSUV init"``.
    """
    said = [PHRASES.get(r, r.replace("_", " ")) for r in remedies[:limit]]
    if not said:
        return ""
    text = said[0] if len(said) == 1 else ", ".join(said[:-1]) + " or " + said[-1]
    return f"{figure}, {text}" if figure else text
