"""``gradwatch theory``: mean-field predictions, for a plain chain or a residual net / transformer.

    gradwatch theory --activation tanh --sigma-w2 1.5 --sigma-b2 0.05 [--depth L] [--json]

prints q*, χ1, c*, the depth scales ξ_q, ξ_c, ξ_∇, the phase, the critical σw² at this σb²
and the trainable depth 6 ξ_c of a plain chain: a table for people, or exact JSON with
--json (infinite values written as the strings "inf" / "-inf", since JSON has no infinity:
the convention of :mod:`gradwatch.jsonable`).

    gradwatch theory --activation relu --sigma-w2 2 --blocks 50 --residual-alpha 0.14
    gradwatch theory --attention --blocks 24 --norm post [--deepnorm]
    gradwatch theory --rnn tanh --steps 50

builds a residual MLP (branches of Linear layers with W ~ N(0, σw²/fan_in), scaled by α,
optionally normalised before the branch, after each sum or at the end) or a transformer
encoder (token and position embeddings, ``nn.TransformerEncoder`` layers each initialised on
their own, pre-LN or post-LN, or DeepNorm) from the settings, and prints what
``gw.theory.predict`` predicts for it: the verdict, the phase and each layer's attenuation
‖δ_layer‖²/‖δ_last‖². With ``--rnn`` it builds a vanilla ``nn.RNN`` and predicts its gradient
through time (:mod:`gradwatch.commands.theory_rnn`).

References: Schoenholz et al. 2017, "Deep Information Propagation"; Yang & Schoenholz 2017;
Xiong et al. 2020; Wang et al. 2022 (DeepNet); Kedia et al. 2024; Chen et al. 2018.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from gradwatch.commands import theory_rnn
from gradwatch.errors import GradwatchValueError
from gradwatch.jsonable import jsonable

#: ``gradwatch.theory.activations.KNOWN_ACTIVATIONS``, written out here so that
#: ``gradwatch theory --help`` does not import torch (a test checks they agree).
KNOWN_ACTIVATIONS = (
    "tanh",
    "relu",
    "leaky_relu",
    "sigmoid",
    "gelu",
    "elu",
    "selu",
    "softsign",
    "linear",
    "hard_tanh",
    "swish",
    "silu",
    "erf",
)
#: Most blocks a model built from settings may have.
MAX_BLOCKS = 1000

#: (key, label, explanation) of each row of the human-readable table, in order.
_ROWS = [
    ("q_star", "q*", "fixed-point pre-activation variance"),
    ("chi1", "χ1", "per-layer factor of ‖backprop‖² (<1 vanishes, >1 explodes)"),
    ("c_star", "c*", "fixed-point correlation of two inputs"),
    ("xi_q", "ξ_q", "depth over which the length settles"),
    ("xi_c", "ξ_c", "depth over which correlations are forgotten"),
    ("xi_grad", "ξ_∇", "gradient depth scale (negative: exploding)"),
    ("phase", "phase", "ordered (χ1<1), critical (χ1≈1) or chaotic (χ1>1)"),
    ("critical_sigma_w2", "critical σw²", "σw² with χ1 = 1 at this σb²"),
    ("trainable_depth", "trainable depth", "about 6 ξ_c"),
    ("gradient_ratio", "‖δ_0‖²/‖δ_L‖²", "predicted over depth L: χ1^L"),
    ("trainable", "trainable", "L <= 6 ξ_c"),
]


def register(subparsers: Any) -> None:
    """Add the ``theory`` command to the gradwatch parser."""
    parser = subparsers.add_parser(
        "theory",
        help="mean-field predictions for an initialisation, a residual net or a transformer",
        description=(
            "Mean-field signal propagation for a wide network with W ~ N(0, σw²/fan_in) and "
            "b ~ N(0, σb²) (Poole et al. 2016; Schoenholz et al. 2017); with --blocks, the "
            "prediction for a residual MLP or a transformer built from the settings (Yang & "
            "Schoenholz 2017; Xiong et al. 2020; Kedia et al. 2024)."
        ),
    )
    parser.add_argument(
        "--activation",
        default=None,
        help=f"one of {', '.join(KNOWN_ACTIVATIONS)}, or leaky_relu:SLOPE (required without "
        "--attention; with it, relu or gelu, default relu)",
    )
    parser.add_argument(
        "--sigma-w2",
        type=float,
        default=None,
        help="σw² = fan_in · Var(W), > 0 (He: 2); required without --attention",
    )
    parser.add_argument(
        "--sigma-b2", type=float, default=0.0, help="σb² = Var(b), >= 0 (default 0)"
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=None,
        help="layers L of a plain chain: adds χ1^L and trainability",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=None,
        help="residual blocks (or transformer layers): predict that model instead",
    )
    parser.add_argument(
        "--residual-alpha",
        type=float,
        default=None,
        help="scale α of each residual branch, x + α·f(x) (default 1; DeepNorm: (2N)^¼ on x)",
    )
    parser.add_argument(
        "--norm",
        choices=("none", "pre", "post"),
        default=None,
        help="where the norm sits: before each branch (pre), after each sum (post), or none "
        "(default none for MLP blocks, pre for --attention)",
    )
    parser.add_argument(
        "--norm-type",
        choices=("layer", "rms", "batch"),
        default="layer",
        help="LayerNorm, RMSNorm or BatchNorm (MLP blocks; attention uses LayerNorm)",
    )
    parser.add_argument(
        "--final-norm",
        action="store_true",
        help="a norm after the last block (MLP blocks; pre-LN transformers always have one)",
    )
    parser.add_argument(
        "--branch-layers", type=int, default=2, help="Linear layers per MLP branch (default 2)"
    )
    parser.add_argument(
        "--attention", action="store_true", help="transformer blocks (attention + FFN)"
    )
    parser.add_argument(
        "--deepnorm",
        action="store_true",
        help="DeepNorm (post-LN, α = (2N)^¼, β = (8N)^-¼ init; Wang et al. 2022)",
    )
    parser.add_argument(
        "--width", type=int, default=None, help="features per row (default 128 MLP, 64 attention)"
    )
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per sequence (default 16)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the weights and the probe batch"
    )
    theory_rnn.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print exact JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute the prediction and print it; return the exit code (gradwatch errors propagate)."""
    if args.rnn is None and (args.steps is not None or args.read != "last" or args.layers != 1):
        raise GradwatchValueError(
            "--steps, --layers and --read describe an RNN: give --rnn as well"
        )
    if args.rnn is None and args.blocks is None:
        return _run_chain(args)
    from gradwatch.theory import predict

    if args.rnn is not None:  # a recurrent net, through time
        settings = theory_rnn.settings_of(args)
        model, inputs = theory_rnn.build(settings)
    else:
        settings = _settings(args)
        model, inputs = _build(settings)
    pred = predict(model, inputs=inputs)
    if args.json:
        print(
            json.dumps(
                jsonable({"settings": settings, "prediction": pred.to_dict()}), allow_nan=False
            )
        )
        return 0
    if args.rnn is not None:
        theory_rnn.print_prediction(settings, pred)
    else:
        _print_prediction(settings, pred)
    return 0


