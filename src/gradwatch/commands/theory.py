"""``gradwatch theory``: mean-field predictions for an activation and an initialisation.

    gradwatch theory --activation tanh --sigma-w2 1.5 --sigma-b2 0.05 [--depth L] [--json]

prints q*, χ1, c*, the depth scales ξ_q, ξ_c, ξ_∇, the phase, the critical σw² at this σb²
and the trainable depth 6 ξ_c: a table for people, or exact JSON with --json (infinite
values written as the strings "inf" / "-inf", since JSON has no infinity: the convention of
:mod:`gradwatch.jsonable`).

References: Schoenholz et al. 2017, "Deep Information Propagation".
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gradwatch.jsonable import jsonable

#: ``gradwatch.theory.activations.KNOWN_ACTIVATIONS``, written out here so that
#: ``gradwatch theory --help`` does not import torch (a test checks they agree).
KNOWN_ACTIVATIONS = (
    "tanh", "relu", "leaky_relu", "sigmoid", "gelu", "elu", "selu", "softsign", "linear",
    "hard_tanh", "swish", "silu", "erf",
)

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
        help="mean-field predictions (q*, χ1, depth scales, phase) for an initialisation",
        description=(
            "Mean-field signal propagation for a wide network with W ~ N(0, σw²/fan_in) and "
            "b ~ N(0, σb²) (Poole et al. 2016; Schoenholz et al. 2017)."
        ),
    )
    parser.add_argument(
        "--activation",
        required=True,
        help=f"one of {', '.join(KNOWN_ACTIVATIONS)}, or leaky_relu:SLOPE",
    )
    parser.add_argument(
        "--sigma-w2", type=float, required=True, help="σw² = fan_in · Var(W), > 0 (He: 2)"
    )
    parser.add_argument(
        "--sigma-b2", type=float, default=0.0, help="σb² = Var(b), >= 0 (default 0)"
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="number of layers L: adds χ1^L and trainability"
    )
    parser.add_argument("--json", action="store_true", help="print exact JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute the summary and print it; return the exit code (gradwatch errors propagate)."""
    from gradwatch.theory.summary import summary

    result = summary(args.activation, args.sigma_w2, args.sigma_b2, depth=args.depth)
    if args.json:
        print(json.dumps(jsonable(result), allow_nan=False))
        return 0
    _print_table(result)
    return 0


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


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
