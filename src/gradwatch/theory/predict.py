"""Predict a model's gradient flow from its initialisation, by mean-field theory.

Two methods, one answer (:class:`~gradwatch.theory.prediction.Prediction`):

- a **plain chain** of Linear/Conv layers and activation modules (no ``inputs`` needed) is
  read from its modules, with the closed-form recursion below;
- **any other model** (residual connections, LayerNorm/RMSNorm/BatchNorm, attention,
  embeddings, functional activations, convolutions and pooling in residual or normalised
  nets), or any model given ``inputs``, runs once on a batch
  and the mean-field rules are applied to the operations it records
  (:mod:`~gradwatch.theory.graph_predict`): the same recursion, extended by the residual
  sum q_{l+1} = q_l + α² V_branch(q_l) (Yang & Schoenholz 2017), norms that reset the
  scale, and attention's Gaussian expectations (Kedia et al. 2024; Noci et al. 2022).

The chain method walks the model's modules in order, takes each nn.Linear / nn.Conv{1,2,3}d
as a layer and the first activation module after it as its activation, measures
σw² = fan_in · Var(W) and σb² = Var(b), and propagates the forward length from the input
(second moment q0):

    q_l = σw²_l m_{l−1} + σb²_l,   m_l = ∫Dz φ_l(√q_l z)²,   m_0 = q0.

Going back, the squared norm of ∂loss/∂(output of layer l) changes by

    ‖δ_{l−1}‖² / ‖δ_l‖² = σw²_l ∫Dz φ'_{l−1}(√q_{l−1} z)²

(each layer's weights times the derivative of the activation below them). In a uniform
network this is χ1, so the attenuation from the output to layer l is about χ1^(L−l).

The verdict judges the norm ratio ``√(‖δ_first‖²/‖δ_last‖²)`` with the thresholds of
:mod:`gradwatch.verdicts`, the ones ``gw.check`` and ``gw.diagnose`` apply to measured
signals. The theory is that of a plain chain of wide random layers: a model outside it
(normalization, residual connections, attention, recurrence, embeddings, parametrised layers
that are not Linear/Conv, or a forward() that is not a visible chain) gets the verdict
"uncertain" with the reason, the table still computed for the Linear/Conv layers.

References: Poole et al. 2016; Schoenholz et al. 2017, "Deep Information Propagation";
Glorot & Bengio 2010; He et al. 2015, "Delving Deep into Rectifiers".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.structure import is_norm, is_recurrent, is_residual_block
from gradwatch.theory import fixed_points, graph_predict, recurrent
from gradwatch.theory.activations import Activation, activation_from_module, resolve_activation
from gradwatch.theory.meanfield import CRITICAL_TOL, phase_of, trainable_depth
from gradwatch.theory.prediction import Prediction
from gradwatch.verdicts import depth_verdict

#: Module types that count as layers.
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Why a recurrent model is outside (no batch helps: the rules need independent layers).
RECURRENT_REASON = (
    "the model has a recurrent layer (nn.RNN/LSTM/GRU): its gradient flows through time, "
    "which the theory predicts over a given number of steps"
)
#: Columns of a plain chain's table.
CHAIN_COLUMNS = (
    "layer", "type", "activation", "fan_in", "sigma_w2", "sigma_b2", "q", "chi1", "attenuation",
)


def predict(
    model: nn.Module,
    q0: float = 1.0,
    tol: float = CRITICAL_TOL,
    *,
    inputs: Any = None,
    train_mode: bool = True,
    readout: str = "random",
    samples: int = 512,
    steps: int | None = None,
) -> Prediction:
    """Predict whether ``model``'s gradients vanish or explode, from its weights alone.

    Args:
        model: the network. A plain chain (an nn.Sequential of Linear/Conv layers and
            activation modules) is read from its modules; any other model (residual
            connections, normalisation, attention, embeddings, functional activations) runs
            once on ``inputs`` (or on a probe batch built from its first layer) and the
            mean-field rules are applied to the operations it records.
        q0: the second moment of the input coordinates, E[x²] (1 for standardised data), for
            a plain chain or a probe batch; given inputs bring their own.
        tol: half-width of the "critical" band for the per-layer factor, in (0, 1).
        inputs: a batch, a tensor or a tuple of tensors passed as ``model(*inputs)``
            (token ids for a language model). Needed when no probe can be built (the first
            layer is not a Linear, an Embedding or a MultiheadAttention). Only its second
            moments matter: the theory averages over the random weights, not over the data.
        train_mode: run the forward pass in train mode (BatchNorm uses batch statistics),
            as ``gw.check`` does.
        readout: the gradient at the output: "random" (a random linear read-out:
            independent unit gradients), "output" (the gradient of ½‖y‖², ``gw.check``'s
            default loss), or a tensor ∂L/∂output of the output's shape (e.g. a
            cross-entropy's (softmax − one-hot)/N on the same batch), whose second moments
            within and across examples start the backward pass.
        samples: draws of the Gaussian expectations over attention scores (more: smoother).
        steps: the sequence length for a recurrent model given no ``inputs`` (a probe batch
            of that many steps is built when its first layer is the nn.RNN or an
            nn.Embedding). An nn.RNN, or a one-layer nn.LSTM / nn.GRU, is predicted through
            time (:mod:`~gradwatch.theory.recurrent`): one row per layer and step.

    Returns:
        A :class:`Prediction`; its verdict is "uncertain" (with the reason) for a model
        outside the theory, "nonfinite" when a weight is NaN/Inf.

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module, or ``inputs`` not tensors.
        GradwatchValueError: ``model`` has no Linear or Conv layer (plain chain), a layer
            with no weights, q0 is not > 0, tol is not in (0, 1), readout is not "random" or
            "output", samples is not a positive int, or ``inputs`` do not fit the model.

    References: Schoenholz et al. 2017; Poole et al. 2016; Yang & Schoenholz 2017; Xiong et
    al. 2020; Kedia et al. 2024.

    """
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; pass the network "
            "itself (e.g. an nn.Sequential)"
        )
    if not (isinstance(q0, int | float) and not isinstance(q0, bool) and 0 < q0 < math.inf):
        raise GradwatchValueError(
            f"q0 must be a finite number > 0, got {q0!r}; it is the mean square of the input "
            "coordinates, 1.0 for standardised inputs"
        )
    if not (isinstance(tol, int | float) and not isinstance(tol, bool) and 0 < tol < 1):
        raise GradwatchValueError(
            f"tol must be a number in (0, 1), got {tol!r}; it is the half-width of the "
            f"critical band of the per-layer factor (default {CRITICAL_TOL})"
        )
    if not isinstance(readout, torch.Tensor) and readout not in ("random", "output"):
        raise GradwatchValueError(
            f"readout must be 'random', 'output' or a tensor (the gradient of the loss with "
            f"respect to the model's output), got {readout!r}; 'random' is a random linear "
            "read-out, 'output' the gradient of 0.5*||y||^2"
        )
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 16:
        raise GradwatchValueError(
            f"samples must be an int >= 16, got {samples!r}; it is the number of draws of the "
            "attention expectations (default 512)"
        )
    if not isinstance(train_mode, bool):
        raise GradwatchTypeError(f"train_mode must be a bool, got {type(train_mode).__name__}")
    _check_weights(model)
    if any(is_recurrent(m) for m in model.modules()):
        return _predict_recurrent(model, q0, tol, inputs, steps, readout, train_mode)
    chain = outside_theory(model) == ""
    if inputs is None and chain:
        return predict_chain(model, q0, tol)
    if inputs is None:
        probe = graph_predict.probe_inputs(model, q0)
        if probe is not None:
            try:
                return graph_predict.predict_graph(model, probe, tol, train_mode, readout, samples)
            except GradwatchValueError:
                pass  # the probe does not fit this model: say what is missing
        pred = predict_chain(model, q0, tol, require_layers=False)
        if not pred.reason:
            return pred
        if any(isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) for m in model.modules()):
            reason = (
                "the model has convolutions in a net that is not a plain chain of layers, and "
                "no probe batch fits it; pass inputs= (a batch of images, at most 32x32) to "
                "predict it from its forward pass, or measure it with gw.check"
            )
        else:
            reason = (
                pred.reason + "; pass inputs= (a batch for model(*inputs)) to predict it from "
                "its forward pass"
            )
        return replace(pred, reason=reason)
    inputs = graph_predict.check_inputs(inputs)
    pred = graph_predict.predict_graph(model, inputs, tol, train_mode, readout, samples)
    if pred.verdict == "uncertain" and chain:
        # a plain chain the operations' rules cannot follow (convolutions): its modules
        # still give the closed-form recursion, from the batch's mean square
        return predict_chain(model, _mean_square(inputs, q0), tol)
    return pred


def _predict_recurrent(model, q0, tol, inputs, steps, readout, train_mode) -> Prediction:
    """A model with recurrent layers: through time (see :mod:`gradwatch.theory.recurrent`)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 2):
        raise GradwatchValueError(
            f"steps must be an int >= 2 (the sequence length), got {steps!r}"
        )
    reason = recurrent.outside(model)
    if reason:
        pred = predict_chain(model, q0, tol, require_layers=False)
        return replace(pred, verdict="uncertain", reason=reason)
    if inputs is None:
        probe = recurrent.probe(model, steps) if steps is not None else None
        if probe is None:
            pred = predict_chain(model, q0, tol, require_layers=False)
            need = "inputs= (a batch of sequences)" if steps is not None else (
                "steps= (the sequence length) or inputs= (a batch of sequences)")
            return replace(pred, verdict="uncertain", reason=(
                f"{RECURRENT_REASON}; pass {need} to predict it through time"))
        inputs = tuple(t * math.sqrt(q0) if t.is_floating_point() else t for t in probe)
    else:
        inputs = graph_predict.check_inputs(inputs)
    return recurrent.predict_recurrent(model, inputs, tol, readout, train_mode)


