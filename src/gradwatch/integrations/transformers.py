"""Hugging Face: watch a model's gradients during ``transformers.Trainer.train()``.

::

    from gradwatch.integrations.transformers import GradwatchTrainerCallback

    trainer = Trainer(model, args, train_dataset=ds,
                      callbacks=[GradwatchTrainerCallback("runs/a")])
    trainer.train()
    gw.diagnose("runs/a")

The callback starts a :class:`~gradwatch.monitor.Monitor` on the model when training begins,
with the trainer's optimizer (unwrapped from Accelerate's ``AcceleratedOptimizer``, whose
GradScaler is passed as ``scaler=`` under fp16), so one recorded step is one optimizer step,
whatever ``gradient_accumulation_steps`` is. Under DDP every rank runs it and rank 0 writes.

**Clipping.** The Trainer clips gradients to ``max_grad_norm`` (1.0 by default) *before*
``optimizer.step()``, so the gradient statistics recorded here (``grad_norm``, ``grad_rms``,
``grad_max_abs``) are **after clipping**: a ``grad_norm`` that never exceeds the clip bound
says nothing about explosion. For the raw gradients, train with ``max_grad_norm=0`` (no
clipping) while diagnosing; the Trainer's own logged ``grad_norm`` is the global norm before
clipping. ``backprop_norm`` and the activation statistics are not affected by clipping.

**Loss.** The loss is taken from the Trainer's logs (``on_log``): with ``logging_steps=k``
every k-th step gets a loss, the mean over the k steps since the last log.

Needs ``transformers`` and ``accelerate`` (``pip install gradwatch[transformers]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gradwatch.errors import GradwatchValueError
from gradwatch.integrations.options import check_watch_options
from gradwatch.monitor import Monitor, watch

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "gradwatch.integrations.transformers needs Hugging Face transformers, which is not "
        'installed; install it with `pip install "gradwatch[transformers]"`'
    ) from exc

__all__ = ["GradwatchTrainerCallback"]

_OWN_OPTIONS = ("optimizer", "scaler")


class GradwatchTrainerCallback(TrainerCallback):
    """Record gradwatch statistics at every optimizer step of ``Trainer.train()``.

    Also a context manager: ``with callback: trainer.train()`` marks the run "failed" (or
    "interrupted") when training raises, since the Trainer has no exception event; without
    it such a run is flushed and closed at interpreter exit, or by :meth:`close`.

    Args:
        run_dir: directory to write the run to; None keeps it in memory (read it from
            :attr:`run` after training).
        **watch_options: any option of :func:`gradwatch.watch` (``every``, ``activations``,
            ``detail_every``, ``stats``, ``overwrite``, ``name``, ``config``, ...), except
            ``optimizer`` and ``scaler``, which come from the trainer.

    Attributes:
        monitor: the :class:`~gradwatch.monitor.Monitor` of the current (or last) training,
            or None before training begins.

    Raises:
        GradwatchValueError: ``optimizer`` or ``scaler`` is among ``watch_options``.
    """

    def __init__(self, run_dir: str | Path | None = None, **watch_options: Any):
        check_watch_options("GradwatchTrainerCallback", run_dir, _OWN_OPTIONS, **watch_options)
        self.run_dir = run_dir
        self.watch_options = watch_options
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start watching ``model`` with the trainer's optimizer."""
        self.close()  # a previous train() that did not end cleanly
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None:
            raise GradwatchValueError(
                "GradwatchTrainerCallback needs the Trainer's model and optimizer in "
                "on_train_begin; use it as a callback of transformers.Trainer"
            )
        optimizer, scaler = _unwrap(optimizer)
        options = dict(self.watch_options)
        options["config"] = {
            "integration": "transformers",
            "global_step_start": int(state.global_step),
            "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
            "max_grad_norm": args.max_grad_norm,
            "gradients": "after clipping" if (args.max_grad_norm or 0) > 0 else "not clipped",
            **options.get("config", {}),
        }
        self.monitor = watch(model, self.run_dir, optimizer=optimizer, scaler=scaler, **options)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs
    ) -> None:
        """Attach the logged training loss to the optimizer step just taken."""
        mon = self.monitor
        if mon is None or mon.closed:
            return
        if logs is None and state.log_history:
            logs = state.log_history[-1]
        loss = (logs or {}).get("loss")  # evaluation logs have "eval_loss", the end "train_loss"
        if isinstance(loss, int | float) and not isinstance(loss, bool):
            mon.step(float(loss))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Flush the run and remove every hook."""
        self.close()

    def close(self) -> None:
        """Flush the run and remove every hook (idempotent)."""
        if self.monitor is not None:
            self.monitor.close()

    @property
    def run(self) -> Any:
        """The recorded :class:`~gradwatch.store.reader.Run` (read it after training)."""
        if self.monitor is None:
            raise GradwatchValueError(
                "GradwatchTrainerCallback has recorded nothing yet: call trainer.train() first"
            )
        return self.monitor.run

    def __enter__(self) -> GradwatchTrainerCallback:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.monitor is not None:
            self.monitor.__exit__(exc_type, exc, tb)  # sets "failed"/"interrupted", closes


def _unwrap(optimizer: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The torch optimizer inside Accelerate's wrapper, and the wrapper's GradScaler."""
    try:
        from accelerate.optimizer import AcceleratedOptimizer
    except ImportError:  # pragma: no cover - transformers' Trainer requires accelerate
        return optimizer, None
    if isinstance(optimizer, AcceleratedOptimizer):
        # the wrapper takes no step hooks (it skips Optimizer.__init__); its step() calls the
        # inner optimizer's, through its GradScaler under fp16
        return optimizer.optimizer, optimizer.scaler
    return optimizer, None
