"""Predict the gradient's flow through time of a recurrent network (nn.RNN, nn.LSTM, nn.GRU).

Time is depth with the same weights at every step (Chen, Pennington & Schoenholz 2018): the
forward mean square ``q^l_t`` and the backward energies follow the recursions of
:mod:`gradwatch.theory.rnn_meanfield`, started from the model's own numbers:

- the weights' σ² (fan-in times mean square, W_hh and W_ih) and the summed biases' mean
  square, read from the module (PyTorch's uniform(−1/√h, 1/√h) init gives σ²_hh = 1/3);
- the input sequence's mean square at each step, and the initial state's, from one forward
  pass on the batch (the theory averages over the weights, not over the data);
- the gradient the loss puts on the layer's outputs, step by step (a head on the last step,
  a read-out of every step, the final state h_n), from a backward pass through the layers
  after the recurrent one only (``torch.autograd.grad`` stops at its outputs: nothing
  through time is measured);
- nn.RNN's dropout between layers (train mode) as a factor 1/(1 − p) on the next layer's
  input, forward and back.

A one-layer nn.LSTM or nn.GRU follows :mod:`gradwatch.theory.rnn_gated` (the gates' fields
drawn as Gaussian processes over time; one W_hhᵀ for every step going back).

The prediction is ``‖∂L/∂x_t‖²`` at each layer's input sequence relative to its last step,
the quantity ``gw.check`` measures through time (``Checkup.temporal``), and the verdict uses
the thresholds of its temporal rule.

The gradient-independence assumption (the W_hh used going back is independent of the one
the forward pass used) is what tied weights put in doubt. Monte Carlo over seeds
(``benchmarks/theory_mc``) validates it where the gradient decays fast enough
(χ* ≤ :data:`VALID_CHI`) at a width of at least :data:`VALID_WIDTH` — PyTorch's default
init (χ* ≈ 0.17-0.33) is inside. Closer to the edge of chaos the same W_hh at every step
correlates the gradient across time: at width 128 over 100 steps tanh at σ²_hh = 0.5
(χ* = 0.40) decays 9% slower per step in log than predicted, at σ²_hh = 1 (χ* = 0.70) 14%
slower, ReLU at σ²_hh = 1 (χ* = 0.5) 6% faster, beyond the tolerance; such a model gets
"uncertain", its table still computed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradwatch.errors import GradwatchValueError
from gradwatch.structure import is_recurrent
from gradwatch.theory import rnn_gated as gated
from gradwatch.theory import rnn_meanfield as mf
from gradwatch.theory.activations import resolve_activation
from gradwatch.theory.engine import first_tensor
from gradwatch.theory.meanfield import phase_of
from gradwatch.theory.prediction import Prediction
from gradwatch.verdicts import (
    TEMPORAL_EXPLODING,
    TEMPORAL_GATED_VANISHED,
    TEMPORAL_MIN_STEPS,
    TEMPORAL_VANISHING_WARNING,
)

VALID_CHI = 0.35
"""The largest fixed-point factor χ* where Monte Carlo confirms the prediction. PyTorch's
default init stays below it at any width and input scale (χ* ≤ σ²_hh = 1/3 for tanh, 1/6
for ReLU); tanh at σ²_hh = 0.5 (χ* = 0.40, width 128, 100 steps, a head on the last step)
decays 9% slower per step in log than predicted, 1.75 times the tolerance
(``rnn_tanh_sigma_0.5_100``)."""

VALID_WIDTH = 64
"""The smallest hidden size where Monte Carlo confirmed it (at 32 the seeds scatter by 4
decades over 100 steps, and the mean misses by 1.2 tolerances)."""

READOUT_DRAWS = 16
"""Draws of the random read-out averaged for the gradient it puts on each step: one draw
scatters a step's share by ~10% (a head of 10 outputs on 16 sequences), which would show as
steps out of line in a flat profile."""

MAX_GATED_STEPS = 256
"""Longest sequence a gated layer is predicted over (seconds; the cost grows as T³)."""

PHASE_STEPS = 24
"""Steps of the read-out-at-the-last-step run that gives a gated layer's per-step factor χ*."""

PROBE_EXAMPLES = 16
"""Sequences in the probe batch built when no inputs are given."""

#: Columns of the table, one row per recurrent layer and time step.
COLUMNS = (
    "layer",
    "rnn_layer",
    "t",
    "type",
    "activation",
    "fan_in",
    "sigma_w2",
    "sigma_u2",
    "sigma_b2",
    "q",
    "chi1",
    "attenuation",
)


