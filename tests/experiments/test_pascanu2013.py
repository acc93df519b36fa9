"""pascanu2013: quick claims, doctored records, repeatability, the measurements themselves."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import gradwatch as gw
from gradwatch.experiments import pascanu2013, run_experiment
from gradwatch.experiments.data import adding_problem

from .conftest import numbers_of, runs_of

TINY = dict(
    lengths=(10,),
    sweep_sigma_max=(0.5, 2.0),
    probe_size=16,
    train_size=64,
    test_size=32,
    train_steps=4,
    explode_steps=4,
    hidden=16,
)


def _claim(claims, text):
    found = [c for c in claims if text in c["claim"]]
    assert len(found) == 1, text
    return found[0]


def test_quick_claims_hold(quick_result):
    result = quick_result("pascanu2013")
    assert result["quick"] is True and result["name"] == "pascanu2013"
    for c in result["claims"]:
        if "needs the full-size run" in c["claim"]:
            assert c["scale"] == "full"
            continue
        assert c.get("scale", "any") == "any"
        assert c["holds"], f"{c['claim']} -- evidence {c['evidence']}"


def test_quick_numbers_are_physical(quick_result):
    result = quick_result("pascanu2013")
    n = numbers_of(result)
    out = runs_of(result)
    longest = max(n["lengths"])
    rnn = n["flow"][f"rnn/T{longest}"]
    assert rnn["sigma_max"] == pytest.approx(0.9, rel=1e-4)
    g = np.asarray(rnn["grad_norm"], dtype=float)
    assert len(g) == longest and np.all(g > 0)  # float64: nothing underflowed to 0
    # the ratio is the measured curve's, and the slope is the curve's
    assert rnn["first_over_last"] == pytest.approx(g[0] / g[-1])
    assert rnn["decay_slope"] < math.log(0.9)
    # the clipping pair: same start, only clipping differs; both are recorded run directories
    clip = n["clipping"]
    assert clip["unclipped"]["initial_loss"] == clip["clipped"]["initial_loss"]
    assert clip["clipped"]["max_grad_norm"] > 1.0  # clipping had something to clip
    for key in ("unclipped", "clipped"):
        run = gw.load(out / "runs" / f"explode-{key}")
        assert run.meta["status"] == "closed"
    assert "nonfinite" in clip["unclipped"]["findings"]  # gw.diagnose sees the explosion
    for key, r in n["training"].items():
        assert gw.load(out / "runs" / key.replace("/", "-")).meta["status"] == "closed"
        assert r["curve"][-1][0] == result["config"]["train_steps"]
    png = Path(result["out_dir"]) / "figures" / "overview.png"
    assert png.is_file() and png.with_suffix(".svg").is_file()
    assert png.stat().st_size < 200_000


def _set(numbers, path, value):
    doctored = copy.deepcopy(numbers)
    node = doctored
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return doctored


CASES = [
    # (path into numbers, doctored value, text of the claim that must fail)
    (("flow", "lstm/T50", "first_over_last"), 1e-17, "gated cells keep far more"),
    (("flow", "gru/T50", "first_over_last"), 1e-17, "gated cells keep far more"),
    (("flow", "rnn/T50", "decay_slope"), 0.05, "separates the regimes"),  # σ_max 0.9, growing
    (("sweep", 0, "decay_slope"), 0.1, "separates the regimes"),  # σ_max = 0.5 but growing
    (("sweep", -1, "decay_slope"), -0.1, "separates the regimes"),  # σ_max = 4 but vanishing
    (("clipping", "unclipped", "all_finite"), True, "clipping stops the explosion"),
    (("clipping", "clipped", "all_finite"), False, "clipping stops the explosion"),
    (("clipping", "clipped", "final_loss"), 5.0, "clipping stops the explosion"),
    (("clipping", "clipped", "max_grad_norm"), 1e9, "clipping stops the explosion"),
]


@pytest.mark.parametrize(("path", "value", "text"), CASES)
def test_doctored_record_fails_claim(quick_result, path, value, text):
    numbers = numbers_of(quick_result("pascanu2013"))
    if path[0] == "clipping" and path[-1] == "all_finite" and path[1] == "unclipped":
        # an unclipped run that stayed finite and small has not exploded
        numbers = _set(numbers, ("clipping", "unclipped", "max_grad_norm"), 10.0)
        numbers = _set(numbers, ("clipping", "unclipped", "max_loss"), 2.0)
    assert _claim(pascanu2013.claims(numbers), text)["holds"]  # honest: holds
    assert not _claim(pascanu2013.claims(_set(numbers, path, value)), text)["holds"]


def test_full_scale_training_claim_is_computed(quick_result):
    numbers = numbers_of(quick_result("pascanu2013"))
    text = "needs the full-size run"
    solved = _set(numbers, ("training", "adding/T50/lstm", "final"), 0.001)
    solved = _set(solved, ("training", "adding/T50/rnn", "final"), 0.17)
    assert _claim(pascanu2013.claims(solved), text)["holds"]
    failed = _set(solved, ("training", "adding/T50/rnn", "final"), 0.01)
    assert not _claim(pascanu2013.claims(failed), text)["holds"]


def test_seeded_repeatable(tmp_path):
    a = run_experiment("pascanu2013", tmp_path / "a", quick=True, seed=2, progress=False, **TINY)
    b = run_experiment("pascanu2013", tmp_path / "b", quick=True, seed=2, progress=False, **TINY)
    assert numbers_of(a) == numbers_of(b)
    assert a["claims"] == b["claims"]
    c = run_experiment("pascanu2013", tmp_path / "c", quick=True, seed=3, progress=False, **TINY)
    assert numbers_of(c)["flow"] != numbers_of(a)["flow"]


def test_temporal_gradient_matches_autograd_per_step():
    """‖∂L/∂x_t‖ from retain_grad equals the gradient of L w.r.t. an explicit x_t."""
    cfg = pascanu2013.QUICK
    torch.manual_seed(0)
    model = pascanu2013.build("rnn", 2, 1, cfg)
    u, y = adding_problem(8, 12, seed=0)
    got = pascanu2013.temporal_gradient(model, u, y)
    m = model.double()
    x = m.embed(u.double()).detach().requires_grad_(True)  # (B, T, H), a leaf this time
    h, _ = m.cell(x)
    loss = torch.nn.functional.mse_loss(m.head(h[:, -1]), y.double())
    (grad,) = torch.autograd.grad(loss, x)
    np.testing.assert_allclose(got, grad.norm(dim=(0, 2)).numpy(), rtol=1e-10)
    assert pascanu2013.decay_slope(np.exp(-0.3 * np.arange(12)[::-1])) == pytest.approx(-0.3)


def test_build_initialisation():
    cfg = pascanu2013.QUICK
    torch.manual_seed(0)
    rnn = pascanu2013.build("rnn", 2, 1, cfg, sigma_max=3.0)
    assert pascanu2013.w_hh_sigma_max(rnn) == pytest.approx(3.0, rel=1e-5)
    lstm = pascanu2013.build("lstm", 2, 1, cfg)
    h = cfg.hidden
    forget = lstm.cell.bias_ih_l0[h : 2 * h] + lstm.cell.bias_hh_l0[h : 2 * h]
    assert torch.all(forget == cfg.lstm_forget_bias)
