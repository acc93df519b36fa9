"""The figure of the criticality experiment: the phase diagram over (σw², depth).

How to read it: see :mod:`gradwatch.experiments.criticality`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradwatch.experiments import base
from gradwatch.experiments.seeds import SeedRun, median_numbers


def plot(
    out: Path, runs: list[SeedRun], cfg: Any = None, slope_min_depth: float = 20
) -> list[Path]:
    """Draw the phase diagram from every seed's numbers; return the paths of the figure files.

    The heat map shows the median test accuracy over the seeds; measured slopes (every
    seed's) are drawn for depths ≥ ``slope_min_depth`` (those the claim uses).
    """
    from gradwatch.experiments import gw

    numbers = runs[0].numbers  # the grid and the theory: the same in every seed
    sw2 = np.asarray(numbers["sigma_w2s"], dtype=float)
    depths = np.asarray(numbers["depths"], dtype=float)
    acc = median_numbers(runs, lambda n: n["accuracy"])
    n_seeds = len(runs)
    fig, (ax, ax2) = base.new_figure(1, 2, (10.0, 4.0), width_ratios=(1.4, 1.0))

    # left: accuracy heat map, cells centred on the grid points
    x_edges = edges(sw2, log=False)
    y_edges = edges(depths, log=True)
    mesh = ax.pcolormesh(x_edges, y_edges, acc.T, cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(mesh, ax=ax, label="test accuracy")
    if acc.size <= 120:
        for i, s in enumerate(sw2):
            for j, d in enumerate(depths):
                v = acc[i, j]
                ax.text(s, d, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if v > 0.6 else "white")  # fmt: skip
    fine = np.linspace(x_edges[0], x_edges[-1], 400)
    limit = gw.theory.trainable_depth(numbers["activation"], fine, numbers["sigma_b2"])
    ax.plot(fine, np.minimum(limit, 1e6), color="white", lw=2, label="6 ξ_c (theory)")
    ax.axvline(numbers["critical_sigma_w2"], color="white", ls="--", lw=1, label="critical σw²")
    ax.set(
        xlim=(x_edges[0], x_edges[-1]),
        ylim=(y_edges[0], y_edges[-1]),
        yscale="log",
        xlabel="σw²",
        ylabel="depth (hidden layers)",
        title=f"tanh, σb² = {numbers['sigma_b2']:g}: accuracy after short SGD"
        + (f"\n(median of {n_seeds} seeds)" if n_seeds > 1 else ""),
    )
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7,
        facecolor="0.35", labelcolor="white",
    )  # fmt: skip

    # right: measured gradient growth per layer at init vs ½ ln χ1
    for j, d in enumerate(depths):
        if d >= slope_min_depth:
            slopes = np.asarray([np.asarray(r.numbers["backprop_slope"], dtype=float)[:, j]
                                 for r in runs])  # fmt: skip
            ax2.plot(np.tile(sw2, len(runs)), slopes.ravel(), "o", ms=3, alpha=0.6,
                     color=f"C{j}", label=f"measured, L = {d:g}")  # fmt: skip
    chi1 = gw.theory.chi1(numbers["activation"], fine, numbers["sigma_b2"])
    ax2.plot(fine, 0.5 * np.log(chi1), "k-", label="½ ln χ1 (theory)")
    ax2.axhline(0.0, color="0.6", lw=0.8)
    ax2.axvline(numbers["critical_sigma_w2"], color="0.6", ls="--", lw=0.8)
    ax2.set(
        xlabel="σw²",
        ylabel="d ln‖δ‖ per layer toward the input",
        title="back-propagated gradient at init" + (", every seed" if n_seeds > 1 else ""),
    )
    ax2.legend(fontsize=6)
    return base.save_figure(fig, out, "phase_diagram")


def edges(centres: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges halfway between grid points (geometrically when ``log``), all > 0."""
    c = np.log(centres) if log else centres
    if len(c) == 1:
        e = np.array([c[0] - 0.5, c[0] + 0.5])
    else:
        mid = (c[1:] + c[:-1]) / 2
        e = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    return np.exp(e) if log else np.maximum(e, centres[0] / 2)  # σw² stays > 0
