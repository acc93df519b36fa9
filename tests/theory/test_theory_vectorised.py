"""Arrays in, arrays out (phase diagrams); scalars in, Python scalars out; properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from theory_oracles import quad_length_map

import gradwatch.theory as T


def test_scalars_in_give_python_scalars_out():
    assert type(T.q_star("tanh", 1.5, 0.05)) is float
    assert type(T.chi1("tanh", 1, 0)) is float
    assert type(T.c_star("tanh", 3.0, 0.05)) is float
    assert all(type(x) is float for x in T.depth_scales("tanh", 1.5, 0.05))
    assert type(T.phase("tanh", 1.5, 0.05)) is str
    assert type(T.critical_sigma_w2("tanh", 0.05)) is float
    assert type(T.gradient_ratio("tanh", 1.5, 0.05, 10)) is float
    assert type(T.trainable_depth("tanh", 1.5, 0.05)) is float


def test_phase_diagram_grid_matches_pointwise_calls():
    sw2 = np.linspace(0.5, 4.0, 5)
    sb2 = np.array([0.0, 0.05, 0.3])
    W, B = np.meshgrid(sw2, sb2)  # (3, 5)
    grids = {
        "q": T.q_star("tanh", W, B),
        "chi": T.chi1("tanh", W, B),
        "c": T.c_star("tanh", W, B),
        "xi": T.depth_scales("tanh", W, B),
        "phase": T.phase("tanh", W, B),
    }
    assert grids["q"].shape == grids["chi"].shape == grids["c"].shape == (3, 5)
    assert all(x.shape == (3, 5) for x in grids["xi"])
    assert grids["phase"].shape == (3, 5)
    for i in range(3):
        for j in range(5):
            w, b = W[i, j], B[i, j]
            assert grids["q"][i, j] == pytest.approx(T.q_star("tanh", w, b), rel=1e-12)
            assert grids["chi"][i, j] == pytest.approx(T.chi1("tanh", w, b), rel=1e-12)
            assert grids["c"][i, j] == pytest.approx(T.c_star("tanh", w, b), rel=1e-9, abs=1e-12)
            assert grids["xi"][1][i, j] == pytest.approx(
                T.depth_scales("tanh", w, b)[1], rel=1e-8
            )
            assert grids["phase"][i, j] == T.phase("tanh", w, b)


def test_broadcasting_a_row_against_a_scalar():
    chi = T.chi1("relu", [1.0, 2.0, 3.0], 0.1)
    np.testing.assert_array_equal(chi, [0.5, 1.0, 1.5])
    assert T.phase("relu", np.array([1.0, 2.0, 3.0]), 0.0).tolist() == [
        "ordered",
        "critical",
        "chaotic",
    ]
    np.testing.assert_allclose(T.gradient_ratio("relu", [1.0, 4.0], 0.0, 3), [0.125, 8.0])


def test_phase_tolerance_widens_the_critical_band():
    assert T.phase("relu", 2.1, 0.0) == "chaotic"
    assert T.phase("relu", 2.1, 0.0, tol=0.1) == "critical"
    assert T.phase("relu", 2.0 + 1e-12, 0.0, tol=0.0) == "chaotic"


@settings(max_examples=12, deadline=None)
@given(
    sw2=st.floats(min_value=0.3, max_value=5.0),
    sb2=st.floats(min_value=0.01, max_value=1.0),
)
def test_tanh_q_star_is_a_fixed_point_of_the_adaptive_quadrature_length_map(sw2, sb2):
    q = T.q_star("tanh", sw2, sb2)
    assert q == pytest.approx(quad_length_map("tanh", sw2, sb2, q), rel=1e-9)
    chi = T.chi1("tanh", sw2, sb2)
    phase = T.phase("tanh", sw2, sb2)
    assert phase == ("critical" if abs(chi - 1) <= 0.01 else "ordered" if chi < 1 else "chaotic")
    xi_q, xi_c, xi_grad = T.depth_scales("tanh", sw2, sb2)
    assert xi_q > 0 and xi_c > 0
    assert math.copysign(1, xi_grad) == (1 if chi < 1 else -1)
    c = T.c_star("tanh", sw2, sb2)
    assert (c == 1.0) == (chi <= 1 + 1e-9)
    assert -1 <= c <= 1
