"""Pascanu, Mikolov & Bengio (2013): vanishing and exploding gradients through time.

Paper: R. Pascanu, T. Mikolov and Y. Bengio, "On the difficulty of training recurrent neural
networks", ICML 2013; the tasks and the LSTM are from S. Hochreiter and J. Schmidhuber,
"Long short-term memory", Neural Computation 1997.

Setup: a sequence u_1..u_T is embedded, x_t = W_in u_t + b (the "hidden inputs"), fed to a
recurrent cell of 64 units (a vanilla tanh RNN, an LSTM or a GRU), and the last hidden state
is read out. Tasks (built in, :mod:`gradwatch.experiments.data`): the adding problem (target:
the sum of the two marked numbers; predicting the mean scores MSE 1/6) and, in full mode,
temporal order (4 classes). The vanilla RNN's recurrent matrix W_hh is PyTorch's default
draw rescaled to a largest singular value σ_max = 0.9; the LSTM's forget-gate bias is 1
(Gers et al. 2000), the GRU is PyTorch's default. Quick mode: T = 20 and 50, the adding
problem only, 150 training steps; full mode: T = 20, 50 and 100, both tasks, 2000 steps.

What the paper found, and what this script measures and checks:

1. Temporal gradient flow. For h_t = tanh(W_hh h_{t-1} + x_t), ∂h_T/∂x_t is a product of
   T − t Jacobians diag(tanh') W_hh, each of norm ≤ γ σ_max with γ = max|tanh'| = 1. So if
   σ_max < 1/γ the long-term gradient ‖∂L/∂x_t‖ vanishes exponentially as t goes back in
   time (a sufficient condition; σ_max > 1/γ is necessary for it to explode). Measured at
   initialisation, in float64 (the vanilla RNN's gradient leaves float32's range within a
   hundred steps): ‖∂L/∂x_t‖ for every t on one batch of 256 sequences, and the fitted
   slope of ln‖∂L/∂x_t‖ per step back in time. Claim: for every vanilla RNN with σ_max < 1
   (the main one at every length, and a sweep of σ_max) the slope is negative and at most
   ln(γ σ_max), the bound's rate.
2. The LSTM's cell state (the "constant error carousel") and the GRU's gated update carry
   the gradient much further: ‖∂L/∂x_1‖ / ‖∂L/∂x_T‖ is orders of magnitude larger than the
   vanilla RNN's. Claim: at least 100× at the longest length.
3. Gradient clipping (their Algorithm 1: if ‖g‖ > threshold, g ← threshold · g/‖g‖) stops
   explosions. A vanilla RNN with σ_max(W_hh) = 4 trained with plain SGD at a large learning
   rate on the adding problem: without clipping its gradient norm explodes and the loss goes
   non-finite; with :func:`gradwatch.remedies.clip_grad_norm_` every loss and gradient stays
   finite and the loss falls. Claim: exactly that, read from the two run directories that
   ``gw.watch`` recorded (the gradients are recorded before clipping).
4. Training (Adam, clipping at norm 1 for every cell, so only the cell differs): the gated
   cells solve the adding problem at lengths where the vanilla RNN stays at the MSE of
   predicting the mean. In quick mode the runs are too short for this to be decisive at the
   longest length: computed and reported, required only in full mode.

How to read the figure (``figures/overview``): top left, ‖∂L/∂x_t‖ relative to t = T
for each cell at the longest length (log scale): the vanilla RNN's line drops by many
orders of magnitude toward t = 1, the gated cells' stay high. Top right, the fitted decay
rate per step back in time against σ_max(W_hh), with the bound ln σ_max (line): every dot
left of σ_max = 1 must lie under the line. Bottom left, the clipping run pair: loss and
(pre-clipping) gradient norm per step, the unclipped run ending where its values go
non-finite (marked ×). Bottom right, test MSE after training per cell and length, log scale
(dashed: predicting the mean).

Run: ``gradwatch experiment pascanu2013 [--quick]``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from gradwatch.experiments import base
from gradwatch.experiments.base import Claim, claim
from gradwatch.experiments.data import adding_problem, temporal_order
from gradwatch.experiments.pascanu2013_figures import plot  # noqa: F401 - run() reads it
from gradwatch.experiments.sequence_training import train
from gradwatch.jsonable import from_jsonable

NAME = "pascanu2013"
CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
GAMMA = 1.0  # max |tanh'|
ADDING_BASELINE = 1 / 6  # MSE of always predicting the mean sum, 1


@dataclass(frozen=True)
class Config:
    """Settings of the experiment (full mode); :data:`QUICK` is the quick one."""

    lengths: tuple[int, ...] = (20, 50, 100)
    tasks: tuple[str, ...] = ("adding", "temporal_order")
    cells: tuple[str, ...] = ("rnn", "lstm", "gru")
    hidden: int = 64
    rnn_sigma_max: float = 0.9  # the vanilla RNN's W_hh, rescaled: just under 1/γ
    lstm_forget_bias: float = 1.0
    probe_size: int = 256  # sequences in the at-initialisation gradient measurement
    sweep_sigma_max: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9, 0.99, 1.5, 2.0, 3.0, 4.0)
    # training: Adam with clipping, the same for every cell
    train_size: int = 10000
    test_size: int = 1000
    train_steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    clip_norm: float = 1.0
    record_every: int = 10
    # the exploding RNN: plain SGD at a large learning rate, with and without clipping
    explode_sigma_max: float = 4.0
    explode_length: int = 50
    explode_lr: float = 0.1
    explode_steps: int = 300
    explode_batch_size: int = 32


QUICK = Config(
    lengths=(20, 50),
    tasks=("adding",),
    sweep_sigma_max=(0.5, 0.9, 0.99, 2.0, 4.0),
    train_size=4000,
    test_size=500,
    train_steps=150,
    explode_steps=100,
)


class SequenceModel(nn.Module):
    """Embedding, recurrent cell, readout of the last hidden state.

    ``forward`` keeps the embedded inputs x_t as ``self.inputs`` so a caller can
    ``retain_grad()`` them and read ‖∂L/∂x_t‖ after ``backward``.
    """

    def __init__(self, cell: str, d_in: int, d_out: int, hidden: int):
        super().__init__()
        self.embed = nn.Linear(d_in, hidden)
        self.cell = CELLS[cell](hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, d_out)
        self.inputs: torch.Tensor | None = None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Map sequences (B, T, d_in) to outputs (B, d_out)."""
        x = self.embed(u)  # (B, T, H): x_t = W_in u_t + b
        self.inputs = x
        h, _ = self.cell(x)  # (B, T, H)
        return self.head(h[:, -1])  # (B, d_out)


