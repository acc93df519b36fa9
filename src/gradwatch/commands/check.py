"""``gradwatch check``: one forward/backward pass on a batch, and what it says about gradients.

    gradwatch check FILE.py:FACTORY [--input-shape 8,3,32,32] [--targets classes:10] [--json]
                    [--precision fp16|bf16|e4m3|e5m2 [--loss-scale S]]

WARNING: this RUNS FILE.py: it is imported as a module (its top-level code executes, as
``python FILE.py`` would without the ``__main__`` block), then ``FACTORY()`` is called with no
arguments. FACTORY returns a model, or a tuple ``(model, inputs)`` or
``(model, inputs, targets)``; without inputs, a seeded ``torch.randn`` batch of
``--input-shape`` is used. ``--seed`` seeds torch (and Python's and NumPy's generators)
before ``FACTORY()`` runs, so the model's initial weights are the same from run to run, and
seeds the random batch and targets. Prints the verdict, the findings and a per-layer table
with a bar of log10 ‖∂L/∂output‖ (or, with ``--json``, ``{verdict, loss, findings, table,
temporal}``).
Exit code 0 whatever the verdict, unless ``--fail-on`` names it (``--fail-on
vanishing,exploding``, or ``any``): then 1, for CI. 2 with one line on stderr for a bad file,
factory, shape or option.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradwatch.commands.args import check_seed
from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.jsonable import jsonable

if TYPE_CHECKING:
    import torch
    from torch import nn

_SPEC_HINT = "write it as FILE.py:FACTORY, e.g. models.py:make_model"
#: Width of the log10 backprop_norm bar, in characters.
BAR_WIDTH = 12
#: Most per-layer rows printed; the middle of a longer table is elided.
MAX_ROWS = 40
#: Longest module type shown (``NonDynamicallyQuantizableLinear`` is ``NonDyna…izableLinear``).
TYPE_WIDTH = 20


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume 4 GiB
        return 2**32


#: Largest random input batch ``--input-shape`` may ask for (float32 bytes): 1 GiB, or a
#: quarter of the machine's memory when that is less. A check needs a few examples; a batch
#: near the memory size would be killed, or swap, instead of saying what is wrong.
MAX_INPUT_BYTES = min(2**30, _physical_memory() // 4)
#: Most classes ``--targets classes:K`` may name (labels are drawn as int64).
MAX_CLASSES = 2**31 - 1


def register(subparsers: Any) -> None:
    """Add the ``check`` command to the gradwatch parser."""
    parser = subparsers.add_parser(
        "check",
        help="one forward/backward pass on a batch: do the gradients vanish or explode?",
        description=(
            "Check a model's gradient flow with one forward/backward pass on a batch (the same "
            "statistics and diagnosis rules as a watched training run). WARNING: this imports "
            "and so RUNS FILE.py, then calls FACTORY() to get the model (or a (model, inputs) "
            "or (model, inputs, targets) tuple)."
        ),
    )
    add_model_arguments(parser, "loss 0.5·‖output‖²/N")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the model's weights (torch.manual_seed before FACTORY() is called) and of "
        "the random batch and targets (default 0): the same seed gives the same check",
    )
    parser.add_argument(
        "--eval", action="store_true", help="run the pass in eval mode (default: train mode)"
    )
    parser.add_argument("--json", action="store_true", help="print the checkup as JSON")
    parser.add_argument(
        "--precision", default=None, choices=("fp16", "bf16", "e4m3", "e5m2"),
        help="the format training would cast to: also measure what each layer's gradients "
        "and back-propagated signal would flush to zero or overflow in it",
    )
    parser.add_argument(
        "--loss-scale", type=float, default=None, metavar="S",
        help="with --precision: read the casts as if the loss were multiplied by S (e.g. "
        "65536, GradScaler's initial scale); default: no loss scaling",
    )
    parser.add_argument(
        "--fail-on", default=None, metavar="VERDICTS",
        help="exit with code 1 when the verdict is one of these, comma-separated (for CI), "
        f"e.g. vanishing,exploding; any of: {', '.join(FAIL_ON_CHOICES)}",
    )
    parser.set_defaults(func=run)


#: Verdicts ``--fail-on`` takes: ``gradwatch.verdicts.VERDICTS`` but "healthy", written out
#: here so that ``gradwatch check --help`` does not import torch (a test checks they agree),
#: and "any" for every verdict but healthy.
FAIL_ON_CHOICES = ("nonfinite", "exploding", "vanishing", "dead", "saturated", "uncertain",
                   "any")
#: Exit code of ``gradwatch check --fail-on`` when the verdict is one of those given.
FAIL_EXIT_CODE = 1


def fail_on(value: str | None) -> frozenset[str]:
    """The verdicts of ``--fail-on`` ("any": every verdict but healthy).

    Raises:
        GradwatchValueError: an empty list or a name that is not a verdict.
    """
    if value is None:
        return frozenset()
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in FAIL_ON_CHOICES]
    if not names or bad:
        what = f"{bad[0]!r} is not a verdict" if bad else "it names no verdict"
        raise GradwatchValueError(
            f"--fail-on {value!r}: {what}; give verdicts separated by commas, from "
            f"{', '.join(FAIL_ON_CHOICES)}, e.g. --fail-on vanishing,exploding"
        )
    if "any" in names:
        return frozenset(FAIL_ON_CHOICES) - {"any"}
    return frozenset(names)


def add_model_arguments(parser: argparse.ArgumentParser, default_loss: str) -> None:
    """FILE.py:FACTORY, --input-shape and --targets: how ``check`` and ``fix`` get a model."""
    parser.add_argument(
        "model",
        metavar="FILE.py:FACTORY",
        help="a Python file and a function in it that returns the model (the file is run)",
    )
    parser.add_argument(
        "--input-shape",
        default=None,
        help="shape of the random input batch (torch.randn, seeded), batch first, e.g. "
        "8,64 or 8,3,32,32; needed unless FACTORY returns (model, inputs)",
    )
    parser.add_argument(
        "--targets",
        default=None,
        metavar="classes:K",
        help="random integer class labels in [0, K) (cross-entropy loss); default: no "
        f"targets, {default_loss}",
    )


def run(args: argparse.Namespace) -> int:
    """Load the model, run gw.check, print the result; return the exit code."""
    from gradwatch.check import check

    check_seed(args.seed)
    failing = fail_on(args.fail_on)
    if args.input_shape is not None:
        input_dims(args.input_shape)  # a bad shape fails before FILE.py runs
    seed_everything(args.seed)  # the factory's weights are drawn from torch's generator
    model, inputs, targets = load_model(args.model)
    if inputs is None:
        if args.input_shape is None:
            raise GradwatchValueError(
                f"{args.model} gives no inputs; pass --input-shape, e.g. --input-shape 8,64"
            )
        inputs = random_inputs(args.input_shape, args.seed)
    if args.targets is not None:
        targets = random_targets(args.targets, _batch(inputs), args.seed)
    if args.loss_scale is not None and args.precision is None:
        raise GradwatchValueError(
            "--loss-scale needs --precision: name the format, e.g. --precision fp16"
        )
    cu = check(model, inputs, targets, train_mode=not args.eval, precision=args.precision,
               loss_scale=args.loss_scale)
    if args.json:
        print(json.dumps(jsonable(cu.to_dict()), allow_nan=False))
    else:
        print_checkup(cu)
    if cu.verdict in failing:
        if not args.json:
            print(f"gradwatch check: verdict {cu.verdict} is one of --fail-on "
                  f"{','.join(sorted(failing))}: exit code {FAIL_EXIT_CODE}", file=sys.stderr)
        return FAIL_EXIT_CODE
    return 0


# --------------------------------------------------------------------------- loading
def seed_everything(seed: int) -> None:
    """Seed torch's global generator (and Python's and NumPy's) before the factory runs.

    A factory builds its model with torch's global generator (``nn.Linear`` draws its
    weights from it), so the same ``--seed`` gives the same weights, and the same check.
    """
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(spec: str) -> tuple[nn.Module, Any, Any]:
    """Run ``FILE.py`` and call ``FACTORY()``: return (model, inputs or None, targets or None).

    Raises:
        GradwatchValueError: a malformed spec, a missing file or factory, or an error raised
            while running the file or the factory.
        GradwatchTypeError: the factory gives something other than a model (or a tuple
            starting with one).
    """
    from torch import nn  # here, not at the top: ``gradwatch --help`` must not load torch

    path_str, sep, name = spec.rpartition(":")
    if not sep or not path_str or not name:
        raise GradwatchValueError(f"model {spec!r} has no ':FACTORY' part; {_SPEC_HINT}")
    path = Path(path_str)
    if path.suffix != ".py":
        raise GradwatchValueError(f"model file {path_str!r} is not a .py file; {_SPEC_HINT}")
    if not path.is_file():
        raise GradwatchValueError(f"model file {path_str!r} does not exist; {_SPEC_HINT}")
    module = _run_file(path.resolve())
    factory = vars(module).get(name)
    if factory is None:
        found = sorted(k for k, v in vars(module).items() if not k.startswith("_") and callable(v))
        raise GradwatchValueError(
            f"model file {path_str!r} defines no {name!r}; functions in it: {found}"
        )
    if isinstance(factory, nn.Module):
        made: Any = factory
    elif callable(factory):
        try:
            made = factory()
        except Exception as err:  # noqa: BLE001 - the user's code: report it in one line
            raise GradwatchValueError(
                f"model factory {name}() in {path_str!r} raised {type(err).__name__}: {err}"
            ) from err
    else:
        raise GradwatchTypeError(
            f"model factory {name!r} in {path_str!r} is a {type(factory).__name__}, not a "
            "function; name a function that returns the model"
        )
    parts = made if isinstance(made, tuple) else (made,)
    if not parts or not isinstance(parts[0], nn.Module) or len(parts) > 3:
        raise GradwatchTypeError(
            f"model factory {name}() in {path_str!r} must return an nn.Module or a tuple "
            "(model, inputs[, "
            f"targets]), got {type(made).__name__}"
        )
    model = parts[0]
    inputs = parts[1] if len(parts) > 1 else None
    targets = parts[2] if len(parts) > 2 else None
    return model, inputs, targets


def _run_file(path: Path) -> Any:
    mod_name = f"_gradwatch_check_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise GradwatchValueError(f"model file {str(path)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up here
    sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's code: report it in one line
        sys.modules.pop(mod_name, None)
        raise GradwatchValueError(
            f"running model file {str(path)!r} raised {type(err).__name__}: {err}"
        ) from err
    finally:
        sys.path.remove(str(path.parent))
    return module


def input_dims(shape: str) -> tuple[int, ...]:
    """The dimensions of ``--input-shape`` ("8,64" -> (8, 64)), checked before allocating.

    Raises:
        GradwatchValueError: ``shape`` is not positive integers separated by commas, or the
            batch would take more than :data:`MAX_INPUT_BYTES`.
    """
    try:
        dims = tuple(int(d) for d in shape.split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise GradwatchValueError(
            f"--input-shape {shape!r} must be positive integers separated by commas, batch "
            "first, e.g. 8,64 or 8,3,32,32"
        )
    nbytes = 4 * math.prod(dims)  # float32
    if nbytes > MAX_INPUT_BYTES:
        raise GradwatchValueError(
            f"--input-shape {shape!r} would take {nbytes / 2**30:.3g} GiB for the input batch "
            f"alone (at most {MAX_INPUT_BYTES / 2**30:.3g} GiB); a few examples are enough for "
            "a check, e.g. 8,64"
        )
    return dims


def random_inputs(shape: str, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal float32 batch of ``shape`` ("8,64" -> (8, 64)).

    Raises:
        GradwatchValueError: as :func:`input_dims`.
    """
    import torch

    dims = input_dims(shape)
    return torch.randn(dims, generator=torch.Generator().manual_seed(seed))


