"""The figure of the pascanu2013 experiment (four panels).

How to read it: see :mod:`gradwatch.experiments.pascanu2013`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradwatch.experiments import base


def plot(
    out: Path,
    numbers: dict[str, Any],
    cfg: Any = None,
    cells: tuple[str, ...] = ("rnn", "lstm", "gru"),
    adding_baseline: float = 1 / 6,
) -> list[Path]:
    """Draw the four-panel figure from the numbers; return the paths of the figure files.

    Args:
        out: the experiment's output folder.
        numbers: the measured numbers.
        cfg: the config (unused: everything drawn is in ``numbers``).
        cells: the recurrent cells, in drawing order.
        adding_baseline: the adding problem's MSE of always predicting the mean sum.
    """
    fig, axes = base.new_figure(2, 2, (10.0, 7.0))
    (a, b), (c, d) = axes
    longest = max(numbers["lengths"])

    # a: temporal gradient flow at the longest length
    for i, cell in enumerate(cells):
        f = numbers["flow"].get(f"{cell}/T{longest}")
        if f is None:
            continue
        g = np.asarray(f["grad_norm"], dtype=float)
        a.semilogy(np.arange(1, len(g) + 1), g / g[-1], color=f"C{i}", label=cell)
    a.set(
        xlabel="t (input position)",
        ylabel="‖∂L/∂x_t‖ / ‖∂L/∂x_T‖",
        title=f"gradient through time at init, T = {longest}",
    )
    a.legend(fontsize=7)

    # b: measured decay rate vs σ_max, with the bound ln(γ σ_max)
    sweep = numbers["sweep"]
    s = np.asarray([p["sigma_max"] for p in sweep], dtype=float)
    slope = np.asarray([p["decay_slope"] for p in sweep], dtype=float)
    b.plot(s, slope, "o", label=f"measured (vanilla RNN, T = {longest})")
    fine = np.linspace(min(s.min(), 0.2), s.max(), 200)
    b.plot(fine, np.log(numbers["gamma"] * fine), "k-", lw=1, label="bound ln(γ σ_max)")
    b.axvspan(fine[0], 1 / numbers["gamma"], color="C0", alpha=0.08, label="vanishing guaranteed")
    b.axhline(0.0, color="0.6", lw=0.8)
    b.set(
        xlabel="σ_max(W_hh)",
        ylabel="d ln‖∂L/∂x_t‖ per step back",
        title="spectral condition",
    )
    b.legend(fontsize=7)

    # c: the exploding RNN without and with clipping
    clip = numbers["clipping"]
    for key, color in (("unclipped", "C3"), ("clipped", "C2")):
        r = clip.get(key)
        if not r:
            continue
        steps = np.asarray(r["steps"], dtype=float)
        for series, style in (("loss", "-"), ("grad_norm", ":")):
            v = np.asarray([np.nan if x is None else x for x in r[series]], dtype=float)
            ok = np.isfinite(v)
            c.semilogy(steps[ok], v[ok], style, color=color, label=f"{key}: {series}")
            if not ok.all():  # where it went non-finite
                first = int(np.argmin(ok))
                c.plot(steps[first], np.nanmax(v[ok]) if ok.any() else 1.0, "x", color=color, ms=9)
    c.set(
        xlabel="step",
        ylabel="value (log)",
        title=f"σ_max = {clip.get('sigma_max')}, SGD: clipping",
    )
    c.legend(fontsize=7)

    # d: test MSE after training, adding problem
    train = {k: v for k, v in numbers.get("training", {}).items() if v["task"] == "adding"}
    lengths = sorted({v["length"] for v in train.values()})
    width = 0.8 / len(cells)
    for i, cell in enumerate(cells):
        vals = [train.get(f"adding/T{n}/{cell}", {}).get("final", np.nan) for n in lengths]
        d.bar(np.arange(len(lengths)) + i * width, vals, width, color=f"C{i}", label=cell)
    d.axhline(adding_baseline, color="k", ls="--", lw=1, label="predict the mean")
    d.set_xticks(np.arange(len(lengths)) + width * (len(cells) - 1) / 2)
    d.set_xticklabels([f"T = {n}" for n in lengths])
    d.set(ylabel="test MSE (log)", yscale="log", title="adding problem after training")
    d.legend(fontsize=7)
    return base.save_figure(fig, out, "overview")