def recurrent_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's recurrent modules (nn.RNN/LSTM/GRU and cells), with their names."""
    return [(name or "(root)", m) for name, m in model.named_modules() if is_recurrent(m)]


def outside(model: nn.Module) -> str:
    """Why the model's recurrence is outside this theory ("" when it is inside)."""
    found = recurrent_modules(model)
    if len(found) != 1:
        return (
            f"the model has {len(found)} recurrent modules; the theory of the flow through "
            "time covers one nn.RNN (any number of layers) whose outputs the rest of the "
            "model reads; measure it with gw.check (its gradient flow through time)"
        )
    name, m = found[0]
    if isinstance(m, nn.LSTM | nn.GRU) and m.num_layers > 1:
        return (
            f"'{name}' is a gated recurrence ({type(m).__name__}) of {m.num_layers} layers: "
            "the gated theory is validated for one layer; measure it with gw.check (its "
            "gradient flow through time)"
        )
    if not isinstance(m, nn.RNN | nn.LSTM | nn.GRU):
        return (
            f"'{name}' is a recurrent cell ({type(m).__name__}) stepped by the model's own "
            "loop, which the theory does not follow; measure it with gw.check (its gradient "
            "flow through time)"
        )
    if m.bidirectional or getattr(m, "proj_size", 0):
        return (
            f"'{name}' is bidirectional: the backward direction reads the sequence reversed "
            "and its gradient flows the other way; measure it with gw.check"
        )
    return ""


def probe(model: nn.Module, steps: int) -> tuple[torch.Tensor, ...] | None:
    """A batch of ``steps``-long sequences, or None.

    Standard Gaussian features for a model whose first layer is the nn.RNN, uniform tokens
    for one whose first layer is an nn.Embedding; None otherwise.
    """
    first = next((m for _, m in model.named_modules() if list(m.parameters(recurse=False))), None)
    rnn = recurrent_modules(model)[0][1]
    gen = torch.Generator().manual_seed(0)
    p = next(model.parameters())
    if isinstance(first, nn.RNNBase):
        x = torch.randn(PROBE_EXAMPLES, steps, first.input_size, generator=gen)
        x = x if first.batch_first else x.transpose(0, 1).contiguous()
        return (x.to(dtype=p.dtype, device=p.device),)
    if isinstance(first, nn.Embedding):
        tok = torch.randint(0, first.num_embeddings, (PROBE_EXAMPLES, steps), generator=gen)
        tok = tok if rnn.batch_first else tok.transpose(0, 1).contiguous()
        return (tok.to(p.device),)
    return None


def predict_recurrent(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    tol: float,
    readout: Any = "random",
    train_mode: bool = True,
) -> Prediction:
    """The prediction for a model with one nn.RNN, from one forward pass on ``inputs``."""
    reason = outside(model)
    if reason:
        return _uncertain(reason)
    name, rnn = recurrent_modules(model)[0]
    seen = _run(model, inputs, rnn, readout, train_mode)
    if isinstance(rnn, nn.LSTM | nn.GRU):
        return _predict_gated(name, rnn, seen, tol)
    layers = _layers(rnn, train_mode)
    x = seen["x"]  # (T, N, F)
    q_in = x.double().pow(2).mean(dim=(1, 2)).cpu().numpy()
    m0 = (
        seen["h0"].double().pow(2).mean(dim=(1, 2)).cpu().numpy()
        if seen["h0"] is not None
        else None
    )
    q, _ = mf.forward(layers, q_in, m0)
    x_energy, chi = mf.backward(layers, q, seen["inject"], seen["inject_final"])
    steps = len(q_in)
    rows = []
    with np.errstate(divide="ignore", invalid="ignore"):
        att = x_energy / x_energy[:, -1:]
    for k, ly in enumerate(layers):
        for t in range(steps):
            rows.append(
                {
                    "layer": name,
                    "rnn_layer": k,
                    "t": t,
                    "type": "RNN",
                    "activation": ly.act.name,
                    "fan_in": rnn.input_size if k == 0 else rnn.hidden_size,
                    "sigma_w2": ly.sigma_hh2,
                    "sigma_u2": ly.sigma_ih2,
                    "sigma_b2": ly.sigma_b2,
                    "q": q[k, t],
                    "chi1": chi[k, t],
                    "attenuation": att[k, t],
                }
            )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    stars = [
        mf.fixed_point(ly, float(np.mean(q_in if k == 0 else _m(layers, q, k - 1))))[1]
        for k, ly in enumerate(layers)
    ]
    chi_star = max(stars)
    ratio = float(att[0, 0])
    numbers = np.array([[ly.sigma_hh2, ly.sigma_ih2, ly.sigma_b2] for ly in layers])
    if not np.all(np.isfinite(numbers)):
        return Prediction(
            table=table,
            phase="critical",
            gradient_ratio=math.nan,
            trainable_depth=math.nan,
            verdict="nonfinite",
            depth=steps,
            reason="some weights or biases are NaN/Inf, so no gradient can be predicted",
            method="time",
        )
    reason = _unvalidated(name, rnn, chi_star)
    verdict = "uncertain" if reason else _verdict(ratio, steps)
    return Prediction(
        table=table,
        phase=str(phase_of(chi_star, tol)) if math.isfinite(chi_star) else "chaotic",
        gradient_ratio=ratio,
        trainable_depth=_time_scale(chi_star),
        verdict=verdict,
        depth=steps,
        reason=reason,
        method="time",
    )


