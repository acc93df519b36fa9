"""Micikevicius et al. (2018): fp16 gradients flush to zero without loss scaling.

Paper: P. Micikevicius, S. Narang, J. Alben, G. Diamos, E. Elsen, D. Garcia, B. Ginsburg,
M. Houston, O. Kuchaiev, G. Venkatesh and H. Wu, "Mixed Precision Training", ICLR 2018,
section 3.2 and Figure 3: the activation gradients of an SSD detector, histogrammed in
log2, lie mostly below fp16's smallest subnormal (2^-24): 67% of them flush to zero, and the
net does not train in fp16 without loss scaling; scaling the loss by 8 (or more) shifts them
into fp16's range and training matches fp32.

Setup here: the same mechanism, on a CPU. A 6-layer He-init ReLU MLP on the scikit-learn
digits whose loss is the batch's cross-entropy times 1e-6 (the weight of a loss averaged
over many more terms than it is large: what made SSD's gradients small), trained with SGD
(momentum 0.9) at a learning rate times 1e6, so that the float32 run is the ordinary one.
Three runs from the same initialisation and batches:

- ``fp32``: float32, watched with ``precision="fp16"``: gradwatch says what fp16 would lose;
- ``fp16``: the back-propagated signal at every Linear output and every parameter gradient
  rounded to fp16 (a cast round-trip, as fp16 arithmetic would store them: the CPU has no
  fp16 training), no loss scaling;
- ``fp16_scaled``: the same with a ``torch.amp.GradScaler`` starting at 2^16.

The casts count what they flush (entries nonzero before the cast, zero after): that is the
measured fraction per layer. In emulated (as in real) fp16 training the Monitor reads the
values after they were cast, so flushed entries are zeros it cannot tell from true zeros:
the prediction comes from the float32 run watched for fp16.

Expected (and checked, for every seed):

1. without loss scaling, fp16 flushes at least half of the nonzero back-propagated entries
   at the output-side layer at the first step (the paper: 67% of SSD's activation
   gradients), and every entry further down (they are computed from the flushed ones);
2. without loss scaling the fp16 net learns worse than fp32: its final loss stays above
   ``LEARNS_WORSE`` × its starting loss while fp32's falls below half of its start;
3. with dynamic loss scaling (a GradScaler from 2^16 that doubles its scale after 50 clean
   steps) fp16 flushes under 1% at the first step and its final loss is within ``MATCHES``
   times fp32's starting loss of fp32's final loss. (As the loss falls the gradients of
   well-fit examples shrink below fp16's range again: the evidence records the most any
   layer loses later, up to ~90% of a layer's nonzero entries, all of them tiny.)
4. gradwatch's ``bp_underflow_fp16`` of the float32 run at the first step equals, at the
   output-side layer, the fraction the fp16 run's cast flushed there (the same values);
5. ``gw.diagnose`` of the float32 run watched for fp16 reports ``underflow``, and of the
   scaled fp16 run does not.

Figures (``figures/``): ``fig3_histogram`` (as the paper's Fig. 3: the histogram of log2
|∂loss/∂y| over every Linear output at the first step, with fp16's smallest subnormal,
smallest normal and largest value, unscaled and shifted by the loss scale) and ``loss``.

Run: ``gradwatch experiment micikevicius2018 [--quick]``.
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
from gradwatch.jsonable import from_jsonable

NAME = "micikevicius2018"
MODES = ("fp32", "fp16", "fp16_scaled")
LEARNS_WORSE = 0.8
MATCHES = 0.1  # of fp32's starting loss: how far the loss-scaled fp16 run may end from fp32
#: log2 histogram bins of |∂loss/∂y| (zeros are counted apart).
BINS = np.arange(-64.0, 17.0, 1.0)


@dataclass(frozen=True)
class Config:
    """Settings of the experiment (full mode); :data:`QUICK` is the quick one."""

    depth: int = 6  # Linear layers, ReLU between them
    width: int = 128
    steps: int = 1000
    lr: float = 0.05  # of the unweighted loss: the SGD rate is lr / loss_weight
    momentum: float = 0.9
    loss_weight: float = 1e-6
    loss_scale: float = 2.0**16
    growth_interval: int = 50  # dynamic loss scaling: the scale doubles after 50 clean steps
    batch_size: int = 64
    detail_every: int = 5
    window: int = 20  # losses averaged at each end


QUICK = Config(steps=150)


class GradRound(nn.Module):
    """A cast point: identity forward; backward rounds the gradient to ``dtype`` (or not).

    It counts the entries it flushes: ``log`` collects (step, flushed, nonzero) per call;
    ``values`` keeps the first call's pre-cast gradients when ``keep`` is set.
    """

    def __init__(self, dtype: torch.dtype | None):
        super().__init__()
        self.dtype = dtype
        self.step = 0
        self.log: list[tuple[int, int, int]] = []
        self.keep = False
        self.values: torch.Tensor | None = None

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` itself; its gradient is rounded on the way back."""
        return _Round.apply(y, self)


