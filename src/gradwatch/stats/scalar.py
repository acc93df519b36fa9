"""Run-level statistics (layer ``""``): ``loss``, ``skipped``, ``loss_scale``, clipping.

- ``loss``: what ``mon.step(loss=...)`` was given, the mean over the calls of the step; kept
  on its device as a 0-d float32 tensor (a Python float is placed on the model's device, so a
  flush never concatenates tensors from two devices).
- ``skipped`` / ``loss_scale`` (with ``scaler=``): whether ``torch.amp.GradScaler`` skipped
  the optimizer step because the scaled gradients held Inf/NaN (1.0) or not (0.0), and the
  scale the step's backward used. The flag is read from the scale GradScaler itself lowers
  on a skipped step (``scale_after < scale_before``), on the device: no host sync beyond what
  GradScaler does. On a skipped step the gradient-derived statistics are not recorded: the
  overflow is the scaler's routine, not the model's (Micikevicius et al., "Mixed Precision
  Training", 2018).
- ``clip_norm`` / ``clip_coef``: when gradwatch's clipping ran on the watched model.
"""

from __future__ import annotations

from gradwatch.stats.registry import (
    define_block,
    define_statistic,
    keep_rank0,
    max_over_ranks,
    mean_over_ranks,
    run_level,
)

define_block("loss", run_level(("loss",)), mean_over_ranks, "the step's loss, (1,)")
define_block(
    "clip", run_level(("clip_norm", "clip_coef")), keep_rank0,
    "(norm before clipping, coefficient) of the step's last clipping call",
)
define_block(
    "scaler", run_level(("skipped", "loss_scale")), max_over_ranks,
    "(1.0 if GradScaler skipped the step else 0.0, the scale used by the step's backward)",
)

define_statistic(
    "loss", "loss", "loss", "fast", "the training loss (layer '')", "mean over ranks",
    scope="run",
)
define_statistic(
    "clip_norm", "clip", "clip", "event",
    "global gradient norm before gradwatch's clipping (layer ''; when clipping runs)",
    "rank 0's value (gradients are identical after DDP's all-reduce)", scope="run",
)
define_statistic(
    "clip_coef", "clip", "clip", "event",
    "factor the clipping applied, ||g after|| / ||g before|| (layer ''; 1: none)",
    "rank 0's value", scope="run",
)
define_statistic(
    "skipped", "scaler", "scaler", "fast",
    "1.0 when GradScaler skipped the optimizer step (Inf/NaN in the scaled gradients), "
    "else 0.0 (layer ''; with scaler=)",
    "max over ranks (GradScaler's found-inf is already all-reduced under DDP)", scope="run",
)
define_statistic(
    "loss_scale", "scaler", "scaler", "fast",
    "the loss scale the step's backward used (layer ''; with scaler=)",
    "max over ranks (identical on every rank)", scope="run",
)