def _m(layers: list[mf.ElmanLayer], q: np.ndarray, k: int) -> np.ndarray:
    return mf.moments(layers[k].act, q[k])[0]


def _time_scale(chi_star: float) -> float:
    """Steps over which ‖∂L/∂x_t‖² falls by e: −1/ln χ* (inf at χ* >= 1)."""
    if not (0 < chi_star < 1):
        return math.inf if chi_star >= 1 else 0.0
    return -1.0 / math.log(chi_star)


def _verdict(ratio: float, steps: int, gated: bool = False) -> str:
    """The temporal rule's verdict on the first step's share of the last (squared norms).

    At a checkup a gated carry that fades is learnt open in training unless its first step
    gets less than :data:`~gradwatch.verdicts.TEMPORAL_GATED_VANISHED` of the last one's
    (a note otherwise, which leaves the verdict healthy).
    """
    if steps < TEMPORAL_MIN_STEPS or not math.isfinite(ratio):
        return "healthy" if steps < TEMPORAL_MIN_STEPS else "exploding"
    r = math.sqrt(max(ratio, 0.0))
    if r < (TEMPORAL_GATED_VANISHED if gated else TEMPORAL_VANISHING_WARNING):
        return "vanishing"
    return "exploding" if r > TEMPORAL_EXPLODING else "healthy"


def _unvalidated(name: str, rnn: nn.RNN, chi_star: float) -> str:
    if rnn.hidden_size < VALID_WIDTH:
        return (
            f"'{name}' has {rnn.hidden_size} hidden units: below {VALID_WIDTH} the same "
            "weights at every step make the gradient through time scatter by decades from "
            "seed to seed, and the mean-field recursion is not validated there; measure it "
            "with gw.check (its gradient flow through time)"
        )
    if not chi_star <= VALID_CHI:
        return (
            f"'{name}' is near the edge of chaos (χ* = {chi_star:.2f} per step): there the "
            "same W_hh at every step correlates the gradient across time, and the "
            f"gradient-independence assumption, validated up to χ* = {VALID_CHI}, misses "
            "beyond the tolerance (Monte Carlo, width 128, 100 steps: tanh at χ* = 0.40 "
            "decays 9% slower per step in log than predicted, ReLU at χ* = 0.50 6% faster); "
            "the table is the mean-field recursion's. Measure it with gw.check (its gradient "
            "flow through time)"
        )
    return ""


