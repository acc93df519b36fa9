"""Plain vs batch-normalised vs residual deep MLPs (He et al. 2016): depth, gradients, training.

Paper: K. He, X. Zhang, S. Ren and J. Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016 (section 4.1, Figures 1, 4 and 6); with He et al. 2016b, "Identity Mappings in
Deep Residual Networks", for the pre-activation layout used here.

One plain network, three versions, at growing depth (10, 30, 50 Linear layers in quick
mode; up to 100 in full mode), width 128, ReLU, on the scikit-learn digits:

- **plain**: nn.Sequential of Linear + ReLU with the weights nn.Linear draws by default,
  U[-1/√n, 1/√n] (Glorot & Bengio's "standard" init; biases set to 0);
- **plain + BN**: the same with a BatchNorm1d after every hidden Linear
  (``gw.remedies.insert_norm``), as He et al.'s plain baselines;
- **residual**: plain + BN with every [BN, ReLU, Linear(n, n)] run wrapped in x + F(x)
  (``gw.remedies.add_residual`` on the BN net): the pre-activation ResNet block of He et al.
  (2016b). The last Linear of each branch starts at zero, so each block starts as the
  identity. It differs from plain + BN only by the shortcuts, as in the paper's comparison.

All three train with the same SGD (momentum 0.9, minibatches of 64, same learning rate,
same batch order). (A residual net *without* BN was tried first: with this learning rate
its 100-layer version diverged to NaN within 15 steps, which is why ResNets carry BN, or
Fixup's scaling; see docs/experiments.md.)

Expected (and checked):

1. the plain net's back-propagated signal at initialisation shrinks toward the input, and
   the more so the deeper it is (ReLU at n·Var[w] = 1/3: ‖δ‖ × √(1/6) per layer);
2. the residual net's does not: the identity path carries it whatever the depth (its
   branches hold the same BN layers as plain + BN: the shortcuts make the difference);
3. the plain + BN net has no vanishing gradient (``gw.diagnose`` does not say "vanishing"
   for it) — He et al.: "we argue that this optimization difficulty is unlikely to be caused
   by vanishing gradients ... [BN] ensures forward propagated signals to have non-zero
   variances ... backward propagated gradients exhibit healthy norms";
4. yet at the largest depth it trains worse than the residual net, and worse than its own
   shallow version (the "degradation" of deep plain nets).

What this script also shows, beyond the paper: with batch norm the back-propagated signal
*grows* toward the input at initialisation, more with depth (Yang et al. 2019, "A Mean
Field Theory of Batch Normalization", predict gradient explosion at init in deep BN nets,
by about π/(π − 1) per layer in ‖δ‖²); ``gw.diagnose`` may call the deepest BN net
"exploding".

5. Mean-field theory predicts each net's input/output ratio of ‖δ‖ at initialisation from
   its weights (``gw.theory.predict`` on the same batch): the chain recursion for the plain
   net (χ1 = σw²/2 per ReLU layer), Yang et al.'s batch-norm map for plain + BN, and Yang &
   Schoenholz's (2017) residual recursion ‖δ_l‖² = ‖δ_{l+1}‖²(1 + α² χ_branch) for the
   residual net (its branches start at zero: χ_branch = 0, so the stream carries the signal
   unchanged) — within max(:data:`THEORY_DECADES` decade, :data:`THEORY_SHARE` of the log).

Figures (``figures/``): ``backprop_at_init`` (input/output ratio of ‖δ‖ against depth, log
scale, one line per version, dots measured, dashed the theory's prediction) and ``loss``
(training loss curves, one panel per depth).

Run: ``gradwatch experiment residual [--quick]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.experiments import base
from gradwatch.experiments.base import Claim, claim
from gradwatch.experiments.data import digits
from gradwatch.experiments.seeds import SeedRun, align, band
from gradwatch.experiments.training import probe, train_classifier
from gradwatch.jsonable import from_jsonable

NAME = "residual"
CHANCE = math.log(10)
VARIANTS = ("plain", "plain+bn", "residual")


@dataclass(frozen=True)
class Config:
    """Settings of the experiment (full mode); :data:`QUICK` is the quick one."""

    depths: tuple[int, ...] = (10, 30, 50, 100)  # Linear layers
    width: int = 128  # not 64: the digits have 64 inputs, and the first layer must differ
    steps: int = 1000
    lr: float = 0.02
    momentum: float = 0.9
    batch_size: int = 64
    probe_size: int = 500
    every: int = 5
    detail_every: int = 4


QUICK = Config(depths=(10, 30, 50), steps=100)


def build(variant: str, depth: int, width: int, d_in: int = 64, classes: int = 10):
    """The plain net (``depth`` Linear layers, ReLU between), its BN and its ResNet version."""
    from gradwatch.experiments import gw

    layers: list[nn.Module] = []
    for i in range(depth - 1):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.ReLU()]
    plain = nn.Sequential(*layers, nn.Linear(width, classes))
    gw.remedies.standard_init_(plain)  # nn.Linear's own U[-1/√n, 1/√n], biases 0
    if variant == "plain+bn":
        return gw.remedies.insert_norm(plain, kind="batch", after="linear")
    if variant == "residual":
        # [Linear(64, n), Residual(BN, ReLU, Linear(n, n)) × (depth − 2), BN, ReLU, Linear(n, 10)]
        bn = gw.remedies.insert_norm(plain, kind="batch", after="linear")
        return gw.remedies.add_residual(bn, block_size=3, zero_init=True)
    return plain


run = base.runner(__name__)


def measure(cfg: Config, out: Path, seed: int, bar: Any) -> dict[str, Any]:
    """Train and measure every net; return the numbers the claims are computed from."""
    from gradwatch.experiments import gw

    numbers: dict[str, Any] = {"chance_loss": CHANCE, "depths": list(cfg.depths), "runs": {}}
    bar.total(len(cfg.depths) * len(VARIANTS) * cfg.steps)
    x, y = digits("train", seed=seed)  # (1347, 64), standardised
    for depth in cfg.depths:
        for variant in VARIANTS:
            key = f"{depth}-{variant}"
            bar.note(f"{NAME}: {depth} layers, {variant}")
            torch.manual_seed(seed * 1000 + depth)  # the same plain weights in all three
            model = build(variant, depth, cfg.width)
            info = {"experiment": NAME, "depth": depth, "variant": variant}
            tag = key.replace("+", "_")

            # -- 1. gradient flow at initialisation --------------------------------------
            init_dir = probe(
                model,
                x[: cfg.probe_size],
                y[: cfg.probe_size],
                out / base.RUNS / f"{tag}-init",
                info,
            )
            findings = gw.diagnose(init_dir)
            theory = gw.theory.predict(model, inputs=x[: cfg.probe_size])

            # -- 2. train ------------------------------------------------------------------
            train_dir = train_classifier(
                model,
                x,
                y,
                steps=cfg.steps,
                lr=cfg.lr,
                momentum=cfg.momentum,
                batch_size=cfg.batch_size,
                run_dir=out / base.RUNS / tag,
                seed=seed,
                every=cfg.every,
                detail_every=cfg.detail_every,
                config=info,
                on_step=lambda _: bar.advance(),
            )

            # -- 3. numbers, read back from the run directories ----------------------------
            # ‖δ‖ of the first Linear over the output Linear's (BN layers left out: the
            # same weight layers in all three versions)
            at_init = gw.load(init_dir)
            linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
            bp = base.layer_profile(at_init, "backprop_norm")
            att = theory.table.set_index("layer")["attenuation"]
            losses = gw.load(train_dir).loss()
            quarter = max(1, len(losses) // 4)
            numbers["runs"][key] = {
                "depth": depth,
                "variant": variant,
                "backprop_first": bp[linear[0]],
                "backprop_last": bp[linear[-1]],
                "backprop_ratio": bp[linear[0]] / bp[linear[-1]],
                "predicted_backprop_ratio": math.sqrt(att[linear[0]] / att[linear[-1]]),
                "theory_verdict": theory.verdict,
                "findings_at_init": sorted(
                    {f.kind for f in findings if f.severity in ("warning", "error")}
                ),
                "loss_start": float(losses.iloc[0]),
                "loss_end": float(losses.iloc[-quarter:].mean()),  # last quarter's mean
            }
    return numbers


# Thresholds of the claims.
PLAIN_DEEP_BELOW = 1e-3  # the deepest plain net's input/output ratio of ‖δ‖ is below this
RESIDUAL_ABOVE = 0.1  # the residual nets' ratio stays above this at every depth
LOSS_GAP = 0.3  # nats: "trains worse" means a final loss higher by more than this
THEORY_DECADES = 0.5  # predicted and measured ratios of ‖δ‖ agree within this many decades...
THEORY_SHARE = 0.1  # ... or this share of the log10 of the measured ratio, whichever is larger
UNRESOLVED = 1e-35  # a predicted ratio below this is 0 in float32 (‖δ‖ underflows)


def claims(numbers: dict[str, Any]) -> list[Claim]:
    """The paper's claims, computed from the measured numbers (pure: no side effects).

    Args:
        numbers: ``result["numbers"]``: {"chance_loss", "depths", "runs":
            {"<depth>-<variant>": {...}}}.

    Returns:
        the claims, each with its evidence.
    """
    numbers = from_jsonable(numbers)  # a record's "nan", "inf", "-inf" as floats
    runs = numbers["runs"]
    depths = sorted(numbers["depths"])
    deep, shallow = depths[-1], depths[0]
    nan = float("nan")

    def series(variant: str, what: str) -> dict[int, Any]:
        return {d: runs.get(f"{d}-{variant}", {}).get(what, nan) for d in depths}

    out: list[Claim] = []
    plain = series("plain", "backprop_ratio")
    vals = [plain[d] for d in depths]
    out.append(
        claim(
            f"The plain net's back-propagated signal shrinks toward the input, more with depth: "
            f"its input/output ratio of ‖δ‖ falls at every added depth and is < "
            f"{PLAIN_DEEP_BELOW:g} at {deep} layers",
            all(a > b for a, b in zip(vals, vals[1:], strict=False))
            and vals[-1] < PLAIN_DEEP_BELOW,
            ratio_by_depth=plain,
            threshold=PLAIN_DEEP_BELOW,
        )
    )

    res = series("residual", "backprop_ratio")
    out.append(
        claim(
            f"The residual net's does not: its ratio stays > {RESIDUAL_ABOVE:g} at every depth "
            f"and is no smaller at {deep} layers than half its value at {shallow}",
            all(res[d] > RESIDUAL_ABOVE for d in depths) and res[deep] >= 0.5 * res[shallow],
            ratio_by_depth=res,
            threshold=RESIDUAL_ABOVE,
        )
    )

    bn_kinds = series("plain+bn", "findings_at_init")
    bn_ratio = series("plain+bn", "backprop_ratio")
    out.append(
        claim(
            "The plain + BN net has no vanishing gradient: gw.diagnose does not call it "
            "vanishing at any depth (its input/output ratio of ‖δ‖ stays ≥ 0.1)",
            all(isinstance(k, list) and "vanishing" not in k for k in bn_kinds.values())
            and all(r >= 0.1 for r in bn_ratio.values()),
            findings_by_depth=bn_kinds,
            ratio_by_depth=bn_ratio,
        )
    )

    bn_loss, res_loss = series("plain+bn", "loss_end"), series("residual", "loss_end")
    out.append(
        claim(
            f"Yet at {deep} layers the plain + BN net trains worse than the residual net "
            f"(final training loss higher by > {LOSS_GAP} nats, same optimizer and steps)",
            bn_loss[deep] > res_loss[deep] + LOSS_GAP,
            plain_bn_loss=bn_loss,
            residual_loss=res_loss,
            gap=LOSS_GAP,
        )
    )
    out.append(
        claim(
            f"Degradation: the plain + BN net trains worse at {deep} layers than at {shallow} "
            f"(final loss higher by > {LOSS_GAP}), while the residual net at {deep} layers "
            f"still reaches a loss below ln 10 − 1",
            bn_loss[deep] > bn_loss[shallow] + LOSS_GAP
            and res_loss[deep] < numbers["chance_loss"] - 1.0,
            plain_bn_loss=bn_loss,
            residual_loss=res_loss,
        )
    )
    gaps = {}
    for key, r in runs.items():
        m, p = r.get("backprop_ratio", nan), r.get("predicted_backprop_ratio", nan)
        if m == 0 and 0 <= p < UNRESOLVED:  # float32 rounds such a signal to 0: both vanished
            gaps[key] = 0.0
        else:
            ok = m > 0 and p > 0
            gaps[key] = abs(math.log10(p) - math.log10(m)) if ok else nan
    allowed = {
        key: max(THEORY_DECADES, THEORY_SHARE * abs(math.log10(r["backprop_ratio"])))
        if r.get("backprop_ratio", 0) > 0
        else THEORY_DECADES
        for key, r in runs.items()
    }
    out.append(
        claim(
            "Mean-field theory predicts every net's input/output ratio of ‖δ‖ at init "
            f"(plain: the chain recursion; plain + BN: Yang et al. 2019; residual: Yang & "
            f"Schoenholz 2017) within max({THEORY_DECADES:g} decade, {THEORY_SHARE:g} of the "
            "log)",
            bool(gaps) and all(gaps[k] <= allowed[k] for k in gaps),
            predicted={k: r.get("predicted_backprop_ratio") for k, r in runs.items()},
            measured={k: r.get("backprop_ratio") for k, r in runs.items()},
            gap_decades=gaps,
        )
    )
    return out


def plot(out: Path, runs: list[SeedRun], cfg: Config) -> list[Path]:
    """Draw the two figures from every seed (median and range); return their paths."""
    from gradwatch.experiments import gw

    paths: list[Path] = []
    depths = list(cfg.depths)
    fig, ax = base.new_figure(1, 1, (4.8, 3.4))
    for j, variant in enumerate(VARIANTS):
        ratios = [[r.numbers["runs"][f"{d}-{variant}"]["backprop_ratio"] for d in depths]
                  for r in runs]  # fmt: skip
        ratios = [[v if v and v > 0 else np.nan for v in row] for row in ratios]  # log scale
        band(ax, depths, ratios, f"C{j}", variant, marker="o")
        predicted = [
            [r.numbers["runs"][f"{d}-{variant}"].get("predicted_backprop_ratio") for d in depths]
            for r in runs
        ]
        if all(p is not None for row in predicted for p in row):
            ax.plot(depths, np.median(np.array(predicted, dtype=float), axis=0), "--",
                    color=f"C{j}", lw=1)  # fmt: skip
    ax.axhline(1.0, color="grey", ls=":")
    ax.set(
        title="gradient flow at init",
        xlabel="depth (Linear layers)",
        ylabel="‖δ first layer‖ / ‖δ last layer‖",
        xticks=depths,
        yscale="log",
    )
    ax.plot([], [], "k--", lw=1, label="theory (gw.theory.predict, median)")
    ax.legend(fontsize=6)
    paths += base.save_figure(fig, out, "backprop_at_init")

    fig, axes = base.new_figure(1, len(depths), (3.4 * len(depths), 3.0), squeeze=False)
    chance = runs[0].numbers["chance_loss"]
    for ax, depth in zip(axes[0], depths, strict=True):
        for j, variant in enumerate(VARIANTS):
            dirs = [r.out / base.RUNS / f"{depth}-{variant}".replace("+", "_") for r in runs]
            if all(d.is_dir() for d in dirs):
                losses = [gw.load(d).loss().rolling(5, min_periods=1).mean() for d in dirs]
                x, ys = align([(s.index, s.to_numpy(dtype=float)) for s in losses])
                band(ax, x, ys, f"C{j}", variant, lw=1)
        ax.axhline(chance, color="grey", ls=":")
        ax.set(title=f"{depth} layers", xlabel="step", ylabel="training loss")
    axes[0][0].legend(fontsize=6)
    paths += base.save_figure(fig, out, "loss")
    return paths
