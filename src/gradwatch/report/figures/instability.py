"""Transformer instabilities: attention and output-logit panels, Adam's ε, the spike timeline.

Each figure reads a run alone; the report shows one only when the run holds what it draws
(:func:`applies`): attention statistics, output-logit statistics, Adam's statistics, a loss
spike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradwatch.report._data import as_run, findings_and_verdict, finite_positive, recorded, wide
from gradwatch.report.figures._common import ALARM, layer_colours, new_figure, not_recorded, short

#: Precursor colour of the spike timeline.
EARLY = "#ff7f0e"


def _thresholds() -> tuple[float, float]:
    from gradwatch.diagnose import ATTN_LOGIT_HIGH, LSE_DRIFT

    return ATTN_LOGIT_HIGH, LSE_DRIFT


def _run_series(run: Any, stat: str) -> tuple[np.ndarray, np.ndarray]:
    df = run.stats[(run.stats["stat"] == stat) & (run.stats["layer"] == "")]
    df = df.drop_duplicates("step", keep="last").sort_values("step")
    return df["step"].to_numpy(), df["value"].to_numpy(dtype=float)


def _per_layer(ax: Any, table: Any, log: bool) -> None:
    layers = list(table.columns)
    for layer, colour in zip(layers, layer_colours(len(layers)), strict=True):
        v = table[layer].to_numpy(dtype=float)
        ax.plot(table.index.to_numpy(), finite_positive(v) if log else v, lw=1.3, marker=".",
                ms=3, color=colour, label=short(layer))
    if log:
        ax.set_yscale("log")
    if len(layers) <= 12:
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)


def attention(run: Any) -> Figure:
    """Attention logits and entropies per attention layer over training.

    How to read it: left, the largest attention logit q·kᵀ/√d of each attention layer
    (log scale; the dotted line is gradwatch's threshold, 100). Stable training keeps it near
    10; a layer whose line climbs by orders of magnitude is *attention logit growth*, which
    precedes loss spikes and divergence (Wortsman et al. 2023) and which qk-layernorm
    prevents. Right, each layer's smallest mean attention entropy over its heads, in nats: a
    fall toward 0 means a head attends to a single key (entropy collapse, Zhai et al. 2023).
    A head that learnt to copy one position is also sharp; read it with the left panel.

    Args:
        run: a Run, a run directory path, or a Checkup.

    Returns:
        a matplotlib Figure with two panels ("not recorded" when the run has no attention
        statistics: the model calls neither ``F.scaled_dot_product_attention`` nor
        ``nn.MultiheadAttention``).
    """
    run = as_run(run)
    fig, (left, right) = new_figure(1, 2, size=(12.0, 4.0))
    left.set_title("largest attention logit per layer", fontsize=10)
    right.set_title("smallest head entropy per layer (nats)", fontsize=10)
    logits_t, ent_t = wide(run, "attn_logit_max"), wide(run, "attn_entropy_min")
    if logits_t.empty:
        for ax in (left, right):
            not_recorded(ax, "attn_logit_max", "the model has no attention layer gradwatch sees")
        return fig
    _per_layer(left, logits_t, log=True)
    left.axhline(_thresholds()[0], ls=":", color=ALARM, lw=1, label="threshold")
    left.set_ylabel("max q·kᵀ/√d")
    if not ent_t.empty:
        _per_layer(right, ent_t, log=False)
        right.set_ylim(bottom=0)
        right.set_ylabel("entropy (nats)")
    fig.suptitle("Attention", fontsize=11)
    return fig


def logits(run: Any) -> Figure:
    """The model's output logits over training: their largest value and their mean log Z.

    How to read it: left, the largest output logit. Right, ``logsumexp_mean``, the mean over
    the batch of log Z = logsumexp of the logits over the classes, with a band of ±10 nats
    (gradwatch's threshold) around its first recorded value. Cross-entropy leaves the level of the
    logits free; a log Z that drifts out of the band is *output-logit divergence*, which
    z-loss (a penalty 1e-4 · (log Z)², pulling log Z toward the dashed 0) prevents
    (Wortsman et al. 2023; PaLM).

    Args:
        run: a Run, a run directory path, or a Checkup.

    Returns:
        a matplotlib Figure with two panels ("not recorded" when the run has no logit
        statistics).
    """
    run = as_run(run)
    fig, (left, right) = new_figure(1, 2, size=(12.0, 3.8))
    left.set_title("largest output logit", fontsize=10)
    right.set_title("mean log Z of the output logits", fontsize=10)
    s_max, v_max = _run_series(run, "logit_max")
    s_lse, v_lse = _run_series(run, "logsumexp_mean")
    if not len(s_lse):
        for ax in (left, right):
            not_recorded(ax, "logsumexp_mean", "the model's output is not a logits tensor")
        return fig
    left.plot(s_max, v_max, lw=1.3, marker=".", ms=3)
    right.plot(s_lse, v_lse, lw=1.3, marker=".", ms=3, label="logsumexp_mean")
    fin = v_lse[np.isfinite(v_lse)]
    if fin.size:
        start = float(fin[0])
        drift = _thresholds()[1]
        right.axhspan(start - drift, start + drift, color="0.9", zorder=0,
                      label=f"first value ± {drift:g}")
    right.axhline(0.0, ls="--", color="0.4", lw=1, label="0 (z-loss target)")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Output logits", fontsize=11)
    return fig


def adam(run: Any) -> Figure:
    """Adam's update per layer: its RMS over the learning rate, and ε's share.

    How to read it: left, ``update_rms``, the RMS of m̂/(√v̂+ε) (the applied update divided
    by the learning rate; about 1 while gradients are steady). Right, ``eps_frac``, the
    fraction of each layer's entries where ε ≥ √v̂: above 0.5 (dotted) ε, not the gradient,
    sets the update there and the layer slows down; lower ε (1e-15, Wortsman et al. 2023).

    Args:
        run: a Run, a run directory path, or a Checkup.

    Returns:
        a matplotlib Figure with two panels ("not recorded" without an Adam optimizer).
    """
    run = as_run(run)
    fig, (left, right) = new_figure(1, 2, size=(12.0, 3.8))
    left.set_title("Adam update RMS / lr per layer", fontsize=10)
    right.set_title("fraction of entries where ε ≥ √v̂", fontsize=10)
    rms, frac = wide(run, "update_rms"), wide(run, "eps_frac")
    if rms.empty:
        for ax in (left, right):
            not_recorded(ax, "update_rms", "watch with optimizer= an Adam or AdamW optimizer")
        return fig
    _per_layer(left, rms, log=True)
    _per_layer(right, frac, log=False)
    right.axhline(0.5, ls=":", color=ALARM, lw=1)
    right.set_ylim(-0.02, 1.02)
    fig.suptitle("Adam", fontsize=11)
    return fig


def spike_timeline(run: Any) -> Figure:
    """The loss spike and what came before it: loss, gradient norm, per-layer precursors.

    How to read it: three panels on one step axis. Top, the loss; the red line marks the
    first loss spike gradwatch found (a jump above the median of the steps before it by more
    than their noise), the orange line the first precursor, and the text gives the lead time
    between them. Middle, the total gradient norm (log scale): a spike there (4× its recent
    median) often comes with or just before the loss spike. Bottom, each attention layer's
    largest logit relative to its early value (log scale): the layer whose line rises first
    is where the growth began.

    Args:
        run: a Run, a run directory path, or a Checkup.

    Returns:
        a matplotlib Figure with three panels; without a loss spike the lines are drawn
        without the markers, and the title says so.
    """
    run = as_run(run)
    fig, (top, mid, low) = new_figure(3, 1, size=(9.0, 8.0))
    loss_s = run.loss()
    if loss_s.empty:
        not_recorded(top, "loss", "pass it with mon.step(loss=loss)")
        return fig
    findings, _, _ = findings_and_verdict(run)
    spike = next((f for f in findings if f.kind == "loss_spike"), None)
    top.plot(loss_s.index.to_numpy(), loss_s.to_numpy(dtype=float), lw=1.2)
    top.set_ylabel("loss")
    gn = wide(run, "grad_norm")
    if not gn.empty:
        total = np.sqrt(np.nansum(gn.to_numpy(dtype=float) ** 2, axis=1))
        mid.plot(gn.index.to_numpy(), finite_positive(total), lw=1.2, color="0.25")
        mid.set_yscale("log")
    mid.set_ylabel("total grad norm")
    att = wide(run, "attn_logit_max")
    if not att.empty:
        rel = att / att.iloc[: min(3, len(att))].min(axis=0)
        _per_layer(low, rel, log=True)
        low.set_ylabel("attention logit / early value")
    else:
        not_recorded(low, "attn_logit_max")
    if spike is not None:
        ev = spike.evidence
        for ax in (top, mid, low):
            ax.axvline(ev["spike_step"], color=ALARM, lw=1.2)
            if ev.get("first_precursor_step") is not None:
                ax.axvline(ev["first_precursor_step"], color=EARLY, lw=1.2, ls="--")
        first = ev.get("first_precursor") or "none"
        title = (f"loss spike at step {ev['spike_step']}; first precursor ({first}) "
                 f"{ev['lead_time']} steps earlier")
    else:
        title = "no loss spike found"
    for ax in (top, mid):
        ax.grid(True, alpha=0.3)
    top.set_title(title, fontsize=10)
    fig.suptitle("Spike timeline", fontsize=11)
    return fig


def applies(name: str, run: Any) -> bool:
    """Whether the figure ``name`` of this module has anything to draw for ``run``."""
    if name == "attention":
        return recorded(run, "attn_logit_max")
    if name == "logits":  # a classifier's logits are recorded too: drawn for transformers
        if not recorded(run, "logsumexp_mean"):
            return False
        if recorded(run, "attn_logit_max"):
            return True
        findings, _, _ = findings_and_verdict(run)
        return any(f.kind == "output_logit_divergence" for f in findings)
    if name == "adam":
        return recorded(run, "update_rms")
    if name == "spike_timeline":
        findings, _, _ = findings_and_verdict(run)
        return any(f.kind == "loss_spike" for f in findings)
    return True
