"""predict() on chains of identical copies (weights reused across depth), against closed forms.

The oracle is computed here, independently of gradwatch.theory: a linear residual chain whose
blocks are copies of one block x + α·W₂W₁x is (I + αA)^L with A = W₂W₁, and for independent
Gaussian W₁, W₂ (A is R-diagonal: E[tr Aᵏ(Aᵀ)ʲ] vanishes unless k = j)

    E‖(I + αAᵀ)^L δ‖² / ‖δ‖² = Σ_k C(L, k)² cᵏ,   c = α² σ₁² σ₂²,

against (1 + c)^L when each block has its own weights. The Monte Carlo check of the stock
encoder and of deep-copied residual MLPs is in test_theory_montecarlo.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import gradwatch.theory as T
from gradwatch.experiments.architectures import ResidualMLP, TokenEncoder


def sw2_of(linear: nn.Linear) -> float:
    w = linear.weight.detach().double()
    return w.shape[1] * float(w.var(unbiased=False))


def test_a_linear_chain_of_copies_follows_the_binomial_closed_form():
    L, alpha = 6, 0.6
    torch.manual_seed(0)
    model = ResidualMLP(16, 32, L, nn.Identity, alpha, sigma_w2=1.0, copies=True)
    x = torch.randn(4, 16)
    pred = T.predict(model, inputs=x)
    assert pred.verdict != "uncertain", pred.reason
    att = pred.table.set_index("layer")["attenuation"]
    c = alpha**2 * sw2_of(model.blocks[0][0]) * sw2_of(model.blocks[0][2])
    tied = sum(math.comb(L, k) ** 2 * c**k for k in range(L + 1))
    # δ at the input layer over δ at the stream's top (the last branch's output is α δ_L)
    ratio = att["inp"] / att[f"blocks.{L - 1}.2"] * alpha**2
    assert ratio == pytest.approx(tied, rel=1e-3)
    assert ratio > 5 * (1 + c) ** L  # far from the independent-weights answer

    # one block applied at every depth (ALBERT-style sharing): the same recursion, the same
    # numbers (its rows sum the block's L applications)
    shared = ResidualMLP(16, 32, L, nn.Identity, alpha, sigma_w2=1.0, shared=True)
    shared.load_state_dict(model.state_dict(), strict=False)
    p_shared = T.predict(shared, inputs=x)
    assert p_shared.verdict != "uncertain", p_shared.reason
    assert p_shared.table.set_index("layer").loc["inp", "attenuation"] == pytest.approx(
        att["inp"], rel=1e-6
    )

    # the same blocks drawn independently: Yang & Schoenholz's (1 + c)^L
    own = copy.deepcopy(model)
    for block in own.blocks:
        for lin in (block[0], block[2]):
            nn.init.normal_(lin.weight, std=math.sqrt(1.0 / 32))
    pred = T.predict(own, inputs=x)
    att = pred.table.set_index("layer")["attenuation"]
    c_own = [alpha**2 * sw2_of(b[0]) * sw2_of(b[2]) for b in own.blocks]
    ratio = att["inp"] / att[f"blocks.{L - 1}.2"] * alpha**2
    assert ratio == pytest.approx(math.prod(1 + x for x in c_own), rel=1e-3)


def test_the_stock_pre_ln_encoder_is_predicted_and_its_stream_grows_faster():
    torch.manual_seed(4)
    ids = torch.randint(0, 32, (4, 8))
    stock = TokenEncoder(3, True, d=32, heads=2, length=8, independent=False)
    pred = T.predict(stock, inputs=ids)
    assert pred.verdict == "healthy" and not pred.reason
    tab = pred.table.set_index("layer")
    assert tab.loc["body.layers.2.linear2", "attenuation"] > 0
    assert math.isfinite(tab.loc["body.layers.1.linear1", "weight_grad2"])
    # the same weights read as independent layers: the copies' outputs add coherently, so the
    # stream that the final norm reads is larger, and its gradient smaller, with copies
    own = copy.deepcopy(stock)
    with torch.no_grad():
        for layer in own.body.layers[1:]:
            for p in layer.parameters():
                p.add_(1e-6 * torch.randn_like(p))  # no longer identical, statistically the same
    p_own = T.predict(own, inputs=ids)
    assert p_own.verdict == "healthy" and not p_own.reason
    t_own = p_own.table.set_index("layer")
    stream = "body.layers.2.linear2"
    assert tab.loc[stream, "attenuation"] < 0.85 * t_own.loc[stream, "attenuation"]


def test_chains_the_recursion_does_not_cover_stay_uncertain_with_the_reason():
    torch.manual_seed(5)
    # copies with a LayerNorm on the stream after each sum: not x + α·copy(x)
    normed = ResidualMLP(16, 32, 4, nn.ReLU, 1.0, post_norm="ln", copies=True)
    pred = T.predict(normed, inputs=torch.randn(8, 16))
    assert pred.verdict == "uncertain" and "x + α·copy(x)" in pred.reason

    class TwoUses(nn.Module):  # identical matrices that are not one chain of siblings
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)
            self.c = nn.Sequential(nn.Linear(8, 8))
            self.c[0].load_state_dict(self.a.state_dict())

        def forward(self, x):
            return self.b(torch.tanh(self.c(torch.tanh(self.a(x)))))

    pred = T.predict(TwoUses(), inputs=torch.randn(8, 8))
    assert pred.verdict == "uncertain" and "identical values" in pred.reason


def test_checks_second_opinion_skips_models_that_reuse_weights():
    from gradwatch.theory.opinion import reuses_weights

    assert reuses_weights(TokenEncoder(2, True, d=16, heads=2, length=8, independent=False))
    assert reuses_weights(ResidualMLP(8, 16, 3, nn.ReLU, 1.0, shared=True))
    assert reuses_weights(ResidualMLP(8, 16, 3, nn.ReLU, 1.0, copies=True))
    assert not reuses_weights(TokenEncoder(2, True, d=16, heads=2, length=8, independent=True))
    assert not reuses_weights(ResidualMLP(8, 16, 3, nn.ReLU, 1.0))
