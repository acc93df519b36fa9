"""Three verdicts that hold by design on architectures the rules were not tuned on.

1. A gradient that is small at the early steps of a sequence but does not decay along them
   (a temporal convolution whose receptive field covers the sequence, a last step with a
   direct path) is not a vanishing gradient through time: a per-step factor must compound.
2. A sigmoid whose output multiplies another signal is a gate (highway layers, Srivastava
   et al. 2015); a gate near 0 is closed, not saturated.
3. An update several times the size of the weights it is applied to swamps them, although
   ``update_ratio`` (over the weights after the step) stays just under 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import gradwatch as gw
from gradwatch.diagnose import diagnose
from gradwatch.diagnose.exploding import before_step
from gradwatch.graph import read_graph
from gradwatch.probes import compounded_decay
from gradwatch.verdicts import (
    TEMPORAL_VANISHING_ERROR,
    TEMPORAL_VANISHING_WARNING,
    UPDATE_SWAMP,
    verdict,
)
from tests.diagnose.nets_by_design import DiagonalSSM
from tests.diagnose.synthetic import const, make_run


def _time(f):
    return f.evidence.get("through") == "time"


# ------------------------------------------------------------- 1. through time
class ReadsEveryStep(nn.Module):
    """A causal convolution whose window covers the sequence, plus the last step read directly.

    Every earlier step gets the same small share of the gradient (``far`` spread over T − 1
    steps), the last step most of it: a first step far below the last, with no decay along t.
    """

    def __init__(self, t: int, far: float, d_in: int = 2):
        super().__init__()
        self.window = nn.Conv1d(d_in, 8, kernel_size=t - 1)
        self.last = nn.Linear(d_in, 8)
        self.head = nn.Linear(8, 1)
        self.far = far

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d_in) -> (N, 1)
        seq = x.transpose(1, 2)  # (N, d_in, T)
        early = self.window(seq[:, :, :-1])[:, :, -1]
        return self.head(self.far * early + self.last(x[:, -1]))


def _adding(t, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, 2, generator=g), torch.rand(n, 1, generator=g)


def test_compounded_decay_is_the_fitted_per_step_factor_over_the_sequence():
    t = np.arange(40)
    np.testing.assert_allclose(compounded_decay(0.8 ** (39 - t)), 0.8**39, rtol=1e-9)
    flat = np.r_[np.full(39, 1e-3), 1.0]  # small but present, a direct last step
    assert compounded_decay(flat) == pytest.approx(1.0)
    assert math.isnan(compounded_decay([0.0, 0.0, 1.0]))  # nothing to fit


def test_a_small_but_present_gradient_at_early_steps_is_not_vanishing():
    x, y = _adding(32)
    torch.manual_seed(0)
    cu = gw.check(ReadsEveryStep(32, far=0.01), x, y, F.mse_loss)
    info = cu.run.meta["checkup"]["temporal"]["(input)"]
    # the premise: the first step's share is in the warning band, the profile flat before
    # the last step
    assert TEMPORAL_VANISHING_ERROR < info["first_over_last"] < TEMPORAL_VANISHING_WARNING
    assert info["compounded"] > 0.1
    (f,) = [f for f in cu.findings if _time(f)]
    assert (cu.verdict, f.kind, f.severity) == ("healthy", "vanishing", "info")
    assert f.remedies == () and "does not compound" in f.message
    assert f.evidence["judged_on"] == "profile"


def test_a_recurrence_with_the_same_first_step_share_is_still_vanishing():
    # λ = 0.8 per step over 32 steps: 0.8^31 ≈ 1e-3 of the last step, compounding
    x, y = _adding(32)
    torch.manual_seed(0)
    cu = gw.check(DiagonalSSM(d=4, lo=0.8, hi=0.8), x, y, F.mse_loss)
    info = cu.run.meta["checkup"]["temporal"]["(input)"]
    assert info["first_over_last"] == pytest.approx(0.8**31, rel=1e-3)
    assert info["compounded"] == pytest.approx(0.8**31, rel=1e-3)
    (f,) = [f for f in cu.findings if _time(f)]
    assert (cu.verdict, f.severity) == ("vanishing", "warning")
    assert f.remedies == ("slow_decay_init",)


def _input_flow_run(first: float, structure: dict | None = None):
    n = 10
    extra = [(s, "", stat, v) for s in range(n)
             for stat, v in (("time_grad_first", first), ("time_grad_last", 1.0),
                             ("time_steps", 256.0))]
    return make_run(2, {"backprop_norm": const(1.0, 2, n)}, extra=extra, structure=structure,
                    loss=[2.3 * 0.9**i for i in range(n)])


def test_a_training_run_without_recurrent_layers_does_not_warn_on_two_ends():
    (f,) = [f for f in diagnose(_input_flow_run(1e-3)) if _time(f)]
    assert (f.severity, f.remedies) == ("info", ())
    assert "records only the first and the last step" in f.message
    # below the error line nothing reaches the first step: vanishing, whatever the cell
    (f,) = [f for f in diagnose(_input_flow_run(1e-6)) if _time(f)]
    assert (f.severity, f.remedies) == ("error", ("slow_decay_init",))


# ------------------------------------------------------------- 2. gates
class HighwayLayer(nn.Module):
    """y = H(x)·T(x) + x·(1 − T(x)), T = σ(W_T x + b_T), b_T < 0 (Srivastava et al. 2015)."""

    def __init__(self, d: int, gate_bias: float, gated: bool = True):
        super().__init__()
        self.h, self.t, self.gate = nn.Linear(d, d), nn.Linear(d, d), nn.Sigmoid()
        self.gated = gated
        nn.init.constant_(self.t.bias, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.gate(self.t(x))
        if not self.gated:  # the same sigmoid on the signal path
            return t
        return F.relu(self.h(x)) * t + x * (1 - t)


def _highway(depth: int = 10, d: int = 16, gated: bool = True) -> nn.Module:
    return nn.Sequential(nn.Linear(8, d), nn.ReLU(),
                         *[HighwayLayer(d, -3.0, gated) for _ in range(depth)],
                         nn.Linear(d, 10))


def test_a_highway_nets_closed_transform_gates_are_not_saturation():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    torch.manual_seed(0)
    cu = gw.check(_highway(), x, y)
    gates = cu.run.meta["structure"]["gate_layers"]
    assert sorted(gates) == sorted(f"{i}.t" for i in range(2, 12))
    assert [f for f in cu.findings if f.kind == "saturated"] == []
    assert cu.verdict == "healthy"
    # the same sigmoid layers on the signal path, stuck near σ(−3) = 0.047: saturated
    torch.manual_seed(0)
    plain = gw.check(_highway(gated=False), x, y)
    assert plain.run.meta["structure"]["gate_layers"] == []
    (f,) = [f for f in plain.findings if f.kind == "saturated"]
    assert f.layers == ("11.t",) and f.evidence["act_mean"] < 0.1


def test_read_graph_finds_gates_by_the_product_they_feed():
    lin, other = nn.Linear(4, 4), nn.Linear(4, 4)
    model = nn.ModuleDict({"g": lin, "o": other})
    x = torch.randn(3, 4)
    for out, gates in (
        (other(x) * torch.sigmoid(lin(x)), ["g"]),
        (other(x) * (1 - torch.sigmoid(lin(x))), ["g"]),
        (torch.sigmoid(lin(x)) * 2.0, []),  # a scalar multiple gates nothing
        (torch.sigmoid(lin(x)) + other(x), []),
        (torch.sigmoid(lin(x)) * torch.ones(4), []),  # a constant: no signal to gate
    ):
        assert read_graph(model, out.sum()).gates == gates


# ------------------------------------------------------------- 3. updates
def test_before_step_recovers_the_update_over_the_weights_it_was_applied_to():
    # in n dimensions a random update's cosine with the weights is ~1/√n: the estimate is
    # exact up to √(1 + 2·size·cos), 1% at 5× over a million weights
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1_000_000, generator=g, dtype=torch.float64) * 0.02
    for size in (0.01, 0.5, 1.0, 5.0):
        dw = torch.randn(1_000_000, generator=g, dtype=torch.float64)
        dw *= size * w.norm() / dw.norm()
        r = float(dw.norm() / (w + dw).norm())  # what update_ratio records
        assert r < 1
        assert float(before_step(np.array(r))) == pytest.approx(size, rel=0.03)


def _swamped_run(loss):
    n = len(loss)
    ur = const(2e-2, 3, n)
    ur[0, :] = 0.986  # the first step: ~6x the weights, as AdamW at lr 0.1 on N(0, 0.02)
    return make_run(3, {"update_ratio": ur, "weight_norm": const(1.0, 3, n),
                        "grad_norm": const(1.0, 3, n)}, loss=loss)


def test_an_update_that_replaced_the_weights_is_exploding_unless_the_run_recovers():
    assert before_step(np.array(0.986)) > UPDATE_SWAMP
    stuck = [2.8, 5.3, 4.6, 4.0, 3.5, 3.1] + [2.78] * 24
    (f,) = [f for f in diagnose(_swamped_run(stuck)) if f.kind == "exploding"]
    assert (f.severity, f.steps, f.evidence["axis"]) == ("warning", (0, 0), "updates")
    assert f.evidence["update_over_weights_before"]["l0"] == pytest.approx(5.9, rel=0.02)
    assert f.evidence["loss_before"] == 2.8 and f.evidence["loss_peak"] == 5.3
    assert "about 5.9× the weights it was applied to" in f.message
    assert verdict(diagnose(_swamped_run(stuck))) == "exploding"
    recovered = [2.8, 5.3, 4.6] + [2.8 * 0.9**i for i in range(27)]
    (f,) = [f for f in diagnose(_swamped_run(recovered)) if f.kind == "exploding"]
    assert f.severity == "info" and "recovered" in f.message