def _predict_gated(name: str, rnn: nn.LSTM | nn.GRU, seen: dict, tol: float) -> Prediction:
    """A one-layer LSTM or GRU through time (:mod:`gradwatch.theory.rnn_gated`)."""
    if seen["x"].shape[0] > MAX_GATED_STEPS:
        return _uncertain(
            f"'{name}' reads {seen['x'].shape[0]} steps: the gated theory's cost grows as the "
            f"cube of the steps; predict on a sequence of at most {MAX_GATED_STEPS} steps (its "
            "per-step factor χ* and the phase do not depend on the length), or measure it with "
            "gw.check"
        )
    ly = _gated_layer(rnn)
    x = seen["x"].double().reshape(seen["x"].shape[0], -1)
    kernel = (x @ x.T / x.shape[1]).cpu().numpy()
    h0 = seen["h0"]
    m0 = float(h0.double().pow(2).mean()) if isinstance(h0, torch.Tensor) else 0.0
    steps = len(kernel)
    rec = gated.forward(ly, kernel, m0)
    inject = seen["inject"] + np.eye(steps)[-1] * seen["inject_final"][0]
    energy = gated.backward(ly, rec, inject, seen["inject_c"])
    with np.errstate(divide="ignore", invalid="ignore"):
        att = energy / energy[-1]
        local = np.append(energy[:-1] / energy[1:], np.nan)
    # the per-step factor far from the read-out: a read-out of the last step only, over the
    # first steps (at most PHASE_STEPS)
    n = min(steps, PHASE_STEPS)
    probe = gated.backward(ly, rec[:n], np.eye(n)[-1])
    chi_star = float((probe[0] / probe[-1]) ** (1 / (n - 1))) if n > 2 else math.nan
    table = pd.DataFrame(
        [{"layer": name, "rnn_layer": 0, "t": t, "type": ly.kind, "activation": "gated",
          "fan_in": rnn.input_size, "sigma_w2": float(np.mean(ly.sigma_hh2)),
          "sigma_u2": float(np.mean(ly.sigma_ih2)),
          "sigma_b2": float(np.mean((ly.b_ih + ly.b_hh) ** 2)),
          "q": float(np.mean(rec[t]["h"] ** 2)), "chi1": local[t], "attenuation": att[t]}
         for t in range(steps)],
        columns=list(COLUMNS),
    )  # fmt: skip
    ratio = float(att[0])
    reason = "" if rnn.hidden_size >= VALID_WIDTH else _unvalidated(name, rnn, 0.0)
    return Prediction(
        table=table,
        phase=str(phase_of(chi_star, tol)) if math.isfinite(chi_star) else "ordered",
        gradient_ratio=ratio,
        trainable_depth=_time_scale(chi_star),
        verdict="uncertain" if reason else _verdict(ratio, steps, gated=True),
        depth=steps,
        reason=reason,
        method="time",
    )


def _gated_layer(rnn: nn.LSTM | nn.GRU) -> gated.GatedLayer:
    h = rnn.hidden_size
    w_ih = rnn.weight_ih_l0.detach().double().cpu().numpy()
    w_hh = rnn.weight_hh_l0.detach().double().cpu().numpy()
    n = w_ih.shape[0] // h
    zeros = np.zeros((n, h))
    b_ih, b_hh = (
        getattr(rnn, b).detach().double().cpu().numpy().reshape(n, h) if rnn.bias else zeros
        for b in ("bias_ih_l0", "bias_hh_l0")
    )
    return gated.GatedLayer(
        kind=type(rnn).__name__,
        hidden=h,
        sigma_ih2=tuple(w_ih.shape[1] * float((w_ih[k * h : (k + 1) * h] ** 2).mean())
                        for k in range(n)),
        sigma_hh2=tuple(h * float((w_hh[k * h : (k + 1) * h] ** 2).mean()) for k in range(n)),
        rho_ih=tuple(float((w_ih[k * h : (k + 1) * h] ** 2).sum()) / h for k in range(n)),
        b_ih=b_ih,
        b_hh=b_hh,
    )  # fmt: skip


def _uncertain(reason: str) -> Prediction:
    return Prediction(
        table=pd.DataFrame(columns=list(COLUMNS)),
        phase="critical",
        gradient_ratio=math.nan,
        trainable_depth=math.nan,
        verdict="uncertain",
        depth=0,
        reason=reason,
        method="time",
    )


def _layers(rnn: nn.RNN, train_mode: bool) -> list[mf.ElmanLayer]:
    act = resolve_activation("tanh" if rnn.nonlinearity == "tanh" else "relu")
    keep = 1.0 - rnn.dropout if train_mode and rnn.num_layers > 1 else 1.0
    out = []
    for k in range(rnn.num_layers):
        w_hh = getattr(rnn, f"weight_hh_l{k}").detach().double()
        w_ih = getattr(rnn, f"weight_ih_l{k}").detach().double()
        b = torch.zeros(rnn.hidden_size, dtype=torch.float64, device=w_hh.device)
        for bias in ("bias_ih", "bias_hh"):
            p = getattr(rnn, f"{bias}_l{k}", None)
            if p is not None:
                b = b + p.detach().double()
        drop = 1.0 / keep if k > 0 and keep > 0 else 1.0
        out.append(
            mf.ElmanLayer(
                act=act,
                sigma_hh2=w_hh.shape[1] * float(w_hh.pow(2).mean()),
                sigma_ih2=w_ih.shape[1] * float(w_ih.pow(2).mean()) * drop,
                rho_ih=float(w_ih.pow(2).sum()) / w_ih.shape[0] * drop,
                sigma_b2=float(b.pow(2).mean()),
            )
        )
    return out


