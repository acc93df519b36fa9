"""The ``xiong2020`` experiment's figures.

Gradients at initialisation (measured, and the theory's line beside its measurement) and
the training losses of the 12-layer arms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradwatch.experiments import base
from gradwatch.experiments.seeds import SeedRun, align, band

ARCHS = (("post-LN", "-", "o"), ("pre-LN", "--", "s"))


def plot(out: Path, runs: list[SeedRun], cfg: Any) -> list[Path]:
    """Draw the two figures from every seed's numbers (median and range); return their paths."""
    from gradwatch.experiments.xiong2020 import ARMS

    paths: list[Path] = []
    theory = all("theory" in r.numbers for r in runs)
    fig, axes = base.new_figure(1, 2 if theory else 1, (10.4 if theory else 5.6, 3.6))
    ax = axes[0] if theory else axes
    for j, depth in enumerate(cfg.probe_depths):
        for arch, style, marker in ARCHS:
            gs = [r.numbers["init"].get(f"{arch}-L{depth}", {}).get("ffn_grad") for r in runs]
            if all(gs):
                band(ax, range(1, len(gs[0]) + 1), gs, f"C{j}", f"{arch}, L = {depth}",
                     ls=style, marker=marker, ms=3)  # fmt: skip
    ax.set(
        title="‖∂L/∂W_FFN2‖ at init (nn.TransformerEncoder: layers start identical)",
        xlabel="layer (1 = input side)",
        ylabel="gradient norm",
        yscale="log",
    )
    ax.title.set_fontsize(7)
    ax.legend(fontsize=5, ncol=2)
    if theory:
        ax = axes[1]
        draws = next(iter(runs[0].numbers["theory"].values()))["draws"]
        for j, depth in enumerate(cfg.probe_depths):
            for arch, style, marker in ARCHS:
                lines = [r.numbers["theory"].get(f"{arch}-L{depth}", {}) for r in runs]
                if not all(ln.get("measured") for ln in lines):
                    continue
                x = range(1, len(lines[0]["measured"]) + 1)
                band(ax, x, [ln["measured"] for ln in lines], f"C{j}",
                     f"{arch}, L = {depth}: measured", ls="none", marker=marker, ms=3)  # fmt: skip
                band(ax, x, [ln["predicted"] for ln in lines], f"C{j}",
                     f"{arch}, L = {depth}: gw.theory.predict", ls=style, lw=1)  # fmt: skip
        ax.set(
            title=f"independent layers: measured (markers, geometric mean of {draws} draws), "
            "gw.theory.predict (lines)",
            xlabel="layer (1 = input side)",
            ylabel="gradient norm",
            yscale="log",
        )
        ax.title.set_fontsize(7)
        ax.legend(fontsize=4, ncol=2)
    paths += base.save_figure(fig, out, "grad_at_init")

    fig, ax = base.new_figure(1, 1, (5.6, 3.4))
    chance = runs[0].numbers["chance_loss"]
    for j, arm in enumerate(ARMS):
        curves = [r.numbers["runs"].get(arm) for r in runs]
        if all(curves):
            x, ys = align([(c["curve_steps"], c["curve_loss"]) for c in curves])
            band(ax, x, ys, f"C{j + 3}", arm, lw=1)
    ax.axhline(chance, color="grey", ls=":", label="ln 15 (chance)")
    ax.set(
        title=f"{cfg.train_depth} layers, Adam lr {cfg.lr:g}: training loss",
        xlabel="step",
        ylabel="cross-entropy per token",
        ylim=(0, 1.3 * chance),
    )
    ax.legend(fontsize=6)
    paths += base.save_figure(fig, out, "loss")
    return paths
