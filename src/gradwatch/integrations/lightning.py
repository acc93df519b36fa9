"""PyTorch Lightning: watch a LightningModule's gradients during ``Trainer.fit``.

::

    from gradwatch.integrations.lightning import GradwatchCallback

    trainer = pl.Trainer(callbacks=[GradwatchCallback("runs/a")])
    trainer.fit(module, data)
    gw.diagnose("runs/a")

The callback starts a :class:`~gradwatch.monitor.Monitor` on the LightningModule when training
starts, with the trainer's optimizers, so one recorded step is one optimizer step: gradient
accumulation (``accumulate_grad_batches``) counts one step per optimizer step, and under AMP
(``precision="16-mixed"``) the precision plugin's GradScaler is passed as ``scaler=`` so that
gradients are recorded unscaled and skipped steps are recorded as non-finite. The loss of a
step is the mean of ``training_step``'s loss over the step's batches. Under DDP every rank
runs the callback and rank 0 writes (the Monitor gathers the statistics).

Gradient statistics are taken at Lightning's ``on_before_optimizer_step``: after backward (and
AMP unscaling), **before** gradient clipping (``gradient_clip_val``), as Lightning's own
gradient-norm logging does.

Needs the ``lightning`` package (``pip install gradwatch[lightning]``); the older
``pytorch_lightning`` package works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradwatch.errors import GradwatchValueError
from gradwatch.integrations.options import check_watch_options
from gradwatch.monitor import Monitor, watch

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError(
            "gradwatch.integrations.lightning needs PyTorch Lightning, which is not installed; "
            'install it with `pip install "gradwatch[lightning]"` (or `pip install lightning`)'
        ) from exc

__all__ = ["GradwatchCallback"]

# set by the callback itself: a user passing them would contradict what the trainer uses
_OWN_OPTIONS = ("optimizer", "scaler")


class GradwatchCallback(pl.Callback):
    """Record gradwatch statistics at every optimizer step of ``Trainer.fit``.

    Args:
        run_dir: directory to write the run to; None keeps it in memory (read it from
            :attr:`run` after training).
        every: record every k-th optimizer step, ``"log"``, or a callable ``step -> bool``
            (as :func:`gradwatch.watch`).
        activations: record activation statistics.
        **watch_options: any other option of :func:`gradwatch.watch` (``detail_every``,
            ``stats``, ``flush_every``, ``overwrite``, ``name``, ``config``, ...), except
            ``optimizer`` and ``scaler``, which come from the trainer.

    Attributes:
        monitor: the :class:`~gradwatch.monitor.Monitor` of the current (or last) fit, or None
            before training starts.

    Raises:
        GradwatchValueError: ``optimizer`` or ``scaler`` is among ``watch_options``.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        every: Any = 1,
        activations: bool = True,
        **watch_options: Any,
    ):
        check_watch_options(
            "GradwatchCallback", run_dir, _OWN_OPTIONS, every=every, activations=activations,
            **watch_options,
        )
        self.run_dir = run_dir
        self.every = every
        self.activations = activations
        self.watch_options = watch_options
        self.monitor: Monitor | None = None
        self._losses: list[torch.Tensor] = []  # training_step losses of the pending step
        self._steps_at_batch_start = 0

    # ------------------------------------------------------------------------ lifecycle
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start watching ``pl_module`` with the trainer's optimizers (and AMP GradScaler)."""
        self._close()  # a previous fit that did not end cleanly
        scaler = _grad_scaler(trainer)
        options = dict(self.watch_options)
        options["config"] = {
            "integration": "lightning",
            "global_step_start": int(trainer.global_step),
            "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
            "gradient_clip_val": trainer.gradient_clip_val,
            "precision": str(trainer.precision),
            "gradients": "before clipping",
            **options.get("config", {}),
        }
        self._losses = []
        self.monitor = watch(
            pl_module,
            self.run_dir,
            optimizer=list(trainer.optimizers) or None,
            every=self.every,
            activations=self.activations,
            scaler=scaler,
            **options,
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Flush the run and remove every hook."""
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Flush what was recorded, mark the run failed (or interrupted); the error propagates."""
        self._close(exception)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Close the Monitor if neither ``on_train_end`` nor ``on_exception`` did."""
        self._close()

    def _close(self, exception: BaseException | None = None) -> None:
        mon = self.monitor
        if mon is None:
            return
        self._losses = []
        if exception is None:
            mon.close()
        else:  # the context-manager exit sets the status to "failed" or "interrupted"
            mon.close("interrupted" if isinstance(exception, KeyboardInterrupt) else "failed")

    @property
    def run(self) -> Any:
        """The recorded :class:`~gradwatch.store.reader.Run` (read it after training)."""
        if self.monitor is None:
            raise GradwatchValueError("GradwatchCallback has recorded nothing yet: call fit first")
        return self.monitor.run

    # ---------------------------------------------------------------------------- steps
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Take the step's gradient statistics: after backward and unscaling, before clipping."""
        mon = self.monitor
        if mon is not None and not mon.closed:
            _take_gradients_now(mon, optimizer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Remember the step count, to see whether this batch ends an optimizer step."""
        if self.monitor is not None:
            self._steps_at_batch_start = self.monitor.step_count

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Attach the loss to the optimizer step this batch ended (kept on device)."""
        mon = self.monitor
        if mon is None or mon.closed:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            if pl_module.automatic_optimization:
                # Lightning divides the loss by accumulate_grad_batches before backward and
                # returns the divided value here: undo it, to record training_step's loss.
                loss = loss * trainer.accumulate_grad_batches
            self._losses.append(loss)
        if mon.step_count > self._steps_at_batch_start:
            if self._losses:
                # one value per step (a second would duplicate the step's loss row)
                mon.step(torch.stack(self._losses).mean())  # attaches to the step just closed
            self._losses = []


def _take_gradients_now(mon: Monitor, optimizer: torch.optim.Optimizer) -> None:
    """Take the pending step's gradient statistics from the gradients as they are now.

    ``on_before_optimizer_step`` is the one point where Lightning's paths all see this step's
    full gradients (after accumulation and unscaling, before ``gradient_clip_val`` clipping):
    in 32-bit precision Lightning runs forward and backward *inside*
    ``optimizer.step(closure)``, and under AMP it clips before stepping.
    """
    mon.take_gradients()


def _grad_scaler(trainer: pl.Trainer) -> Any:
    """The GradScaler of the trainer's AMP precision plugin, or None (32-bit, bf16)."""
    plugin = trainer.precision_plugin
    if isinstance(plugin, pl.plugins.MixedPrecision):
        return plugin.scaler
    return None


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """The scalar loss in ``training_step``'s output (a tensor or a dict with "loss")."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
        return outputs.detach().reshape(()).to(torch.float32)
    return None
