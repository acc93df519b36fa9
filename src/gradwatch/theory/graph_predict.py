"""``predict`` for models that are not a plain chain: mean-field rules on a recorded forward pass.

The model runs once on a batch (given, or a probe built from its first layer: Gaussian
features for a Linear, random tokens for an Embedding, a batch of sequences for attention).
Its operations are read (:mod:`~gradwatch.theory.trace`) and interpreted
(:mod:`~gradwatch.theory.engine`): second moments forward, gradient second moments back from
a random linear read-out. Each layer's predicted ‖∂L/∂output‖² gives the table's
attenuation; the verdict reads the trunk the way ``gw.check`` reads measured norms (layers
outside residual branches, compared across same-shape steps), with the thresholds of
:mod:`gradwatch.verdicts`.

Weight matrices that start with identical values are predicted when they are a chain of
identical copies along a residual stream (``nn.TransformerEncoder`` as built, a residual
MLP of deep-copied blocks, one block applied at every depth): :mod:`~gradwatch.theory.tied`
splices the cross-depth recursion into the interpretation.

Outside the theory ("uncertain", with the reason): an operation without a mean-field rule
(recurrent kernels, a custom autograd function), a nonlinearity of a non-Gaussian sum whose
law cannot be carried (a sum with an actual tensor; the original ResNet's ReLU after the
addition is carried by draws, :mod:`~gradwatch.theory.draws`), and weight matrices used at
several places, or starting identical, anywhere but in such a chain: their signals are
correlated across depth.
Convolutions and pooling are read with images' positions as rows
(:mod:`~gradwatch.theory.rules_conv`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.layers import find_layers
from gradwatch.structure import describe, is_norm
from gradwatch.theory.engine import CONVOLUTIONS, Interpretation, first_tensor, interpret
from gradwatch.theory.meanfield import phase_of
from gradwatch.theory.prediction import Prediction
from gradwatch.theory.tied import Splice, find_chain, find_repeated
from gradwatch.theory.trace import Trace, record
from gradwatch.theory.values import Unknown
from gradwatch.verdicts import depth_verdict

#: Probe batch built when no inputs are given: examples, and positions of a sequence.
PROBE_EXAMPLES = 32
PROBE_SEQUENCE = (4, 16)
#: Most positions per example the interpreter accepts (its cost grows as positions²).
MAX_POSITIONS = 256
#: ... and per image (N, C, H, W) read by convolutions (32 × 32)
MAX_IMAGE_POSITIONS = 1024
#: Probe images when the first layer is a convolution: examples, and side of each axis.
PROBE_IMAGES = (16, 32)
#: Values at or below this count as a vanished gradient (log taken of this instead).
TINY = 1e-300


def probe_inputs(model: nn.Module, q0: float = 1.0) -> tuple[torch.Tensor, ...] | None:
    """A batch for ``model`` built from its first layer, or None when none can be built.

    A first nn.Linear gets ``PROBE_EXAMPLES`` Gaussian rows of mean square q0; a first
    nn.Embedding random tokens, ``PROBE_SEQUENCE`` (examples, positions); a first
    nn.MultiheadAttention (an ``nn.TransformerEncoder`` used directly) Gaussian sequences in
    its layout (``batch_first``).
    """
    first = next((m for _, m in model.named_modules() if list(m.parameters(recurse=False))), None)
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else None
    gen = torch.Generator().manual_seed(0)
    if isinstance(first, nn.Linear):
        x = torch.randn(PROBE_EXAMPLES, first.in_features, generator=gen) * math.sqrt(q0)
        return (x.to(dtype=dtype, device=device),)
    if isinstance(first, nn.Embedding):
        b, t = PROBE_SEQUENCE
        return (torch.randint(0, first.num_embeddings, (b, t), generator=gen).to(device),)
    if isinstance(first, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        n, side = PROBE_IMAGES
        nd = first.weight.dim() - 2
        side = {1: 256, 2: side, 3: 8}[nd]
        x = torch.randn(n, first.in_channels, *([side] * nd), generator=gen) * math.sqrt(q0)
        return (x.to(dtype=dtype, device=device),)
    if isinstance(first, nn.MultiheadAttention):
        b, t = PROBE_SEQUENCE
        shape = (b, t, first.embed_dim) if first.batch_first else (t, b, first.embed_dim)
        x = torch.randn(*shape, generator=gen) * math.sqrt(q0)
        return (x.to(dtype=dtype, device=device),)
    return None


def check_inputs(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``inputs`` as a tuple of tensors, or a clear error."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not (
        isinstance(inputs, tuple | list)
        and inputs
        and all(isinstance(t, torch.Tensor) for t in inputs)
    ):
        raise GradwatchTypeError(
            f"inputs must be a tensor or a tuple of tensors (passed as model(*inputs)), got "
            f"{type(inputs).__name__}; pass a batch such as torch.randn(32, 64) or token ids"
        )
    x = inputs[0]
    if x.numel() == 0:
        raise GradwatchValueError(
            f"inputs has no elements (shape {tuple(x.shape)}); give a batch of at least one example"
        )
    return tuple(inputs)


def predict_graph(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    tol: float,
    train_mode: bool = True,
    readout: Any = "random",
    samples: int = 512,
) -> Prediction:
    """The prediction of a traced model (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: a thread pool costs more than it saves
    try:
        return _predict_graph(model, inputs, tol, train_mode, readout, samples)
    finally:
        torch.set_num_threads(threads)


def _predict_graph(model, inputs, tol, train_mode, readout, samples, chain=None) -> Prediction:
    copies = identical_copies(model) if chain is None else []
    if copies:  # a chain of identical copies has its own recursion; anything else is outside
        chain, why = find_chain(model, copies)
        if chain is None:
            return outside(model, f"{shared_reason(copies)} ({why})")
    try:
        with chain.capture() if chain is not None else contextlib.nullcontext():
            trace = record(model, inputs, train_mode=train_mode)
    except (RuntimeError, IndexError, TypeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise GradwatchValueError(
            f"inputs do not fit the model (the forward pass failed: {msg}); pass inputs= in the "
            "shape model(*inputs) expects"
        ) from exc
    if isinstance(readout, torch.Tensor):
        out = first_tensor(trace.output)
        if out is None or tuple(readout.shape) != tuple(out.shape):
            got = None if out is None else tuple(out.shape)
            raise GradwatchValueError(
                f"readout has shape {tuple(readout.shape)} but the model's output has shape "
                f"{got}; pass the gradient of the loss with respect to that output"
            )
    splice = None
    if chain is not None:
        why = chain.verify(trace)
        if why:
            return outside(model, f"{shared_reason(copies or chain.names)} ({why})")
        splice = Splice(chain, samples)
    interp = interpret(trace, readout=readout, samples=samples, splice=splice)
    if splice is not None:
        interp.layers.update(splice.layers)
        interp.reason = interp.reason or splice.reason
    image = interp.space.T > 1 and first_tensor(trace.inputs).dim() >= 3 and any(
        op.name in CONVOLUTIONS for op in trace.ops
    )
    limit = MAX_IMAGE_POSITIONS if image else MAX_POSITIONS
    if interp.space.T > limit:
        hint = "e.g. 32x32 images" if image else "e.g. inputs[:, :64]"
        raise GradwatchValueError(
            f"inputs have {interp.space.T} positions per example; the theory's cost grows as "
            f"the square of it: pass at most {limit} ({hint})"
        )
    table = layer_table(model, trace, interp)
    skip = chain.param_ids if chain is not None else set()
    shared = shared_weights(trace, interp, skip)
    if shared and chain is None:
        repeated = find_repeated(model, inputs, train_mode)  # one module at several depths
        if repeated is not None:
            return _predict_graph(model, inputs, tol, train_mode, readout, samples, repeated)
    reason = interp.reason or first_unknown(trace, interp) or shared
    finite = bool(np.all(np.isfinite(table["sigma_w2"].dropna().to_numpy(dtype=float))))
    nonfinite = not finite or any(
        not bool(torch.isfinite(p.detach()).all())
        for p in model.parameters()
        if p.is_floating_point()
    )
    structure = _structure(model, trace)
    total, factor, counted = trunk_ratio(model, trace, table, structure)
    if nonfinite:
        verdict, reason = (
            "nonfinite",
            "some weights or biases are NaN/Inf, so no gradient can be predicted",
        )
    elif reason:
        verdict = "uncertain"
    elif counted == 0 or not math.isfinite(total):
        verdict, total, factor = "healthy", 1.0, 1.0  # nothing to compare, nothing shrinks
    else:
        plain = not (
            structure.get("has_norm") or structure.get("residual") or structure.get("attention")
        )
        judged = depth_verdict(math.sqrt(total), math.sqrt(factor), plain_chain=plain)
        verdict = judged[0] if judged else "healthy"
    return Prediction(
        table=table,
        phase=str(phase_of(factor, tol)) if math.isfinite(factor) else "critical",
        gradient_ratio=total,
        trainable_depth=math.nan,
        verdict=verdict,
        depth=len(table),
        reason=reason,
        method="graph",
    )


def layer_table(model: nn.Module, trace: Trace, interp: Interpretation) -> pd.DataFrame:
    """One row per layer (registration order): predicted ‖δ‖², forward q, weight statistics."""
    norm2: dict[str, float] = {}
    q: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for name, kind, out, _ in trace.layer_outputs:
        v = interp.value_of(out)
        g = interp.grad_norm2(v)
        norm2[name] = norm2.get(name, 0.0) + (g if math.isfinite(g) else math.nan)
        q.setdefault(name, interp.forward_q(v))
        kinds[name] = kind
    rows = []
    for name, entry in interp.layers.items():  # a chain of identical copies
        norm2[name] = entry.get("norm2", math.nan)
        if "q" in entry:
            q[name] = entry["q"]
    for ly in find_layers(model):
        w = _weight_stats(ly.module, interp)
        rows.append(
            {
                "layer": ly.name,
                "type": ly.type_name,
                "activation": "",
                "fan_in": w.get("fan_in", math.nan),
                "sigma_w2": w.get("sigma_w2", math.nan),
                "sigma_b2": w.get("sigma_b2", math.nan),
                "q": q.get(ly.name, math.nan),
                "chi1": math.nan,
                "norm2": norm2.get(ly.name, math.nan),
                "weight_grad2": interp.layers[ly.name].get("weight_grad2", math.nan)
                if ly.name in interp.layers
                else _weight_grad(ly.module, interp),
            }
        )
    table = pd.DataFrame(rows)
    vals = table["norm2"].to_numpy(dtype=float)
    ok = np.flatnonzero(np.isfinite(vals) & (vals > 0))
    last = vals[ok[-1]] if len(ok) else math.nan
    table["attenuation"] = vals / last
    return table.drop(columns=["norm2"])


def _weight_grad(module: nn.Module, interp: Interpretation) -> float:
    """Predicted ‖∂L/∂(weight matrix and bias)‖² of a layer (NaN: not a weight matrix)."""
    vals = [
        interp.ctx.weight_grads[id(p)]
        for p in module.parameters(recurse=False)
        if id(p) in interp.ctx.weight_grads
    ]
    return float(sum(vals)) if vals else math.nan


def _weight_stats(module: nn.Module, interp: Interpretation) -> dict[str, float]:
    for p in module.parameters(recurse=False):
        info = interp.weights.get(id(p))
        if info is not None:
            return info
    return {}


def first_unknown(trace: Trace, interp: Interpretation) -> str:
    """The reason of the first layer whose output the theory could not follow ("" if none)."""
    for name, _, out, _ in trace.layer_outputs:
        v = interp.value_of(out)
        if isinstance(v, Unknown) and name not in interp.layers:  # (not a chain's layer)
            return f"{v.reason} (at layer '{name}')"
    return ""


def shared_weights(trace: Trace, interp: Interpretation, skip: set[int] | None = None) -> str:
    """Why weight matrices that act at several places, or start identical, are outside.

    ``skip``: parameters of a chain of identical copies, predicted by its own recursion.
    """
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for key, w in interp.ctx.uses:
        if skip and key in skip:
            continue
        wd = w.detach()
        if wd.numel() < 2 or float(wd.double().var()) == 0.0:
            continue  # a zero (or constant) matrix passes no signal: nothing to correlate
        # a cheap fingerprint first; torch.equal only between matrices that share it
        flat = wd.reshape(-1)
        print_ = (tuple(wd.shape), float(flat.double().sum()), float(flat[0]), float(flat[-1]))
        groups.setdefault(print_, []).append((key, wd))
    names: list[str] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        ref_key, ref = members[0]
        same = [k for k, w in members if k == ref_key or torch.equal(ref, w)]
        if len(same) > 1:
            for key in dict.fromkeys(same):
                pname = trace.params.get(key, "")
                names.append(pname.rsplit(".", 1)[0] if "." in pname else pname or "?")
    return shared_reason(names)


def identical_copies(model: nn.Module) -> list[str]:
    """Modules whose weight matrices (distinct parameters) hold identical values."""
    groups: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for name, p in model.named_parameters():
        wd = p.detach()
        if wd.dim() < 2 or not wd.is_floating_point() or float(wd.double().var()) == 0.0:
            continue  # vectors (norms' γ start alike by design) and constant matrices
        flat = wd.reshape(-1)
        print_ = (tuple(wd.shape), float(flat.double().sum()), float(flat[0]), float(flat[-1]))
        groups.setdefault(print_, []).append((name, wd))
    names: list[str] = []
    for members in groups.values():
        ref = members[0][1]
        same = [n for n, w in members if torch.equal(ref, w)]
        if len(same) > 1:
            names.extend(n.rsplit(".", 1)[0] if "." in n else n for n in same)
    return list(dict.fromkeys(names))


def outside(model: nn.Module, reason: str) -> Prediction:
    """An "uncertain" prediction with its reason, one row per layer, nothing predicted."""
    rows = [
        {"layer": ly.name, "type": ly.type_name, "activation": ""} for ly in find_layers(model)
    ]
    table = pd.DataFrame(rows, columns=["layer", "type", "activation"])
    for col in ("fan_in", "sigma_w2", "sigma_b2", "q", "chi1", "weight_grad2", "attenuation"):
        table[col] = math.nan
    return Prediction(
        table=table, phase="critical", gradient_ratio=math.nan, trainable_depth=math.nan,
        verdict="uncertain", depth=len(table), reason=reason, method="graph",
    )  # fmt: skip


def shared_reason(names: list[str]) -> str:
    """Why weight matrices that act at several places, or start identical, are outside."""
    if not names:
        return ""
    shown = ", ".join(f"'{n}'" for n in list(dict.fromkeys(names))[:4])
    return (
        f"weight matrices act at several places or start with identical values ({shown}, ...;"
        " nn.TransformerEncoder copies its layer, so its layers start identical): their signals "
        "are correlated across depth, and this mean-field theory assumes independent random "
        "weights; initialise each copy on its own, or measure the model with gw.check"
    )


def _structure(model: nn.Module, trace: Trace) -> dict[str, Any]:
    out = first_tensor(trace.output)
    if isinstance(out, torch.Tensor) and out.grad_fn is not None:
        return describe(model, out)
    return describe(model)


def trunk_ratio(
    model: nn.Module, trace: Trace, table: pd.DataFrame, structure: dict
) -> tuple[float, float, int]:
    """(squared ratio, squared per-step factor, steps) along the trunk, as check reads it.

    The layers inside residual branches are left out (but each branch's last, whose δ is the
    stream's), a layer normalised next by a norm of the same output shape is read at the
    norm, and only steps between layers of the same output shape are counted.
    """
    shapes: dict[str, tuple] = {}
    for name, _, out, _ in trace.layer_outputs:
        t = first_tensor(out)
        if isinstance(t, torch.Tensor):
            shapes.setdefault(name, tuple(t.shape[1:]))
    modules = dict(model.named_modules())
    inside: set[str] = set()
    for branch in structure.get("residual_branches") or ():
        inside.update(branch[:-1])
    att = table.set_index("layer")["attenuation"]
    names = [
        n
        for n in table["layer"]
        if n not in inside and n in shapes and np.isfinite(att[n]) and att[n] > 0
    ]
    keep = []
    for k, n in enumerate(names):
        nxt = names[k + 1] if k + 1 < len(names) else None
        if (
            nxt is not None
            and not is_norm(modules.get(n, nn.Identity()))
            and is_norm(modules.get(nxt, nn.Identity()))
            and shapes[n] == shapes[nxt]
        ):
            continue
        keep.append(n)
    if len(keep) < 2:
        return math.nan, math.nan, 0
    logs = np.log(np.maximum(np.array([att[n] for n in keep], dtype=float), TINY))
    i = len(keep) - 1
    total, counted = 0.0, 0
    while i > 0:
        j = next((k for k in range(i - 1, -1, -1) if shapes[keep[k]] == shapes[keep[i]]), None)
        if j is None:
            i -= 1
            continue
        total += logs[j] - logs[i]
        counted += 1
        i = j
    if counted == 0:
        return math.nan, math.nan, 0
    return float(math.exp(total)), float(math.exp(total / counted)), counted
