"""Mean field of a residual stream whose branches reuse the same weights at every depth.

The stream is s_{j+1} = N_j(s_j + α_j g_j(s_j)), j = 0 … U−1 (U units; each unit's branch
is of a kind b(j), and all branches of one kind are one random function: a chain of
identical copies, or one module applied at several depths; N_j is the identity, or a
LayerNorm on the stream after the sum, as in a post-LN layer). Moments are per feature,
over the T positions of an example, as in :mod:`~gradwatch.theory.values`.

Forward (Yang 2019, Tensor Programs I, NETSOR: one Gaussian matrix W applied to vectors
x_i, x_j gives jointly Gaussian outputs with covariance σw² ⟨x_i, x_j⟩/n). The outputs of
branches of one kind at depths i, j have the covariance the branch's mean-field rules give
on the joint input (s_i, s_j): M_ij = E[g_i g_jᵀ]
(:class:`~gradwatch.theory.tied_branches.BranchRunner` over two depths). Branches of
different kinds, and the chain's input s_0, have independent weights: only their means
correlate. With R(i, j) = E[g_i s_jᵀ],

    R(i, 0) = μ_{g_i} μ_{s_0}ᵀ,   R(i, j+1) = R(i, j) + α_j M_ij,
    S(i+1, j) = S(i, j) + α_i R(i, j)            (S(i, j) = E[s_i s_jᵀ], S(0, 0) given)

so the stream's variance grows with the coherent sum Σ_{i,j} α_i α_j M_ij, not with
Σ_i α_i² M_ii. A LayerNorm after the sum, s = a ⊙ (u − μ_u) + β with a = γ/√(v_u + ε)
per position (the row's scale is deterministic in the wide limit), maps these moments
linearly.

Backward, with the gradient-independence assumption (Yang 2020, Tensor Programs III: valid
here, the read-out is drawn independently of the model and is used nowhere else), the
same Wᵀ at every depth: δ_k = a_k δ_{k+1} + Y_k with Y_k = α_k J_kᵀ a_k δ_{k+1} (J_k the
branch's Jacobian at depth k; a_k = 1 without a norm). The Y of one kind are correlated,

    N(k, m) = E[Y_k Y_mᵀ] = α_k α_m E[J_kᵀ a_k Γ(k+1, m+1) a_m J_m],    Γ(i, j) = E[δ_i δ_jᵀ],
    X(i, j) = E[δ_i Y_jᵀ] = N(i, j) + a_i X(i+1, j),
    Γ(k, j) = a_k Γ(k+1, j+1) a_j + a_k X(k+1, j) + X(j+1, k)ᵀ a_j + N(k, j),

N again from the branch's rules over two depths, run backward with the gradient moments
between them (without norms, Γ(i, j) = Γ_top + Σ_{k≥i, m≥j} N(k, m)). Both recursions visit
each pair of depths of one kind once: O(U²) branch interpretations. Without weight reuse
M_ij and N(k, m) vanish for i ≠ j and the recursions are Yang & Schoenholz's 2017 residual
mean field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradwatch.theory.tied_branches import BranchRunner, Run
from gradwatch.theory.values import Grad


@dataclass
class Norm:
    """A LayerNorm on the stream after a unit's sum: constant gain and bias, its ε."""

    gain: float = 1.0
    bias: float = 0.0
    eps: float = 1e-5


