"""Mean field of a gated recurrent layer (nn.LSTM, nn.GRU) through time, with tied weights.

**Forward.** Each gate's pre-activation at unit i is its bias (the unit's own, read from the
module) plus two Gaussian fields over time: ``W_ih x_t``, with covariance
``σ²_ih · E[x_t·x_t']`` across steps (from the batch), and ``W_hh h_{t−1}``, with covariance
``σ²_hh · E[h_{t−1} h_{t'−1}]`` (from the draws so far). The fields are drawn step by step,
each conditioned on its past (a Cholesky factor that grows by one row a step), and each draw
carries its own state — c and h of an LSTM, h of a GRU — through the gates, so the law of the
state (not Gaussian: a product of gates) and its persistence along the diagonal carry
(f⊙c, z⊙h) are exact over the draws (Gilboa et al. 2019 derive the same forward dynamics;
Chen et al. 2018 the minimalRNN's).

**Backward.** The gradient reaches a step along the carry (a per-unit product of gates, no
weight matrix) and through W_hhᵀ from the next step. W_hhᵀ is independent of the forward W
(the readout is random and used nowhere else; Yang 2020, "Tensor Programs II"), but it is the
same matrix at every step: the vectors ``g_v = W_hhᵀ a_v`` emitted at different steps v are
jointly Gaussian across units with ``E[g_v g_v'] = Σ_gates σ²_hh · mean(a_v a_v')``, not
independent. Every gate gradient ``a_s`` is a per-draw linear combination of the g's and of the
read-out's gradients J_u, so the kernel ``Σ(v, v')`` is filled from the last step back and
``‖∂L/∂x_t‖² = Σ_gates ρ_ih · mean(a_t²)``. Treating the g's as independent (one W per step)
drops the cross terms ``E⟨D g_v, g_v'⟩``, which add coherently: on a GRU of width 128 that
recursion (``tied=False``) predicts −10.3 decades over 20 steps where −8.2 are measured;
this one −8.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DRAWS = 4096
"""Draws of (unit, example) carried through the forward pass (at least one per unit)."""

DRAW_BUDGET = 2.5e7
"""draws × steps² at most (the backward keeps each step's coefficients over the sources in
float32: 8 bytes × this, 200 MB): fewer draws for long sequences."""


@dataclass(frozen=True)
class GatedLayer:
    """One layer's numbers, gate by gate in PyTorch's order (LSTM i, f, g, o; GRU r, z, n)."""

    kind: str  # "LSTM" or "GRU"
    hidden: int
    sigma_ih2: tuple[float, ...]
    sigma_hh2: tuple[float, ...]
    rho_ih: tuple[float, ...]
    b_ih: np.ndarray  # (gates, hidden)
    b_hh: np.ndarray


def _sig(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))


class _Field:
    """Draws of a zero-mean Gaussian process over time, one step at a time."""

    def __init__(self, draws: int, rng: np.random.Generator):
        self.rng, self.draws = rng, draws
        self.noise = np.zeros((draws, 0))
        self.chol = np.zeros((0, 0))

    def next(self, cov_past: np.ndarray, var: float) -> np.ndarray:
        t = self.chol.shape[0]
        row = np.zeros(t)
        if t:
            row = np.linalg.solve(self.chol, cov_past) if var > 0 else row
        d = math.sqrt(max(var - float(row @ row), 0.0))
        chol = np.zeros((t + 1, t + 1))
        chol[:t, :t], chol[t, :t], chol[t, t] = self.chol, row, max(d, 1e-150)
        w = self.rng.standard_normal(self.draws)
        out = self.noise @ row + d * w
        self.chol, self.noise = chol, np.column_stack([self.noise, w])
        return out


def forward(ly: GatedLayer, x_kernel: np.ndarray, m0: float, seed: int = 0) -> list[dict]:
    """Per step, the draws of the gates and states (arrays of ``draws`` values).

    Args:
        ly: the layer.
        x_kernel: E[x_t·x_t'] per feature, (T, T).
        m0: the mean square of the initial state(s).
        seed: of the draws.
    """
    steps, gates = len(x_kernel), len(ly.sigma_hh2)
    per_unit = max(1, min(DRAWS, int(DRAW_BUDGET / steps**2)) // ly.hidden)
    unit = np.repeat(np.arange(ly.hidden), per_unit)
    n = unit.size
    rng = np.random.default_rng(seed)
    fx = [_Field(n, rng) for _ in range(gates)]
    fh = [_Field(n, rng) for _ in range(gates)]
    h = [rng.standard_normal(n) * math.sqrt(m0)]
    c = rng.standard_normal(n) * math.sqrt(m0)
    out = []
    for t in range(steps):
        k_past = np.array([float(np.mean(h[t] * h[s])) for s in range(t)])
        k_now = float(np.mean(h[t] ** 2))
        ax = [fx[k].next(ly.sigma_ih2[k] * x_kernel[t, :t], ly.sigma_ih2[k] * x_kernel[t, t])
              for k in range(gates)]  # fmt: skip
        ah = [fh[k].next(ly.sigma_hh2[k] * k_past, ly.sigma_hh2[k] * k_now) for k in range(gates)]
        bi, bh = ly.b_ih[:, unit], ly.b_hh[:, unit]
        if ly.kind == "LSTM":
            a = [ax[k] + ah[k] + bi[k] + bh[k] for k in range(4)]
            i, f, g, o = _sig(a[0]), _sig(a[1]), np.tanh(a[2]), _sig(a[3])
            c_prev, c = c, f * c + i * g
            th = np.tanh(c)
            out.append({"i": i, "f": f, "g": g, "o": o, "c_prev": c_prev, "th": th})
            h.append(o * th)
        else:
            r, z = _sig(ax[0] + ah[0] + bi[0] + bh[0]), _sig(ax[1] + ah[1] + bi[1] + bh[1])
            u = ah[2] + bh[2]
            nn_ = np.tanh(ax[2] + bi[2] + r * u)
            out.append({"r": r, "z": z, "n": nn_, "u": u, "h_prev": h[t]})
            h.append((1 - z) * nn_ + z * h[t])
        out[-1]["h"] = h[-1]
    return out


def backward(
    ly: GatedLayer, rec: list[dict], inject: np.ndarray, final: float = 0.0, tied: bool = True
) -> np.ndarray:
    """‖∂L/∂x_t‖² over t (any scale), with one W_hhᵀ for every step (see the module docstring).

    The read-out puts ``inject[t]`` on h_t and ``final`` on the LSTM's c_n. ``tied=False``
    draws a fresh W_hhᵀ at every step (the g's independent across steps: the
    gradient-independence recursion), to show what the tied weights add.
    """
    steps = len(rec)
    j = np.append(np.asarray(inject, dtype=np.float64), final)  # sources J_0..J_{T-1}, J_c
    lstm = ly.kind == "LSTM"
    if lstm:
        carry = np.stack([r["f"] for r in rec])
        psi = [r["o"] * (1 - r["th"] ** 2) for r in rec]
        factors = [
            np.stack([r["g"] * r["i"] * (1 - r["i"]), r["c_prev"] * r["f"] * (1 - r["f"]),
                      r["i"] * (1 - r["g"] ** 2)]) for r in rec
        ]  # fmt: skip
        out_gate = [r["th"] * r["o"] * (1 - r["o"]) for r in rec]
    else:
        carry = np.stack([r["z"] for r in rec])
        factors = []
        for r in rec:
            dn = (1 - r["z"]) * (1 - r["n"] ** 2)
            factors.append(np.stack([dn * r["u"] * r["r"] * (1 - r["r"]),
                                     (r["h_prev"] - r["n"]) * r["z"] * (1 - r["z"]),
                                     dn * r["r"], dn]))  # fmt: skip
    n = carry.shape[1]

    def coeffs(s: int) -> tuple[np.ndarray, np.ndarray]:
        """The carried δ at step s (LSTM: δc; GRU: δh) over the sources: (over g_v, over J)."""
        a, b = np.zeros((n, steps), np.float32), np.zeros((n, steps + 1), np.float32)
        p = np.ones(n)
        for u in range(s, steps):
            if lstm:
                if u > s:
                    p = p * carry[u]
                b[:, u] = p * psi[u]
                if u + 1 < steps:
                    a[:, u + 1] = p * psi[u]
            else:
                if u > s:
                    a[:, u] = p
                    p = p * carry[u]
                b[:, u] = p
        if lstm:
            b[:, steps] = p
        return a, b

    sig = np.zeros((steps, steps))  # kernel of g_v = W_hhᵀ a_v across steps
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    s_hh = ly.sigma_hh2
    jj = j.astype(np.float32)
    energies: list[np.ndarray] = [np.zeros(n)] * steps  # E[δ_s²] per draw
    for s in range(steps - 1, -1, -1):
        cache[s] = coeffs(s)
        a_s, b_s = cache[s]
        a_sig = a_s @ sig.astype(np.float32)
        for s2 in range(s, steps if s and tied else s + 1):
            a2, b2 = cache[s2]
            # E[δ_s δ_s2] per draw, over the g's (kernel sig) and the J's (independent)
            dd = (a_sig * a2).sum(1, dtype=np.float64) + (b_s * jj * b2).sum(1, dtype=np.float64)
            if s2 == s:
                energies[s] = dd
            if s == 0 and tied:
                break
            fs, f2 = factors[s], factors[s2]
            val = sum(s_hh[k] * float(np.mean(fs[k] * f2[k] * dd)) for k in range(3))
            if lstm:  # the output gate reads δh_s = J_s + g_{s+1}
                hh = (sig[s + 1, s2 + 1] if s2 + 1 < steps else 0.0) + (j[s] if s2 == s else 0.0)
                val += s_hh[3] * float(np.mean(out_gate[s] * out_gate[s2])) * hh
            sig[s, s2] = sig[s2, s] = val
    x_energy = np.zeros(steps)
    for t in range(steps):
        e, f = energies[t], factors[t]
        if lstm:
            hh = (sig[t + 1, t + 1] if t + 1 < steps else 0.0) + j[t]
            x_energy[t] = sum(ly.rho_ih[k] * float(np.mean(f[k] ** 2 * e)) for k in range(3))
            x_energy[t] += ly.rho_ih[3] * float(np.mean(out_gate[t] ** 2)) * hh
        else:  # W_ih's n block reads δa_n (factor index 3), not r ⊙ δa_n
            x_energy[t] = sum(ly.rho_ih[k] * float(np.mean(f[i] ** 2 * e))
                              for k, i in ((0, 0), (1, 1), (2, 3)))  # fmt: skip
    return x_energy
