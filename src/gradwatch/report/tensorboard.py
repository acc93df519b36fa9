"""Export a run to TensorBoard: one scalar series per layer and statistic.

Tags are ``<stat>/<layer>`` (``backprop_norm/encoder.0``) so that TensorBoard groups the
layers of one statistic in one section, and ``loss`` for the loss; the TensorBoard step is the
recorded training step. Needs the optional ``tensorboard`` package
(``pip install gradwatch[tensorboard]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradwatch.argcheck import check_out_dir, refuse_symlink, writing
from gradwatch.errors import GradwatchError
from gradwatch.report._data import as_run, findings_and_verdict

EXTRA_HINT = "pip install gradwatch[tensorboard]"


class MissingExtraError(GradwatchError, ImportError):
    """An optional dependency of the feature asked for is not installed."""


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, imported on first use.

    Raises:
        MissingExtraError: the tensorboard package is not installed (names the extra).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingExtraError(
            f"TensorBoard export needs the tensorboard package, which is not installed; "
            f"install it with `{EXTRA_HINT}` ({exc})"
        ) from None
    return SummaryWriter



def tag(stat: str, layer: str) -> str:
    """The TensorBoard tag of ``stat`` for ``layer`` ("loss" for the loss)."""
    return stat if layer == "" else f"{stat}/{layer}"


class LiveTensorBoard:
    """A live sink for the Monitor's writer: every flushed value as a TensorBoard scalar.

    Same tags as :func:`export_tensorboard` (``<stat>/<layer>``, ``loss``), written from the
    writer's thread as each flush is decoded. ``import gradwatch`` registers it as the
    factory behind ``gw.watch(..., tensorboard=LOGDIR)``.
    """

    def __init__(self, log_dir: str | Path):
        """Open a SummaryWriter on ``log_dir`` (needs the ``tensorboard`` package)."""
        self._writer = summary_writer_class()(log_dir=str(log_dir))

    def __call__(self, steps, layers, stats, values) -> None:
        """Write one decoded flush (parallel sequences of steps, layers, stats, values)."""
        for s_, l_, k_, v_ in zip(steps.tolist(), layers, stats, values.tolist(), strict=True):
            self._writer.add_scalar(tag(k_, l_), v_, global_step=s_)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the SummaryWriter."""
        self._writer.close()


def export_tensorboard(run_or_path: Any, logdir: str | Path) -> Path:
    """Write a run's statistics as TensorBoard scalars (and its findings as text).

    Each recorded value becomes one scalar event with tag ``<stat>/<layer>`` (``loss`` for
    the loss) at the recorded step. The findings (stored with the run, or from
    ``gw.diagnose``) are written as a text summary under ``gradwatch/findings``. Open with
    ``tensorboard --logdir LOGDIR``.

    Args:
        run_or_path: a Run, a run directory path, or a Checkup.
        logdir: the TensorBoard log directory (created if missing).

    Returns:
        ``logdir`` as a Path.

    Raises:
        MissingExtraError: the tensorboard package is not installed (a GradwatchError and
            ImportError naming ``pip install gradwatch[tensorboard]``).
        RunDirectoryError: ``run_or_path`` is not a readable run directory.
        OutputError: ``logdir`` cannot be written.
    """
    out = refuse_symlink("logdir", check_out_dir("logdir", logdir))
    run = as_run(run_or_path)
    writer_cls = summary_writer_class()
    with writing("logdir", out):
        out.mkdir(parents=True, exist_ok=True)
    stats = run.stats.sort_values(["step", "layer", "stat"], kind="stable")
    tags = [tag(s, ly) for s, ly in zip(stats["stat"], stats["layer"], strict=True)]
    values = stats["value"].to_numpy(dtype=np.float64)
    steps = stats["step"].to_numpy(dtype=np.int64)
    with writing("logdir", out):
        writer = writer_cls(log_dir=str(out))
    try:
        for t, v, s in zip(tags, values.tolist(), steps.tolist(), strict=True):
            writer.add_scalar(t, v, global_step=s)
        findings, verdict, _ = findings_and_verdict(run)
        lines = [f"**verdict: {verdict}**", ""]
        lines += [f"- [{f.severity}] {f.kind}: {f.message}" for f in findings]
        writer.add_text("gradwatch/findings", "\n".join(lines), global_step=0)
    finally:
        writer.close()
    return out
