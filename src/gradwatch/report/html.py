r"""The HTML report: one self-contained file that opens offline.

Order of the page: the outcome (what was wrong, what was changed, did it help: the verdict,
the finding that decides it, the remedies ``gw.fix`` applied and the runs side by side, with
their accuracy and loss); the findings (message, layers, steps, evidence, remedies); a
checkup's and a ``gw.fix`` report's own sections; the training runs side by side; the figures
of the report's run (an interactive gradient-flow chart, then every run figure with how to
read it); the per-layer table at the last recorded step; the run's settings, as tables.

Self-contained means no network fetch of any kind: CSS and JavaScript are inline, figures are
SVG ``data:`` URIs (an image cannot run script). Every string that comes from the model or the
run (layer names, module reprs, messages, settings) goes through :func:`html.escape`, and the
JSON read by the script holds no ``<``, ``>`` or ``&`` at all (``\u003c`` ...), so it cannot
close its ``<script>`` element.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradwatch.argcheck import check_out_file, writing
from gradwatch.errors import GradwatchTypeError
from gradwatch.jsonable import NAN, json_cell
from gradwatch.report._data import as_run, findings_and_verdict, is_checkup, last_values, wide
from gradwatch.report._html_assets import CSS, JS
from gradwatch.report._html_outcome import outcome_section
from gradwatch.report._html_parts import esc, figure_block, how_to_read
from gradwatch.report._html_sections import check_comparison, comparison_section, saturation_note
from gradwatch.report._html_tables import evidence_html, meta_section
from gradwatch.report.remedy_text import describe_remedy, why_remedy
from gradwatch.store.reader import Run
from gradwatch.store.safe_write import write_atomic

__all__ = ["CHART_STATS", "esc", "how_to_read", "script_json", "write_html"]

#: Statistics the interactive chart can show, in its menu order.
CHART_STATS = ("backprop_norm", "grad_norm", "update_ratio")
#: At most this many steps go into the interactive chart (evenly spaced, first and last kept).
CHART_MAX_STEPS = 400


def script_json(obj: Any) -> str:
    r"""JSON that is safe inside ``<script type="application/json">``.

    ASCII only (``ensure_ascii``, which also escapes U+2028/U+2029), no NaN
    (``allow_nan=False``), and ``<``, ``>`` and ``&`` written as ``\u003c``, ``\u003e`` and
    ``\u0026`` (as Django's ``json_script`` does): stronger than escaping ``</`` as ``<\/``,
    since the text then holds no ``</script``, no ``<!--`` and no markup at all, while
    ``JSON.parse`` returns the original strings.
    """
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_html(
    run_or_path: Any,
    out_path: str | Path,
    checkup: Any = None,
    fix_report: Any = None,
    compare: Mapping[str, Any] | None = None,
    accuracy: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
    chance: float | None = None,
) -> Path:
    """Write the self-contained HTML report of a run.

    Args:
        run_or_path: a Run, a run directory path, or a Checkup.
        out_path: the HTML file to write (its folder is created if missing).
        checkup: optional Checkup shown with its own findings and temporal gradient flow.
        fix_report: optional report of ``gw.fix`` (before/after figure and what was applied).
        compare: optional label -> Run (or run directory) of training runs to show side by
            side with their verdicts, loss, accuracy and per-layer gradient flow at the same
            steps (the demo passes the original and the fixed model's runs). The first is the
            baseline and the last the changed model: the outcome at the top of the page says
            whether the change helped.
        accuracy: label -> (steps, held-out accuracy in [0, 1]) for the runs of ``compare``.
        chance: the accuracy of guessing, drawn as a dotted line in the accuracy panel.

    Returns:
        the path written.

    Raises:
        RunDirectoryError: ``run_or_path`` is not a readable run directory.
        GradwatchValueError: ``out_path`` is a folder, or ``compare``, ``accuracy`` or
            ``chance`` is not of the form above.
        OutputError: ``out_path`` cannot be written.
    """
    from gradwatch.remedies import FixReport

    out = check_out_file("out_path", out_path)
    check_comparison(compare, accuracy, chance)
    if checkup is not None and not is_checkup(checkup):
        raise GradwatchTypeError(
            f"checkup must be a Checkup (from gw.check) or None, got {type(checkup).__name__}"
        )
    if fix_report is not None and not isinstance(fix_report, FixReport):
        raise GradwatchTypeError(
            f"fix_report must be the FixReport returned by gw.fix or None, got "
            f"{type(fix_report).__name__}"
        )
    if is_checkup(run_or_path) and checkup is None:
        checkup = run_or_path
    run = as_run(run_or_path)
    primary_checkup = checkup if checkup is not None and checkup.run is run else None
    findings, verdict, source = findings_and_verdict(run, primary_checkup)

    runs = {label: as_run(r) for label, r in compare.items()} if compare else {}
    body = [
        _header(run),
        outcome_section(run, findings, verdict, source, fix_report, runs, accuracy, chance),
        _findings_section(findings, source, "Findings", run.layers),
    ]
    if checkup is not None and primary_checkup is None:
        body.append(_checkup_section(checkup))
    if fix_report is not None:
        body.append(_fix_section(fix_report))
    if runs:
        body.append(comparison_section(runs, accuracy, chance))
    body.append(_figures_section(run, checkup, runs, out))
    body.append(_layer_table(run))
    body.append(meta_section(run.meta))
    body.append(_footer(run))
    page = _page(_title(run), "\n".join(body), _chart_data(run))
    with writing("out_path", out):
        out.parent.mkdir(parents=True, exist_ok=True)
        # never through a symlink planted at out_path: the link is replaced, its target untouched
        write_atomic(out, page)
    return out


# ------------------------------------------------------------------------------ page
def _title(run: Run) -> str:
    name = run.meta.get("name") or (run.path.name if run.path else "checkup")
    return f"gradwatch report: {name}"


def _page(title: str, body: str, chart: dict[str, Any] | None) -> str:
    script = ""
    if chart is not None:
        script = (
            f'<script id="gw-flow-data" type="application/json">{script_json(chart)}</script>\n'
            f"<script>{JS}</script>"
        )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # No fetch at all, even if someone edits the file: only inline styles, scripts, data:.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n</main>\n{script}\n</body>\n</html>\n"
    )


def _header(run: Run) -> str:
    steps = run.steps
    where = str(run.path) if run.path else "in-memory run"
    span = f"steps {steps[0]}–{steps[-1]}" if steps else "no recorded step"
    model = run.meta.get("model", {}) if isinstance(run.meta.get("model"), dict) else {}
    what = f"{model.get('class', '?')}, {model.get('parameters', '?')} parameters"
    return (
        f"<h1>{esc(_title(run))}</h1>\n"
        f'<div class="sub">{esc(where)} · {esc(what)} · {len(run.layers)} layers · '
        f"{len(steps)} recorded steps ({esc(span)}) · status {esc(run.meta.get('status', '?'))}"
        f"</div>"
    )


def _footer(run: Run) -> str:
    ver = run.meta.get("versions", {}) if isinstance(run.meta.get("versions"), dict) else {}
    from gradwatch.version import __version__

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f"<footer>written by gradwatch {esc(__version__)} on {esc(now)}; run recorded with "
        f"gradwatch {esc(ver.get('gradwatch', '?'))}, torch {esc(ver.get('torch', '?'))}. "
        "This file is self-contained: it fetches nothing.</footer>"
    )


# -------------------------------------------------------------------------- findings
#: Layer names shown in a finding before the rest is folded away (the fold hides at least
#: :data:`MIN_FOLDED`: a fold that hides one or two names costs more than it saves).
SHOWN_LAYERS = 12
MIN_FOLDED = 3


def _findings_section(findings: list[Any], source: str, title: str,
                      layers: list[str] = ()) -> str:
    parts = [f"<h2>{esc(title)}</h2>"]
    if not findings:
        text = source if source.startswith("not diagnosed") else "No findings: nothing to fix."
        parts.append(f'<p class="sub">{esc(text)}</p>')
    for f in findings:
        parts.append(_finding(f, layers))
    return "<section>" + "\n".join(parts) + "</section>"


def _finding(f: Any, run_layers: list[str] = ()) -> str:
    sev = str(f.severity)
    layers = list(f.layers)
    keep = len(layers) if len(layers) < SHOWN_LAYERS + MIN_FOLDED else SHOWN_LAYERS
    shown = ", ".join(f'<code class="name">{esc(ly)}</code>' for ly in layers[:keep])
    if len(layers) > keep:
        rest = ", ".join(f'<code class="name">{esc(ly)}</code>' for ly in layers[keep:])
        shown += (f' <details class="more"><summary>and {len(layers) - keep} more</summary>'
                  f"{rest}</details>")
    steps = (
        f"steps {esc(f.steps[0])}–{esc(f.steps[1])}" if f.steps is not None
        else "one-batch checkup"
    )
    remedies = ", ".join(f"<code>{esc(r)}</code>" for r in f.remedies) or "–"
    return (
        f'<div class="finding sev-{esc(sev)}">'
        f'<span class="sev">{esc(sev)}</span><span class="kind">{esc(f.kind)}</span>'
        f'<div class="msg">{esc(f.message)}</div>'
        f'<div class="meta-line">{steps} · {len(layers)} layer{"s" if len(layers) != 1 else ""}'
        f': {shown or "–"}</div>'
        f'<div class="meta-line">remedies to try: {remedies}</div>'
        f"{evidence_html(f.evidence, run_layers)}</div>"
    )


def _fmt_num(v: float) -> str:
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


# ------------------------------------------------------------- checkup, fix sections
def _checkup_section(checkup: Any) -> str:
    findings = list(getattr(checkup, "findings", []))
    layers = list(getattr(getattr(checkup, "run", None), "layers", []))
    inner = _findings_section(findings, "checkup", "One-batch checkup", layers)
    verdict = esc(getattr(checkup, "verdict", "?"))
    return inner.replace("</h2>", f"</h2><p>checkup verdict: <b>{verdict}</b></p>", 1)


def _fix_section(report: Any) -> str:
    from gradwatch.report.figures.fix_comparison import fix_comparison

    before = getattr(getattr(report, "before", None), "verdict", "?")
    after = getattr(getattr(report, "after", None), "verdict", "?")
    applied = getattr(report, "applied", []) or []
    items = "".join(
        f"<li><b>{esc(name)}</b>: {esc(describe_remedy(name, details))}"
        f'<div class="help">why: {esc(why_remedy(details))}</div></li>'
        for name, details in applied
    ) or "<li>nothing applied</li>"
    recs = "".join(f"<li>{esc(r)}</li>" for r in getattr(report, "recommendations", []) or [])
    parts = [
        "<section><h2>gw.fix: before and after</h2>",
        f"<p>verdict before: <b>{esc(before)}</b> → after: <b>{esc(after)}</b></p>",
        '<p class="help">gw.fix checks the model on one batch, tries the remedies the '
        "findings name on copies, and keeps a remedy only if the check after it is measurably "
        "better; it stops when the check says healthy.</p>",
        f"<h3>What gw.fix changed, in order, and why</h3><ol>{items}</ol>",
    ]
    if recs:
        parts.append(f"<h3>Recommended</h3><ul>{recs}</ul>")
    parts.append(figure_block(lambda: fix_comparison(report), fix_comparison,
                              "backprop_norm per layer before and after gw.fix (one batch)"))
    parts.append("</section>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- figures
def _figures_section(run: Run, checkup: Any, compare: Mapping[str, Run] | None = None,
                     out: Path | None = None) -> str:
    from gradwatch.report.figures import RUN_FIGURES
    from gradwatch.report.figures.temporal import temporal

    name = run.meta.get("name") or (run.path.name if run.path else "checkup")
    where = f" ({run.path})" if run.path else ""
    note = f"Every figure and table below is of one run: <b>{esc(name)}</b>{esc(where)}."
    for label, other in ((lb, r) for lb, r in (compare or {}).items() if r is not run):
        page = other.path / "report.html" if other.path else None
        if page is not None and out is not None and page.is_file():
            href = Path(os.path.relpath(page.resolve(), out.resolve().parent)).as_posix()
            note += (f' The other run, <a href="{esc(href)}">{esc(label)}</a>, has its own '
                     "report; both are compared above.")
        elif other.path is not None:
            note += (f" The other run, <b>{esc(label)}</b>, is compared with this one above; "
                     f"<code>gradwatch report {esc(other.path)}</code> draws its figures.")
        else:
            note += f" The other run, <b>{esc(label)}</b>, is compared with this one above."
    parts = [f"<section><h2>Figures: the run {esc(name)}</h2>",
             f'<p class="help" id="gw-figures-of">{note}</p>', _chart_block(run)]
    captions = {
        "gradient_flow": "Gradient flow by layer",
        "heatmap_backprop_norm": "backprop_norm over layers and steps",
        "heatmap_grad_norm": "grad_norm over layers and steps",
        "activations": "Saturated and dead units over training",
        "update_ratio": "Update ratio ‖Δw‖/‖w‖",
        "loss": "Loss",
    }
    for fig, make in RUN_FIGURES.items():
        extra = saturation_note(run) if fig == "activations" else ""
        parts.append(figure_block(lambda make=make: make(run), make,
                                  f"{captions.get(fig, fig)} (run {name})", extra))
    if "grad_log2_max" in set(run.stats["stat"]):  # watched for a low-precision format
        from gradwatch.report.figures.precision import headroom, underflow

        parts.append(figure_block(lambda: headroom(run), headroom,
                                  f"Headroom: gradient range against the formats (run {name})"))
        parts.append(figure_block(lambda: underflow(run), underflow,
                                  f"Entries flushed to zero (run {name})"))
    tdf = getattr(checkup, "temporal", None)
    if tdf is not None and len(tdf):
        parts.append(figure_block(lambda: temporal(checkup), temporal,
                                  "Temporal gradient flow"))
    parts.append("</section>")
    return "\n".join(parts)


def _chart_block(run: Run) -> str:
    options = [s for s in CHART_STATS if not wide(run, s).empty]
    if not options:
        return '<p class="sub">Interactive gradient flow: no gradient statistic recorded.</p>'
    opts = "".join(f'<option value="{esc(s)}">{esc(s)}</option>' for s in options)
    return (
        "<h3>Gradient flow, step by step (interactive)</h3>"
        '<p class="help">One statistic per layer, input side left, log scale, at the step '
        "chosen with the slider; the dashed grey line is the first recorded step. Hover a point "
        "for its layer and value. A line that falls towards the left by decades is a vanishing "
        "gradient, one that rises an exploding gradient; red dots on the top edge are "
        "non-finite values.</p>"
        '<div id="gw-flow"><div class="controls">'
        f'<label>statistic <select id="gw-stat">{opts}</select></label>'
        '<label>step <input id="gw-step" type="range" min="0" max="0" value="0"></label>'
        '<span id="gw-step-label"></span></div>'
        '<svg id="gw-flow-svg" role="img" aria-label="gradient flow by layer"></svg>'
        '<div id="gw-tip"></div></div>'
        "<noscript><p>The interactive chart needs JavaScript; the figures below do not."
        "</p></noscript>"
    )


def _chart_data(run: Run) -> dict[str, Any] | None:
    stats = {}
    for stat in CHART_STATS:
        table = wide(run, stat)
        if table.empty:
            continue
        table = table.reindex(columns=run.layers)
        keep = _thin(len(table), CHART_MAX_STEPS)
        table = table.iloc[keep]
        rows = run.stats[(run.stats["stat"] == stat) & run.stats["value"].isna()]
        nan_at = set(zip(rows["step"].tolist(), rows["layer"].tolist(), strict=True))
        values = []
        for step, row in zip(table.index.tolist(), table.to_numpy(dtype=float), strict=True):
            values.append([
                NAN if (step, ly) in nan_at else json_cell(float(v))  # recorded NaN vs missing
                for ly, v in zip(table.columns, row, strict=True)
            ])
        stats[stat] = {"steps": [int(s) for s in table.index], "values": values}
    if not stats:
        return None
    return {"layers": [str(ly) for ly in run.layers], "stats": stats}


def _thin(n: int, most: int) -> list[int]:
    if n <= most:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, most).round().astype(int).tolist()))


# ------------------------------------------------------------------- per-layer table
def _layer_table(run: Run) -> str:
    table = last_values(run)
    steps = table.attrs.get("steps", {})
    recorded = table.attrs.get("recorded", {})
    stats = [c for c in table.columns if c != "layer"]
    info = run.meta.get("layer_info", {}) if isinstance(run.meta.get("layer_info"), dict) else {}
    if not stats:
        return '<section><h2>Layers</h2><p class="sub">No statistic recorded.</p></section>'
    head = "<tr><th>#</th><th>layer</th><th>type</th>" + "".join(
        f'<th title="{esc(_describe(s))}">{esc(s)}<br><span class="sub">step '
        f"{esc(steps.get(s, '?'))}</span></th>"
        for s in stats
    ) + "</tr>"
    rows = []
    for i, rec in enumerate(table.to_dict(orient="records")):
        layer = rec["layer"]
        typ = info.get(layer, {}).get("type", "") if isinstance(info.get(layer), dict) else ""
        cells = "".join(_num_cell(rec[s], layer in recorded.get(s, ())) for s in stats)
        rows.append(
            f'<tr><td class="num">{i}</td><td><code class="name">{esc(layer)}</code></td>'
            f"<td>{esc(typ)}</td>{cells}</tr>"
        )
    return (
        "<section><h2>Layers at the last recorded step</h2>"
        '<p class="help">Input side first. Each statistic at the last step it was recorded '
        "(the slowly changing ones are taken every few steps); – means it does not apply to "
        "the layer, red marks NaN/Inf. Hover a column title for its definition.</p>"
        '<p class="help scroll-hint">The table is wider than the screen: scroll it sideways '
        "for every statistic (the layer names stay in view).</p>"
        f'<div class="scroll"><table id="gw-layers">{head}{"".join(rows)}</table></div>'
        "</section>"
    )


def _describe(stat: str) -> str:
    from gradwatch.stats import DESCRIPTIONS

    return DESCRIPTIONS.get(stat, stat)


def _num_cell(v: Any, recorded: bool = True) -> str:
    v = float(v)
    if math.isnan(v) and recorded:
        return '<td class="num bad">nan</td>'
    cls = "num bad" if math.isinf(v) else "num"
    return f'<td class="{cls}">{esc(_fmt_num(v))}</td>'