@dataclass
class Stream:
    """The forward result: stream and branch moments over all depths."""

    S: dict[tuple[int, int], np.ndarray]  # (i, j), i >= j: E[s_i s_jᵀ]
    mu_s: list[np.ndarray]  # μ of s_j
    M: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (i, j) same kind
    mu_g: list[np.ndarray] = field(default_factory=list)
    #: per unit, the norm after its sum: scale a (T,), whether it centres, bias, μ of the sum
    a: list[np.ndarray] = field(default_factory=list)
    centre: list[float] = field(default_factory=list)
    bias: list[float] = field(default_factory=list)
    mu_u: list[np.ndarray] = field(default_factory=list)

    def s(self, i: int, j: int) -> np.ndarray:
        """E[s_i s_jᵀ]."""
        return self.S[(i, j)] if i >= j else self.S[(j, i)].T

    def joint(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Moments of (s_i, s_j) as one input of 2T positions (one depth when i == j)."""
        if i == j:
            return self.s(i, i), self.mu_s[i]
        A = np.block([[self.s(i, i), self.s(i, j)], [self.s(j, i), self.s(j, j)]])
        return A, np.concatenate([self.mu_s[i], self.mu_s[j]])

    def after(self, m: int, cross: np.ndarray, mu_z: np.ndarray) -> np.ndarray:
        """E[z s_{m+1}ᵀ] from E[z u_mᵀ] (u_m the sum of unit m, before its norm)."""
        out = (cross - self.centre[m] * np.outer(mu_z, self.mu_u[m])) * self.a[m][None, :]
        return out + self.bias[m] * mu_z[:, None]


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def forward(
    runners: list[BranchRunner], kinds: list[int], alphas: list[float], A0: np.ndarray,
    mu0: np.ndarray, norms: list[Norm | None] | None = None,
) -> Stream:  # fmt: skip
    """The stream's moments over all U + 1 depths (see the module docstring)."""
    U = len(kinds)
    T = A0.shape[0]
    norms = norms or [None] * U
    st = Stream(S={(0, 0): A0}, mu_s=[mu0])
    R: dict[tuple[int, int], np.ndarray] = {}  # (i, j): E[g_i s_jᵀ]
    for j in range(U):
        b, al = kinds[j], alphas[j]
        out = runners[b].run(*st.joint(j, j)).out_stats()
        st.M[(j, j)] = _sym(out.A)
        st.mu_g.append(out.mu.copy())
        for i in range(j):
            if kinds[i] != b:
                st.M[(j, i)] = np.outer(st.mu_g[j], st.mu_g[i])
                continue
            pair = runners[b].run(*st.joint(i, j)).out_stats()
            st.M[(j, i)] = pair.A[T:, :T]  # E[g_j g_iᵀ]
        R[(j, 0)] = np.outer(st.mu_g[j], mu0)
        for m in range(j):  # E[g_j s_{m+1}ᵀ] through unit m's sum and norm
            R[(j, m + 1)] = st.after(m, R[(j, m)] + alphas[m] * _m(st, j, m), st.mu_g[j])
        # the sum u_j = s_j + α g_j, then the norm
        mu_u = st.mu_s[j] + al * st.mu_g[j]
        Euu = _sym(st.s(j, j) + al * (R[(j, j)] + R[(j, j)].T) + al * al * st.M[(j, j)])
        nm = norms[j]
        if nm is None:
            a, centre, bias = np.ones(T), 0.0, 0.0
        else:
            var = np.maximum(np.diag(Euu) - mu_u**2, 0.0)
            a, centre, bias = nm.gain / np.sqrt(var + nm.eps), 1.0, nm.bias
        st.a.append(a)
        st.centre.append(centre)
        st.bias.append(bias)
        st.mu_u.append(mu_u)
        for i in range(j + 1):  # E[g_i s_{j+1}ᵀ]
            R[(i, j + 1)] = st.after(j, R[(i, j)] + al * _m(st, i, j), st.mu_g[i])
        for m in range(j + 1):  # E[s_{j+1} s_mᵀ] = (E[s_m u_jᵀ] through the norm)ᵀ
            Esu = st.s(m, j) + al * R[(j, m)].T
            st.S[(j + 1, m)] = st.after(j, Esu, st.mu_s[m]).T
        c = a * (1.0 - centre) * mu_u
        top = a[:, None] * (Euu - centre * np.outer(mu_u, mu_u)) * a[None, :]
        st.S[(j + 1, j + 1)] = _sym(top + bias * (c[:, None] + c[None, :]) + bias * bias)
        st.mu_s.append(c + bias)
    return st


def _m(st: Stream, i: int, j: int) -> np.ndarray:
    return st.M[(i, j)] if (i, j) in st.M else st.M[(j, i)].T


@dataclass
class Back:
    """The backward result: Γ(j, j) per depth and the single-depth runs (per-layer values)."""

    gamma: list[np.ndarray]  # Γ(j, j), j = 0 … U
    ones: list[float]
    own: list[float]
    runs: list[Run]  # unit j's branch over its own depth, seeded with α_j² a_j Γ(j+1, j+1) a_j


def backward(
    runners: list[BranchRunner], kinds: list[int], alphas: list[float], st: Stream, top: Grad,
    scale: list[np.ndarray] | None = None,
) -> Back:  # fmt: skip
    """Gradient moments of the stream at every depth (see the module docstring).

    ``scale``: per unit, the factor the gradient takes through the norm after its sum
    (default: the norm's a; 1 without a norm).
    """
    U = len(kinds)
    T = top.GA.shape[0]
    a = scale if scale is not None else st.a
    N: dict[tuple[int, int], np.ndarray] = {}  # (k, m), k <= m, same kind: E[Y_k Y_mᵀ]
    G: dict[tuple[int, int], np.ndarray] = {(U, U): top.GA}  # (i, j), i <= j: Γ(i, j)
    X: dict[tuple[int, int], np.ndarray] = {}
    zero = np.zeros((T, T))

    def n(k: int, m: int) -> np.ndarray:
        return N.get((k, m), zero) if k <= m else N.get((m, k), zero).T

    def x(i: int, j: int) -> np.ndarray:  # E[δ_i Y_jᵀ]
        if i >= U:
            return zero
        if (i, j) not in X:
            X[(i, j)] = n(i, j) + a[i][:, None] * x(i + 1, j)
        return X[(i, j)]

    def gamma(i: int, j: int) -> np.ndarray:
        return G[(i, j)] if i <= j else G[(j, i)].T

    def g_u(k: int, m: int) -> np.ndarray:  # the gradient moments at the sums of units k, m
        return a[k][:, None] * gamma(k + 1, m + 1) * a[m][None, :]

    energy = [0.0] * U
    ones_in = [1.0] * U
    own_in = [1.0] * U
    runs: list[Run] = [None] * U  # type: ignore[list-item]
    ones_s, own_s = [0.0] * (U + 1), [0.0] * (U + 1)
    ones_s[U], own_s[U] = top.ones, top.own
    for k in range(U - 1, -1, -1):
        b = kinds[k]
        ga = _sym(g_u(k, k)) * alphas[k] ** 2  # the branch output's gradient is α_k a_k δ_{k+1}
        run = runners[b].run(*st.joint(k, k), grad=Grad(ga, None, ones_s[k + 1], own_s[k + 1]))
        runs[k] = run
        gi = run.input_grad()
        N[(k, k)] = _sym(gi.GA) if gi is not None else zero
        energy[k] = float(np.trace(N[(k, k)]))
        ones_in[k], own_in[k] = (gi.ones, gi.own) if gi is not None else (1.0, 1.0)
        for m in range(k + 1, U):
            if kinds[m] != b:
                continue
            Gm = np.block([[g_u(k, k), g_u(k, m)], [g_u(m, k), g_u(m, m)]])
            w = _mix(ones_s[k + 1], ones_s[m + 1]), _mix(own_s[k + 1], own_s[m + 1])
            pair = runners[b].run(*st.joint(k, m), grad=Grad(_sym(Gm), None, *w)).input_grad()
            if pair is not None:
                N[(k, m)] = pair.GA[:T, T:] * alphas[k] * alphas[m]
        G[(k, U)] = a[k][:, None] * gamma(k + 1, U)
        for j in range(k, U):
            G[(k, j)] = (
                a[k][:, None] * gamma(k + 1, j + 1) * a[j][None, :]
                + a[k][:, None] * x(k + 1, j)
                + x(j + 1, k).T * a[j][None, :]
                + n(k, j)
            )
        G[(k, k)] = _sym(G[(k, k)])
        ones_s[k], own_s[k] = _direction(top, energy[k:], ones_in[k:], own_in[k:])
    gam = [_sym(gamma(j, j)) for j in range(U + 1)]
    return Back(gamma=gam, ones=ones_s, own=own_s, runs=runs)


def _mix(a: float, b: float) -> float:
    return 0.5 * (a + b)


def _direction(top: Grad, energy: list, ones: list, own: list) -> tuple[float, float]:
    """Energy-weighted ``ones``/``own`` of the top gradient and the branches' contributions."""
    e_top = float(np.trace(top.GA))
    tot = e_top + sum(energy)
    if tot <= 0:
        return 0.0, 0.0
    w_ones = e_top * top.ones + sum(e * o for e, o in zip(energy, ones, strict=True))
    w_own = e_top * top.own + sum(e * o for e, o in zip(energy, own, strict=True))
    return w_ones / tot, w_own / tot