def _run_chain(args: argparse.Namespace) -> int:
    for flag, value in (
        ("--residual-alpha", args.residual_alpha),
        ("--norm", args.norm),
        ("--final-norm", args.final_norm or None),
        ("--attention", args.attention or None),
        ("--deepnorm", args.deepnorm or None),
    ):
        if value is not None:
            raise GradwatchValueError(
                f"{flag} describes a residual net or a transformer: give --blocks N as well"
            )
    if args.activation is None or args.sigma_w2 is None:
        raise GradwatchValueError(
            "--activation and --sigma-w2 are required (e.g. --activation tanh --sigma-w2 1.5); "
            "or give --attention --blocks N for a transformer"
        )
    from gradwatch.theory.summary import summary

    result = summary(args.activation, args.sigma_w2, args.sigma_b2, depth=args.depth)
    if args.json:
        print(json.dumps(jsonable(result), allow_nan=False))
        return 0
    _print_table(result)
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Check the residual / transformer settings; return them as a plain dict."""
    blocks = args.blocks
    if not 1 <= blocks <= MAX_BLOCKS:
        raise GradwatchValueError(f"--blocks must be between 1 and {MAX_BLOCKS}, got {blocks}")
    if args.depth is not None:
        raise GradwatchValueError(
            "--depth is the depth of a plain chain; with --blocks the depth is the number of "
            "blocks: drop --depth"
        )
    alpha = args.residual_alpha
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise GradwatchValueError(
            f"--residual-alpha must be a finite number > 0, got {alpha}; e.g. 1/√blocks = "
            f"{1 / math.sqrt(blocks):.3g}"
        )
    if not (math.isfinite(args.sigma_b2) and args.sigma_b2 >= 0):
        raise GradwatchValueError(f"--sigma-b2 must be finite and >= 0, got {args.sigma_b2}")
    if args.attention:
        act = args.activation or "relu"
        if act not in ("relu", "gelu"):
            raise GradwatchValueError(
                f"--activation must be relu or gelu with --attention (nn.TransformerEncoderLayer's "
                f"choices), got {act!r}"
            )
        if args.sigma_w2 is not None:
            raise GradwatchValueError(
                "--sigma-w2 sets MLP blocks' weights; transformer blocks keep PyTorch's "
                "initialisation (DeepNorm: --deepnorm): drop --sigma-w2"
            )
        norm = args.norm or "pre"
        if norm == "none":
            raise GradwatchValueError(
                "--attention needs --norm pre or post (nn.TransformerEncoderLayer)"
            )
        if args.deepnorm and norm != "post":
            raise GradwatchValueError("--deepnorm is a post-LN scheme: use --norm post")
        if args.deepnorm and alpha is not None:
            raise GradwatchValueError("--deepnorm sets α = (2N)^¼ itself: drop --residual-alpha")
        if args.norm_type != "layer" or args.final_norm:
            raise GradwatchValueError(
                "--norm-type and --final-norm apply to MLP blocks; transformer layers use "
                "LayerNorm (pre-LN adds a final one)"
            )
        width = 64 if args.width is None else args.width
        if width < 1 or args.heads < 1 or width % args.heads:
            raise GradwatchValueError(
                f"--width ({width}) must be a positive multiple of --heads ({args.heads})"
            )
        if not 1 <= args.seq_len <= 256:
            raise GradwatchValueError(f"--seq-len must be between 1 and 256, got {args.seq_len}")
        if alpha is not None:
            raise GradwatchValueError(
                "--residual-alpha applies to MLP blocks (nn.TransformerEncoderLayer adds its "
                "branches unscaled); for a scaled post-LN transformer use --deepnorm"
            )
        return {
            "kind": "deepnorm" if args.deepnorm else "transformer",
            "blocks": blocks,
            "norm": norm,
            "activation": act,
            "width": width,
            "heads": args.heads,
            "seq_len": args.seq_len,
            "seed": args.seed,
        }
    if args.deepnorm:
        raise GradwatchValueError("--deepnorm is a transformer scheme: give --attention as well")
    if args.activation is None or args.sigma_w2 is None:
        raise GradwatchValueError(
            "MLP blocks need --activation and --sigma-w2 (the branch Linear layers' "
            "initialisation), e.g. --activation relu --sigma-w2 2"
        )
    if not (math.isfinite(args.sigma_w2) and args.sigma_w2 > 0):
        raise GradwatchValueError(f"--sigma-w2 must be finite and > 0, got {args.sigma_w2}")
    width = 128 if args.width is None else args.width
    if width < 2:
        raise GradwatchValueError(f"--width must be at least 2, got {width}")
    if args.branch_layers < 1:
        raise GradwatchValueError(f"--branch-layers must be at least 1, got {args.branch_layers}")
    return {
        "kind": "residual_mlp",
        "blocks": blocks,
        "activation": args.activation,
        "sigma_w2": args.sigma_w2,
        "sigma_b2": args.sigma_b2,
        "residual_alpha": 1.0 if alpha is None else alpha,
        "norm": args.norm or "none",
        "norm_type": args.norm_type,
        "final_norm": args.final_norm,
        "branch_layers": args.branch_layers,
        "width": width,
        "seed": args.seed,
    }


def _activation_module(name: str):
    from torch import nn

    from gradwatch.theory.activations import resolve_activation

    act = resolve_activation(name)  # a clear error for an unknown name
    simple = {
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "softsign": nn.Softsign,
        "linear": nn.Identity,
        "hard_tanh": nn.Hardtanh,
        "swish": nn.SiLU,
        "silu": nn.SiLU,
    }
    if act.name.startswith("leaky_relu"):
        slope = act.slopes[1] if act.slopes else 0.01
        return lambda: nn.LeakyReLU(slope)
    if act.name not in simple:
        raise GradwatchValueError(
            f"--activation {name!r} has no torch.nn module to build blocks with; use one of "
            f"{', '.join(sorted(simple))} or leaky_relu:SLOPE"
        )
    return simple[act.name]


def _build(settings: dict[str, Any]):
    """The model the settings describe, and its probe batch."""
    import torch
    from torch import nn

    from gradwatch.experiments.architectures import DeepNormEncoder, ResidualMLP, TokenEncoder

    torch.manual_seed(settings["seed"])
    gen = torch.Generator().manual_seed(settings["seed"] + 1)
    if settings["kind"] == "residual_mlp":
        kind = {"layer": "ln", "rms": "rms", "batch": "bn"}[settings["norm_type"]]
        width = settings["width"]
        model = ResidualMLP(
            width,
            width,
            settings["blocks"],
            _activation_module(settings["activation"]),
            settings["residual_alpha"],
            sigma_w2=settings["sigma_w2"],
            pre_norm=kind if settings["norm"] == "pre" else None,
            post_norm=kind if settings["norm"] == "post" else None,
            final_norm=kind if settings["final_norm"] else None,
            branch_layers=settings["branch_layers"],
        )
        if settings["sigma_b2"] > 0:
            with torch.no_grad():
                for block in model.blocks:
                    for m in block:
                        if isinstance(m, nn.Linear):
                            m.bias.normal_(0.0, math.sqrt(settings["sigma_b2"]))
        return model, (torch.randn(64 if kind == "bn" else 32, width, generator=gen),)
    d, t = settings["width"], settings["seq_len"]
    vocab = 32
    if settings["kind"] == "deepnorm":
        model = DeepNormEncoder(
            settings["blocks"], d=d, heads=settings["heads"], vocab=vocab, length=t
        )
    else:
        model = TokenEncoder(
            settings["blocks"],
            settings["norm"] == "pre",
            d=d,
            heads=settings["heads"],
            vocab=vocab,
            length=t,
            activation=settings["activation"],
        )
    return model, (torch.randint(0, vocab, (4, t), generator=gen),)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _cell(value: Any) -> str:
    value = float(value)
    return _format(value) if math.isfinite(value) else "–"


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{result['activation']}, σw² = {result['sigma_w2']:g}, σb² = {result['sigma_b2']:g}"
        + (f", depth {result['depth']}" if "depth" in result else "")
    )
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("meaning", style="dim")
    for key, label, meaning in _ROWS:
        if key in result:
            table.add_row(label, _format(result[key]), meaning)
    Console().print(table)


def _print_prediction(settings: dict[str, Any], pred: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    title = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "kind")
    console = Console()
    console.print(f"[bold]{settings['kind'].replace('_', ' ')}[/bold]: {title}")
    console.print(pred.summary())
    table = Table(
        title="predicted per layer (input side first)",
        caption="attenuation = ‖δ‖²/‖δ_last‖², δ = ∂L/∂(layer output); q = mean square of "
        "the output; – : no output of its own (its parent uses its weights) or no rule",
    )
    table.add_column("layer", no_wrap=True)
    table.add_column("type", max_width=14, overflow="ellipsis", no_wrap=True)
    table.add_column("q", justify="right", no_wrap=True)
    table.add_column("attenuation", justify="right", no_wrap=True)
    for row in pred.table.itertuples(index=False):
        table.add_row(str(row.layer), str(row.type), _cell(row.q), _cell(row.attenuation))
    console.print(table)