def _mean_square(inputs: tuple[torch.Tensor, ...], default: float) -> float:
    """E[x²] of the first floating-point input (``default`` when none, or not positive)."""
    x = next((t for t in inputs if t.is_floating_point() and t.numel()), None)
    q = float(x.detach().double().pow(2).mean()) if x is not None else default
    return q if math.isfinite(q) and q > 0 else default


def _check_weights(model: nn.Module) -> None:
    for name, module in model.named_modules():
        w = getattr(module, "weight", None) if isinstance(module, LAYER_TYPES) else None
        if isinstance(w, nn.parameter.UninitializedParameter):
            raise GradwatchValueError(
                f"model: layer '{name or '(root)'}' has uninitialised (lazy) weights; run one "
                "forward pass first"
            )
        if isinstance(w, torch.Tensor) and w.numel() == 0:
            raise GradwatchValueError(
                f"model: layer '{name or '(root)'}' ({module}) has no weights (a zero-sized "
                "dimension); give every Linear/Conv layer at least one input and one output"
            )


def predict_chain(
    model: nn.Module, q0: float = 1.0, tol: float = CRITICAL_TOL, require_layers: bool = True
) -> Prediction:
    """The closed-form prediction of a plain chain of layers (see the module docstring)."""
    layers = _layers_and_activations(model)
    if not layers:
        if not require_layers:
            reason = outside_theory(model) or "the model has no Linear or Conv layer"
            return Prediction(
                table=pd.DataFrame(columns=list(CHAIN_COLUMNS)), phase="critical",
                gradient_ratio=math.nan, trainable_depth=math.nan, verdict="uncertain",
                depth=0, reason=reason,
            )
        raise GradwatchValueError(
            f"model has no nn.Linear or nn.Conv1d/2d/3d layer (it is a {type(model).__name__}); "
            "predict() needs a stack of such layers and activation modules, or inputs= to "
            "read any other model from its forward pass"
        )
    rows = []
    dphi2 = []  # ∫Dz φ'(√q z)² per layer: the activation's share of the backward factor
    m_prev = float(q0)
    for name, module, act in layers:
        w = module.weight.detach().to(torch.float64)
        fan_in = w[0].numel()
        sw2 = fan_in * float(w.var(unbiased=False))
        b = module.bias
        sb2 = float(b.detach().to(torch.float64).var(unbiased=False)) if b is not None else 0.0
        q = sw2 * m_prev + sb2
        m_prev, d2 = _moments(act, q)
        dphi2.append(d2)
        rows.append(
            {
                "layer": name,
                "type": type(module).__name__,
                "activation": act.name,
                "fan_in": fan_in,
                "sigma_w2": sw2,
                "sigma_b2": sb2,
                "q": q,
                "chi1": sw2 * d2,
            }
        )
    table = pd.DataFrame(rows)
    # Backward: ‖δ_{l−1}‖² = ‖δ_l‖² · σw²_l · ∫Dz φ'_{l−1}², from the last layer down.
    att = np.ones(len(rows))
    for k in range(len(rows) - 1, 0, -1):
        att[k - 1] = att[k] * rows[k]["sigma_w2"] * dphi2[k - 1]
    table["attenuation"] = att
    ratio = float(att[0])
    depth = len(rows)
    with np.errstate(divide="ignore", over="ignore"):
        per_layer = ratio ** (1.0 / (depth - 1)) if depth > 1 else rows[0]["chi1"]
    reason = outside_theory(model)
    finite = bool(np.all(np.isfinite(table[["sigma_w2", "sigma_b2"]].to_numpy(dtype=float))))
    if not finite:
        verdict = "nonfinite"
        reason = "some weights or biases are NaN/Inf, so no gradient can be predicted"
    elif reason:
        verdict = "uncertain"
    else:
        judged = depth_verdict(math.sqrt(ratio), math.sqrt(per_layer), plain_chain=True)
        verdict = judged[0] if judged else "healthy"
    return Prediction(
        table=table,
        phase=str(phase_of(per_layer, tol)),
        gradient_ratio=ratio,
        trainable_depth=_typical_trainable_depth(layers, table),
        verdict=verdict,
        depth=depth,
        reason=reason,
    )


