"""Readable tables of the HTML report: a run's settings and a finding's evidence.

Nothing is shown as a Python or JSON dump. A value is written the way a person reads it:
no value is "–", a flag "yes"/"no", an empty list "none", a time stamp a date, a number with
four significant digits; a list of records (the writing sessions) is a table with a row each,
a mapping a nested table, a mapping from layer names to numbers (per-layer evidence) a column
of one table with a row per layer.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from gradwatch.report._html_parts import esc

#: Keys whose numbers are Unix time stamps (meta.json's and its sessions').
TIME_KEYS = frozenset({"started", "updated", "ended"})
#: Groups of the settings section: (title, meta.json keys), in order; the rest go to "Other".
META_GROUPS = (
    ("Run", ("name", "status", "started", "updated", "steps_seen", "steps_recorded",
             "layer_order", "diagnosed", "resumed", "lost_rows", "lost_steps",
             "uncombined_steps", "checkup", "format_version")),
    ("Recording settings", ("settings",)),
    ("Model", ("model",)),
    ("Activations", ("activations",)),
    ("Structure", ("structure",)),
    ("Writing sessions", ("sessions",)),
    ("Versions and host", ("versions", "host", "distributed")),
)
#: meta.json keys the report shows elsewhere (the layer table) or not at all.
HIDDEN_META = frozenset({"layers", "layer_info"})


# ------------------------------------------------------------------------------ values
def cell_text(value: Any, key: str = "") -> str:
    """A scalar (or a list of scalars) as plain text; see the module docstring."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if key in TIME_KEYS and isinstance(value, int | float) and math.isfinite(value):
        try:
            return _dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
        except (OverflowError, OSError, ValueError):
            return str(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(cell_text(v) for v in value) if value else "none"
    return str(value)


def _scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list | tuple) or all(
        not isinstance(v, Mapping | list | tuple) for v in value
    )


def value_html(value: Any, key: str = "") -> str:
    """Any JSON-like value as escaped HTML: text, or a nested table for records."""
    if isinstance(value, Mapping):
        if not value:
            return "none"
        return kv_table(value.items())
    if isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
        return records_table(value)
    if isinstance(value, list | tuple) and not _scalar(value):
        return "<br>".join(value_html(v) for v in value)
    return esc(cell_text(value, key))


def kv_rows(items: Iterable[tuple[Any, Any]]) -> str:
    """The rows of a two-column table (name, value)."""
    return "".join(
        f"<tr><th>{esc(k)}</th><td>{value_html(v, str(k))}</td></tr>" for k, v in items
    )


def kv_table(items: Iterable[tuple[Any, Any]], table_id: str = "") -> str:
    """A two-column table (name, value); nested mappings become nested tables."""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f'<table class="kv"{ident}>{kv_rows(items)}</table>'


def records_table(records: Iterable[Mapping[str, Any]], table_id: str = "") -> str:
    """A list of records as one table: a column per key (in first-seen order), a row each."""
    records = list(records)
    keys: list[str] = []
    for rec in records:
        keys += [str(k) for k in rec if str(k) not in keys]
    head = "<tr><th>#</th>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>"
    rows = "".join(
        f'<tr><td class="num">{i}</td>'
        + "".join(f"<td>{value_html(rec.get(k), k)}</td>" for k in keys)
        + "</tr>"
        for i, rec in enumerate(records)
    )
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f'<div class="scroll"><table class="records"{ident}>{head}{rows}</table></div>'


# ---------------------------------------------------------------------------- evidence
def evidence_html(evidence: Mapping[str, Any], layers: Iterable[str] = ()) -> str:
    """A finding's evidence: a table of its numbers, then one table of its per-layer numbers.

    An entry whose value maps layer names (of ``layers``, or any when none are given) to
    numbers is a column of the per-layer table, with a row per layer in the run's order.
    """
    if not evidence:
        return ""
    known = list(layers)
    per_layer = {k: v for k, v in evidence.items() if _per_layer(v, known)}
    scalars = [(k, v) for k, v in evidence.items() if k not in per_layer]
    parts = []
    if scalars:
        parts.append(kv_table(scalars))
    if per_layer:
        seen: list[str] = []
        for values in per_layer.values():
            seen += [str(ly) for ly in values if str(ly) not in seen]
        order = [ly for ly in known if ly in seen] + [ly for ly in seen if ly not in known]
        head = "<tr><th>layer</th>" + "".join(f"<th>{esc(k)}</th>" for k in per_layer) + "</tr>"
        rows = "".join(
            f'<tr><td><code class="name">{esc(ly)}</code></td>'
            + "".join(f'<td class="num">{esc(cell_text(v.get(ly)))}</td>'
                      for v in per_layer.values())
            + "</tr>"
            for ly in order
        )
        parts.append(f'<div class="scroll"><table class="per-layer">{head}{rows}</table></div>')
    return ('<details class="evidence"><summary>evidence</summary>'
            f'{"".join(parts)}</details>')


