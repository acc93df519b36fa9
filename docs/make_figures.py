"""Regenerate every figure of the tutorial (docs/tutorial.md) and of docs/explain/theory.md.

    python docs/make_figures.py                  # the figures committed in docs/img/ (~1 min)
    python docs/make_figures.py --quick          # fewer steps and points, a few seconds
    python docs/make_figures.py --out DIR        # write somewhere else
    python docs/make_figures.py --only heatmap   # figures whose name contains "heatmap"

``--only theory`` redraws the two figures of docs/explain/theory.md (``theory_figures.py``:
gw.theory.predict against Monte Carlo on every configuration of benchmarks/theory_mc,
several minutes). Every other figure trains or checks the same small models as the
tutorial's code blocks (8 hidden layers of 32 units on scikit-learn's digits, plain SGD) and
draws them with gradwatch's own figure functions (:mod:`gradwatch.report.figures`) where one
exists, with plain matplotlib from a :class:`gradwatch.Run` or a Checkup otherwise. Runs are
kept in memory; nothing but the PNG files is written.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

import gradwatch as gw

try:  # gradwatch's figure functions (gradwatch.report.figures)
    from gradwatch.report import figures as gw_figures
except ImportError:  # pragma: no cover - an install without the report module
    gw_figures = None

IMG = Path(__file__).resolve().parent / "img"
DPI = 80


def mlp(depth: int = 8, width: int = 32, act: type[nn.Module] = nn.Sigmoid) -> nn.Sequential:
    """``depth`` hidden layers of [Linear, act], then a Linear classifier (as in the tutorial)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(64 if i == 0 else width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def sigmoid_standard() -> nn.Sequential:
    """The tutorial's failing network: sigmoid, Glorot & Bengio's "standard" init."""
    torch.manual_seed(0)
    model = mlp()
    gw.remedies.standard_init_(model)
    return model


def exploding_relu() -> nn.Sequential:
    """A ReLU net whose weights are 1.6x He's: the gradient grows toward the input."""
    torch.manual_seed(0)
    model = mlp(act=nn.ReLU)
    gw.remedies.he_init_(model)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(1.6)
    return model


def tanh_net(depth: int, width: int, sigma_w2: float, sigma_b2: float) -> nn.Sequential:
    """Tanh net with W ~ N(0, σw²/fan_in), b ~ N(0, σb²) (the mean-field setting)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, math.sqrt(sigma_w2 / m.in_features))
                m.bias.normal_(0.0, math.sqrt(sigma_b2))
    return model


class Seq(nn.Module):
    """A recurrent layer reading a sequence, and a linear head on its last output."""

    def __init__(self, cell: type[nn.Module], hidden: int = 32):
        super().__init__()
        self.rnn = cell(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 1) sequences -> (B, 1) predictions from the last step's output."""
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def new_figure(ncols: int = 1, size: tuple[float, float] = (7.0, 3.6)) -> tuple[Figure, list]:
    """An Agg figure outside pyplot (no global state) and its axes."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, list(axes.ravel())


@dataclass
class Lab:
    """The data, the runs and the checkups the figures are drawn from (each made once)."""

    quick: bool
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, object] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Training steps of every run."""
        return 30 if self.quick else 100

    @cached_property
    def data(self) -> tuple[torch.Tensor, ...]:
        """Standardised digits: x_train, y_train, x_test, y_test (1400 / 397)."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = torch.tensor(digits.target)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]

    def train(self, model: nn.Module, lr: float = 0.1, max_norm: float | None = None):
        """The tutorial's ``train``: SGD on minibatches of 64, watched; (Run, accuracy)."""
        x_train, y_train, x_test, y_test = self.data
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        batches = torch.Generator().manual_seed(1)
        with gw.watch(model, None, optimizer=opt) as mon:
            if max_norm is not None:
                gw.remedies.clip_on_step(opt, max_norm=max_norm)
            for _ in range(self.steps):
                idx = torch.randint(0, len(x_train), (64,), generator=batches)
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
                loss.backward()
                opt.step()
                mon.step(loss=loss)
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        return mon.run, acc

    @cached_property
    def sigmoid_run(self):
        """(Run, accuracy) of the sigmoid net with standard init."""
        return self.train(sigmoid_standard())

    @cached_property
    def relu_run(self):
        """(Run, accuracy) of the same net with its sigmoids swapped for ReLU (He re-init)."""
        model = sigmoid_standard()
        gw.remedies.swap_activation(model, "sigmoid", "relu")
        return self.train(model)

    def check(self, model: nn.Module):
        """``gw.check`` on the tutorial's batch of 256 training examples."""
        x_train, y_train, _, _ = self.data
        return gw.check(model, x_train[:256], y_train[:256])


# -- the figures ------------------------------------------------------------------------------


def sigmoid_derivative(lab: Lab) -> Figure:
    """Derivatives of sigmoid, tanh and ReLU: the sigmoid's never exceeds 1/4."""
    z = torch.linspace(-6, 6, 601, requires_grad=True)
    fig, (ax,) = new_figure(size=(6.0, 3.2))
    for name, fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("ReLU", torch.relu)):
        (grad,) = torch.autograd.grad(fn(z).sum(), z)
        ax.plot(z.detach(), grad, label=f"{name}'  (max {grad.max():.2f})")
    ax.axhline(0.25, ls=":", color="0.4", lw=1)
    ax.set_xlabel("pre-activation z")
    ax.set_ylabel("derivative φ'(z)")
    ax.set_title("the factor each activation contributes to the backward pass", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def sigmoid_gradient_flow(lab: Lab) -> Figure:
    """Back-propagated signal and weight gradient per layer of the sigmoid run."""
    run, _ = lab.sigmoid_run
    if gw_figures is not None:
        return gw_figures.gradient_flow(run, stat=("backprop_norm", "grad_norm"))
    fig, axes = new_figure(2, size=(11.0, 4.0))  # pragma: no cover - fallback
    for ax, stat in zip(axes, ("backprop_norm", "grad_norm"), strict=True):
        wide = run.pivot(stat)
        for step in (wide.index[0], wide.index[len(wide) // 2], wide.index[-1]):
            ax.plot(range(wide.shape[1]), wide.loc[step].to_numpy(), marker="o",
                    label=f"step {step}")
        ax.set_yscale("log")
        ax.set_xticks(range(wide.shape[1]), list(wide.columns))
        ax.set_xlabel("layer (input side → output side)")
        ax.set_title(stat)
        ax.legend(fontsize=8)
    return fig


def sigmoid_heatmap(lab: Lab) -> Figure:
    """``backprop_norm`` over layers × steps of the sigmoid run."""
    run, _ = lab.sigmoid_run
    if gw_figures is not None:
        return gw_figures.heatmap(run, "backprop_norm")
    from matplotlib.colors import LogNorm  # pragma: no cover - fallback

    wide = run.pivot("backprop_norm")
    fig, (ax,) = new_figure(size=(8.0, 4.0))
    mesh = ax.pcolormesh(wide.index, range(wide.shape[1]), wide.to_numpy().T, norm=LogNorm())
    fig.colorbar(mesh, ax=ax)
    ax.set_yticks(range(wide.shape[1]), list(wide.columns))
    ax.set_xlabel("step")
    ax.set_ylabel("layer (input side at the bottom)")
    return fig


def sigmoid_update_ratio(lab: Lab) -> Figure:
    """‖Δw‖/‖w‖ per layer of the sigmoid run: the input-side layers do not move."""
    run, _ = lab.sigmoid_run
    if gw_figures is not None:
        return gw_figures.update_ratio(run)
    wide = run.pivot("update_ratio")  # pragma: no cover - fallback
    fig, (ax,) = new_figure()
    ax.plot(range(wide.shape[1]), wide.iloc[-1].to_numpy(), marker="o")
    ax.set_yscale("log")
    ax.set_xticks(range(wide.shape[1]), list(wide.columns))
    ax.set_xlabel("layer (input side → output side)")
    ax.set_ylabel("update_ratio")
    return fig


def loss_sigmoid_vs_relu(lab: Lab) -> Figure:
    """Training loss of the sigmoid net and of the same net with ReLU."""
    fig, (ax,) = new_figure(size=(6.5, 3.4))
    for label, (run, acc) in (("sigmoid", lab.sigmoid_run), ("ReLU (He init)", lab.relu_run)):
        loss = run.loss()
        ax.plot(loss.index, loss.to_numpy(), label=f"{label}: test accuracy {acc:.0%}")
    ax.axhline(math.log(10), ls=":", color="0.4", lw=1)
    ax.text(0, math.log(10) + 0.03, "chance: ln 10", fontsize=8, color="0.4")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("same data, same batches, same optimizer", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def remedies(lab: Lab) -> Figure:
    """Back-propagated signal per weight layer, before and after each remedy (checkups)."""
    models = {
        "sigmoid, standard init": sigmoid_standard(),
        "swap_activation → ReLU": sigmoid_standard(),
        "insert_norm (batch norm)": gw.remedies.insert_norm(sigmoid_standard(), "batch"),
        "add_residual": gw.remedies.add_residual(sigmoid_standard()),
    }
    gw.remedies.swap_activation(models["swap_activation → ReLU"], "sigmoid", "relu")
    fig, (ax,) = new_figure(size=(6.5, 3.6))
    for label, model in models.items():
        table = lab.check(model).table
        linear = table[table["type"] == "Linear"]  # the 9 weight layers, input side first
        ax.plot(range(len(linear)), linear["backprop_ratio"].to_numpy(), marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("Linear layer (input side → output side)")
    ax.set_ylabel("backprop_norm / output side's")
    ax.set_title("gw.check before and after each remedy", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def clipping(lab: Lab) -> Figure:
    """Loss of the exploding ReLU net, without and with clipping by norm."""
    fig, (ax,) = new_figure(size=(6.5, 3.4))
    for label, max_norm in (("no clipping", None), ("clip_on_step(max_norm=1)", 1.0)):
        run, acc = lab.train(exploding_relu(), max_norm=max_norm)
        loss = run.loss()
        finite = np.isfinite(loss.to_numpy())
        line, = ax.plot(loss.index, np.where(finite, loss.to_numpy(), np.nan),
                        label=f"{label}: test accuracy {acc:.0%}")
        bad = loss.index[~finite]
        if len(bad):  # non-finite losses: crosses along the top edge
            ax.plot(bad, np.full(len(bad), 0.97), "x", color=line.get_color(), ms=4,
                    transform=ax.get_xaxis_transform(),
                    label=f"{label}: loss NaN/Inf ({len(bad)} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale)")
    ax.set_title("ReLU net with weights 1.6× He's, SGD lr 0.1", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def rnn_vs_lstm(lab: Lab) -> Figure:
    """Temporal gradient flow of a tanh RNN and of LSTMs (checkups on 50-step sequences)."""
    x = torch.randn(32, 50, 1, generator=torch.Generator().manual_seed(0))
    target = torch.randn(32, 1, generator=torch.Generator().manual_seed(1))
    frames = []
    for label, cell, forget_bias in (
        ("RNN (tanh)", nn.RNN, None),
        ("LSTM", nn.LSTM, None),
        ("LSTM, forget bias 1", nn.LSTM, 1.0),
        ("LSTM, forget bias 2", nn.LSTM, 2.0),
    ):
        torch.manual_seed(0)
        model = Seq(cell)
        if forget_bias is not None:
            h = model.rnn.hidden_size
            with torch.no_grad():  # PyTorch's gate order is (input, forget, cell, output)
                model.rnn.bias_ih_l0[h : 2 * h].fill_(forget_bias)
                model.rnn.bias_hh_l0[h : 2 * h].zero_()
        temporal = gw.check(model, x, target).temporal.copy()
        temporal["layer"] = label
        frames.append(temporal)
    df = pd.concat(frames, ignore_index=True)
    if gw_figures is not None:
        return gw_figures.temporal(df)
    fig, (ax,) = new_figure()  # pragma: no cover - fallback
    for label, grp in df.groupby("layer", sort=False):
        ax.plot(grp["t"], grp["ratio"], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("input time step t")
    ax.legend(fontsize=8)
    return fig


def edge_of_chaos(lab: Lab) -> Figure:
    """Per-layer gradient factor of deep tanh nets: measured (checkups) against √χ1."""
    sigma_b2 = 0.05
    grid = np.linspace(0.3, 4.5, 200)
    predicted = np.sqrt(gw.theory.chi1("tanh", grid, sigma_b2))
    crit = gw.theory.critical_sigma_w2("tanh", sigma_b2)
    points = (0.5, 1.76, 4.0) if lab.quick else (0.5, 1.0, 1.5, 1.76, 2.0, 3.0, 4.0)
    width, depth = (128, 10) if lab.quick else (256, 20)
    measured = []
    for sw2 in points:
        torch.manual_seed(0)
        model = tanh_net(depth, width, sw2, sigma_b2)
        table = gw.check(model, torch.randn(64, width)).table
        bp = table["backprop_norm"].to_numpy()[:-1]  # hidden layers, input side first
        slope = np.polyfit(np.arange(len(bp)), np.log(bp), 1)[0]
        measured.append(math.exp(-slope))  # factor per layer toward the input
    fig, (ax,) = new_figure(size=(6.5, 3.6))
    ax.plot(grid, predicted, label="mean-field √χ1 (gw.theory.chi1)")
    ax.plot(points, measured, "o", label=f"measured, {depth} tanh layers of {width}")
    ax.axhline(1.0, ls=":", color="0.4", lw=1)
    ax.axvline(crit, ls="--", color="0.4", lw=1)
    ax.text(crit + 0.05, 0.6, f"critical σw² = {crit:.2f}", fontsize=8)
    ax.text(0.35, 1.12, "ordered (χ1 < 1): vanishes", fontsize=8, color="0.3")
    ax.text(2.4, 0.8, "chaotic (χ1 > 1): explodes", fontsize=8, color="0.3")
    ax.set_xlabel("σw² (σb² = 0.05)")
    ax.set_ylabel("gradient factor per layer")
    ax.set_title("tanh: the edge of chaos", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def _theory_figures():
    """docs/theory_figures.py (the figures of docs/explain/theory.md), loaded from its file."""
    import importlib.util
    import sys

    name = "gradwatch_docs_theory_figures"
    if name not in sys.modules:
        path = Path(__file__).parent / "theory_figures.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _theory_rows(lab: Lab) -> list[dict]:
    if "theory_rows" not in lab.cache:
        lab.cache["theory_rows"] = _theory_figures().results(lab.quick)
    return lab.cache["theory_rows"]


def theory_predicted_vs_measured(lab: Lab) -> Figure:
    """gw.theory.predict against Monte Carlo, every layer of every configuration."""
    return _theory_figures().scatter(_theory_rows(lab))


def theory_profiles(lab: Lab) -> Figure:
    """Predicted and measured per-layer profiles of a few configurations."""
    return _theory_figures().profiles(_theory_rows(lab), lab.quick)


#: Every figure of the tutorial and of docs/explain/theory.md: file name
#: (docs/img/<name>.png) -> function drawing it.
FIGURES: dict[str, Callable[[Lab], Figure]] = {
    "sigmoid-derivative": sigmoid_derivative,
    "sigmoid-gradient-flow": sigmoid_gradient_flow,
    "sigmoid-heatmap": sigmoid_heatmap,
    "sigmoid-update-ratio": sigmoid_update_ratio,
    "loss-sigmoid-vs-relu": loss_sigmoid_vs_relu,
    "remedies": remedies,
    "clipping": clipping,
    "rnn-vs-lstm": rnn_vs_lstm,
    "edge-of-chaos": edge_of_chaos,
    "theory-predicted-vs-measured": theory_predicted_vs_measured,
    "theory-profiles": theory_profiles,
}


def make_figures(out: Path = IMG, quick: bool = False, only: str | None = None) -> list[Path]:
    """Draw the figures into ``out`` (created if missing); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest and reproducible
    lab = Lab(quick=quick)
    written = []
    try:
        for name, draw in FIGURES.items():
            if only and only not in name:
                continue
            started = time.perf_counter()
            fig = draw(lab)
            path = out / f"{name}.png"
            fig.savefig(path, dpi=DPI)
            written.append(path)
            lab.timings[name] = time.perf_counter() - started
            print(f"{path}  ({lab.timings[name]:.1f} s)")
    finally:
        torch.set_num_threads(threads)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and points (seconds)")
    ap.add_argument("--out", type=Path, default=IMG, help=f"output folder (default {IMG})")
    ap.add_argument("--only", default=None, help="only the figures whose name contains this")
    args = ap.parse_args(argv)
    make_figures(args.out, quick=args.quick, only=args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
