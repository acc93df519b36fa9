"""What the instability rules share: loss spikes on a robust baseline, and their precursors.

Every detector here is *causal*: whether it fires at step t depends only on what was recorded
up to t, so the step it names is the step at which ``gw.diagnose`` on the run so far would
have warned (the lead-time benchmark, ``benchmarks/spikes.py``, checks this by diagnosing
truncated runs). The rules built on them:

- ``loss_spike``: the loss jumps above a robust baseline of the steps before it: the median
  of the last :data:`WINDOW` recorded losses plus the larger of :data:`SPIKE_SIGMAS` robust
  standard deviations (1.4826 × the median absolute deviation) and :data:`SPIKE_REL` of the
  median (and at least :data:`SPIKE_MATERIAL` of the loss the run began at), confirmed by
  the next recorded loss (still above the band, or non-finite): one
  hard batch is not a spike. A noisy loss widens the band; a falling loss never spikes.
- ``attention_logit_growth``: a layer's largest attention logit passes
  :data:`ATTN_LOGIT_HIGH` and :data:`ATTN_GROWTH` times its early value (Wortsman et al.
  2023, Dehghani et al. 2023: logits that grow without bound precede the divergence).
- ``output_logit_divergence``: the mean log-partition ``logsumexp_mean`` drifts more than
  :data:`LSE_DRIFT` nats from its first recorded value (Wortsman et al. 2023 §3.2).
- ``grad_spike``: the total gradient norm jumps to :data:`GRAD_SPIKE` times its trailing
  median, reaching :data:`GRAD_FLOOR` of where it began (BLOOM-176B's chronicles: a 3.9×
  rise four steps before a loss spike).
- ``adam_epsilon``: Adam's ε dominates √v̂ for most of a layer's entries (:data:`EPS_FRAC`).

The *lead time* of a precursor is the number of steps from its onset to the first loss spike
after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gradwatch.diagnose._view import RunView, finite_loss

WINDOW = 25
"""Recorded losses (and gradient norms) in the trailing baseline."""

MIN_HISTORY = 10
"""Recorded values needed before a spike can be judged."""

SPIKE_SIGMAS = 6.0
"""A loss this many robust standard deviations above the trailing median may be a spike..."""

SPIKE_REL = 0.3
"""...if it is also this fraction above it (a spike of a nearly constant loss stays a spike
only if it is large)."""

ATTN_LOGIT_HIGH = 100.0
"""An attention logit above this puts e^-100 on every other key: the head attends to one key
and its softmax passes no gradient to the rest. Stable runs stay near 10 (Wortsman et al.
2023, Fig. 1; measured here: ≤ 60 with qk-layernorm at high learning rates)."""

ATTN_GROWTH = 10.0
"""...and the logit must have grown this many times from its early value (the smallest of its
first three recorded values, so that a run that blows up within its first recorded steps is
still measured from where it started): a model built with large logits is not growing them."""

LSE_DRIFT = 10.0
"""logsumexp_mean this many nats from its first recorded value: the logits drift (log Z far
from where it started)."""

GRAD_SPIKE = 4.0
"""The total gradient norm this many times its trailing median is a gradient spike..."""

GRAD_FLOOR = 0.5
"""...if it also reaches this fraction of the norm of the run's first recorded steps (the
median of the first ``MIN_HISTORY``): near convergence the norm is small and noisy, and a
jump that stays below where training began is not a dangerous update."""

SPIKE_MATERIAL = 0.05
"""A loss spike must also rise this fraction of the loss of the run's first recorded steps
above its baseline: a converged loss near 0 that doubles has not spiked."""

EPS_FRAC = 0.5
"""Adam's ε at or above √v̂ for more than this fraction of a layer's entries: ε, not the
gradient, sets the update there."""


@dataclass
class Spike:
    """A loss spike: the step, the loss and its baseline."""

    step: int
    loss: float
    baseline: float
    band: float  # the allowed rise above the baseline
    recovered: int | None = None  # first later step back within the band, if any


@dataclass
class Onset:
    """Where and when a precursor began.

    Attributes:
        kind: the rule's kind ("attention_logit_growth", ...).
        step: the first step at which the condition held.
        layers: the layers where it began, in order of onset ("" for run-level statistics).
        steps: the onset step of each of ``layers``.
        evidence: the numbers behind it.
    """

    kind: str
    step: int
    layers: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)


def _robust(history: np.ndarray) -> tuple[float, float]:
    med = float(np.median(history))
    mad = float(np.median(np.abs(history - med)))
    return med, 1.4826 * mad


def loss_spikes(view: RunView) -> list[Spike]:
    """Every loss spike of a training run, in order (see the module docstring)."""
    return view.memo("loss_spikes", _loss_spikes)


def _loss_spikes(view: RunView) -> list[Spike]:
    if view.is_checkup:
        return []
    st, v = finite_loss(view)
    raw = view.loss.to_numpy(dtype=np.float64)
    start = float(np.median(v[:MIN_HISTORY])) if len(v) else 0.0
    position = {int(s): k for k, s in enumerate(view.loss.index)}
    out: list[Spike] = []
    i = MIN_HISTORY
    while i < len(v):
        med, sigma = _robust(v[max(0, i - WINDOW) : i])
        band = max(SPIKE_SIGMAS * sigma, SPIKE_REL * abs(med), SPIKE_MATERIAL * abs(start))
        if v[i] > med + band:
            k = position[st[i]] + 1  # the next recorded loss confirms it (or not yet)
            if k >= len(raw) or (math.isfinite(raw[k]) and raw[k] <= med + band):
                i += 1  # one hard batch, or the last step: not (yet) a spike
                continue
            back = next((j for j in range(i + 1, len(v)) if v[j] <= med + band), None)
            out.append(Spike(st[i], float(v[i]), med, band,
                             st[back] if back is not None else None))
            # the next spike is judged once the baseline window has left this one
            i = (back if back is not None else len(v)) + MIN_HISTORY
            continue
        i += 1
    return out


def first_spike_after(view: RunView, step: int) -> Spike | None:
    """The first loss spike at or after ``step``."""
    return next((s for s in loss_spikes(view) if s.step >= step), None)


def lasting(view: RunView, spike: Spike) -> bool:
    """Whether the run has not come back from ``spike`` for good (see ``loss_spike``)."""
    return spike.recovered is None or end_level(view) > spike.baseline + spike.band


def end_level(view: RunView) -> float:
    """The loss at the end of the run: the median of its last recorded tenth (3 to WINDOW)."""
    _, v = finite_loss(view)
    n = min(WINDOW, max(3, len(v) // 10))
    return float(np.median(v[-n:])) if len(v) else float("nan")


def total_grad_norm(view: RunView) -> tuple[list[int], np.ndarray]:
    """(steps, √Σ grad_norm²) over the layers, at the recorded steps with a finite value."""
    gn = view.wide("grad_norm")
    if gn.empty:
        return [], np.zeros(0)
    arr = gn.to_numpy(dtype=np.float64)
    fin = np.isfinite(arr)
    total = np.sqrt(np.sum(np.where(fin, arr, 0.0) ** 2, axis=1))
    ok = fin.all(axis=1)
    return [int(s) for s, o in zip(gn.index, ok, strict=True) if o], total[ok]


def grad_spikes(view: RunView) -> list[tuple[int, float, float]]:
    """(step, total gradient norm, trailing median) of every gradient spike."""
    return view.memo("grad_spikes", _grad_spikes)


def _grad_spikes(view: RunView) -> list[tuple[int, float, float]]:
    if view.is_checkup:
        return []
    steps, g = total_grad_norm(view)
    out = []
    floor = GRAD_FLOOR * float(np.median(g[:MIN_HISTORY])) if len(g) else 0.0
    for i in range(MIN_HISTORY, len(g)):
        med = float(np.median(g[max(0, i - WINDOW) : i]))
        if med > 0 and g[i] > GRAD_SPIKE * med and g[i] >= floor:
            out.append((steps[i], float(g[i]), med))
    return out


def leading_layers(view: RunView, step: int) -> list[str]:
    """The layers whose gradient norm grew most at ``step`` against their trailing median."""
    gn = view.wide("grad_norm")
    if gn.empty or step not in gn.index:
        return []
    i = list(gn.index).index(step)
    base = gn.iloc[max(0, i - WINDOW) : i].median(axis=0)
    ratio = (gn.iloc[i] / base).replace([float("inf")], float("nan")).dropna()
    return [str(c) for c in ratio.sort_values(ascending=False).index[:3]]


def early(values: np.ndarray, n: int = 3) -> float:
    """The smallest of the first ``n`` finite values (NaN when there is none)."""
    fin = values[np.isfinite(values)]
    return float(np.min(fin[:n])) if fin.size else float("nan")


def attention_onset(view: RunView) -> Onset | None:
    """The growth of attention logits, where it began (see :data:`ATTN_LOGIT_HIGH`)."""
    return view.memo("attention_onset", _attention_onset)


def _attention_onset(view: RunView) -> Onset | None:
    if view.is_checkup:
        return None
    wide = view.wide("attn_logit_max")
    if wide.empty:
        return None
    steps = [int(s) for s in wide.index]
    ent = view.wide("attn_entropy_min").reindex(index=wide.index, columns=wide.columns)
    found = []
    for col in wide.columns:
        a = wide[col].to_numpy(dtype=np.float64)
        base = early(a)
        if not np.isfinite(base):
            continue
        hot = np.isfinite(a) & (a > ATTN_LOGIT_HIGH) & (a > ATTN_GROWTH * max(base, 1e-3))
        if hot.any():
            i = int(np.argmax(hot))
            e = ent[col].to_numpy(dtype=np.float64)
            found.append((steps[i], -a[i] / max(base, 1e-3), str(col), a[i], base,
                          early(e), e[i], float(np.nanmax(a))))
    if not found:
        return None
    found.sort()
    first = found[0]
    return Onset(
        "attention_logit_growth",
        first[0],
        [f[2] for f in found],
        [f[0] for f in found],
        {
            "attn_logit_max": {f[2]: float(f[3]) for f in found},
            "attn_logit_max_early": {f[2]: float(f[4]) for f in found},
            "attn_logit_max_largest": {f[2]: float(f[7]) for f in found},
            "attn_entropy_min_early": {f[2]: float(f[5]) for f in found},
            "attn_entropy_min_at_onset": {f[2]: float(f[6]) for f in found},
            "threshold": ATTN_LOGIT_HIGH,
            "growth_threshold": ATTN_GROWTH,
        },
    )


def logit_onset(view: RunView) -> Onset | None:
    """The drift of the output logits' log-partition (see :data:`LSE_DRIFT`)."""
    return view.memo("logit_onset", _logit_onset)