def outside_theory(model: nn.Module) -> str:
    """Why ``model`` is outside the mean-field theory of a plain chain ("" when it is not).

    The theory sees a chain of Linear/Conv layers, each followed by an elementwise activation
    module. It does not model normalization, residual connections, attention, recurrence or
    embeddings, nor parametrised layers of other types, and it can only trust the order of the
    modules as the order of the forward pass for nested nn.Sequential containers.
    """
    what: list[str] = []
    unseen: list[str] = []
    custom: list[str] = []
    for name, m in model.named_modules():
        if is_norm(m):
            what.append("normalization layers")
        elif is_recurrent(m):
            what.append("recurrent layers")
        elif isinstance(m, nn.MultiheadAttention | nn.Transformer):
            what.append("attention")
        elif isinstance(m, nn.Embedding | nn.EmbeddingBag):
            what.append("embeddings")
        elif is_residual_block(m):
            what.append("residual blocks")
        elif list(m.parameters(recurse=False)) and not isinstance(m, LAYER_TYPES):
            unseen.append(name or "(root)")
        elif list(m.children()) and not isinstance(m, nn.Sequential | nn.ModuleList):
            custom.append(f"'{name or '(root)'}' ({type(m).__name__})")
    if what:
        kinds = list(dict.fromkeys(what))
        listed = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
        return (
            f"the model has {listed}, which this mean-field theory of "
            "a plain chain of layers does not model; measure it with gw.check instead"
        )
    if unseen:
        return (
            f"the theory does not see {len(unseen)} parametrised layers that are not "
            f"Linear/Conv (e.g. '{unseen[0]}'); measure the model with gw.check instead"
        )
    if custom:
        return (
            f"the forward() of {custom[0]} may not be a chain of its modules in order "
            "(residual connections, attention, functional activations); measure the model "
            "with gw.check instead"
        )
    return ""