def build(cell: str, d_in: int, d_out: int, cfg: Config, sigma_max: float | None = None):
    """A :class:`SequenceModel` initialised as the experiment says (see the module doc).

    Args:
        cell: "rnn", "lstm" or "gru".
        d_in: input channels.
        d_out: outputs.
        cfg: the config (hidden size, the RNN's σ_max, the LSTM's forget-gate bias).
        sigma_max: for "rnn", rescale W_hh to this largest singular value instead of
            ``cfg.rnn_sigma_max``.
    """
    model = SequenceModel(cell, d_in, d_out, cfg.hidden)
    with torch.no_grad():
        if cell == "rnn":
            w = model.cell.weight_hh_l0  # (H, H)
            w.mul_((sigma_max or cfg.rnn_sigma_max) / torch.linalg.matrix_norm(w, ord=2))
        if cell == "lstm":  # gate order i, f, g, o: the forget gate is the second block
            h = cfg.hidden
            model.cell.bias_ih_l0[h : 2 * h] = cfg.lstm_forget_bias
            model.cell.bias_hh_l0[h : 2 * h] = 0.0
    return model


def w_hh_sigma_max(model: SequenceModel) -> float:
    """Largest singular value of the recurrent matrix (all gate blocks stacked for LSTM/GRU)."""
    return float(torch.linalg.matrix_norm(model.cell.weight_hh_l0.detach().double(), ord=2))


