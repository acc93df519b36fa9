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
from gradwatch.report.names import printable, shorten

#: Colour of each verdict; anything else (a problem) is red.
VERDICT_STYLE = {"healthy": "bold green", "not diagnosed": "bold yellow", "stalled": "bold yellow"}
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "error": "bold red"}
BAR_WIDTH = 30
#: Longest layer name in the gradient-flow table; longer ones are shortened from the middle.
NAME_WIDTH = 32


def print_summary(run_or_checkup: Any, console: Console | None = None, max_layers: int = 60) -> str:
    """Print the verdict, the findings and the per-layer gradient flow of a run or checkup.

    How to read the bars: one row per layer, input side first (top). Each bar's length is
    proportional to log10 of the layer's ``backprop_norm`` (‖∂L/∂output‖) at the last recorded
    step (after a blow-up: the last step that still had finite values, as the title says),
    scaled from the smallest layer (one cell) to the largest (full width); the value and how
    many decades (dec) it lies below the largest are printed beside it. Bars that shrink
    towards the top are a vanishing gradient; bars that grow towards the top an exploding one.

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
    parts.append(_flow_table(run, max_layers))
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
            more = f", … ({len(f.layers)} layers)" if len(f.layers) > 4 else ""
            where.append("layers " + ", ".join(printable(x) for x in f.layers[:4]) + more)
        if where:
            head.append("   " + "; ".join(where), style="dim")
        blocks.append(head)
        blocks.append(Padding(Text(printable(f.message)), (0, 0, 0, 2)))
        if f.remedies:
            tries = Text("try: ", style="dim")
            tries.append(printable(", ".join(f.remedies)), style="cyan")
            blocks.append(Padding(tries, (0, 0, 0, 2)))
    return Group(*blocks)


def _flow_table(run: Any, max_layers: int) -> Table | Text:
    table = wide(run, "backprop_norm")
    if table.empty:
        return Text("gradient flow: backprop_norm not recorded in this run", style="dim")
    values_all = table.to_numpy(dtype=float)
    usable = np.flatnonzero((np.isfinite(values_all) & (values_all > 0)).any(axis=1))
    # the last step with a drawable value: after a blow-up, the flow just before it
    row = int(usable[-1]) if len(usable) else len(table) - 1
    step = int(table.index[row])
    title = f"gradient flow: backprop_norm at step {step} (input side first)"
    if row < len(table) - 1:
        title += f"; NaN/Inf from step {int(table.index[row + 1])} on"
    names = list(table.columns)
    values = values_all[row]
    recorded = set(nonfinite_layers(run, "backprop_norm", step)) | {
        ly for ly, v in zip(names, values, strict=True) if not math.isnan(v)
    }
    out = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False)
    out.add_column("layer", no_wrap=True)
    out.add_column("", min_width=BAR_WIDTH, no_wrap=True)
    out.add_column("value", justify="right")
    out.add_column("below max", justify="right", style="dim")
    logs = np.full(len(values), np.nan)
    good = np.isfinite(values) & (values > 0)
    logs[good] = np.log10(values[good])
    lo = np.nanmin(logs) if good.any() else math.nan
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
            frac = 1.0 if hi <= lo else (logs[i] - lo) / (hi - lo)
            n = 1 + int(round(frac * (BAR_WIDTH - 1)))
            dec = hi - logs[i]
            style = "green" if dec < 1 else "yellow" if dec < 3 else "red"
            bar = Text("█" * n, style=style)
            val, below = Text(f"{v:.3g}"), f"{dec:.1f} dec"
        out.add_row(Text(shorten(str(names[i]), NAME_WIDTH)), bar, val, Text(below))
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
