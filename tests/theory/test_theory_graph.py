"""predict() on residual nets, norms and attention, against closed forms and the papers.

The oracles here are computed in the test, independently of gradwatch.theory: the Yang &
Schoenholz (2017) residual recursions by scipy quadrature, uniform attention by hand, and
Yang et al.'s (2019) batch-norm explosion rate π/(π − 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch import nn

import gradwatch.theory as T
from gradwatch.experiments.architectures import ResidualMLP, TokenEncoder


def sw2_of(linear: nn.Linear) -> float:
    w = linear.weight.detach().double()
    return w.shape[1] * float(w.var(unbiased=False))


def gauss(f, v: float) -> float:
    """E[f(u)], u ~ N(0, v), by scipy's adaptive quadrature."""
    s = math.sqrt(v)
    val, _ = integrate.quad(lambda z: f(s * z) * math.exp(-z * z / 2), -12, 12, limit=200)
    return val / math.sqrt(2 * math.pi)


def test_relu_residual_branches_follow_the_yang_schoenholz_factor():
    # ‖δ_l‖² = ‖δ_{l+1}‖² (1 + α² σ1² σ2² E[φ'²]), E[relu'²] = 1/2 at any variance
    torch.manual_seed(0)
    alpha = 0.3
    model = ResidualMLP(16, 64, 8, nn.ReLU, alpha, sigma_w2=2.0)
    pred = T.predict(model, inputs=torch.randn(16, 16))
    att = pred.table.set_index("layer")["attenuation"]
    out_sw2 = sw2_of(model.out)
    expected = alpha**2 * out_sw2  # δ at the last branch's output is α δ_stream
    for k in range(7, -1, -1):
        block = model.blocks[k]
        assert att[f"blocks.{k}.2"] == pytest.approx(expected, rel=1e-6)
        # inside the branch: W2ᵀ then relu': σ2²/2 per unit of ‖δ at W2's output‖²
        assert att[f"blocks.{k}.0"] == pytest.approx(expected * sw2_of(block[2]) / 2, rel=1e-6)
        expected *= 1 + alpha**2 * sw2_of(block[0]) * sw2_of(block[2]) / 2
    assert pred.verdict == "healthy" and pred.method == "graph"


def test_tanh_residual_forward_and_backward_follow_the_recursion():
    # q_{l+1} = q_l + α² σ2² E[tanh(u)²], u ~ N(0, σ1² q_l);  χ_l = 1 + α² σ1² σ2² E[tanh'(u)²]
    torch.manual_seed(1)
    alpha, depth = 1.0, 6
    model = ResidualMLP(16, 64, depth, nn.Tanh, alpha, sigma_w2=1.5)
    x = torch.randn(32, 16)
    pred = T.predict(model, inputs=x)
    table = pred.table.set_index("layer")
    w, b = model.inp.weight.detach().double(), model.inp.bias.detach().double()
    q = sw2_of(model.inp) * float(x.double().pow(2).mean()) + float(b.pow(2).mean())
    _ = w
    chis = []
    for k, block in enumerate(model.blocks):
        s1, s2 = sw2_of(block[0]), sw2_of(block[2])
        assert table.loc[f"blocks.{k}.0", "q"] == pytest.approx(s1 * q, rel=1e-6)
        v = s1 * q
        branch = alpha**2 * s2 * gauss(lambda u: math.tanh(u) ** 2, v)
        assert table.loc[f"blocks.{k}.2", "q"] == pytest.approx(branch, rel=1e-5)
        chis.append(1 + alpha**2 * s1 * s2 * gauss(lambda u: (1 - math.tanh(u) ** 2) ** 2, v))
        q += branch
    att = table["attenuation"]
    for k in range(depth - 1):
        ratio = att[f"blocks.{k}.2"] / att[f"blocks.{k + 1}.2"]
        assert ratio == pytest.approx(chis[k + 1], rel=1e-5)


class SelfAttention(nn.Module):
    """One attention layer on (N, T, d) features, its queries and keys zeroed: uniform."""

    def __init__(self, d: int, heads: int, causal: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.causal = causal
        with torch.no_grad():
            self.attn.in_proj_weight[: 2 * d].zero_()  # scores 0: every key weighs the same

    def forward(self, x):
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1) if self.causal else None
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]


@pytest.mark.parametrize("causal", [False, True])
def test_uniform_attention_averages_the_values(causal):
    torch.manual_seed(2)
    d, t = 16, 6
    model = SelfAttention(d, 2, causal)
    x = torch.randn(8, t, d)
    pred = T.predict(model, inputs=x, samples=4096)
    # A_x[s, s'] per feature, averaged over the examples
    xa = x.double()
    A = torch.einsum("bsd,brd->sr", xa, xa).numpy() / (x.shape[0] * d)
    w = model.attn.in_proj_weight.detach().double()[2 * d :]
    sv = d * float(w.var(unbiased=False))
    so = sw2_of(model.attn.out_proj)
    if causal:  # position t averages the values at 0..t
        q_t = [A[: k + 1, : k + 1].sum() / (k + 1) ** 2 for k in range(t)]
    else:
        q_t = [A.sum() / t**2] * t
    expected = so * sv * float(np.mean(q_t))
    got = pred.table.set_index("layer").loc["attn", "q"]
    assert got == pytest.approx(expected, rel=0.03)