class _Round(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, mod: GradRound) -> torch.Tensor:
        ctx.mod = mod
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        mod = ctx.mod
        if mod.keep and mod.values is None:
            mod.values = g.detach().clone()
        if mod.dtype is None:
            return g, None
        cast = g.to(mod.dtype).to(g.dtype)
        nonzero = g != 0
        mod.log.append((mod.step, int((nonzero & (cast == 0)).sum()), int(nonzero.sum())))
        return cast, None


def build(cfg: Config, seed: int, dtype: torch.dtype | None) -> nn.Sequential:
    """He-init ReLU MLP; after each Linear a :class:`GradRound` (the cast point)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    dims = [64] + [cfg.width] * (cfg.depth - 1) + [10]
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        lin = nn.Linear(a, b)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, GradRound(dtype)]
        if i < cfg.depth - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    if dtype is not None:  # fp16 weight gradients, as fp16 arithmetic would store them
        for p in model.parameters():
            p.register_hook(lambda g, dt=dtype: g.to(dt).to(g.dtype))
    return model


def train(cfg: Config, mode: str, seed: int, run_dir: Path, bar: Any) -> dict[str, Any]:
    """One run; returns its losses, the casts' flush fractions and the findings."""
    from gradwatch.experiments import gw

    model = build(cfg, seed, None if mode == "fp32" else torch.float16)
    rounds = [m for m in model if isinstance(m, GradRound)]
    for r in rounds:
        r.keep = mode == "fp32"
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr / cfg.loss_weight,
                          momentum=cfg.momentum)
    scaler = (torch.amp.GradScaler("cpu", init_scale=cfg.loss_scale,
                                   growth_interval=cfg.growth_interval)
              if mode == "fp16_scaled" else None)
    x, y = digits()[:2]
    gen = torch.Generator().manual_seed(seed)
    losses = []
    with gw.watch(model, run_dir, optimizer=opt, scaler=scaler, precision="fp16",
                  detail_every=cfg.detail_every, overwrite=True, diagnose=False,
                  name=f"{mode}-seed{seed}") as mon:
        for step in range(cfg.steps):
            for r in rounds:
                r.step = step
            idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx]) * cfg.loss_weight
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            mon.step(loss.detach())
            losses.append(float(loss.detach()) / cfg.loss_weight)
            bar.advance()
    findings = gw.diagnose(mon.run)
    run = mon.run
    first = run.stats[(run.stats.step == 0) & (run.stats.stat == "bp_underflow_fp16")]
    names = [n for n, m in model.named_children() if isinstance(m, nn.Linear)]
    flushed, nonzero = {}, {}
    for name, r in zip(names, rounds, strict=True):
        at0 = [(f, n) for s, f, n in r.log if s == 0]
        nonzero[name] = sum(n for _, n in at0) if at0 else None
        flushed[name] = (sum(f for f, _ in at0) / nonzero[name] if nonzero[name] else None)
    values = [r.values for r in rounds if r.values is not None]
    hist, zeros = None, None
    if values:
        v = torch.cat([t.reshape(-1) for t in values]).double()
        zeros = int((v == 0).sum())
        hist = np.histogram(np.log2(v[v != 0].abs().numpy()), BINS)[0].tolist()
    w = min(cfg.window, len(losses) // 2)
    curve = np.convolve(losses, np.ones(w) / w, mode="valid")
    return {
        "curve": curve[:: max(1, len(curve) // 100)].tolist(),
        "loss_start": float(np.mean(losses[:w])),
        "loss_end": float(np.mean(losses[-w:])),
        "flushed_at_first_step": flushed,
        "nonzero_at_first_step": nonzero,
        "flushed_max_over_run": max((f / n for r in rounds for _, f, n in r.log if n),
                                    default=0.0),
        "predicted_at_first_step": {str(k): float(v) for k, v in
                                    zip(first.layer, first.value, strict=True)},
        "findings": sorted({f.kind for f in findings}),
        "histogram": hist,
        "zeros": zeros,
        "layers": names,
    }


def measure(cfg: Config, out: Path, seed: int, bar: Any) -> dict[str, Any]:
    """The three runs of one seed (the runner calls it once per seed)."""
    bar.total(len(MODES) * cfg.steps)
    runs = {}
    for mode in MODES:
        bar.note(mode)
        runs[mode] = train(cfg, mode, seed, out / base.RUNS / mode, bar)
    return {"runs": runs, "loss_scale": cfg.loss_scale, "loss_weight": cfg.loss_weight}


def claims(numbers: dict[str, Any]) -> list[Claim]:
    """The paper's claims, from one seed's measured numbers (pure; judged over the seeds)."""
    numbers = from_jsonable(numbers)  # a record's "nan", "inf", "-inf" as floats
    runs = numbers["runs"]
    fp32, fp16, scaled = runs["fp32"], runs["fp16"], runs["fp16_scaled"]
    out_layer = fp16["layers"][-1]
    flushed_out = fp16["flushed_at_first_step"][out_layer]
    below = {k: v for k, v in fp16["nonzero_at_first_step"].items() if k != out_layer and v}
    out = [claim(
        "Without loss scaling, fp16 flushes at least half of the nonzero back-propagated "
        "entries of the output-side layer at the first step (the paper: 67% of SSD's "
        "activation gradients), and nothing reaches the layers below (no nonzero entry left)",
        flushed_out is not None and flushed_out >= 0.5 and not below,
        flushed_output_side=flushed_out, layers_below_with_a_nonzero_entry=below)]
    ends = {m: (runs[m]["loss_start"], runs[m]["loss_end"]) for m in MODES}
    out.append(claim(
        f"Without loss scaling the fp16 net learns worse: its loss ends above {LEARNS_WORSE} "
        "of its start while fp32's ends below half of its start",
        ends["fp16"][1] > LEARNS_WORSE * ends["fp16"][0]
        and ends["fp32"][1] < 0.5 * ends["fp32"][0],
        loss_start_end=ends))
    first = max((v or 0.0 for v in scaled["flushed_at_first_step"].values()), default=0.0)
    out.append(claim(
        f"With dynamic loss scaling (GradScaler from 2^{int(math.log2(numbers['loss_scale']))}"
        f") fp16 flushes under 1% of any layer's nonzero entries at the first step, and its "
        f"final loss is within {MATCHES} × fp32's starting loss of fp32's final loss",
        first < 0.01
        and abs(ends["fp16_scaled"][1] - ends["fp32"][1]) <= MATCHES * ends["fp32"][0],
        flushed_at_first_step=first, flushed_max_later=scaled["flushed_max_over_run"],
        loss_start_end=ends))
    pred = fp32["predicted_at_first_step"].get(out_layer)
    out.append(claim(
        "gradwatch's bp_underflow_fp16 of the float32 run at the first step equals, at the "
        "output-side layer, the fraction the fp16 cast flushed there (within 1e-6; every "
        "entry of a cross-entropy's ∂loss/∂logits is nonzero, so the two denominators agree)",
        pred is not None and flushed_out is not None and abs(pred - flushed_out) < 1e-6,
        predicted=pred, flushed_of_nonzero=flushed_out))
    kinds = {m: runs[m]["findings"] for m in ("fp32", "fp16_scaled")}
    out.append(claim(
        "gw.diagnose reports underflow for the float32 run watched for fp16, and not for the "
        "loss-scaled fp16 run",
        "underflow" in kinds["fp32"] and "underflow" not in kinds["fp16_scaled"],
        findings=kinds))
    return out


def plot(out: Path, runs: list[Any], cfg: Config) -> list[Path]:
    """Fig. 3 (the log2 histogram against fp16's range, first seed) and the loss curves."""
    paths: list[Path] = []
    numbers = runs[0].numbers
    r = numbers["runs"]["fp32"]
    fig, ax = base.new_figure(1, 1, (6.4, 3.6))
    if r["histogram"] is not None:
        hist = np.asarray(r["histogram"], dtype=float)
        total = hist.sum() + (r["zeros"] or 0)
        centers = BINS[:-1] + 0.5
        shift = math.log2(numbers["loss_scale"])
        ax.bar(centers, hist / total, width=1.0, color="C0", alpha=0.8,
               label="∂loss/∂y, no loss scaling")
        ax.bar(centers + shift, hist / total, width=1.0, color="C2", alpha=0.5,
               label=f"× 2^{shift:.0f} (loss scaling)")
        ax.axvspan(-50, -25, color="C3", alpha=0.08, label="flushes to zero in fp16")
        for xv, text in ((-24, "2^-24 smallest subnormal"), (-14, "2^-14 smallest normal"),
                         (16, "65504 largest")):
            ax.axvline(xv, color="grey", ls="--", lw=0.8)
            ax.text(xv + 0.3, ax.get_ylim()[1] * 0.9, text, rotation=90, fontsize=6,
                    va="top")
        zero_frac = (r["zeros"] or 0) / total
        ax.set(title=f"log2 |∂loss/∂y| at step 0 ({zero_frac:.0%} exact zeros: ReLU)",
               xlabel="log2 |value|", ylabel="fraction of entries", xlim=(-50, 20))
        ax.legend(fontsize=7, loc="upper left")
    paths += base.save_figure(fig, out, "fig3_histogram")

    fig, ax = base.new_figure(1, 1, (6.4, 3.4))
    for j, mode in enumerate(MODES):
        for k, seed_run in enumerate(runs):
            curve = seed_run.numbers["runs"][mode]["curve"]
            steps = np.linspace(0, cfg.steps - 1, len(curve))
            ax.plot(steps, curve, color=f"C{j}", lw=1, alpha=0.8,
                    label=mode if k == 0 else None)
    ax.axhline(math.log(10), color="grey", ls=":", label="ln 10 (chance)")
    ax.set(title=f"training loss (cross-entropy, unweighted; {len(runs)} seed(s))",
           xlabel="step",
           ylabel="loss", yscale="log")
    ax.legend(fontsize=7)
    paths += base.save_figure(fig, out, "loss")
    return paths


run = base.runner(__name__)
