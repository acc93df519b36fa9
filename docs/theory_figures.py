"""The figures of docs/explain/theory.md: gw.theory.predict against Monte Carlo.

Called by ``docs/make_figures.py`` (``--only theory``); the numbers come from
``benchmarks/theory_mc``: the recorded results of every configuration
(``benchmarks/results/theory_mc.json``, written by ``python benchmarks/theory_mc.py --json``,
10 minutes on 2 cores), or in ``--quick`` mode a fresh check of two small ones with two seeds.
``scatter`` and ``profiles`` draw from the rows ``results(quick)`` returns.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Configurations drawn as per-layer profiles (full mode), and in quick mode.
PROFILES = (
    "residual_relu_20_alpha_1", "bn_residual_relu_20", "encoder_pre_ln_24",
    "encoder_post_ln_24", "deepnorm_24", "gpt2_12", "resnet34", "resnet50",
    "preact_resnet18_imagenet_stem", "encoder_pre_ln_24_stock", "encoder_post_ln_6_stock",
    "residual_relu_12_copies",
)
QUICK = ("residual_tanh_12_alpha_isqrtL", "encoder_pre_ln_2")


#: The recorded full check (``python benchmarks/theory_mc.py --json ...``): the figures draw
#: the same numbers as the page's table.
RECORDED = ROOT / "benchmarks" / "results" / "theory_mc.json"


def results(quick: bool) -> list[dict]:
    """Predicted and measured per layer, one dict per configuration (benchmarks/theory_mc).

    Quick mode runs two small configurations; full mode reads :data:`RECORDED`.
    """
    from benchmarks.theory_mc import BY_NAME

    if quick:
        return [check_config_quick(BY_NAME[n]) for n in QUICK]
    if not RECORDED.exists():
        raise FileNotFoundError(
            f"{RECORDED} is missing: run python benchmarks/theory_mc.py --json {RECORDED}"
        )
    import json

    rows = json.loads(RECORDED.read_text())["configs"]
    for r in rows:
        for layer in r["layers"]:
            for key in ("predicted", "measured", "sd", "tolerance"):
                layer[key] = float(layer[key])
    # recurrent nets' rows are time steps (down to −55 decades): their own table, not these axes
    return [r for r in rows if r["expect"] == "predicted" and r["family"] != "recurrent"]


def check_config_quick(config) -> dict:
    """One configuration checked with two seeds."""
    from benchmarks.theory_mc import check_config

    return check_config(config, seeds=2)


def _figure(ncols: int, size: tuple[float, float]):
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False).ravel())


def scatter(rows: list[dict]) -> Figure:
    """Every layer of every configuration: predicted against measured log10 attenuation."""
    fig, (ax,) = _figure(1, (5.6, 5.0))
    families = sorted({r["family"] for r in rows})
    lo, hi = math.inf, -math.inf
    for j, fam in enumerate(families):
        pts = [
            (x["measured"], x["predicted"])
            for r in rows if r["family"] == fam for x in r["layers"]
            if math.isfinite(x["measured"]) and math.isfinite(x["predicted"])
        ]
        if not pts:
            continue
        m, p = np.array(pts).T
        lo, hi = min(lo, m.min(), p.min()), max(hi, m.max(), p.max())
        ax.scatter(m, p, s=6, alpha=0.6, color=f"C{j}", label=fam)
    line = np.linspace(lo - 0.5, hi + 0.5, 50)
    ax.plot(line, line, color="k", lw=0.8)
    tol = np.maximum(0.1, 0.05 * np.abs(line))
    ax.fill_between(line, line - tol, line + tol, color="grey", alpha=0.25, lw=0,
                    label="tolerance: max(0.1, 5% of the log)")
    ax.set(
        xlabel="measured log10 ‖δ_layer‖²/‖δ_last‖² (Monte Carlo, geometric mean)",
        ylabel="predicted log10 (gw.theory.predict)",
        title=f"{sum(len(r['layers']) for r in rows)} layers of {len(rows)} configurations",
    )
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def profiles(rows: list[dict], quick: bool) -> Figure:
    """Per-layer profiles, measured (dots, ± one standard deviation) and predicted (line)."""
    names = QUICK if quick else PROFILES
    chosen = [r for n in names for r in rows if r["name"] == n]
    ncols = min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 2.9 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, r in zip(axes, chosen, strict=False):
        lay = [
            x for x in r["layers"] if math.isfinite(x["measured"]) and math.isfinite(x["predicted"])
        ]
        k = np.arange(len(lay))
        m = np.array([x["measured"] for x in lay])
        sd = np.array([x["sd"] for x in lay])
        ax.errorbar(k, m, yerr=sd, fmt="o", ms=2, lw=0.6, color="C0", label="measured")
        ax.plot(k, [x["predicted"] for x in lay], "-", lw=1, color="C3", label="predicted")
        ax.set(title=r["name"], xlabel="layer (input side first)", ylabel="log10 attenuation")
        ax.grid(alpha=0.3)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return fig
