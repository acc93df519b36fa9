"""The set of figures a run gets in a report, and saving them as PNG and SVG."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from gradwatch.errors import GradwatchValueError
from gradwatch.report._data import as_run
from gradwatch.report.figures.activations import activations
from gradwatch.report.figures.gradient_flow import gradient_flow
from gradwatch.report.figures.heatmap import heatmap
from gradwatch.report.figures.loss import loss
from gradwatch.report.figures.update_ratio import update_ratio

#: Figures drawn from a run alone, by file name, in report order.
RUN_FIGURES: dict[str, Callable[[Any], Figure]] = {
    "gradient_flow": partial(gradient_flow, stat=("backprop_norm", "grad_norm")),
    "heatmap_backprop_norm": partial(heatmap, stat="backprop_norm"),
    "heatmap_grad_norm": partial(heatmap, stat="grad_norm"),
    "activations": activations,
    "update_ratio": update_ratio,
    "loss": loss,
}


def run_figures(run: Any) -> dict[str, Figure]:
    """Every figure of :data:`RUN_FIGURES` for ``run`` (Run, path or Checkup), by name."""
    run = as_run(run)
    return {name: make(run) for name, make in RUN_FIGURES.items()}


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
        GradwatchValueError: ``out_dir`` exists and is not a folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GradwatchValueError(f"figures folder {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in run_figures(run).items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, dpi=dpi, metadata=_metadata(fmt))
            written.append(path)
    return written


def _metadata(fmt: str) -> dict[str, Any] | None:
    """Reproducible files: no creation date in SVG/PDF output."""
    if fmt in ("svg", "pdf"):
        return {"Date": None}
    return None
