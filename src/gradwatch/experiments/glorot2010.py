"""Glorot & Bengio (2010): why deep sigmoid and tanh networks were hard to train.

Paper: X. Glorot and Y. Bengio, "Understanding the difficulty of training deep feedforward
neural networks", AISTATS 2010.

Setup (as in the paper, scaled down in quick mode): MLPs with 4 hidden layers of equal
width (1000 units in the paper and in full mode, 256 in quick mode), sigmoid, tanh or
softsign units, biases 0, softmax + negative log-likelihood, plain SGD with minibatches of
10, on Shapeset-3×2 (generated: :func:`gradwatch.experiments.data.shapeset`) and on the
8×8 digits bundled with scikit-learn. Two initialisations of the weights:

- "standard": W ~ U[-1/√n, 1/√n] (n = fan-in), so n·Var[W] = 1/3;
- "normalized" (Xavier): W ~ U[-√6/√(n_in + n_out), +√6/√(n_in + n_out)].

Expected outcome — what the paper found, and what this script measures and checks:

1. With standard init the back-propagated gradient ∂cost/∂s (s: a layer's pre-activation)
   shrinks from the top hidden layer toward the input at initialisation — in the linear
   regime its variance is multiplied by n·Var[W] = 1/3 per layer. With normalized init it
   stays about level (their Figure 7). Measured: ``backprop_norm`` per layer on one
   500-example batch before training; the claim compares the first hidden layer's to the
   top hidden layer's.
2. Sigmoid networks: the top hidden layer is driven to saturation at 0 early in training
   (its mean activation falls from 0.5 toward 0 while the lower layers stay near 0.5) and
   only slowly comes back (their Figure 2). Measured: ``act_mean`` per layer during training.
3. tanh with standard init: the layers saturate one after another starting from the
   first (input-side) layer (their Figure 3). Measured: ``saturated_frac`` per layer.
4. Test error (their Table 1): sigmoid with standard init is worst; normalized init does
   better than standard for tanh. For the last point the paper tuned the learning rate per
   setting: the full run also trains the tanh pair on Shapeset at lr 0.01 and 0.03
   (``tanh_lrs``) and compares each init at the lr that is best for it on a validation set.
   It needs the full-size run; quick mode does not run it.

How to read the figures (``figures/``):

- ``backprop_at_init``: ‖∂cost/∂s‖ per layer at initialisation (log scale), input side on
  the left; a line rising to the right means the signal shrinks toward the input.
- ``activations``: left, the mean sigmoid output of each hidden layer during training (the
  top layer's curve falls toward 0); right, the fraction of saturated tanh units per layer
  (|tanh| > 0.97; standard init saturates layer 1 first).
- ``test_error``: final test error of every activation × init, per data set.

Run: ``gradwatch experiment glorot2010 [--quick]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.experiments import base
from gradwatch.experiments.base import Claim, claim
from gradwatch.experiments.data import digits, shapeset
from gradwatch.experiments.seeds import SeedRun, align, band, bars
from gradwatch.experiments.training import error_rate, probe, train_classifier
from gradwatch.jsonable import from_jsonable

NAME = "glorot2010"
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softsign": nn.Softsign}


@dataclass(frozen=True)
class Config:
    """Settings of the experiment (full mode); :data:`QUICK` is the quick one."""

    # (activation, init) pairs; the first three are the ones the claims are about
    combos: tuple[tuple[str, str], ...] = (
        ("sigmoid", "standard"),
        ("tanh", "standard"),
        ("tanh", "normalized"),
        ("sigmoid", "normalized"),
        ("softsign", "standard"),
        ("softsign", "normalized"),
    )
    datasets: tuple[str, ...] = ("shapeset", "digits")
    hidden_layers: int = 4
    width: int = 1000
    shapeset_train: int = 20000
    shapeset_test: int = 5000
    steps: dict[str, int] = field(default_factory=lambda: {"shapeset": 6000, "digits": 2000})
    lr: float = 0.1
    # the paper tuned the learning rate per setting: the tanh pair on Shapeset is also
    # trained at these, and each init is scored at its best lr on a validation set
    tanh_lrs: tuple[float, ...] = (0.01, 0.03)
    shapeset_val: int = 2000
    batch_size: int = 10  # as in the paper
    probe_size: int = 500  # examples in the at-initialisation gradient measurement
    every: int = 5  # record the gradient statistics every 5 steps...
    detail_every: int = 2  # ...and the activation statistics every 10


QUICK = Config(
    combos=(("sigmoid", "standard"), ("tanh", "standard"), ("tanh", "normalized")),
    width=256,
    shapeset_train=6000,
    shapeset_test=2000,
    steps={"shapeset": 600, "digits": 250},
    tanh_lrs=(),
)


def build(activation: str, init: str, d_in: int, width: int, hidden: int, classes: int):
    """The MLP: ``hidden`` × [Linear, activation], then Linear to ``classes``; biases 0."""
    from gradwatch.experiments import gw

    layers: list[nn.Module] = []
    for i in range(hidden):
        layers += [nn.Linear(d_in if i == 0 else width, width), ACTIVATIONS[activation]()]
    model = nn.Sequential(*layers, nn.Linear(width, classes))
    if init == "standard":
        gw.remedies.standard_init_(model)  # U[-1/√n, 1/√n], biases 0
    else:
        gw.remedies.xavier_init_(model, distribution="uniform", gain=1.0)  # biases 0
    return model


def predicted_ratio(model: nn.Module, hidden: int) -> float | None:
    """Mean-field prediction of ‖δ_first hidden‖ / ‖δ_top hidden‖ (None without gw.theory)."""
    try:
        from gradwatch.theory import predict
    except ImportError:  # theory is optional here
        return None
    att = predict(model, q0=1.0).table["attenuation"].to_numpy(dtype=float)  # ‖δ_l‖²/‖δ_L‖²
    return float(math.sqrt(att[0] / att[hidden - 1]))


run = base.runner(__name__)


def measure(cfg: Config, out: Path, seed: int, bar: Any) -> dict[str, Any]:
    """Train and measure every net; return the numbers the claims are computed from."""
    from gradwatch.experiments import gw

    H = cfg.hidden_layers
    numbers: dict[str, Any] = {"hidden_layers": H, "lr": cfg.lr, "runs": {}, "tuning": {}}
    tuned = [("tanh", init) for init in ("standard", "normalized")] if cfg.tanh_lrs else []
    bar.total(
        len(cfg.combos) * sum(cfg.steps[d] for d in cfg.datasets)
        + len(tuned) * len(cfg.tanh_lrs) * cfg.steps.get("shapeset", 0)
    )
    for di, dataset in enumerate(cfg.datasets):
        # -- data: inputs standardised with the training set's statistics ---------------
        if dataset == "shapeset":
            x, y = shapeset(cfg.shapeset_train, seed=seed)  # (N, 1, 32, 32), 9 classes
            xt, yt = shapeset(cfg.shapeset_test, seed=seed + 10_000)
            xv, yv = shapeset(cfg.shapeset_val, seed=seed + 20_000)  # to choose the lr
            x, xt, xv = x.flatten(1), xt.flatten(1), xv.flatten(1)  # (N, 1024)
            mu, sd = x.mean(), x.std()
            x, xt, xv = (x - mu) / sd, (xt - mu) / sd, (xv - mu) / sd
        else:
            x, y = digits("train", seed=seed)  # (1347, 64), 10 classes
            xt, yt = digits("test", seed=seed)
            xv, yv = xt[:0], yt[:0]  # no lr tuning on digits
        classes = int(y.max()) + 1

        for ci, (act, init) in enumerate(cfg.combos):
            key = f"{dataset}/{act}-{init}"
            bar.note(f"{NAME}: {key}")
            torch.manual_seed(seed * 1000 + di * 100 + ci)
            model = build(act, init, x.shape[1], cfg.width, H, classes)
            runs = out / base.RUNS
            tag = f"{dataset}-{act}-{init}"
            info = {"experiment": NAME, "dataset": dataset, "activation": act, "init": init}

            # -- 1. gradient flow at initialisation, on one large batch -----------------
            init_dir = probe(
                model, x[: cfg.probe_size], y[: cfg.probe_size], runs / f"{tag}-init", info
            )
            prediction = predicted_ratio(model, H)

            # -- 2. training, every statistic recorded --------------------------------
            train_dir = train_classifier(
                model,
                x,
                y,
                steps=cfg.steps[dataset],
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                run_dir=runs / tag,
                seed=seed,
                every=cfg.every,
                detail_every=cfg.detail_every,
                config=info,
                on_step=lambda _: bar.advance(),
            )

            # -- 3. read the numbers back from the run directories ----------------------
            at_init = gw.load(init_dir)
            bp = list(base.layer_profile(at_init, "backprop_norm").values())  # input first
            gn = list(base.layer_profile(at_init, "grad_norm").values())
            trained = gw.load(train_dir)
            act_mean = trained.pivot("act_mean")  # (detail steps, hidden layers)
            sat = trained.pivot("saturated_frac")
            tail = max(1, len(act_mean) // 5)  # the last 20% of the recorded steps
            losses = trained.loss()
            numbers["runs"][key] = {
                "backprop_init": bp,  # ‖∂cost/∂s‖ per layer (hidden layers, then output)
                "grad_norm_init": gn,
                "backprop_ratio": bp[0] / bp[H - 1],  # first hidden / top hidden
                "grad_norm_ratio": gn[0] / gn[H - 1],
                "predicted_backprop_ratio": prediction,
                "act_mean_init": act_mean.iloc[0].tolist(),
                "act_mean_end": act_mean.iloc[-tail:].mean().tolist(),
                "saturated_frac_end": sat.iloc[-tail:].mean().tolist(),
                "train_loss_end": float(losses.iloc[-max(1, len(losses) // 10) :].mean()),
                "test_error": error_rate(model, xt, yt),
                "val_error": error_rate(model, xv, yv) if len(xv) else None,
                "chance_error": 1 - 1 / classes,
            }

        # -- 4. the paper's protocol for the tanh pair: more learning rates ----------------
        for act, init in tuned if dataset == "shapeset" else []:
            ci = cfg.combos.index((act, init))
            scores = {f"{cfg.lr:g}": {k: numbers["runs"][f"{dataset}/{act}-{init}"][k]
                                      for k in ("val_error", "test_error")}}  # fmt: skip
            for lr in cfg.tanh_lrs:
                bar.note(f"{NAME}: {dataset}/{act}-{init}, lr {lr:g}")
                torch.manual_seed(seed * 1000 + di * 100 + ci)  # the same initial weights
                model = build(act, init, x.shape[1], cfg.width, H, classes)
                tag = f"{dataset}-{act}-{init}-lr{lr:g}"
                train_classifier(
                    model,
                    x,
                    y,
                    steps=cfg.steps[dataset],
                    lr=lr,
                    batch_size=cfg.batch_size,
                    run_dir=out / base.RUNS / tag,
                    seed=seed,
                    every=cfg.every,
                    detail_every=cfg.detail_every,
                    config={"experiment": NAME, "dataset": dataset, "init": init, "lr": lr},
                    on_step=lambda _: bar.advance(),
                )
                scores[f"{lr:g}"] = {
                    "val_error": error_rate(model, xv, yv),
                    "test_error": error_rate(model, xt, yt),
                }
            numbers["tuning"][f"{act}-{init}"] = scores
    return numbers


# Thresholds of the claims. In the linear regime standard init shrinks ‖δ‖ by √(1/3) ≈ 0.58
# per layer, so by 0.58³ ≈ 0.19 over the 3 steps from the top hidden layer to the first.
SHRINK_BELOW = 0.3  # standard init: first/top hidden ‖δ‖ ratio below this (linear regime: 0.19)
FLATTER_FACTOR = 2.0  # normalized init's ratio at least this many times standard's
SIGMOID_TOP_BELOW = 0.3  # sigmoid's top hidden layer ends with mean activation below this
SATURATION_MARGIN = 0.1  # tanh/standard: layer 1 saturated share exceeds the top layer's by this


def claims(numbers: dict[str, Any]) -> list[Claim]:
    """The paper's claims, computed from the measured numbers (pure: no side effects).

    Args:
        numbers: ``result["numbers"]``: {"hidden_layers", "runs": {"<dataset>/<act>-<init>":
            {...}}}.

    Returns:
        the claims, each with its evidence.
    """
    numbers = from_jsonable(numbers)  # a record's "nan", "inf", "-inf" as floats
    runs = numbers["runs"]
    H = numbers["hidden_layers"]
    datasets = sorted({k.split("/")[0] for k in runs})

    def get(dataset: str, combo: str, what: str) -> Any:
        return runs.get(f"{dataset}/{combo}", {}).get(what, float("nan"))

    out: list[Claim] = []

    # 1. standard init: the back-propagated gradient shrinks toward the input
    ratios = {
        f"{d}/{a}-standard": get(d, f"{a}-standard", "backprop_ratio")
        for d in datasets
        for a in ("sigmoid", "tanh")
    }
    out.append(
        claim(
            f"With standard init the back-propagated gradient shrinks toward the input at "
            f"initialisation: ‖δ‖ of the first hidden layer < {SHRINK_BELOW}× the top "
            f"hidden layer's (sigmoid and tanh, every data set)",
            all(r < SHRINK_BELOW for r in ratios.values()),
            ratios=ratios,
            threshold=SHRINK_BELOW,
        )
    )

    # 2. normalized init keeps it flatter
    pairs = {
        d: {
            "standard": get(d, "tanh-standard", "backprop_ratio"),
            "normalized": get(d, "tanh-normalized", "backprop_ratio"),
            "predicted_standard": get(d, "tanh-standard", "predicted_backprop_ratio"),
            "predicted_normalized": get(d, "tanh-normalized", "predicted_backprop_ratio"),
        }
        for d in datasets
    }
    out.append(
        claim(
            f"Normalized (Xavier) init keeps the back-propagated gradient flatter: for tanh "
            f"its first/top hidden-layer ratio is ≥ {FLATTER_FACTOR}× standard init's, "
            "closer to 1 (every data set)",
            all(
                p["normalized"] >= FLATTER_FACTOR * p["standard"] and p["normalized"] <= 1.5
                for p in pairs.values()
            ),
            ratios=pairs,
            factor=FLATTER_FACTOR,
        )
    )

    # 3. sigmoid: the top hidden layer saturates toward 0
    init_means = get("shapeset", "sigmoid-standard", "act_mean_init")
    end_means = get("shapeset", "sigmoid-standard", "act_mean_end")
    ok = isinstance(end_means, list) and len(end_means) == H
    out.append(
        claim(
            f"Sigmoid (standard init, Shapeset): the top hidden layer is pushed toward "
            f"saturation at 0 — it ends training with the lowest mean activation of the hidden "
            f"layers, below {SIGMOID_TOP_BELOW} (it starts near 0.5)",
            ok
            and end_means[-1] < SIGMOID_TOP_BELOW
            and end_means[-1] == min(end_means)
            and init_means[-1] > 0.4,
            act_mean_init=init_means,
            act_mean_end=end_means,
            threshold=SIGMOID_TOP_BELOW,
        )
    )

    # 4. tanh + standard init saturates from the input side first
    sat = get("shapeset", "tanh-standard", "saturated_frac_end")
    ok = isinstance(sat, list) and len(sat) == H
    out.append(
        claim(
            "tanh with standard init saturates from the input side: at the end the first "
            f"hidden layer's saturated fraction exceeds the top hidden layer's by > "
            f"{SATURATION_MARGIN} (Shapeset)",
            ok and sat[0] > sat[-1] + SATURATION_MARGIN,
            saturated_frac_end=sat,
            margin=SATURATION_MARGIN,
        )
    )

    # 5. test errors
    errors = {k: v["test_error"] for k, v in runs.items()}
    shp = {k: v for k, v in errors.items() if k.startswith("shapeset/")}
    worst = max(shp.values()) if shp else float("nan")
    out.append(
        claim(
            "Sigmoid with standard init ends with the highest test error on Shapeset",
            bool(shp) and shp.get("shapeset/sigmoid-standard", -1.0) >= worst,
            test_error=shp,
        )
    )

    # 6. the paper's Table 1: normalized beats standard for tanh, each at its best lr
    def best(init: str) -> tuple[str | None, float]:
        scores = numbers.get("tuning", {}).get(f"tanh-{init}") or {
            f"{numbers.get('lr', float('nan')):g}": {
                "val_error": get("shapeset", f"tanh-{init}", "val_error"),
                "test_error": get("shapeset", f"tanh-{init}", "test_error"),
            }
        }
        ok = {lr: v for lr, v in scores.items() if v.get("val_error") is not None}
        if not ok:
            return None, float("nan")
        lr = min(ok, key=lambda k: ok[k]["val_error"])
        return lr, ok[lr]["test_error"]

    (lr_std, err_std), (lr_norm, err_norm) = best("standard"), best("normalized")
    out.append(
        claim(
            "Normalized init ends with lower test error than standard init for tanh on "
            "Shapeset, each at the learning rate that is best for it on a validation set "
            "(the paper tuned it per setting; needs the full-size run)",
            err_norm < err_std,
            scale="full",
            tanh_standard={"lr": lr_std, "test_error": err_std},
            tanh_normalized={"lr": lr_norm, "test_error": err_norm},
            tuning=numbers.get("tuning", {}),
        )
    )
    return out


def plot(out: Path, runs: list[SeedRun], cfg: Config) -> list[Path]:
    """Draw the three figures from every seed (median and range); return their paths."""
    from gradwatch.experiments import gw

    paths: list[Path] = []
    H = runs[0].numbers["hidden_layers"]
    datasets = list(cfg.datasets)

    # backprop_at_init: ‖δ‖ per layer, one panel per data set
    fig, axes = base.new_figure(1, len(datasets), (4.2 * len(datasets), 3.4), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        for i, (act, init) in enumerate(cfg.combos):
            bp = [r.numbers["runs"][f"{d}/{act}-{init}"]["backprop_init"][:H] for r in runs]
            style = "-" if init == "normalized" else "--"
            band(ax, range(1, H + 1), bp, f"C{i}", f"{act}, {init}", ls=style, marker="o", ms=3)
        ax.set(
            title=f"{d}: back-propagated gradient at init",
            xlabel="hidden layer (1 = input side)",
            ylabel="‖∂cost/∂s‖",
            xticks=range(1, H + 1),
            yscale="log",
        )
        ax.legend(fontsize=6)
    paths += base.save_figure(fig, out, "backprop_at_init")

    def per_layer(tag: str, stat: str) -> tuple[Any, list[list[Any]]] | None:
        """(steps, [layer][seed] values) of a statistic in every seed's run of ``tag``."""
        dirs = [r.out / base.RUNS / tag for r in runs]
        if not all(d.is_dir() for d in dirs):
            return None
        wides = [gw.load(d).pivot(stat) for d in dirs]
        x, _ = align([(w.index, w.iloc[:, 0]) for w in wides])
        cols = min(w.shape[1] for w in wides)
        layers = [align([(w.index, w.iloc[:, i]) for w in wides])[1] for i in range(cols)]
        return x, layers

    # activations: sigmoid mean activation and tanh saturation during training
    fig, axes = base.new_figure(1, 2, (9, 3.4))
    sig = per_layer("shapeset-sigmoid-standard", "act_mean")
    if sig is not None:
        for i, ys in enumerate(sig[1]):
            band(axes[0], sig[0], ys, f"C{i}", f"layer {i + 1}", lw=1)
        axes[0].set(
            title="sigmoid, standard init: mean activation",
            xlabel="step",
            ylabel="mean sigmoid output",
            ylim=(0, 1),
        )
        axes[0].legend(fontsize=6)
    for init, style in (("standard", "--"), ("normalized", "-")):
        sat = per_layer(f"shapeset-tanh-{init}", "saturated_frac")
        for i, ys in enumerate(sat[1] if sat is not None else []):
            band(axes[1], sat[0], ys, f"C{i}", f"layer {i + 1}, {init}", ls=style, lw=1)
    axes[1].set(
        title="tanh: saturated units (|a| > 0.97)", xlabel="step", ylabel="fraction saturated"
    )
    axes[1].legend(fontsize=5, ncol=2)
    paths += base.save_figure(fig, out, "activations")

    # test_error: bars per combo, per data set (median over seeds, min–max range)
    fig, ax = base.new_figure(1, 1, (1.6 + 1.2 * len(cfg.combos), 3.2))
    width = 0.8 / len(datasets)
    for j, d in enumerate(datasets):
        errs = [[r.numbers["runs"][f"{d}/{a}-{i}"]["test_error"] for a, i in cfg.combos]
                for r in runs]  # fmt: skip
        bars(ax, np.arange(len(cfg.combos)) + j * width, errs, width, label=d, color=f"C{j}")
    ax.set_xticks(np.arange(len(cfg.combos)) + width * (len(datasets) - 1) / 2)
    ax.set_xticklabels([f"{a}\n{i}" for a, i in cfg.combos], fontsize=7)
    n = len(runs)
    ax.set(
        ylabel="test error",
        title="final test error" + (f" (median, range of {n} seeds)" if n > 1 else ""),
    )
    ax.legend(fontsize=7)
    paths += base.save_figure(fig, out, "test_error")
    return paths