def test_deep_batch_norm_relu_grows_by_pi_over_pi_minus_one_per_layer():
    # Yang et al. 2019: gradients explode at init in deep BN-ReLU nets, by π/(π − 1) per
    # layer as the batch grows
    torch.manual_seed(3)
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    pred = T.predict(model, inputs=torch.randn(256, 64))
    att = pred.table.set_index("layer")["attenuation"]
    linears = [str(3 * k) for k in range(8)]
    ratios = [att[a] / att[b] for a, b in zip(linears[1:5], linears[2:6], strict=True)]
    assert np.mean(ratios) == pytest.approx(math.pi / (math.pi - 1), rel=0.03)


def test_identical_layer_copies_and_independent_ones_are_both_predicted():
    torch.manual_seed(4)
    ids = torch.randint(0, 32, (4, 8))
    stock = TokenEncoder(2, True, d=32, heads=2, length=8, independent=False)
    own = TokenEncoder(2, True, d=32, heads=2, length=8, independent=True)
    p_stock, p_own = T.predict(stock, inputs=ids), T.predict(own, inputs=ids)
    assert p_stock.verdict == "healthy" and not p_stock.reason  # the cross-depth recursion
    assert p_own.verdict == "healthy" and not p_own.reason
    post_ln = TokenEncoder(2, False, d=32, heads=2, length=8, independent=False)
    post = T.predict(post_ln, inputs=ids)
    assert post.verdict == "healthy" and not post.reason
    # ... unless its stream's norms have a gain per feature (trained): outside, with the reason
    with torch.no_grad():
        for layer in post_ln.body.layers:
            layer.norm1.weight.copy_(torch.linspace(0.5, 1.5, 32))
    post = T.predict(post_ln, inputs=ids)
    assert post.verdict == "uncertain" and "identical values" in post.reason
    assert "body.layers.0" in post.reason and "differ between features" in post.reason


def test_zero_initialised_branches_are_not_shared_weights():
    # a zero matrix passes no signal: several of them are not "identical copies"
    torch.manual_seed(5)
    model = ResidualMLP(16, 32, 4, nn.ReLU, 1.0, sigma_w2=2.0)
    with torch.no_grad():
        for block in model.blocks:
            block[2].weight.zero_()
    pred = T.predict(model, inputs=torch.randn(16, 16))
    assert pred.verdict == "healthy", pred.reason
    att = pred.table.set_index("layer")["attenuation"]
    stream = [att[f"blocks.{k}.2"] for k in range(4)]
    np.testing.assert_allclose(stream, stream[0], rtol=1e-9)  # identity blocks


def test_a_detached_tensor_stops_the_predicted_gradient():
    class Detach(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.c(torch.tanh(self.b(torch.tanh(self.a(x)).detach())))

    pred = T.predict(Detach(), inputs=torch.randn(16, 8))
    att = pred.table.set_index("layer")["attenuation"]
    assert att["a"] == 0 and att["b"] > 0


def test_bad_inputs_and_settings_are_named():
    from gradwatch.errors import GradwatchTypeError, GradwatchValueError

    model = ResidualMLP(8, 16, 2, nn.ReLU, 1.0)
    with pytest.raises(GradwatchTypeError, match="inputs"):
        T.predict(model, inputs="x")
    with pytest.raises(GradwatchValueError, match="inputs do not fit"):
        T.predict(model, inputs=torch.randn(4, 3))
    with pytest.raises(GradwatchValueError, match="readout"):
        T.predict(model, inputs=torch.randn(4, 8), readout="loss")
    with pytest.raises(GradwatchValueError, match="samples"):
        T.predict(model, inputs=torch.randn(4, 8), samples=3)


def test_dropout_in_train_mode_scales_both_passes_by_one_over_keep():
    # inverted dropout: mask² has mean 1/keep, so the forward q and the backward ‖δ‖² both
    # gain 1/keep = 2 across it (HF models build the mask as empty_like(x).bernoulli_())
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(64, 256), nn.Dropout(0.5), nn.Linear(256, 64))
    x = torch.randn(64, 64)
    with_drop = T.predict(model, inputs=x)
    without = T.predict(model, inputs=x, train_mode=False)
    assert with_drop.verdict != "uncertain" and not with_drop.reason
    q = [p.table.set_index("layer").loc["2", "q"] for p in (with_drop, without)]
    a = [p.table.set_index("layer").loc["0", "attenuation"] for p in (with_drop, without)]
    assert q[0] / q[1] == pytest.approx(2.0, rel=0.05)
    assert a[0] / a[1] == pytest.approx(2.0, rel=0.05)
