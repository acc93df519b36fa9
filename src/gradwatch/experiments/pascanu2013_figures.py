"""The figure of the pascanu2013 experiment (four panels).

How to read it: see :mod:`gradwatch.experiments.pascanu2013`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradwatch.experiments import base
from gradwatch.experiments.seeds import SeedRun, band, bars


def plot(
    out: Path,
    runs: list[SeedRun],
    cfg: Any = None,
    cells: tuple[str, ...] = ("rnn", "lstm", "gru"),
    adding_baseline: float = 1 / 6,
) -> list[Path]:
    """Draw the four-panel figure from every seed's numbers; return the paths of the files.

    Curves are the median over the seeds with the min–max range as a band, bars the median
    with the range as an error bar; the sweep's dots and the clipping runs are every seed's.

    Args:
        out: the experiment's output folder.
        runs: each seed's numbers.
        cfg: the config (unused: everything drawn is in the numbers).
        cells: the recurrent cells, in drawing order.
        adding_baseline: the adding problem's MSE of always predicting the mean sum.
    """
    fig, axes = base.new_figure(2, 2, (10.0, 7.0))
    (a, b), (c, d) = axes
    numbers = runs[0].numbers
    longest = max(numbers["lengths"])

    # a: temporal gradient flow at the longest length
    for i, cell in enumerate(cells):
        flows = [r.numbers["flow"].get(f"{cell}/T{longest}") for r in runs]
        if any(f is None for f in flows):
            continue
        gs = [np.asarray(f["grad_norm"], dtype=float) for f in flows]
        band(a, np.arange(1, len(gs[0]) + 1), [g / g[-1] for g in gs], f"C{i}", cell)
    a.set(
        xlabel="t (input position)",
        ylabel="‖∂L/∂x_t‖ / ‖∂L/∂x_T‖",
        title=f"gradient through time at init, T = {longest}",
        yscale="log",
    )
    a.legend(fontsize=6)

    # b: measured decay rate vs σ_max, with the bound ln(γ σ_max)
    sweep = [p for r in runs for p in r.numbers["sweep"]]
    s = np.asarray([p["sigma_max"] for p in sweep], dtype=float)
    slope = np.asarray([p["decay_slope"] for p in sweep], dtype=float)
    who = f"every seed, {len(runs)}" if len(runs) > 1 else "vanilla RNN"
    b.plot(s, slope, "o", alpha=0.7, label=f"measured ({who}, T = {longest})")
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

    # c: the exploding RNN without and with clipping (one thin line per seed)
    clip = numbers["clipping"]
    for key, color in (("unclipped", "C3"), ("clipped", "C2")):
        for k, run in enumerate(runs):
            r = run.numbers["clipping"].get(key)
            if not r:
                continue
            steps = np.asarray(r["steps"], dtype=float)
            for series, style in (("loss", "-"), ("grad_norm", ":")):
                v = np.asarray([np.nan if x is None else x for x in r[series]], dtype=float)
                ok = np.isfinite(v)
                label = f"{key}: {series}" if k == 0 else None
                c.plot(steps[ok], v[ok], style, color=color, lw=0.8, alpha=0.8, label=label)
                if not ok.all():  # where it went non-finite
                    first = int(np.argmin(ok))
                    top = np.nanmax(v[ok]) if ok.any() else 1.0
                    c.plot(steps[first], top, "x", color=color, ms=8)
    c.set_yscale("log")
    c.set(
        xlabel="step",
        ylabel="value (log)",
        title=f"σ_max = {clip.get('sigma_max')}, SGD: clipping",
    )
    c.legend(fontsize=7)

    # d: test MSE after training, adding problem (median over seeds, min–max range)
    train = {k: v for k, v in numbers.get("training", {}).items() if v["task"] == "adding"}
    lengths = sorted({v["length"] for v in train.values()})
    width = 0.8 / len(cells)
    for i, cell in enumerate(cells):
        vals = [
            [r.numbers.get("training", {}).get(f"adding/T{n}/{cell}", {}).get("final", np.nan)
             for n in lengths]
            for r in runs
        ]  # fmt: skip
        bars(d, np.arange(len(lengths)) + i * width, vals, width, color=f"C{i}", label=cell)
    d.axhline(adding_baseline, color="k", ls="--", lw=1, label="predict the mean")
    d.set_xticks(np.arange(len(lengths)) + width * (len(cells) - 1) / 2)
    d.set_xticklabels([f"T = {n}" for n in lengths])
    d.set(ylabel="test MSE (log)", yscale="log", title="adding problem after training")
    d.legend(fontsize=7)
    return base.save_figure(fig, out, "overview")
