"""Pieces of the HTML report shared by its sections: escaping, docstring text, figures.

A figure is embedded twice, as SVG ``data:`` URIs: laid out for a wide screen, and re-laid out
for a phone (panels stacked, fonts at their usual size; see
:func:`gradwatch.report.figures._common.narrow_layout`). CSS shows the one that fits the
screen, so labels stay readable at 420 px instead of shrinking with the image.
"""

from __future__ import annotations

import base64
import html
import inspect
import io
import re
from collections.abc import Callable
from typing import Any

from gradwatch.report.figures._common import narrow_layout


def esc(value: Any) -> str:
    """``value`` as text, escaped for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


_CODE = re.compile(r"``(.+?)``|:(?:func|class|mod|meth|data|attr):`~?([^`]+)`|`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def rst_html(text: str) -> str:
    """Docstring text (reStructuredText inline markup) as escaped HTML.

    ````x````, ``:func:`x``` and ```x``` become ``<code>x</code>``, ``**x**`` becomes
    ``<b>x</b>``; everything else is escaped, so no markup is ever shown literally.
    """
    out = []
    pos = 0
    for m in _CODE.finditer(text):
        out.append(_bold(text[pos:m.start()]))
        code = next(g for g in m.groups() if g is not None)
        out.append(f"<code>{esc(code)}</code>")
        pos = m.end()
    out.append(_bold(text[pos:]))
    return "".join(out)


def rst_plain(text: str) -> str:
    """Docstring text with its reStructuredText inline markup removed (for terminals)."""
    text = _CODE.sub(lambda m: next(g for g in m.groups() if g is not None), text)
    return _BOLD.sub(r"\1", text)


def _bold(text: str) -> str:
    return _BOLD.sub(lambda m: f"<b>{m.group(1)}</b>", esc(text))


def how_to_read(func: Any) -> str:
    """The "How to read it:" paragraph of a figure function's docstring (one line, raw text)."""
    func = getattr(func, "func", func)  # functools.partial
    doc = inspect.getdoc(func) or ""
    m = re.search(r"How to read it:(.*?)(?:\n\s*\n|\Z)", doc, flags=re.S)
    return " ".join(m.group(1).split()) if m else ""


def svg_uri(fig: Any) -> str:
    """A matplotlib figure as a ``data:image/svg+xml;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_block(make: Callable[[], Any], func: Any, caption: str, extra: str = "") -> str:
    """A ``<figure>`` with the wide and the narrow layout of ``make()`` and how to read it.

    Args:
        make: draws the figure (called twice: once normally, once in the narrow layout).
        func: the figure function whose docstring says how to read it.
        caption: the caption (plain text).
        extra: more HTML for the caption (already escaped), e.g. a note on the figure.
    """
    wide = svg_uri(make())
    with narrow_layout():
        small = make()
        for ax in small.axes:  # a long panel title wraps instead of running off the figure
            ax.title.set_wrap(True)
        narrow = svg_uri(small)
    help_text = how_to_read(func)
    help_html = (
        f'<details><summary>How to read this figure</summary><p class="help">'
        f"{rst_html(help_text)}</p></details>" if help_text else ""
    )
    return (
        f'<figure><img class="fig-wide" alt="{esc(caption)}" src="{wide}">'
        f'<img class="fig-narrow" alt="{esc(caption)}" src="{narrow}">'
        f"<figcaption>{esc(caption)}{extra}{help_html}</figcaption></figure>"
    )
