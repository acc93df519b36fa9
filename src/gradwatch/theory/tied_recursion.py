"""Mean field of a residual stream whose branches reuse the same weights at every depth.

The stream is s_{j+1} = s_j + α_j g_j(s_j), j = 0 … U−1 (U units; each unit's branch is of a
kind b(j), and all branches of one kind are one random function: a chain of identical
copies, or one module applied at several depths). Moments are per feature, over the T
positions of an example, as in :mod:`~gradwatch.theory.values`.

Forward (Yang 2019, Tensor Programs I, NETSOR: one Gaussian matrix W applied to vectors
x_i, x_j gives jointly Gaussian outputs with covariance σw² ⟨x_i, x_j⟩/n). The outputs of
branches of one kind at depths i, j have the covariance the branch's mean-field rules give
on the joint input (s_i, s_j): M_ij = E[g_i g_jᵀ] (:class:`~gradwatch.theory.tied_branches.BranchRunner`
over two depths). Branches of different kinds, and the chain's input s_0, have independent
weights: only their means correlate. With R(i, j) = E[g_i s_jᵀ],

    R(i, 0) = μ_{g_i} μ_{s_0}ᵀ,   R(i, j+1) = R(i, j) + α_j M_ij,
    S(i+1, j) = S(i, j) + α_i R(i, j)            (S(i, j) = E[s_i s_jᵀ], S(0, 0) given)

so the stream's variance grows with the coherent sum Σ_{i,j} α_i α_j M_ij, not with Σ_i α_i² M_ii.

Backward, with the gradient-independence assumption (Yang 2020, Tensor Programs III: valid
here, the read-out is drawn independently of the model and is used nowhere else), the
same Wᵀ at every depth: δ_i = δ_U + Σ_{k≥i} Y_k with Y_k = α_k J_kᵀ δ_{k+1} (J_k the
branch's Jacobian at depth k). The Y of one kind are correlated,

    N(k, m) = E[Y_k Y_mᵀ] = α_k α_m E[J_kᵀ Γ(k+1, m+1) J_m],    Γ(i, j) = E[δ_i δ_jᵀ] = Γ_top + Σ_{k≥i, m≥j} N(k, m),

N again from the branch's rules over two depths, run backward with the gradient moments
Γ(k+1, m+1) between them. Both recursions visit each pair of depths of one kind once:
O(U²) branch interpretations. Without weight reuse M_ij and N(k, m) vanish for i ≠ j and
the recursions are Yang & Schoenholz's 2017 residual mean field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradwatch.theory.tied_branches import BranchRunner, Run
from gradwatch.theory.values import Grad


@dataclass
class Stream:
    """The forward result: stream and branch moments over all depths."""

    S: dict[tuple[int, int], np.ndarray]  # (i, j), i >= j: E[s_i s_jᵀ]
    mu_s: list[np.ndarray]  # μ of s_j
    M: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (i, j) same kind
    mu_g: list[np.ndarray] = field(default_factory=list)

    def s(self, i: int, j: int) -> np.ndarray:
        return self.S[(i, j)] if i >= j else self.S[(j, i)].T

    def joint(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Moments of (s_i, s_j) as one input of 2T positions (one depth when i == j)."""
        if i == j:
            return self.s(i, i), self.mu_s[i]
        A = np.block([[self.s(i, i), self.s(i, j)], [self.s(j, i), self.s(j, j)]])
        return A, np.concatenate([self.mu_s[i], self.mu_s[j]])


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def forward(
    runners: list[BranchRunner], kinds: list[int], alphas: list[float], A0: np.ndarray,
    mu0: np.ndarray,
) -> Stream:  # fmt: skip
    """The stream's moments over all U + 1 depths (see the module docstring)."""
    U = len(kinds)
    T = A0.shape[0]
    st = Stream(S={(0, 0): A0}, mu_s=[mu0])
    R: dict[tuple[int, int], np.ndarray] = {}  # (i, j): E[g_i s_jᵀ]
    for j in range(U):
        b = kinds[j]
        run = runners[b].run(*st.joint(j, j))
        out = run.out_stats()
        st.M[(j, j)] = _sym(out.A)
        st.mu_g.append(out.mu.copy())
        for i in range(j):
            if kinds[i] != b:
                st.M[(j, i)] = np.outer(st.mu_g[j], st.mu_g[i])
                continue
            pair = runners[b].run(*st.joint(i, j)).out_stats()
            st.M[(j, i)] = pair.A[T:, :T]  # E[g_j g_iᵀ]
        # E[g_j s_mᵀ] for m <= j + 1, and E[g_i s_{j+1}ᵀ] for i < j
        R[(j, 0)] = np.outer(st.mu_g[j], mu0)
        for m in range(j + 1):
            R[(j, m + 1)] = R[(j, m)] + alphas[m] * _m(st, j, m)
        for i in range(j):
            R[(i, j + 1)] = R[(i, j)] + alphas[j] * _m(st, i, j)
        # E[s_{j+1} s_mᵀ], m <= j + 1
        for m in range(j + 1):
            st.S[(j + 1, m)] = st.s(j, m) + alphas[j] * R[(j, m)]
        st.S[(j + 1, j + 1)] = _sym(st.s(j, j + 1) + alphas[j] * R[(j, j + 1)])
        st.mu_s.append(st.mu_s[j] + alphas[j] * st.mu_g[j])
    return st


