"""χ1 against a simulated wide random tanh network (width 1000, autograd backward).

The network has W ~ N(0, σw²/N), b ~ N(0, σb²); after a burn-in of 10 layers the forward
length sits at q*, and the back-propagated signal δ_l = ∂loss/∂h_l (h_l the pre-activations)
changes by ‖δ_l‖² / ‖δ_{l+1}‖² ≈ χ1 per layer. Averaged over 29 layer pairs and a batch of
4 inputs, it must match χ1 within 5%.
"""

from __future__ import annotations

import math

import pytest
import torch

import gradwatch.theory as T

WIDTH, DEPTH, BURN_IN, BATCH = 1000, 40, 10, 4


def measured_backprop_factor(sw2: float, sb2: float, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, WIDTH, generator=gen, dtype=torch.float64, requires_grad=True)
    a, pre = x, []
    for _ in range(DEPTH):
        # Sampled in float32 (fast), propagated in float64.
        w = torch.randn(WIDTH, WIDTH, generator=gen).double() * math.sqrt(sw2 / WIDTH)
        b = torch.randn(WIDTH, generator=gen).double() * math.sqrt(sb2)
        h = a @ w.T + b  # (B, N)
        h.retain_grad()
        pre.append(h)
        a = torch.tanh(h)
    readout = torch.randn(WIDTH, generator=gen, dtype=torch.float64)
    (a @ readout).sum().backward()
    sq = [h.grad.pow(2).sum().item() for h in pre]  # ‖δ_l‖² over the batch
    ratios = [sq[k] / sq[k + 1] for k in range(BURN_IN, DEPTH - 1)]
    return sum(ratios) / len(ratios)


@pytest.mark.parametrize("sw2", [1.0, 1.5, 2.5])
def test_per_layer_backprop_factor_matches_chi1(sw2):
    sb2 = 0.05
    measured = measured_backprop_factor(sw2, sb2)
    assert measured == pytest.approx(T.chi1("tanh", sw2, sb2), rel=0.05)


def test_the_simulation_separates_the_phases():
    # Guard against a test that passes whatever χ1 is: the three settings differ by > 5%.
    chis = [T.chi1("tanh", s, 0.05) for s in (1.0, 1.5, 2.5)]
    assert chis[0] < 0.9 < chis[1] < 1.0 < 1.1 < chis[2]
