"""``gradwatch theory --rnn tanh|relu|lstm|gru --steps T``: a recurrent net's gradient through time.

    gradwatch theory --rnn tanh --steps 50 [--layers 2] [--width 128] [--input-size 32]
                     [--read last|every] [--sigma-w2 S] [--seed 0] [--json]

builds an ``nn.RNN`` (tanh or relu), ``nn.LSTM`` or ``nn.GRU`` (batch first) with a linear
head on the last step's output (``--read last``: a sequence classifier) or on every step's
(``--read every``: sequence labelling),
at PyTorch's default initialisation or with W_hh ~ N(0, S/width) (``--sigma-w2 S``), runs it
on 16 standard Gaussian sequences and prints what ``gw.theory.predict`` predicts through
time: the verdict, the phase (χ* per step) and ‖∂L/∂x_t‖² relative to the last step at the
input of each layer (Chen, Pennington & Schoenholz 2018).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from gradwatch.errors import GradwatchValueError

#: Most steps a sequence built from settings may have.
MAX_STEPS = 10_000
#: Flags of the other kinds of model that do not describe an RNN.
_OTHER_FLAGS = (
    ("--activation", "activation"),
    ("--sigma-b2", "sigma_b2"),
    ("--depth", "depth"),
    ("--blocks", "blocks"),
    ("--residual-alpha", "residual_alpha"),
    ("--norm", "norm"),
    ("--final-norm", "final_norm"),
    ("--attention", "attention"),
    ("--deepnorm", "deepnorm"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The RNN options of ``gradwatch theory``."""
    parser.add_argument(
        "--rnn",
        choices=("tanh", "relu", "lstm", "gru"),
        default=None,
        help="an nn.RNN with this nonlinearity, or an nn.LSTM / nn.GRU: predict its gradient "
        "through time",
    )
    parser.add_argument("--steps", type=int, default=None, help="sequence length (with --rnn)")
    parser.add_argument("--layers", type=int, default=1, help="nn.RNN layers (default 1)")
    parser.add_argument(
        "--input-size", type=int, default=32, help="input features per step (default 32)"
    )
    parser.add_argument(
        "--read",
        choices=("last", "every"),
        default="last",
        help="the head reads the last step (default) or every step",
    )


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """Check the RNN settings; return them as a plain dict."""
    defaults = {"sigma_b2": 0.0, "final_norm": False, "attention": False, "deepnorm": False}
    for flag, key in _OTHER_FLAGS:
        value = getattr(args, key, None)
        if value is not None and value != defaults.get(key):
            raise GradwatchValueError(
                f"{flag} describes a plain chain, a residual net or a transformer; with --rnn "
                "give --steps, --layers, --width, --input-size, --read and --sigma-w2 only"
            )
    if args.steps is None or not 2 <= args.steps <= MAX_STEPS:
        raise GradwatchValueError(
            f"--rnn needs --steps between 2 and {MAX_STEPS} (the sequence length), got {args.steps}"
        )
    if not 1 <= args.layers <= 16:
        raise GradwatchValueError(f"--layers must be between 1 and 16, got {args.layers}")
    width = 128 if args.width is None else args.width
    if not 1 <= width <= 4096 or not 1 <= args.input_size <= 4096:
        raise GradwatchValueError(
            f"--width ({width}) and --input-size ({args.input_size}) must be between 1 and 4096"
        )
    sw2 = args.sigma_w2
    if sw2 is not None and not (math.isfinite(sw2) and sw2 > 0):
        raise GradwatchValueError(f"--sigma-w2 must be finite and > 0, got {sw2}")
    return {
        "kind": "rnn",
        "cell": args.rnn,
        "steps": args.steps,
        "layers": args.layers,
        "width": width,
        "input_size": args.input_size,
        "read": args.read,
        "sigma_w2": sw2,
        "seed": args.seed,
    }


def build(settings: dict[str, Any]):
    """The RNN with its head, and 16 standard Gaussian sequences (batch first)."""
    import torch
    from torch import nn

    class Sequence(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cell, kw = nn.RNN, {"nonlinearity": settings["cell"]}
            if settings["cell"] in ("lstm", "gru"):
                cell, kw = {"lstm": nn.LSTM, "gru": nn.GRU}[settings["cell"]], {}
            self.rnn = cell(
                settings["input_size"],
                settings["width"],
                num_layers=settings["layers"],
                batch_first=True,
                **kw,
            )
            self.head = nn.Linear(settings["width"], 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out if settings["read"] == "every" else out[:, -1])

    torch.manual_seed(settings["seed"])
    model = Sequence()
    if settings["sigma_w2"] is not None:
        std = math.sqrt(settings["sigma_w2"] / settings["width"])
        for k in range(settings["layers"]):
            nn.init.normal_(getattr(model.rnn, f"weight_hh_l{k}"), std=std)
    gen = torch.Generator().manual_seed(settings["seed"] + 1)
    x = torch.randn(16, settings["steps"], settings["input_size"], generator=gen)
    return model, (x,)


def print_prediction(settings: dict[str, Any], pred: Any) -> None:
    """The verdict, and a table of some steps of each layer, for people."""
    from rich.console import Console
    from rich.table import Table

    title = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "kind" and v is not None)
    console = Console()
    console.print(f"[bold]{settings['cell']}[/bold]: {title}")
    console.print(pred.summary())
    if not len(pred.table):
        return
    table = Table(
        title="predicted through time (first step first)",
        caption="attenuation = ‖∂L/∂x_t‖² / ‖∂L/∂x_last‖² at the layer's input; q = mean "
        "square of the pre-activation; χ = σ²_hh ∫Dz φ'(√q z)², the per-step factor",
    )
    for col in ("layer", "t", "q", "χ", "attenuation"):
        table.add_column(col, justify="right", no_wrap=True)
    steps = int(pred.table["t"].max()) + 1
    shown = sorted({0, 1, 2, steps // 2, steps - 3, steps - 2, steps - 1} & set(range(steps)))
    for row in pred.table.itertuples(index=False):
        if row.t in shown:
            table.add_row(
                str(row.rnn_layer), str(row.t), _num(row.q), _num(row.chi1), _num(row.attenuation)
            )
    console.print(table)


def _num(value: Any) -> str:
    value = float(value)
    return f"{value:.4g}" if math.isfinite(value) else "–"