def _logit_onset(view: RunView) -> Onset | None:
    if view.is_checkup:
        return None
    df = view.run.stats
    lse = df[(df["stat"] == "logsumexp_mean") & (df["layer"] == "")]
    if len(lse) < 4:
        return None
    lse = lse.drop_duplicates("step", keep="last").set_index("step")["value"].sort_index()
    v = lse.to_numpy(dtype=np.float64)
    base = early(v, 1)
    drift = np.abs(v - base)
    hot = np.isfinite(v) & (drift > LSE_DRIFT)
    if not hot.any():
        return None
    i = int(np.argmax(hot))
    mx = df[(df["stat"] == "logit_max") & (df["layer"] == "")].drop_duplicates("step")
    mx = mx.set_index("step")["value"].sort_index()
    return Onset(
        "output_logit_divergence",
        int(lse.index[i]),
        [""],
        [int(lse.index[i])],
        {
            "logsumexp_mean_early": base,
            "logsumexp_mean_at_onset": float(v[i]),
            "logsumexp_mean_last": float(v[-1]),
            "logit_max_at_onset": float(mx.get(lse.index[i], float("nan"))),
            "drift_threshold": LSE_DRIFT,
        },
    )


def lead_phrase(view: RunView, step: int) -> tuple[str, int | None, Spike | None]:
    """How far a precursor seen at ``step`` came before the loss spike that followed it.

    Returns:
        (phrase, lead time in steps or None, the spike or None): "62 steps before the loss
        spike at step 200", "at the step of the loss spike", or "no loss spike has followed
        (by step 299)".
    """
    spike = first_spike_after(view, step)
    if spike is None:
        last = view.loss.index.max() if len(view.loss) else step
        earlier = [s for s in loss_spikes(view) if s.step < step]
        if earlier:
            n = step - earlier[0].step
            return (f"{n} step{'s' if n != 1 else ''} after the loss spike at step "
                    f"{earlier[0].step}", -n, earlier[0])
        return f"no loss spike has followed (by step {int(last)})", None, None
    lead = spike.step - step
    if lead == 0:
        return f"at the step of the loss spike ({spike.step})", 0, spike
    return f"{lead} step{'s' if lead != 1 else ''} before the loss spike at step {spike.step}", \
        lead, spike