def _m(st: Stream, i: int, j: int) -> np.ndarray:
    return st.M[(i, j)] if (i, j) in st.M else st.M[(j, i)].T


@dataclass
class Back:
    """The backward result: Γ(j, j) per depth and the single-depth runs (per-layer values)."""

    gamma: list[np.ndarray]  # Γ(j, j), j = 0 … U
    ones: list[float]
    own: list[float]
    runs: list[Run]  # unit j's branch over its own depth, seeded with α_j² Γ(j+1, j+1)


def backward(
    runners: list[BranchRunner], kinds: list[int], alphas: list[float], st: Stream, top: Grad
) -> Back:
    """Gradient moments of the stream at every depth (see the module docstring)."""
    U = len(kinds)
    T = top.GA.shape[0]
    N: dict[tuple[int, int], np.ndarray] = {}  # (k, m), k <= m, same kind: E[Y_k Y_mᵀ]
    P: dict[tuple[int, int], np.ndarray] = {}  # (i, j): Σ_{k>=i, m>=j} N(k, m)
    zero = np.zeros((T, T))

    def n(k: int, m: int) -> np.ndarray:
        if k <= m:
            return N.get((k, m), zero)
        return N.get((m, k), zero).T

    def p(i: int, j: int) -> np.ndarray:
        return zero if i >= U + 1 or j >= U + 1 else P.get((i, j), zero)

    def gamma(i: int, j: int) -> np.ndarray:
        return top.GA + p(i, j)

    energy = [0.0] * U
    ones_in = [1.0] * U
    own_in = [1.0] * U
    runs: list[Run] = [None] * U  # type: ignore[list-item]
    ones_s, own_s = [0.0] * (U + 1), [0.0] * (U + 1)
    ones_s[U], own_s[U] = top.ones, top.own
    for k in range(U - 1, -1, -1):
        b = kinds[k]
        # the branch output's gradient is α_k δ_{k+1}
        ga = _sym(gamma(k + 1, k + 1)) * alphas[k] ** 2
        run = runners[b].run(*st.joint(k, k), grad=Grad(ga, None, ones_s[k + 1], own_s[k + 1]))
        runs[k] = run
        gi = run.input_grad()
        N[(k, k)] = _sym(gi.GA) if gi is not None else zero
        energy[k] = float(np.trace(N[(k, k)]))
        ones_in[k], own_in[k] = (gi.ones, gi.own) if gi is not None else (1.0, 1.0)
        for m in range(k + 1, U):
            if kinds[m] != b:
                continue
            G = np.block(
                [[gamma(k + 1, k + 1), gamma(k + 1, m + 1)],
                 [gamma(m + 1, k + 1), gamma(m + 1, m + 1)]]
            )  # fmt: skip
            w = _mix(ones_s[k + 1], ones_s[m + 1]), _mix(own_s[k + 1], own_s[m + 1])
            pair = runners[b].run(*st.joint(k, m), grad=Grad(_sym(G), None, *w)).input_grad()
            if pair is not None:
                N[(k, m)] = pair.GA[:T, T:] * alphas[k] * alphas[m]
        # P(k, j) for j >= k, and P(j, k) = P(k, j)ᵀ by symmetry of N
        for j in range(U, k - 1, -1):
            row = sum((n(k, m) for m in range(max(j, k), U)), zero)
            if j == k:
                P[(k, k)] = p(k + 1, k + 1) + row + sum((n(a, k) for a in range(k + 1, U)), zero)
            else:
                P[(k, j)] = p(k + 1, j) + row
                P[(j, k)] = P[(k, j)].T
        e_top = float(np.trace(top.GA))
        tot = e_top + sum(energy[k:])
        if tot > 0:
            ones_s[k] = (e_top * top.ones + sum(e * o for e, o in zip(energy[k:], ones_in[k:]))) / tot
            own_s[k] = (e_top * top.own + sum(e * o for e, o in zip(energy[k:], own_in[k:]))) / tot
    gam = [_sym(gamma(j, j)) for j in range(U + 1)]
    return Back(gamma=gam, ones=ones_s, own=own_s, runs=runs)


def _mix(a: float, b: float) -> float:
    return 0.5 * (a + b)
