"""Real training setups: torch.compile, autocast, several optimizers, dtype moves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 2))


def data(steps=20):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 8, generator=g), torch.randint(0, 2, (4,), generator=g))
            for _ in range(steps)]


def train(model, forward, opt, mon, batches, autocast=None):
    for x, y in batches:
        opt.zero_grad()
        if autocast is not None:
            with torch.autocast("cpu", dtype=autocast):
                loss = nn.functional.cross_entropy(forward(x), y)
        else:
            loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)


def test_compiled_model_records_the_same_gradient_norms_without_graph_breaks():
    batches = data(20)
    eager = make()
    opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    with gw.watch(eager, optimizer=opt) as mon:
        train(eager, eager, opt, mon, batches)
    want = mon.run
    model = make()
    compiled = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="torch.compile"):
        with gw.watch(model, optimizer=opt) as mon:
            train(model, compiled, opt, mon, batches)
    got = mon.run
    for stat in ("grad_norm", "update_ratio", "loss"):
        a, b = want.pivot(stat), got.pivot(stat)
        assert a.shape == b.shape and a.shape[0] >= 2
        np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-4, err_msg=stat)
    # the Monitor's hooks cause no graph break
    torch._dynamo.reset()
    with gw.watch(make(), detail_every=1) as mon:
        explain = torch._dynamo.explain(mon.model)(torch.randn(4, 8))
    assert explain.graph_break_count == 0


def test_bf16_autocast_records_finite_float32_statistics():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        train(model, model, opt, mon, data(3), autocast=torch.bfloat16)
    run = mon.run
    bp = run.pivot("backprop_norm")
    assert bp.shape == (3, 3) and np.isfinite(bp.to_numpy()).all() and (bp.to_numpy() > 0).all()
    assert np.isfinite(run.pivot("act_std").to_numpy()).all()


def test_several_optimizers_and_parameter_groups():
    model = make()
    opt_a = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                             {"params": model[2].parameters(), "lr": 0.01}])
    opt_b = torch.optim.Adam(model[4].parameters(), lr=1e-3)
    with gw.watch(model, optimizer=[opt_a, opt_b], detail_every=1) as mon:
        for x, y in data(4):
            opt_a.zero_grad()
            opt_b.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt_a.step()
            opt_b.step()
            mon.step(loss)
    run = mon.run
    assert run.steps == [0, 1, 2, 3]
    ur = run.pivot("update_ratio")
    assert list(ur.columns) == ["0", "2", "4"] and (ur.to_numpy() > 0).all()
    assert len(run.loss()) == 4


def test_model_moved_to_another_dtype_mid_run():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        train(model, model, opt, mon, data(2))
        model.double()
        for x, y in data(2):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x.double()), y)
            loss.backward()
            grad0 = float(model[0].weight.grad.norm() ** 2 + model[0].bias.grad.norm() ** 2)
            opt.step()
            mon.step(loss)
    gn = mon.run.pivot("grad_norm")
    assert gn.shape == (4, 3)
    assert gn["0"].iloc[-1] == pytest.approx(grad0 ** 0.5, rel=1e-5)
    assert np.isfinite(mon.run.pivot("update_ratio").to_numpy()).all()


def test_closure_optimizer_records_this_steps_gradients():
    """optimizer.step(closure) runs backward inside the step (LBFGS, Lightning)."""
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with gw.watch(model, optimizer=opt) as mon:
        for x, y in data(3):
            def closure(x=x, y=y):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                expected.append(float(sum((p.grad.double() ** 2).sum()
                                          for p in model[0].parameters()) ** 0.5))
                return loss

            opt.step(closure)
    np.testing.assert_allclose(mon.run.pivot("grad_norm")["0"].to_numpy(), expected, rtol=1e-5)


def test_take_gradients_before_clipping_and_close_status(tmp_path):
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gw.watch(model, tmp_path / "run", optimizer=opt)
    x, y = data(1)[0]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    before = float(sum((p.grad.double() ** 2).sum() for p in model[0].parameters()) ** 0.5)
    mon.take_gradients()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-4)
    opt.step()
    mon.close(status="failed")
    assert mon.closed
    run = gw.load(tmp_path / "run")
    assert run.pivot("grad_norm")["0"].iloc[0] == pytest.approx(before, rel=1e-5)
    assert run.meta["status"] == "failed"
    with pytest.raises(gw.GradwatchValueError, match="status must be"):
        gw.watch(nn.Linear(2, 2)).close(status="bad")


def test_monitor_records_gradwatch_clipping():
    from gradwatch.remedies import clip_grad_norm_

    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    with gw.watch(model, optimizer=opt) as mon:
        for x, y in data(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            res = clip_grad_norm_(model, max_norm=0.05)
            norms.append((float(res.total_norm), float(res.clip_coef)))
            opt.step()
        other = nn.Linear(3, 3)  # clipping another model is not recorded
        other(torch.randn(2, 3)).sum().backward()
        clip_grad_norm_(other, 1e-3)
    run = mon.run
    np.testing.assert_allclose(run.pivot("clip_norm")[""].to_numpy(), [n for n, _ in norms],
                               rtol=1e-6)
    coef = run.pivot("clip_coef")[""].to_numpy()
    np.testing.assert_allclose(coef, [c for _, c in norms], rtol=1e-6)
    assert (coef < 1).all()
    # the recorded gradient norm is what the optimizer saw: clipped to 0.05 overall
    total = np.sqrt((run.pivot("grad_norm").to_numpy() ** 2).sum(axis=1))
    np.testing.assert_allclose(total, 0.05, rtol=1e-4)
    from gradwatch.monitor import listeners
    assert all(ref() is None or ref().__self__ is not mon for ref in listeners._clip_listeners)
