"""Figures: one module per figure, each a function ``Run -> matplotlib Figure``.

Every figure reads a run (a :class:`~gradwatch.store.reader.Run`, a run directory path, or a
Checkup) and says in its docstring how to read it. Figures are drawn on the Agg canvas and
never registered with pyplot, so they leave no global state behind.

- :func:`gradient_flow`: a statistic per layer at a few steps (log scale)
- :func:`heatmap`: a statistic over layers × steps (log colours)
- :func:`activations`: saturated and dead fractions over training
- :func:`update_ratio`: ‖Δw‖/‖w‖ per layer with the 1e-3 guide
- :func:`loss`: the loss curve
- :func:`fix_comparison`: before / after ``gw.fix`` (takes the FixReport)
- :func:`temporal`: temporal gradient flow of recurrent nets (takes a Checkup)
- :func:`headroom`, :func:`underflow`: low precision (runs watched with ``precision=``):
  each layer's log2 gradient range against the formats' limits, and the fraction flushed
"""

from gradwatch.report.figures.activations import activations
from gradwatch.report.figures.fix_comparison import fix_comparison
from gradwatch.report.figures.gallery import RUN_FIGURES, run_figures, save_figures
from gradwatch.report.figures.gradient_flow import gradient_flow
from gradwatch.report.figures.heatmap import heatmap
from gradwatch.report.figures.loss import loss
from gradwatch.report.figures.precision import headroom, underflow
from gradwatch.report.figures.temporal import temporal
from gradwatch.report.figures.update_ratio import update_ratio

__all__ = [
    "RUN_FIGURES",
    "activations",
    "fix_comparison",
    "gradient_flow",
    "headroom",
    "heatmap",
    "loss",
    "run_figures",
    "save_figures",
    "temporal",
    "underflow",
    "update_ratio",
]