def _per_layer(value: Any, layers: list[str]) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    if not all(isinstance(v, int | float | np.number) or v is None for v in value.values()):
        return False
    return not layers or all(str(k) in layers for k in value)


# ---------------------------------------------------------------------------- settings
def meta_section(meta: Mapping[str, Any]) -> str:
    """The run's settings (meta.json) as titled tables, with the model's repr folded away."""
    meta = {k: v for k, v in meta.items() if k not in HIDDEN_META}
    parts = ["<section><h2>Run settings</h2>", '<div class="meta-grid" id="gw-meta">']
    used: set[str] = set()
    model_repr = None
    for title, keys in META_GROUPS:
        present = [k for k in keys if k in meta]
        used.update(present)
        if not present:
            continue
        if keys == ("settings",) or keys == ("structure",):
            body = _group(meta[keys[0]])
        elif keys == ("model",):
            model = dict(meta["model"]) if isinstance(meta["model"], Mapping) else meta["model"]
            if isinstance(model, dict):
                model_repr = model.pop("repr", None)
            body = _group(model)
        elif keys == ("activations",):
            body = _activations(meta["activations"])
        elif keys == ("sessions",):
            body = _sessions(meta["sessions"])
        else:
            body = kv_table((k, meta[k]) for k in present)
        parts.append(f'<div class="meta-group"><h3>{esc(title)}</h3>{body}</div>')
    rest = [(k, v) for k, v in meta.items() if k not in used]
    if rest:
        parts.append(f'<div class="meta-group"><h3>Other</h3>{kv_table(rest)}</div>')
    parts.append("</div>")
    if isinstance(model_repr, str) and model_repr:
        parts.append(f"<details><summary>model</summary><pre>{esc(model_repr)}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _group(value: Any) -> str:
    """A mapping as a table of its entries (nested mappings as dotted names), else its text."""
    if not isinstance(value, Mapping):
        return f"<p>{value_html(value)}</p>"
    return kv_table(_dotted(value))


def _dotted(obj: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in obj.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            yield from _dotted(v, name)
        else:
            yield name, v


def _sessions(value: Any) -> str:
    """One small table per writing session (a run resumed three times has four), numbered.

    A table per session, not a row: its fields (start, end, first step, process, host,
    status) then fit a phone's width.
    """
    if not isinstance(value, list) or not all(isinstance(s, Mapping) for s in value):
        return f"<p>{value_html(value)}</p>"
    if not value:
        return "<p>none</p>"
    return "".join(
        f'<table class="kv session"><tr><th colspan="2">session {i + 1} of {len(value)}</th>'
        f"</tr>{kv_rows(s.items())}</table>"
        for i, s in enumerate(value)
    )


def _activations(value: Any) -> str:
    """One row per kind of activation: "Sigmoid (sigmoid)" and the modules that are one."""
    if not isinstance(value, Mapping):
        return f"<p>{value_html(value)}</p>"
    kinds: dict[str, list[str]] = {}
    for name, info in value.items():
        kind = (f"{info.get('type', '?')} ({info.get('family', '?')})"
                if isinstance(info, Mapping) else cell_text(info))
        kinds.setdefault(kind, []).append(str(name))
    if not kinds:
        return "<p>none</p>"
    rows = "".join(
        f"<tr><th>{esc(kind)}</th><td>{len(names)} module{'s' if len(names) != 1 else ''}: "
        + ", ".join(f'<code class="name">{esc(n)}</code>' for n in names)
        + "</td></tr>"
        for kind, names in kinds.items()
    )
    return f'<table class="kv">{rows}</table>'
