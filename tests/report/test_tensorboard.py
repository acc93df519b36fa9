"""TensorBoard export, read back with TensorBoard's own event reader."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import gradwatch as gw
from gradwatch.report import MissingExtraError, export_tensorboard

from .conftest import STEPS, XSS


def test_scalars_read_back_equal_the_run(mixed_run, tmp_path):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logdir = export_tensorboard(mixed_run.path, tmp_path / "tb")
    acc = ea_mod.EventAccumulator(str(logdir), size_guidance={ea_mod.SCALARS: 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "loss" in tags
    assert {f"backprop_norm/{ly}" for ly in mixed_run.layers} <= tags
    checks = {
        "loss": mixed_run.loss(),
        f"backprop_norm/{mixed_run.layers[0]}": mixed_run.pivot("backprop_norm")[
            mixed_run.layers[0]],
        f"grad_norm/{XSS}": mixed_run.pivot("grad_norm")[XSS],
        f"update_ratio/{mixed_run.layers[2]}": mixed_run.pivot("update_ratio")[
            mixed_run.layers[2]].dropna(),
    }
    for tag, want in checks.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == want.index.tolist(), tag
        np.testing.assert_allclose([e.value for e in events], want.to_numpy(), rtol=1e-6)
    assert len(acc.Scalars("loss")) == STEPS


def test_missing_tensorboard_names_the_extra(mixed_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(MissingExtraError, match=r"pip install gradwatch\[tensorboard\]") as err:
        export_tensorboard(mixed_run, tmp_path / "tb")
    assert isinstance(err.value, gw.GradwatchError) and isinstance(err.value, ImportError)


def test_monitor_writes_tensorboard_live(tmp_path):
    import numpy as np
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch import nn

    import gradwatch as gw

    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, tmp_path / "run", optimizer=opt, tensorboard=tmp_path / "tb",
                  flush_every=2) as mon:
        for _ in range(5):
            opt.zero_grad()
            loss = model(torch.randn(3, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    run = gw.load(tmp_path / "run")
    got = [e.value for e in acc.Scalars("backprop_norm/0")]
    np.testing.assert_allclose(got, run.pivot("backprop_norm")["0"].to_numpy(), rtol=1e-6)
    assert [e.step for e in acc.Scalars("loss")] == [0, 1, 2, 3, 4]
