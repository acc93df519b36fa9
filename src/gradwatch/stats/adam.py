"""Adam's state: ``update_rms`` and ``eps_frac``, per layer.

Adam (and AdamW) moves each weight by ``lr · u`` with ``u = m̂ / (√v̂ + ε)``, where
``m̂ = m / (1 - β1^t)`` and ``v̂ = v / (1 - β2^t)`` are the bias-corrected moving averages of
the gradient and of its square (Kingma & Ba 2015; AdamW adds the decoupled weight decay
``lr · λ · w`` beside it, Loshchilov & Hutter 2019). Read from the optimizer's state right
after ``optimizer.step()``, at recorded (detail) steps:

- ``update_rms``: the root mean square of u over the layer's parameters: the applied update
  divided by the learning rate (weight decay aside). It is about 1 while the gradients are
  steady; far below 1 when ε is comparable to √v̂, since ε then damps the update;
- ``eps_frac``: the fraction of the layer's entries where ``ε ≥ √v̂``: ε dominates the
  denominator. Gradients that shrink below ε (wide layers, small losses, low-precision
  gradients) make the update vanish there (Wortsman et al. 2023, "Small-scale proxies for
  large-scale Transformer training instabilities", §3.4: the AdamW epsilon; their fix is
  ε = 1e-15).

Optimizers: ``torch.optim.Adam`` and ``torch.optim.AdamW`` and their subclasses, with or
without ``amsgrad`` (then v̂ is the running maximum ``max_exp_avg_sq``), foreach or fused.
Other optimizers record neither statistic.

Block ``adam``: per parameter, ``Σ u²``, then per parameter the count of entries where
``ε ≥ √v̂``; the key lists the parameter indices. The host divides by the entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gradwatch.stats.registry import define_block, define_statistic, keep_rank0

F32 = torch.float32


def is_adam(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a ``torch.optim.Adam`` or ``AdamW`` (or a subclass)."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)


def adam_block(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]):
    """(block (2P',) float32, indices into ``params``) of the parameters Adam has stepped.

    Parameters without state (never stepped, no gradient) are left out. ``None`` when none
    has state.
    """
    index = {id(p): i for i, p in enumerate(params)}
    sq, counts, pids = [], [], []
    with torch.no_grad():
        for group in optimizer.param_groups:
            beta1, beta2 = group["betas"]
            eps = float(group["eps"])
            amsgrad = bool(group.get("amsgrad", False))
            ms, vs, b1, b2, ids = [], [], [], [], []
            for p in group["params"]:
                st = optimizer.state.get(p)
                i = index.get(id(p))
                if i is None or not st or "exp_avg" not in st:
                    continue
                step = st["step"]
                t = float(step) if not isinstance(step, torch.Tensor) or step.device.type == \
                    "cpu" else step.to(F32)
                ms.append(st["exp_avg"])
                vs.append(st["max_exp_avg_sq"] if amsgrad else st["exp_avg_sq"])
                b1.append(1 - beta1**t)
                b2.append(1 - beta2**t)
                ids.append(i)
            if not ids:
                continue
            s, c = _reduce(ms, vs, b1, b2, eps)
            sq.append(s)
            counts.append(c)
            pids += ids
    if not pids:
        return None
    return torch.cat([torch.cat(sq), torch.cat(counts)]), tuple(pids)


def _reduce(ms, vs, b1, b2, eps):
    """(Σ u² per tensor, count of ε ≥ √v̂ per tensor), float32 each."""
    if all(isinstance(b, float) for b in b1 + b2):
        root = torch._foreach_sqrt(torch._foreach_div(vs, b2))  # √v̂
        flags = [(r <= eps).sum(dtype=F32) for r in root]
        den = torch._foreach_add(root, eps)
        u = torch._foreach_div(torch._foreach_div(ms, b1), den)
        norms = torch._foreach_norm(u)
    else:  # step counts on the device (capturable / fused): no host sync
        norms, flags = [], []
        for m, v, c1, c2 in zip(ms, vs, b1, b2, strict=True):
            r = (v / c2).sqrt()
            flags.append((r <= eps).sum(dtype=F32))
            norms.append(torch.linalg.vector_norm((m / c1) / (r + eps)))
    dev = ms[0].device
    sq = torch.stack([n.to(F32).to(dev) for n in norms]).square()
    return sq, torch.stack([f.to(dev) for f in flags])


def decode_adam(values: np.ndarray, pids: Sequence[int], layout: Any):
    """Host side: (steps, 2P') -> per-layer ``update_rms`` and ``eps_frac``."""
    v = values.astype(np.float64)
    p = len(pids)
    col = {pid: j for j, pid in enumerate(pids)}
    layers, rms, frac = [], [], []
    for li, ps in layout.layer_params.items():
        cols = [col[q] for q in ps if q in col]
        if not cols:
            continue
        n = float(sum(int(layout.numel[pids[j]]) for j in cols))
        layers.append(li)
        rms.append(np.sqrt(v[:, cols].sum(axis=1) / n))
        frac.append(v[:, [p + j for j in cols]].sum(axis=1) / n)
    if not layers:
        return {}
    return {"update_rms": (layers, np.stack(rms, axis=1)),
            "eps_frac": (layers, np.stack(frac, axis=1))}


define_block(
    "adam", decode_adam, keep_rank0,
    "per parameter stepped by Adam: Σ (m̂/(√v̂+ε))², then the count of entries with ε ≥ √v̂; "
    "key: the parameter indices",
)
_SAME = "every rank holds the same optimizer state under DDP: rank 0's value"
define_statistic(
    "update_rms", "adam", "adam", "detail",
    "RMS of Adam's update m̂/(√v̂+ε) over the layer: the applied update divided by the "
    "learning rate (Adam/AdamW)", _SAME,
)
define_statistic(
    "eps_frac", "adam", "adam", "detail",
    "fraction of the layer's entries where Adam's ε ≥ √v̂: ε dominates the denominator "
    "(Adam/AdamW)", _SAME,
)
