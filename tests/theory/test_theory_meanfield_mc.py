"""q*, χ1, c*, ξ_q and ξ_c against Monte Carlo and against scipy adaptive quadrature.

Monte Carlo: 200k fixed normal samples (seeded); agreement within 5 standard errors
(delta method, including the error of q* carried into χ1 and of c* into χ_c).
Adaptive quadrature (scipy.integrate.quad with breakpoints at kinks): within 1e-9.
"""

from __future__ import annotations

import math

import pytest
from theory_oracles import (
    mc_c_star,
    mc_chi1,
    mc_q_star,
    quad_chi1,
    quad_length_map,
    quad_q_star,
)

import gradwatch.theory as T

ORDERED_AND_CHAOTIC = [
    ("tanh", 1.5, 0.05),
    ("tanh", 3.0, 0.05),
    ("erf", 2.0, 0.1),
    ("sigmoid", 4.0, 0.5),
    ("gelu", 1.0, 0.1),
    ("elu", 1.2, 0.1),
    ("hard_tanh", 2.0, 0.1),
]


@pytest.mark.parametrize(("name", "sw2", "sb2"), ORDERED_AND_CHAOTIC)
def test_q_star_and_chi1_match_monte_carlo(name, sw2, sb2):
    q_mc = mc_q_star(name, sw2, sb2)
    chi_mc = mc_chi1(name, sw2, q_mc)
    q = T.q_star(name, sw2, sb2)
    chi = T.chi1(name, sw2, sb2)
    assert q_mc.agrees(q), (q, q_mc)
    assert chi_mc.agrees(chi), (chi, chi_mc)
    # The Monte Carlo error is small enough for the check to mean something.
    assert q_mc.se < 0.02 * q and chi_mc.se < 0.02 * chi


@pytest.mark.parametrize(("name", "sw2", "sb2"), ORDERED_AND_CHAOTIC)
def test_q_star_and_chi1_match_adaptive_quadrature(name, sw2, sb2):
    q_ref = quad_q_star(name, sw2, sb2)
    assert T.q_star(name, sw2, sb2) == pytest.approx(q_ref, rel=1e-9)
    assert T.chi1(name, sw2, sb2) == pytest.approx(quad_chi1(name, sw2, q_ref), rel=1e-9)


@pytest.mark.parametrize(
    ("name", "sw2", "sb2"),
    [("tanh", 3.0, 0.05), ("tanh", 3.5, 0.3), ("erf", 2.5, 0.05), ("hard_tanh", 2.0, 0.1)],
)
def test_c_star_and_chi_c_match_monte_carlo_in_the_chaotic_phase(name, sw2, sb2):
    q_mc = mc_q_star(name, sw2, sb2)
    c_mc, chi_c_mc = mc_c_star(name, sw2, sb2, q_mc, bracket=(-0.5, 0.999))
    c = T.c_star(name, sw2, sb2)
    assert 0 < c < 0.95
    assert c_mc.agrees(c), (c, c_mc)
    xi_c = T.depth_scales(name, sw2, sb2)[1]
    assert chi_c_mc.agrees(math.exp(-1 / xi_c)), (math.exp(-1 / xi_c), chi_c_mc)
    assert c_mc.se < 0.05 and chi_c_mc.se < 0.02


@pytest.mark.parametrize(("name", "sw2", "sb2"), [("tanh", 1.2, 0.05), ("sigmoid", 4.0, 0.5)])
def test_ordered_phase_has_c_star_one_and_xi_c_equal_xi_grad(name, sw2, sb2):
    assert T.chi1(name, sw2, sb2) < 1
    assert T.c_star(name, sw2, sb2) == 1.0
    _, xi_c, xi_grad = T.depth_scales(name, sw2, sb2)
    assert xi_c == pytest.approx(xi_grad, rel=1e-12)
    assert xi_grad == pytest.approx(-1 / math.log(T.chi1(name, sw2, sb2)), rel=1e-12)


@pytest.mark.parametrize(
    ("name", "sw2", "sb2"),
    [("tanh", 1.5, 0.05), ("tanh", 3.0, 0.05), ("elu", 1.5, 0.05), ("hard_tanh", 2.0, 0.1)],
)
def test_xi_q_is_the_slope_of_the_length_map_at_q_star(name, sw2, sb2):
    # Independent: central difference of the adaptive-quadrature length map at its root.
    q = quad_q_star(name, sw2, sb2)
    h = 1e-4 * q
    slope = (quad_length_map(name, sw2, sb2, q + h) - quad_length_map(name, sw2, sb2, q - h)) / (
        2 * h
    )
    xi_q = T.depth_scales(name, sw2, sb2)[0]
    assert math.exp(-1 / xi_q) == pytest.approx(slope, rel=1e-6)


def test_length_map_converges_at_rate_one_over_xi_q():
    # Iterate the quad length map from q* + 1e-3 and fit the decay of the deviation.
    name, sw2, sb2 = "tanh", 1.5, 0.05
    q_star = quad_q_star(name, sw2, sb2)
    q, devs = q_star + 1e-3, []
    for _ in range(6):
        q = quad_length_map(name, sw2, sb2, q)
        devs.append(q - q_star)
    rate = (devs[-1] / devs[1]) ** (1 / 4)
    assert rate == pytest.approx(math.exp(-1 / T.depth_scales(name, sw2, sb2)[0]), rel=1e-3)
