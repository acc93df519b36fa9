"""Rendering a recorded run: terminal summary, figures, HTML report, TensorBoard export.

Everything here reads a run directory (or a :class:`~gradwatch.store.reader.Run`, or a
Checkup), never a live Monitor: recording and rendering are separate.

- :func:`print_summary`: verdict, findings and per-layer gradient-flow bars in the terminal
- :mod:`gradwatch.report.figures`: one matplotlib figure per module
- :func:`write_html`: one self-contained HTML file (opens offline)
- :func:`export_tensorboard`: scalars per layer and statistic (needs ``gradwatch[tensorboard]``)
"""

from gradwatch.report import figures
from gradwatch.report.figures import (
    activations,
    fix_comparison,
    gradient_flow,
    heatmap,
    loss,
    run_figures,
    save_figures,
    temporal,
    update_ratio,
)
from gradwatch.report.html import write_html
from gradwatch.report.tensorboard import MissingExtraError, export_tensorboard
from gradwatch.report.terminal import print_summary

__all__ = [
    "MissingExtraError",
    "activations",
    "export_tensorboard",
    "figures",
    "fix_comparison",
    "gradient_flow",
    "heatmap",
    "loss",
    "print_summary",
    "run_figures",
    "save_figures",
    "temporal",
    "update_ratio",
    "write_html",
]
