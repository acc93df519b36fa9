"""Without a compiler (or switched off), gradwatch takes its torch path and nothing breaks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.stats import native


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    native.reset()
    yield tmp_path / "cache"
    monkeypatch.undo()
    native.reset()


def test_no_compiler_means_the_python_path_and_no_error(no_compiler, monkeypatch):
    assert native.compiler() is None
    assert native.get() is None and native.build() is None
    assert not no_compiler.exists() or not any(no_compiler.rglob("*.so"))
    monkeypatch.setenv(native.ENV, "0")
    native.reset()
    assert native.get() is None  # switched off


def test_a_monitor_without_the_kernels_records_on_the_torch_path(no_compiler, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with gw.watch(model, tmp_path / "run", detail_every=1) as mon:
        model(torch.randn(5, 6)).square().mean().backward()
        mon.step()
        want = {i: float(torch.cat([p.grad.reshape(-1) for p in model[i].parameters()]).norm())
                for i in (0, 2)}
    assert native.get() is None  # nothing was built on the way
    gn = mon.run.pivot("grad_norm")
    for i, w in want.items():
        assert gn[str(i)].iloc[0] == pytest.approx(w, rel=1e-6)