def task_data(task: str, n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, y) of a task: u (n, T, channels); y (n, 1) float for adding, (n,) int64 otherwise."""
    return (adding_problem if task == "adding" else temporal_order)(n, length, seed=seed)


def temporal_gradient(model: SequenceModel, u: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """‖∂L/∂x_t‖ for t = 1..T (norm over the batch and the units), in float64.

    The model is copied to float64 first, so that gradients far below float32's smallest
    number are still measured; the model itself is not touched.
    """
    m = copy.deepcopy(model).double()
    loss = F.mse_loss(m(u.double()), y.double())
    m.inputs.retain_grad()
    loss.backward()
    return m.inputs.grad.norm(dim=(0, 2)).numpy()  # (T,)


def decay_slope(norms: np.ndarray) -> float:
    """Least-squares slope of ln‖∂L/∂x_t‖ per step back in time (negative: vanishing)."""
    ok = np.isfinite(norms) & (norms > 0)
    if ok.sum() < 2:
        return float("nan")
    back = np.arange(len(norms))[::-1]  # T − t: 0 at the last step
    return float(np.polyfit(back[ok], np.log(norms[ok]), 1)[0])


run = base.runner(__name__)


def measure(cfg: Config, out: Path, seed: int, bar: Any) -> dict[str, Any]:
    """Train and measure every net; return the numbers the claims are computed from."""
    from gradwatch.experiments import gw

    runs = out / base.RUNS
    numbers: dict[str, Any] = {"gamma": GAMMA, "lengths": list(cfg.lengths), "flow": {}}
    bar.total(
        len(cfg.tasks) * len(cfg.lengths) * len(cfg.cells) * cfg.train_steps + 2 * cfg.explode_steps
    )
    # -- 1, 2. temporal gradient flow at initialisation ------------------------------
    for length in cfg.lengths:
        u, y = adding_problem(cfg.probe_size, length, seed=seed + 7)  # (B, T, 2), (B, 1)
        for ci, cell in enumerate(cfg.cells):
            torch.manual_seed(seed * 1000 + ci)  # the same weights at every length
            model = build(cell, 2, 1, cfg)
            g = temporal_gradient(model, u, y)  # (T,)
            numbers["flow"][f"{cell}/T{length}"] = {
                "cell": cell,
                "length": length,
                "grad_norm": g,  # ‖∂L/∂x_t‖, t = 1..T
                "first_over_last": g[0] / g[-1],
                "decay_slope": decay_slope(g),
                "sigma_max": w_hh_sigma_max(model),
            }

    # the spectral condition: the vanilla RNN over σ_max, at the longest length
    longest = max(cfg.lengths)
    u, y = adding_problem(cfg.probe_size, longest, seed=seed + 7)
    numbers["sweep"] = []
    for s in cfg.sweep_sigma_max:
        torch.manual_seed(seed * 1000)
        model = build("rnn", 2, 1, cfg, sigma_max=s)
        g = temporal_gradient(model, u, y)
        numbers["sweep"].append(
            {
                "sigma_max": w_hh_sigma_max(model),
                "length": longest,
                "decay_slope": decay_slope(g),
                "bound_slope": math.log(GAMMA * s),  # ln(γ σ_max)
                "first_over_last": g[0] / g[-1],
            }
        )

    # -- 3. the exploding RNN, without and with clipping --------------------------------
    T = cfg.explode_length
    data = (
        *adding_problem(cfg.train_size, T, seed=seed + 1),
        *adding_problem(cfg.test_size, T, seed=seed + 2),
    )
    numbers["clipping"] = {"sigma_max": cfg.explode_sigma_max, "length": T}
    for clip in (None, cfg.clip_norm):
        key = "unclipped" if clip is None else "clipped"
        bar.note(f"{NAME}: exploding RNN, {key}")
        torch.manual_seed(seed * 1000 + 99)  # the same initial weights for both
        model = build("rnn", 2, 1, cfg, sigma_max=cfg.explode_sigma_max)
        run_dir = runs / f"explode-{key}"
        train(
            model,
            "adding",
            data,
            steps=cfg.explode_steps,
            optimizer=torch.optim.SGD(model.parameters(), lr=cfg.explode_lr),
            batch_size=cfg.explode_batch_size,
            clip_norm=clip,
            run_dir=run_dir,
            seed=seed,
            every=1,
            config={"experiment": NAME, "part": "clipping", "clip_norm": clip},
            on_step=lambda _: bar.advance(),
        )
        run = gw.load(run_dir)
        loss = run.loss()  # per step
        grad = _global_grad_norm(run)  # per step, before clipping
        numbers["clipping"][key] = {
            "clip_norm": clip,
            "loss": loss.to_numpy(),
            "grad_norm": grad.to_numpy(),
            "steps": loss.index.to_numpy(),
            "all_finite": bool(np.isfinite(loss).all() and np.isfinite(grad).all()),
            "max_grad_norm": _nanmax(grad),
            "max_loss": _nanmax(loss),
            "initial_loss": float(loss.iloc[0]),
            "final_loss": float(loss.iloc[-max(1, len(loss) // 10) :].mean()),
            "findings": sorted({f.kind for f in gw.diagnose(run)}),
        }

    # -- 4. training on the tasks ------------------------------------------------------
    numbers["training"] = {}
    for task in cfg.tasks:
        for length in cfg.lengths:
            data = (
                *task_data(task, cfg.train_size, length, seed + 1),
                *task_data(task, cfg.test_size, length, seed + 2),
            )
            d_in, d_out = data[0].shape[-1], 1 if task == "adding" else 4
            for ci, cell in enumerate(cfg.cells):
                bar.note(f"{NAME}: {task}, T = {length}, {cell}")
                torch.manual_seed(seed * 1000 + ci)
                model = build(cell, d_in, d_out, cfg)
                curve = train(
                    model,
                    task,
                    data,
                    steps=cfg.train_steps,
                    optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr),
                    batch_size=cfg.batch_size,
                    clip_norm=cfg.clip_norm,
                    run_dir=runs / f"{task}-T{length}-{cell}",
                    seed=seed,
                    every=cfg.record_every,
                    config={"experiment": NAME, "task": task, "length": length},
                    on_step=lambda _: bar.advance(),
                )
                numbers["training"][f"{task}/T{length}/{cell}"] = {
                    "task": task,
                    "length": length,
                    "cell": cell,
                    "curve": curve,  # [(step, test MSE or test error)]
                    "final": curve[-1][1],
                    "baseline": ADDING_BASELINE if task == "adding" else 0.75,
                }
    return numbers


def _global_grad_norm(run: Any) -> Any:
    """√(Σ_layers grad_norm²) per recorded step: the norm that clipping compares."""
    wide = run.pivot("grad_norm")
    return np.sqrt((wide.astype(float) ** 2).sum(axis=1, min_count=1))


def _nanmax(series: Any) -> float:
    """The largest value, +inf when any value is non-finite."""
    arr = np.asarray(series, dtype=float)
    return float("inf") if (~np.isfinite(arr)).any() else float(arr.max())


# Thresholds of the claims.
LSTM_OVER_RNN = 100.0  # ‖∂L/∂x_1‖/‖∂L/∂x_T‖: gated cell over vanilla RNN, at least
EXPLODE_ABOVE = 3.0  # the sweep's largest σ_max, in units of 1/γ, at least this
EXPLODED = 1e6  # a loss or gradient norm above this (or non-finite) has exploded
SOLVED = 0.1  # trained: test metric below this share of the trivial baseline
FAILED = 0.5  # not trained: test metric above this share of the trivial baseline


def claims(numbers: dict[str, Any]) -> list[Claim]:
    """The paper's claims, computed from the measured numbers (pure: no side effects).

    Args:
        numbers: ``result["numbers"]``: gradient flow per cell and length, the σ_max sweep,
            the clipping pair and the training results.

    Returns:
        the claims, each with its evidence.
    """
    numbers = from_jsonable(numbers)  # a record's "nan", "inf", "-inf" as floats
    flow = numbers["flow"]
    longest = max(numbers["lengths"])
    out: list[Claim] = []

    # 1. gated cells carry the gradient orders of magnitude further back
    ratio = {c: flow.get(f"{c}/T{longest}", {}).get("first_over_last") for c in CELLS}
    rnn = ratio.get("rnn")
    gated = {c: r for c, r in ratio.items() if c != "rnn" and r is not None}
    out.append(
        claim(
            f"At initialisation the gated cells keep far more of the gradient through time: at "
            f"T = {longest}, ‖∂L/∂x_1‖/‖∂L/∂x_T‖ of the LSTM and of the GRU is ≥ "
            f"{LSTM_OVER_RNN:g}× the vanilla RNN's",
            rnn is not None
            and rnn > 0
            and "lstm" in gated
            and all(r is not None and r >= LSTM_OVER_RNN * rnn for r in gated.values()),
            first_over_last=ratio,
            gated_over_rnn={c: (r / rnn if rnn else None) for c, r in gated.items()},
            factor=LSTM_OVER_RNN,
        )
    )

    # 2. the spectral condition: vanishing below 1/γ, exploding only beyond it
    gamma = numbers["gamma"]
    points = [f for f in flow.values() if f["cell"] == "rnn"] + list(numbers["sweep"])
    known = [p for p in points if p["sigma_max"] is not None]
    under = [
        {"sigma_max": p["sigma_max"], "length": p["length"], "decay_slope": p["decay_slope"]}
        for p in known
        if p["sigma_max"] < 1 / gamma
    ]
    top = max(known, key=lambda p: p["sigma_max"], default=None)
    top_slope = None if top is None else top["decay_slope"]
    out.append(
        claim(
            "The spectral condition separates the regimes: every vanilla RNN with σ_max(W_hh) "
            "< 1/γ (γ = 1 for tanh) has gradients that vanish back in time (fitted slope of "
            "ln‖∂L/∂x_t‖ per step back < 0), while the RNN with the largest σ_max, "
            f"≥ {EXPLODE_ABOVE:g}/γ, has gradients that grow back in time (slope > 0)",
            bool(under)
            and all(p["decay_slope"] is not None and p["decay_slope"] < 0 for p in under)
            and top is not None
            and top["sigma_max"] >= EXPLODE_ABOVE / gamma
            and top_slope is not None
            and top_slope > 0,
            below=under,
            largest={"sigma_max": None if top is None else top["sigma_max"], "slope": top_slope},
        )
    )

    # 3. clipping stops the explosion
    clip = numbers["clipping"]
    raw, clipped = clip.get("unclipped", {}), clip.get("clipped", {})

    def exploded(r: dict) -> bool:
        big = [r.get("max_grad_norm"), r.get("max_loss")]
        return not r.get("all_finite", True) or any(v is None or v > EXPLODED for v in big)

    out.append(
        claim(
            f"Gradient clipping stops the explosion: a vanilla RNN with σ_max(W_hh) = "
            f"{clip.get('sigma_max')} trained with SGD explodes without clipping (a non-finite "
            f"or > {EXPLODED:.0e} loss or gradient norm), and with clip_grad_norm_ every loss "
            "and gradient stays finite and the loss falls",
            bool(raw)
            and bool(clipped)
            and exploded(raw)
            and clipped.get("all_finite") is True
            and not exploded(clipped)
            and clipped.get("final_loss", math.inf) < clipped.get("initial_loss", -math.inf),
            unclipped={k: raw.get(k) for k in ("all_finite", "max_grad_norm", "max_loss")},
            clipped={
                k: clipped.get(k)
                for k in ("all_finite", "max_grad_norm", "initial_loss", "final_loss")
            },
            threshold=EXPLODED,
        )
    )

    # 4. training: gated cells solve the adding problem where the vanilla RNN does not
    train = {k: v for k, v in numbers.get("training", {}).items() if v["task"] == "adding"}
    at_longest = {v["cell"]: v["final"] for v in train.values() if v["length"] == longest}
    base_mse = ADDING_BASELINE
    out.append(
        claim(
            f"Trained on the adding problem at T = {longest}, the LSTM reaches a test MSE "
            f"below {SOLVED:g}× the trivial baseline (1/6) while the vanilla RNN stays above "
            f"{FAILED:g}× it (needs the full-size run)",
            at_longest.get("lstm", math.inf) < SOLVED * base_mse
            and at_longest.get("rnn", -math.inf) > FAILED * base_mse,
            scale="full",
            test_mse=at_longest,
            baseline=base_mse,
        )
    )
    return out