def random_targets(spec: str, batch: int, seed: int = 0) -> torch.Tensor:
    """Seeded random class labels from ``"classes:K"``: shape (batch,), values in [0, K).

    Raises:
        GradwatchValueError: ``spec`` is not ``classes:K`` with K >= 2.
    """
    import torch

    kind, _, k = spec.partition(":")
    # ASCII digits only: "²".isdigit() is true, and int() refuses it
    if kind != "classes" or not (k.isascii() and k.isdigit()) or not 2 <= int(k) <= MAX_CLASSES:
        raise GradwatchValueError(
            f"--targets {spec!r} must be classes:K with 2 <= K <= {MAX_CLASSES:,} classes, e.g. "
            "classes:10"
        )
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, int(k), (batch,), generator=gen)


def _batch(inputs: Any) -> int:
    import torch

    x = inputs[0] if isinstance(inputs, tuple | list) else inputs
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise GradwatchValueError("--targets needs inputs with a batch dimension")
    return int(x.shape[0])


# ---------------------------------------------------------------------------- printing
def _bar(value: float, top: float) -> str:
    """The log10 bar of a value: the largest fills :data:`BAR_WIDTH` cells, 2 per decade."""
    from gradwatch.report.terminal import bar_cells

    if math.isnan(value) or value <= 0:  # not recorded for this layer, or zero
        return ""
    if math.isinf(value):
        return "!"
    return "█" * bar_cells(value, top, BAR_WIDTH)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def print_checkup(cu: Any, console: Any = None) -> None:
    """Print a checkup for people: verdict, findings, per-layer table with a log10 bar.

    Layer names never break inside a word: a name longer than the room the terminal leaves
    goes on to a second line after a ``.`` (``layer1.0.`` / ``conv1``).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from gradwatch.report.names import printable, shorten
    from gradwatch.report.terminal import DECADE_CELLS
    from gradwatch.wording import fold, name_room

    console = console or Console()
    colour = {"healthy": "green", "dead": "yellow", "saturated": "yellow"}.get(cu.verdict, "red")
    console.print(
        f"verdict: [bold {colour}]{cu.verdict}[/]   loss {cu.loss:.4g}   {len(cu.table)} layers"
    )
    for f in cu.findings:
        style = {"error": "red", "warning": "yellow"}.get(f.severity, "cyan")
        console.print(f"[{style}]{f.severity:>7}[/] [bold]{escape(printable(f.kind))}[/]: "
                      f"{escape(printable(f.message))}")
        if f.remedies:
            console.print(f"         try: {escape(printable(', '.join(f.remedies)))}",
                          style="dim")
    bp = [float(v) for v in cu.table["backprop_norm"] if math.isfinite(v) and v > 0]
    top = max(bp) if bp else 1.0
    rows = list(cu.table.itertuples(index=False))
    if len(rows) > MAX_ROWS:
        half = MAX_ROWS // 2
        rows = rows[:half] + [None] + rows[-half:]
    columns = [("type", "left", lambda r: shorten(str(r.type), TYPE_WIDTH)),
               ("‖∂L/∂out‖", "right", lambda r: _fmt(r.backprop_norm)),
               ("", "left", lambda r: _bar(r.backprop_norm, top)),
               ("‖∂L/∂W‖", "right", lambda r: _fmt(r.grad_norm))]
    # the dead and saturated fractions only where the model has such units
    for title, col in (("dead", "dead_frac"), ("sat.", "saturated_frac")):
        if cu.table[col].notna().any():
            columns.append((title, "right", lambda r, col=col: _fmt(getattr(r, col))))
    fmt = (cu.run.meta.get("checkup") or {}).get("precision")
    if fmt:  # what a cast to the format flushes (gradient, back-propagated) and overflows
        for title, col in (("flush ∂W", f"grad_underflow_{fmt}"),
                           ("flush ∂out", f"bp_underflow_{fmt}"),
                           ("overflow", f"grad_overflow_{fmt}")):
            columns.append((title, "right", lambda r, col=col: _fmt(getattr(r, col))))
    cells = [None if r is None else [get(r) for _, _, get in columns] for r in rows]
    widths = [max([len(title)] + [len(c[i]) for c in cells if c is not None])
              for i, (title, _, _) in enumerate(columns)]
    longest = max((len(printable(r.layer)) for r in rows if r is not None), default=5)
    room = min(longest, name_room(console.width, widths, boxed=True))
    table = Table(title="layers, input side first; bar: log10 ‖∂L/∂output‖, "
                        f"{DECADE_CELLS} cells per decade below the largest")
    table.add_column("layer", no_wrap=True)
    for title, just, _ in columns:
        table.add_column(title, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for r, c in zip(rows, cells, strict=True):
        if r is None or c is None:
            table.add_row("…", *([""] * len(columns)))
            continue
        table.add_row(escape(fold(printable(r.layer), room)), *(escape(x) for x in c))
    console.print(table)
    for layer, grp in cu.temporal.groupby("layer", sort=False):
        r = grp["ratio"].to_numpy()
        console.print(
            f"temporal flow in '{escape(printable(layer))}': ‖∂L/∂x_t‖/‖∂L/∂x_T‖ = "
            f"{r[0]:.3g} at t=0, {r[len(r) // 2]:.3g} at t={len(r) // 2}, over {len(r)} steps"
        )
