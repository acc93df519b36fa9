"""The law of a non-Gaussian residual stream carried by draws (gradwatch.theory.draws).

Checked against closed forms: the draws of a Gaussian have its moments (batch-norm
anti-correlation between examples included), and along a chain x_{l+1} = ReLU(x_l + b_l) the
product of the masks of one coordinate is what brute-force sampling of the chain gives, more
than the product of the per-block active fractions.
"""

from __future__ import annotations

import numpy as np
import torch

from gradwatch.theory import draws as law
from gradwatch.theory.values import Context, Field, Grad, Lazy, Space, Stats


def _ctx(B: int, T: int) -> Context:
    space = Space(B=B, T=T, ex=np.repeat(np.arange(B), T), pos=np.tile(np.arange(T), B))
    return Context(space=space)


def _unit(B: int, T: int) -> tuple[Context, torch.Tensor, Stats]:
    """A context, rows with 8 features, and the moments of a unit Gaussian."""
    rid = torch.arange(B * T).reshape(B, T, 1).expand(B, T, 8)
    st = Stats(A=np.eye(T), C=np.zeros((T, T)), mu=np.zeros(T), present=np.ones(T, bool))
    return _ctx(B, T), rid, st


def test_gaussian_draws_have_the_moments_even_with_anticorrelated_examples():
    B, T = 8, 3
    rng = np.random.default_rng(0)
    X = rng.standard_normal((T, 5))
    A = X @ X.T / 5
    C = -A / (B - 1)  # a batch norm over the B examples: each feature's mean is exactly zero
    st = Stats(A=A, C=C, mu=np.zeros(T), present=np.ones(T, bool))
    y = law.gaussian(_ctx(B, T), st, np.arange(T))
    A_hat, C_hat, mu_hat = law.second_moments(y)
    np.testing.assert_allclose(A_hat, A, atol=0.01 * np.abs(A).max())
    np.testing.assert_allclose(C_hat, C, atol=0.01 * np.abs(A).max())
    assert np.abs(y.mean(axis=1)).max() < 1e-9  # every draw's examples sum to zero
    assert np.abs(mu_hat).max() < 1e-9


def test_masks_along_a_stream_multiply_per_coordinate():
    T = 1
    ctx, rid, st = _unit(4, T)
    x = Field(stats=st, rid=rid)
    draws = law.of(ctx, x)  # x ~ N(0, 1), kept on x
    gen = np.random.default_rng(1)
    s1 = np.maximum(draws.y, 0) + gen.standard_normal(draws.y.shape)  # ReLU(x) + b
    h = Field(stats=st, rid=rid)
    h._draws = law.Draws(draws.pos, s1)
    h._not_gaussian = True
    g = Grad(np.ones((T, T)), np.zeros((T, T)))
    g1 = law.masked(g, (s1 > 0).astype(float), draws.pos, T, cross=True)  # through ReLU(s1)
    g0 = law.masked(g1, (draws.y > 0).astype(float), draws.pos, T, cross=True)  # ReLU(x)
    # brute force: the fraction of coordinates active at both depths
    both = float(np.mean((s1 > 0) & (draws.y > 0)))
    assert abs(g0.GA[0, 0] - both) < 1e-9
    # P(x > 0) = 1/2; P(ReLU(x) + b > 0) = 1/4 + 1/2·(1/2 + arcsin(1/√2)/π) = 0.625; jointly
    # P(x > 0, x + b > 0) = 1/2·(1/2 + 1/4) = 0.375 > 0.5·0.625 = 0.3125
    assert abs(g1.GA[0, 0] - 0.625) < 0.01 and abs(both - 0.375) < 0.01
    assert len(g0.parts) == 1 and g0.parts[0][2].shape == draws.y.shape
    # a fresh gradient added on the way carries no mask of the coordinates it missed
    g_sum = g1.add(Grad(np.ones((T, T)), np.zeros((T, T))))
    g0b = law.masked(g_sum, (draws.y > 0).astype(float), draws.pos, T, cross=True)
    assert abs(g0b.GA[0, 0] - (both + 0.5)) < 0.01


def test_a_relu_of_a_drawn_stream_is_predicted_from_its_draws():
    from gradwatch.theory.kernels import lazy_backward, materialize

    T = 1
    ctx, rid, st = _unit(4, T)
    src = Field(stats=st, rid=rid)
    y = np.abs(law.of(ctx, Field(stats=st, rid=rid)).y)  # a half-normal stream: E[y²] = 1
    src._draws = law.Draws(np.arange(T), y - np.sqrt(2 / np.pi))
    src._not_gaussian = True
    lz = Lazy(source=src, fn=torch.relu, rid=rid, affine=None, kinks=(0.0,), names=("relu",))
    out = materialize(ctx, lz)
    # E[relu(|z| − √(2/π))²] and P(|z| > √(2/π)) for z ~ N(0, 1), by quadrature
    z = np.linspace(np.sqrt(2 / np.pi), 12, 200001)
    dens = 2 * np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
    q = np.trapezoid((z - np.sqrt(2 / np.pi)) ** 2 * dens, z)
    p = np.trapezoid(dens, z)
    assert abs(out.stats.A[0, 0] / q - 1) < 0.01
    back = lazy_backward(lz, Grad(np.ones((T, T)), np.zeros((T, T))))
    assert abs(back.GA[0, 0] / p - 1) < 0.01