def _layers_and_activations(model: nn.Module) -> list[tuple[str, nn.Module, Activation]]:
    found: list[list[Any]] = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            found.append([name, module, None])
        elif found and found[-1][2] is None:
            act = activation_from_module(module)
            if act is not None:
                found[-1][2] = act
    linear = resolve_activation("linear")
    return [(name, module, act or linear) for name, module, act in found]


def _moments(act: Activation, q: float) -> tuple[float, float]:
    """Return (∫Dz φ(√q z)², ∫Dz φ'(√q z)²), exactly for homogeneous φ."""
    if act.homogeneous:
        m2 = fixed_points.mean_sq_homogeneous(act)
        return m2 * q, m2
    q_eval = np.array([min(max(q, fixed_points.Q_EVAL_MIN), fixed_points.Q_BIG)])
    phi2, dphi2 = fixed_points.gaussian_moments(act, q_eval, order=1)
    return float(phi2[0]), float(dphi2[0])


def _typical_trainable_depth(layers: list, table: pd.DataFrame) -> float:
    """6 ξ_c at the hidden layers' median σw², σb² and most common activation."""
    hidden = table.iloc[:-1] if len(table) > 1 else table
    common = Counter(hidden["activation"]).most_common(1)[0][0]
    act = next(a for (_, _, a) in layers if a.name == common)
    sel = hidden[hidden["activation"] == common]
    sw2 = float(sel["sigma_w2"].median())
    sb2 = float(sel["sigma_b2"].median())
    if not sw2 > 0:
        return 0.0
    return float(trainable_depth(act, sw2, sb2))
