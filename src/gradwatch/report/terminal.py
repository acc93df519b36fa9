"""The terminal summary: verdict, findings, and gradient flow as one bar per layer.

Printed by ``gradwatch report``, ``gradwatch check`` and ``gradwatch demo``. Every string that
comes from the model or the run (layer names, messages) is printed as plain text, never parsed
as rich markup, its control characters made visible (:func:`.names.printable`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gradwatch.argcheck import check_int
from gradwatch.errors import GradwatchTypeError
from gradwatch.report._data import (
    as_run,
    findings_and_verdict,
    is_checkup,
    nonfinite_layers,
    wide,
)
from gradwatch.report.names import printable
from gradwatch.wording import fold, name_room

#: Colour of each verdict; anything else (a problem) is red.
VERDICT_STYLE = {"healthy": "bold green", "not diagnosed": "bold yellow", "stalled": "bold yellow"}
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "error": "bold red"}
BAR_WIDTH = 30
#: Cells of a flow bar per decade: the largest layer fills :data:`BAR_WIDTH` cells, a layer
#: one decade (10×) below it two cells less, one fifteen decades below it a single cell. The
#: scale is fixed, so a healthy net (all layers within a decade) shows bars of nearly equal
#: length, whatever its spread.
DECADE_CELLS = 2
#: Longest line of a layer name in the gradient-flow table; longer names, and names that do
#: not fit a narrow terminal, go on to the next line after a "." (never inside a word).
NAME_WIDTH = 32


def bar_cells(value: float, top: float, width: int = BAR_WIDTH) -> int:
    """Length in cells of the flow bar of ``value`` when the largest value is ``top``.

    A log scale with a fixed step: ``width`` cells for ``top``, :data:`DECADE_CELLS` cells
    less per decade below it, never less than one cell.

    Args:
        value: a finite positive value (e.g. a layer's ``backprop_norm``).
        top: the largest value of the table (finite, positive, >= ``value``).
        width: the length of the longest bar.
    """
    decades = math.log10(top) - math.log10(value)
    return max(1, min(width, width - int(round(decades * DECADE_CELLS))))


def print_summary(run_or_checkup: Any, console: Console | None = None, max_layers: int = 60) -> str:
    """Print the verdict, the findings and the per-layer gradient flow of a run or checkup.

    How to read the bars: one row per layer, input side first (top). Each bar is the layer's
    ``backprop_norm`` (‖∂L/∂output‖) at the last recorded step (after a blow-up: the last
    step that still had finite values, as the title says) on a log scale with a fixed step:
    the largest layer fills the bar, and every decade (10×) below it takes 2 cells off
    (fifteen decades or more: one cell). The value and how many decades (dec) it lies below the
    largest are printed beside it. Bars of nearly equal length are a healthy flow; bars that
    shrink towards the top are a vanishing gradient, bars that grow towards the top an
    exploding one.

    Args:
        run_or_checkup: a Run, a run directory path, or a Checkup.
        console: the rich Console to print to (default: a new one on stdout).
        max_layers: at most this many layer rows (the first and last halves of a deeper net).

    Returns:
        the verdict printed.
    """
    if console is not None and not isinstance(console, Console):
        raise GradwatchTypeError(
            f"console must be a rich.console.Console or None, got {type(console).__name__}"
        )
    check_int("max_layers", max_layers, minimum=1)
    console = console or Console()
    checkup = run_or_checkup if is_checkup(run_or_checkup) else None
    run = as_run(run_or_checkup)
    findings, verdict, source = findings_and_verdict(run, checkup)

    title = Text("gradwatch ")
    title.append(printable(run.meta.get("name") or (run.path.name if run.path else "checkup")))
    head = Text("verdict: ")
    head.append(verdict.upper(), style=VERDICT_STYLE.get(verdict, "bold red"))
    steps = run.steps
    head.append(
        f"   {len(run.layers)} layers, {len(steps)} recorded steps"
        + (f" ({steps[0]}..{steps[-1]})" if steps else "")
        + (f"   [{source}]" if source not in ("stored", "diagnosed", "checkup") else ""),
        style="dim",
    )
    parts: list[Any] = [head]
    if findings:
        parts.append(_findings_block(findings))
    else:
        parts.append(Text("no findings" if source != "not diagnosed" else source, style="dim"))
    parts.append(_flow_table(run, max_layers, console.width))
    temporal = getattr(checkup, "temporal", None)
    if temporal is not None and len(temporal):
        parts.append(_temporal_lines(temporal))
    console.print(Panel(Group(*parts), title=title, title_align="left", expand=False))
    return verdict


def _findings_block(findings: list[Any]) -> Group:
    """One block per finding: severity and kind, where and when, the message, what to try."""
    blocks: list[Any] = []
    for f in findings:
        head = Text("● ", style=SEVERITY_STYLE.get(f.severity, ""))
        head.append(f"{f.severity.upper()} ", style=SEVERITY_STYLE.get(f.severity, ""))
        head.append(printable(f.kind), style="bold")
        where = []
        if f.steps is not None:
            where.append(f"steps {f.steps[0]}–{f.steps[1]}")
        if f.layers:
            shown = f.layers if len(f.layers) <= 5 else f.layers[:4]  # never "…" for one
            more = f", … ({len(f.layers)} layers)" if len(shown) < len(f.layers) else ""
            where.append("layers " + ", ".join(printable(x) for x in shown) + more)
        if where:
            head.append("   " + "; ".join(where), style="dim")
        blocks.append(head)
        blocks.append(Padding(Text(printable(f.message)), (0, 0, 0, 2)))
        if f.remedies:
            tries = Text("try: ", style="dim")
            tries.append(printable(", ".join(f.remedies)), style="cyan")
            blocks.append(Padding(tries, (0, 0, 0, 2)))
    return Group(*blocks)


def _flow_table(run: Any, max_layers: int, width: int = 120) -> Table | Text:
    table = wide(run, "backprop_norm")
    if table.empty:
        return Text("gradient flow: backprop_norm not recorded in this run", style="dim")
    values_all = table.to_numpy(dtype=float)
    usable = np.flatnonzero((np.isfinite(values_all) & (values_all > 0)).any(axis=1))
    # the last step with a drawable value: after a blow-up, the flow just before it
    row = int(usable[-1]) if len(usable) else len(table) - 1
    step = int(table.index[row])
    title = f"gradient flow: backprop_norm at step {step}, input side first"
    if row < len(table) - 1:
        title += f"; NaN/Inf from step {int(table.index[row + 1])} on"
    names = list(table.columns)
    values = values_all[row]
    recorded = set(nonfinite_layers(run, "backprop_norm", step)) | {
        ly for ly, v in zip(names, values, strict=True) if not math.isnan(v)
    }
    # the panel's border and padding take 4 columns; the value and "below max" columns 10
    room = min(NAME_WIDTH, name_room(width - 4, [BAR_WIDTH, 10, 10], boxed=False))
    out = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
                caption=f"bar: log scale, {DECADE_CELLS} cells per decade below the largest",
                caption_justify="left", caption_style="dim")
    out.add_column("layer", no_wrap=True)
    out.add_column("", min_width=BAR_WIDTH, no_wrap=True)
    out.add_column("value", justify="right", no_wrap=True)
    out.add_column("below max", justify="right", style="dim", no_wrap=True)
    logs = np.full(len(values), np.nan)
    good = np.isfinite(values) & (values > 0)
    logs[good] = np.log10(values[good])
    hi = np.nanmax(logs) if good.any() else math.nan
    rows = list(range(len(names)))
    if len(rows) > max_layers:
        half = max_layers // 2
        rows = rows[:half] + [-1] + rows[-half:]
    for i in rows:
        if i < 0:
            out.add_row(Text("…", style="dim"), Text(""), Text(""), Text(""))
            continue
        v = values[i]
        below = ""
        if math.isnan(v) and names[i] not in recorded:
            bar, val = Text("not recorded", style="dim"), Text("-")
        elif not math.isfinite(v):
            bar, val = Text("non-finite", style="bold red"), Text(f"{v}", style="red")
        elif v <= 0:
            bar, val = Text("· zero", style="red"), Text("0")
        else:
            n = bar_cells(v, 10.0**hi)
            dec = hi - logs[i]
            style = "green" if dec < 1 else "yellow" if dec < 3 else "red"
            bar = Text("█" * n, style=style)
            val, below = Text(f"{v:.3g}"), f"{dec:.1f} dec"
        out.add_row(Text(fold(printable(names[i]), room)), bar, val, Text(below))
    return out


def _temporal_lines(temporal: Any) -> Text:
    """One line per recurrent layer: how much gradient reaches the first input time step."""
    text = Text("temporal gradient flow ‖∂L/∂x_0‖ / ‖∂L/∂x_T‖:", style="bold")
    for layer, grp in temporal.groupby("layer", sort=False):
        ratio = grp.sort_values("t")["ratio"].to_numpy(dtype=float)
        r0 = ratio[0]
        dec = -math.log10(r0) if math.isfinite(r0) and r0 > 0 else math.nan
        style = "green" if dec < 1 else "yellow" if dec < 3 else "red"
        text.append(f"\n{printable(layer)}: ")
        text.append(f"{r0:.3g}", style=style if math.isfinite(dec) else "red")
        text.append(f" over {len(ratio)} time steps", style="dim")
    return text
