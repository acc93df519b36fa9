"""The Lightning callback records what a plain loop with gw.watch(optimizer=...) records."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradwatch as gw

pl = pytest.importorskip(
    "lightning.pytorch", reason="PyTorch Lightning not installed (pip install gradwatch[lightning])"
)
from gradwatch.integrations.lightning import GradwatchCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

N, D, BATCH = 24, 6, 4
COMPARED = ("grad_norm", "backprop_norm", "update_ratio", "act_std", "weight_norm")


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


class Plain(nn.Module):
    """The manual loop's model: the same layers under the same names as Regressor's."""

    def __init__(self):
        super().__init__()
        self.net = make_net()

    def forward(self, x):
        return self.net(x)


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True).sin())


class Regressor(pl.LightningModule):
    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.net = make_net()
        self.fail_at = fail_at

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(autouse=True)
def _restore_determinism():
    # Trainer(deterministic=True) switches torch's global flag on; leave it as it was
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def fit(callback, max_steps=5, module=None, **trainer_args):
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        deterministic=True, callbacks=[callback], **trainer_args,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module or Regressor(), DataLoader(dataset(), batch_size=BATCH))
    return trainer


def manual(steps: int, accumulate: int = 1, autocast: bool = False, scaler=None):
    """The same training as a plain loop watched with gw.watch(optimizer=opt)."""
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = iter(DataLoader(dataset(), batch_size=BATCH))
    with gw.watch(model, optimizer=opt, detail_every=1, scaler=scaler) as mon:
        for _ in range(steps):
            opt.zero_grad()
            losses = []
            for _ in range(accumulate):
                x, y = next(batches)
                with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
                    loss = nn.functional.mse_loss(model(x), y)
                losses.append(loss.detach())
                loss = loss / accumulate
                (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            mon.step(torch.stack(losses).mean())
    return mon.run


def assert_same(run, ref, steps, stats=COMPARED):
    assert run.steps == list(range(steps))
    for stat in stats:
        a, b = run.pivot(stat), ref.pivot(stat)
        assert list(a.columns) == list(b.columns), stat
        assert set(a.columns) <= {"net.0", "net.2", "net.4"} and len(a.columns) >= 2, stat
        assert list(a.index) == list(b.index) == list(range(steps)), stat
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, err_msg=stat)
    np.testing.assert_allclose(run.loss().to_numpy(), ref.loss().to_numpy(), rtol=1e-5)
    assert run.loss().index.tolist() == list(range(steps))


def test_callback_records_what_the_manual_loop_records(tmp_path):
    cb = GradwatchCallback(tmp_path / "run", detail_every=1)
    fit(cb, default_root_dir=tmp_path)
    run = gw.load(tmp_path / "run")
    assert run.meta["status"] == "closed"
    assert run.meta["settings"]["optimizer"] == ["SGD"]
    assert run.meta["settings"]["integration"] == "lightning"
    assert_same(run, manual(5), 5)
    # the hooks are gone: the model is as it was
    assert not cb.monitor.model._forward_pre_hooks and not cb.monitor.model._forward_hooks


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    cb = GradwatchCallback(None, detail_every=1)
    fit(cb, max_steps=2, accumulate_grad_batches=2, default_root_dir=tmp_path)
    assert_same(cb.run, manual(2, accumulate=2), 2)


def test_amp_grad_scaler_is_passed_and_gradients_are_unscaled(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    cb = GradwatchCallback(None, detail_every=1)
    fit(cb, max_steps=3, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        default_root_dir=tmp_path)
    assert cb.monitor._ctx.scaler is scaler
    assert cb.run.meta["settings"]["scaler"] == "GradScaler"
    ref = manual(3, autocast=True, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert_same(cb.run, ref, 3, stats=("grad_norm", "backprop_norm", "update_ratio"))


def test_exception_in_training_step_leaves_a_loadable_failed_run(tmp_path):
    cb = GradwatchCallback(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"):
        fit(cb, module=Regressor(fail_at=3), default_root_dir=tmp_path)
    run = gw.load(tmp_path / "run")
    assert run.meta["status"] == "failed"
    assert run.steps == [0, 1, 2]
    assert run.pivot("grad_norm").notna().all().all()


def test_optimizer_is_taken_from_the_trainer():
    with pytest.raises(gw.GradwatchValueError, match="optimizer"):
        GradwatchCallback(optimizer=object())


def test_without_lightning_the_import_error_names_the_extra(monkeypatch):
    import importlib
    import sys

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import fails
    monkeypatch.delitem(sys.modules, "gradwatch.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install \"gradwatch\[lightning\]\""):
        importlib.import_module("gradwatch.integrations.lightning")


@pytest.mark.slow
def test_model_parallel_strategy_fsdp2_on_two_cpu_processes(tmp_path):
    """ModelParallelStrategy (FSDP2 in configure_model), 2 CPU processes: the callback's run
    equals a plain loop on the union batch in one process."""
    import subprocess
    import sys
    from pathlib import Path

    from .lightning_fsdp_worker import dataset, make_net

    worker = Path(__file__).with_name("lightning_fsdp_worker.py")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(worker), str(run_dir)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sharded = gw.load(run_dir)
    assert sharded.meta["distributed"] == {"world_size": 2}

    model = Plain.__new__(Plain)
    nn.Module.__init__(model)
    model.net = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = dataset().tensors
    with gw.watch(model, optimizer=opt, detail_every=1, diagnose=False) as mon:
        for step in range(4):  # each rank took the same 16 samples a step
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[16 * step: 16 * (step + 1)]),
                                               y[16 * step: 16 * (step + 1)])
            loss.backward()
            opt.step()
            mon.step(loss)
    single = mon.run
    for stat in ("grad_norm", "grad_max_abs", "weight_norm", "update_ratio", "act_mean",
                 "act_std", "loss"):
        a, b = sharded.pivot(stat), single.pivot(stat)
        assert list(a.columns) == list(b.columns) and list(a.index) == [0, 1, 2, 3], stat
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, err_msg=stat)
