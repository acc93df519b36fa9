"""The set of figures a run gets in a report, and saving them as PNG and SVG."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradwatch.argcheck import check_int, check_names, check_out_dir, refuse_symlink, writing
from gradwatch.errors import GradwatchValueError
from gradwatch.report._data import as_run
from gradwatch.report.figures.activations import activations
from gradwatch.report.figures.gradient_flow import gradient_flow
from gradwatch.report.figures.heatmap import heatmap
from gradwatch.report.figures.instability import adam, applies, attention, logits, spike_timeline
from gradwatch.report.figures.loss import loss
from gradwatch.report.figures.update_ratio import update_ratio
from gradwatch.store.safe_write import write_atomic

#: File formats :func:`save_figures` writes (those matplotlib's Agg canvas supports).
SAVE_FORMATS = tuple(sorted(FigureCanvasAgg.get_supported_filetypes()))

#: Figures drawn from a run alone, by file name, in report order.
RUN_FIGURES: dict[str, Callable[[Any], Figure]] = {
    "gradient_flow": partial(gradient_flow, stat=("backprop_norm", "grad_norm")),
    "heatmap_backprop_norm": partial(heatmap, stat="backprop_norm"),
    "heatmap_grad_norm": partial(heatmap, stat="grad_norm"),
    "activations": activations,
    "update_ratio": update_ratio,
    "loss": loss,
    "attention": attention,
    "logits": logits,
    "adam": adam,
    "spike_timeline": spike_timeline,
}

#: Figures drawn only for runs that hold what they show (transformers, Adam, a loss spike).
WHEN_RECORDED = ("attention", "logits", "adam", "spike_timeline")


def figures_for(run: Any) -> list[str]:
    """The names of :data:`RUN_FIGURES` that ``run`` gets, in report order."""
    run = as_run(run)
    return [n for n in RUN_FIGURES if n not in WHEN_RECORDED or applies(n, run)]


def run_figures(run: Any) -> dict[str, Figure]:
    """The figures of :data:`RUN_FIGURES` for ``run`` (Run, path or Checkup), by name.

    The instability figures (:data:`WHEN_RECORDED`) are drawn only when the run holds their
    statistics (or, for the spike timeline, a loss spike); the output logits, recorded for
    any classifier, only for a run with attention layers or an output-logit divergence.
    """
    run = as_run(run)
    return {name: RUN_FIGURES[name](run) for name in figures_for(run)}


#: Highest resolution ``save_figures`` renders raster formats at (dots per inch).
MAX_DPI = 2400


def save_figures(
    run: Any, out_dir: str | Path, formats: Iterable[str] = ("png", "svg"), dpi: int = 120
) -> list[Path]:
    """Save every run figure to ``out_dir/<name>.<format>``.

    Args:
        run: a Run, a run directory path, or a Checkup.
        out_dir: the folder (created if missing).
        formats: file formats matplotlib writes ("png", "svg", "pdf").
        dpi: resolution of raster formats.

    Returns:
        the paths written, figure by figure.

    Raises:
        GradwatchValueError: ``out_dir`` exists and is not a folder, or ``dpi`` is not
            between 1 and :data:`MAX_DPI`.
        OutputError: ``out_dir`` cannot be written.
    """
    out = refuse_symlink("out_dir", check_out_dir("out_dir", out_dir))
    fmts = check_names("formats", formats, hint='e.g. ("png", "svg")')
    if not fmts:
        raise GradwatchValueError('formats is empty; give at least one, e.g. ("png", "svg")')
    unknown = [f for f in fmts if f not in SAVE_FORMATS]
    if unknown:
        raise GradwatchValueError(
            f"formats: {unknown[0]!r} is not a format matplotlib writes; use "
            f"{', '.join(SAVE_FORMATS)}"
        )
    check_int("dpi", dpi, minimum=1, hint="e.g. dpi=120")
    if dpi > MAX_DPI:
        raise GradwatchValueError(
            f"dpi must be at most {MAX_DPI} (print quality is 300 to 600), got {dpi}; a figure "
            "at that resolution would take more memory than any machine has"
        )
    run = as_run(run)
    written = []
    with writing("out_dir", out):
        out.mkdir(parents=True, exist_ok=True)
        for name, fig in run_figures(run).items():
            for fmt in fmts:
                path = out / f"{name}.{fmt}"
                buf = io.BytesIO()
                fig.savefig(buf, format=fmt, dpi=dpi, metadata=_metadata(fmt))
                # replaces a symlink planted at path instead of writing through it
                written.append(write_atomic(path, buf.getvalue()))
    return written


def _metadata(fmt: str) -> dict[str, Any] | None:
    """Reproducible files: no creation date in SVG/PDF output."""
    if fmt in ("svg", "pdf"):
        return {"Date": None}
    return None