def _run(model: nn.Module, inputs: tuple, rnn: nn.RNN, readout: Any, train_mode: bool) -> dict:
    """One forward pass and a backward pass to the recurrent module's outputs.

    Returns the RNN's input (T, N, F), its h0, and the read-out's gradient energy on its
    outputs per step (top layer) and on its final states (per layer).
    """
    seen: dict[str, Any] = {}

    def hook(_m, args, out):
        seen["x"], seen["h0"], seen["out"] = args[0], (args[1] if len(args) > 1 else None), out

    handle = rnn.register_forward_hook(hook)
    was = model.training
    model.train(train_mode)
    try:
        with torch.enable_grad():
            y = first_tensor(model(*inputs))
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        raise GradwatchValueError(
            f"inputs do not fit the model ({type(err).__name__}: {err}); pass a batch of "
            "sequences for model(*inputs)"
        ) from err
    finally:
        handle.remove()
        model.train(was)
    if "x" not in seen or not isinstance(seen["x"], torch.Tensor):
        raise GradwatchValueError(
            "inputs: the model's nn.RNN did not run on a padded tensor (a PackedSequence, or "
            "not called); pass a batch the model feeds to it as a (N, T, F) or (T, N, F) tensor"
        )
    if y is None or not y.requires_grad:
        raise GradwatchValueError(
            "model: its output does not depend on the recurrent layer's weights; pass a model "
            "whose output the gradient flows back from"
        )
    out, h_n = seen["out"]
    c_n = None
    if isinstance(h_n, tuple):  # an LSTM's (h_n, c_n)
        h_n, c_n = h_n
    batch_first = rnn.batch_first
    x = seen["x"] if not batch_first else seen["x"].transpose(0, 1)
    if x.dim() == 2:  # an unbatched sequence (T, F)
        x = x.unsqueeze(1)
    steps = x.shape[0]
    inject, final, final_c = np.zeros(steps), np.zeros(rnn.num_layers), 0.0
    draws = READOUT_DRAWS if not isinstance(readout, torch.Tensor) and readout == "random" else 1
    gen = torch.Generator().manual_seed(0)
    for i in range(draws):
        r = _readout(y, readout, gen)
        wrt = [out, h_n] + ([c_n] if c_n is not None else [])
        grads = torch.autograd.grad(
            (y * r).sum(), wrt, allow_unused=True, retain_graph=i < draws - 1
        )
        g_out, g_hn = grads[:2]
        if c_n is not None and grads[2] is not None:
            final_c += float(grads[2].detach().double().pow(2).sum()) / draws
        if g_out is not None:
            g = g_out.transpose(0, 1) if batch_first and g_out.dim() == 3 else g_out
            g = g.detach().double().reshape(steps, -1)
            inject += g.pow(2).sum(dim=1).cpu().numpy() / draws
        if g_hn is not None:
            g = g_hn.detach().double().reshape(rnn.num_layers, -1)
            final += g.pow(2).sum(1).cpu().numpy() / draws
    h0 = seen["h0"][0] if isinstance(seen["h0"], tuple) else seen["h0"]  # an LSTM's (h0, c0)
    if isinstance(h0, torch.Tensor) and h0.dim() == 2:
        h0 = h0.unsqueeze(1)
    return {
        "x": x.detach(),
        "h0": h0.detach() if isinstance(h0, torch.Tensor) else None,
        "inject": inject,
        "inject_final": final,
        "inject_c": final_c,
    }


def _readout(y: torch.Tensor, readout: Any, gen: torch.Generator) -> torch.Tensor:
    if isinstance(readout, torch.Tensor):
        if tuple(readout.shape) != tuple(y.shape):
            raise GradwatchValueError(
                f"readout has shape {tuple(readout.shape)} but the model's output has shape "
                f"{tuple(y.shape)}; pass ∂L/∂output of the output's shape"
            )
        return readout.detach().to(dtype=y.dtype, device=y.device)
    if readout == "output":
        return y.detach()
    return torch.randn(y.shape, generator=gen).to(dtype=y.dtype, device=y.device)
