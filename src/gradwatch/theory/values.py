"""What the mean-field interpreter knows about each tensor of a recorded forward pass.

Rows. The model's input is a batch of B examples, each with T positions (T = 1 for a flat
feature vector; the tokens of a sequence otherwise); a *row* is one (example, position) and
its *features* are the values that share it (the hidden units of a token). Every tensor
computed from the input carries ``rid``, an integer tensor of its shape giving each element's
row, obtained by replaying the shape operations (view, transpose, split, ...) on the row ids
of the input. A weight matrix acts on the features of each row; attention mixes rows of one
example; batch normalisation mixes the rows of all examples.

Kinds of value:

- :class:`Const`: depends on neither the input nor a parameter (masks, ``arange``).
- :class:`Table`: depends on parameters but not on the input (a bias, a position embedding):
  known exactly, with rows of its own, shared by every example.
- :class:`Data`: depends on the input, but no random weight matrix has acted on it yet
  (embedding lookups, sums and norms of them): known exactly.
- :class:`Field`: has crossed a weight matrix, so mean-field theory describes it by the
  second moments of its features, averaged over features: ``A[t, t']`` between positions
  t, t' of one example, ``C[t, t']`` between positions of two different examples (tracked
  only when an operation mixes examples), and the mean ``mu[t]``.
- :class:`Lazy`: an elementwise function of a Field, kept as a function until an operation
  needs its moments (so that ``x + 0.044715 x³`` or GPT-2's tanh-GELU are one function).
- :class:`RowStat`: a statistic of each row over its features (the mean square of RMSNorm),
  deterministic in the wide limit.
- :class:`Scores`, :class:`Probs`: attention scores q·kᵀ and their softmax, kept symbolic
  until they multiply the values.
- :class:`Unknown`: outside the theory, with the reason.

Two Fields are *independent* (their features are uncorrelated over the random weights) when
one of them crossed a weight matrix after they parted: the residual branch f(x) is
independent of x. ``token`` names the last weight matrices (or feature slices of them) a
Field crossed, ``lineage`` all of them.

References: Poole et al. 2016 and Schoenholz et al. 2017 (mean-field kernels); Yang &
Schoenholz 2017 (residual sums); Kedia et al. 2024 (second moments through transformers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Space:
    """The rows of the model input: ``ex[r]``, ``pos[r]`` of row id r; B examples, T positions."""

    B: int
    T: int
    ex: np.ndarray
    pos: np.ndarray
    track_cross: bool = False  # keep C (an operation mixes examples)


@dataclass
class Stats:
    """Second moments per feature: A (T, T) within an example, C (T, T) across, mu (T,)."""

    A: np.ndarray
    C: np.ndarray | None
    mu: np.ndarray
    present: np.ndarray  # bool (T,): positions this tensor has


class Value:
    """Base class of the interpreter's values."""


@dataclass(eq=False)
class Const(Value):
    """Neither input- nor parameter-dependent: the actual tensor (or number)."""

    value: Any


@dataclass(eq=False)
class Table(Value):
    """Parameter-dependent, input-independent: the actual tensor, its own rows."""

    value: torch.Tensor
    rid: torch.Tensor | None  # rows of its own (flat index over the non-feature axes)
    param: int | None = None  # id of the parameter it is (not a view of), if it is one


@dataclass(eq=False)
class Data(Value):
    """Input-dependent, no weight matrix crossed yet: the actual tensor and its rows."""

    value: torch.Tensor
    rid: torch.Tensor | None
    _stats: Stats | None = None


@dataclass(eq=False)
class Field(Value):
    """A mean-field signal: its moments, rows, and the weight matrices it crossed."""

    stats: Stats
    rid: torch.Tensor
    lineage: frozenset = frozenset()
    token: frozenset = frozenset()


@dataclass(eq=False)
class Lazy(Value):
    """``fn(source)`` elementwise, for a Field ``source``; ``rid`` of the result's shape.

    ``affine`` is (a, b) while fn is a·u + b, else None; ``kinks`` are where fn is not
    smooth, in the source's units (None: not known).
    """

    source: Field
    fn: Any
    rid: torch.Tensor
    affine: tuple[float, float] | None = (1.0, 0.0)
    kinks: tuple[float, ...] | None = ()
    names: tuple[str, ...] = ()


@dataclass(eq=False)
class RowStat(Value):
    """``h(mean over features of g(source)))`` per row: g as a Lazy, h a scalar function."""

    base: Lazy
    raw: np.ndarray  # (T,) the mean of g per position
    h: Any  # torch scalar function of the raw mean
    rid: torch.Tensor


@dataclass(eq=False)
class Scores(Value):
    """scale · q kᵀ (+ an additive mask), per group of rows."""

    q: Value
    k: Value
    q_rows: torch.Tensor  # (G, T1) row ids
    k_rows: torch.Tensor  # (G, T2)
    scale: float = 1.0
    mask: torch.Tensor | None = None  # (G, T1, T2) additive, -inf where masked
    shape: tuple = ()


@dataclass(eq=False)
class Probs(Value):
    """softmax over the last axis of :class:`Scores`; ``keep`` is the dropout keep rate."""

    scores: Scores
    keep: float = 1.0


@dataclass(eq=False)
class Unknown(Value):
    """Outside the theory; ``reason`` says why (the first cause, carried downstream)."""

    reason: str


@dataclass
class Grad:
    """Back-propagated second moments, summed over features.

    ``GA[t, t']`` = Σ_features E[δ(b, t) δ(b, t')] within an example, ``GC`` across two
    examples (rows of a main-space value); for a :class:`Table`, ``GA`` is over its own rows
    (the sum over the examples that share it) and ``GC`` is None.

    ``ones`` and ``own`` describe the gradient's direction at finite width: its energy along
    the all-ones feature vector and along the direction of its own signal, relative to an
    isotropic gradient (1: isotropic; 0: orthogonal, as just after a LayerNorm, whose
    backward projects both out). A LayerNorm removes (ones + own)/n of the energy it
    receives, not 2/n, so a post-LN stack does not lose 2/n per layer (the gradient that
    reaches a norm through the skip path was already projected by the next norm).
    """

    GA: np.ndarray
    GC: np.ndarray | None = None
    ones: float = 1.0
    own: float = 1.0
    #: Along a residual stream carried by draws (:mod:`~gradwatch.theory.draws`): the
    #: gradient as independent parts (GA, GC, mask, positions), each the gradient injected at some
    #: depth times the product of the elementwise slopes it crossed since, per draw (the same
    #: coordinate's masks are correlated along the skip path). GA, GC are their sum.
    parts: tuple | None = None

    def energy(self) -> float:
        """Σ_t GA[t, t]: the weight of this gradient in a sum."""
        return float(np.trace(self.GA))

    def add(self, other: Grad) -> Grad:
        """Return the sum of two independent gradients (None parts count as zero)."""
        gc = None
        if self.GC is not None or other.GC is not None:
            gc = _or0(self.GC, self.GA) + _or0(other.GC, other.GA)
        e1, e2 = abs(self.energy()), abs(other.energy())
        w = e1 / (e1 + e2) if e1 + e2 > 0 else 0.5
        parts = None
        if self.parts is not None or other.parts is not None:
            parts = self.split() + other.split()
        return Grad(
            self.GA + other.GA,
            gc,
            ones=w * self.ones + (1 - w) * other.ones,
            own=w * self.own + (1 - w) * other.own,
            parts=parts,
        )

    def split(self) -> tuple:
        """The independent parts (GA, GC, mask draws or None) this gradient is the sum of."""
        return self.parts if self.parts is not None else ((self.GA, self.GC, None, None),)

    def scaled(self, s: float | np.ndarray) -> Grad:
        """Return the gradient times ``s``: a number keeps its direction, an array does not."""
        gc = None if self.GC is None else self.GC * s
        if np.ndim(s) == 0:
            parts = None
            if self.parts is not None:
                parts = tuple(
                    (a * s, None if c is None else c * s, m, p) for a, c, m, p in self.parts
                )
            return Grad(self.GA * s, gc, ones=self.ones, own=self.own, parts=parts)
        return Grad(self.GA * s, gc)


def _or0(x: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    return np.zeros_like(like) if x is None else x


class Repartition(Exception):
    """Attention mixes rows that the partition put in different examples: start again."""

    def __init__(self, space: Space):
        super().__init__("the rows are partitioned into examples again")
        self.space = space


@dataclass
class Step:
    """One tape entry: the values it read and wrote, and how gradients go back."""

    inputs: list[Value]
    outputs: list[Value]
    backward: Any  # Callable[[list[Grad | None]], list[Grad | None]]


@dataclass
class Context:
    """State shared by the rules during one interpretation."""

    space: Space
    seed: int = 0
    samples: int = 512
    weights: dict[int, dict[str, float]] = field(default_factory=dict)  # per weight matrix
    tape: list[Step] = field(default_factory=list)
    uses: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # matrices, per call
    #: predicted ‖∂L/∂W‖² (+ its bias's) per weight matrix (id of the parameter)
    weight_grads: dict[int, float] = field(default_factory=dict)

    def record(self, inputs: list, outputs: list, backward: Any) -> None:
        """Append a tape entry."""
        self.tape.append(Step(list(inputs), list(outputs), backward))


# ------------------------------------------------------------------------------- rows
def feature_axes(rid: torch.Tensor) -> list[int]:
    """The axes of ``rid`` along which the row does not change (features, heads)."""
    out = []
    for a in range(rid.dim()):
        if rid.shape[a] <= 1 or bool((rid == rid.narrow(a, 0, 1)).all()):
            out.append(a)
    return out


def is_feature_axis(rid: torch.Tensor, axis: int) -> bool:
    """Whether the row is the same all along ``axis``."""
    axis = axis % max(rid.dim(), 1)
    return rid.shape[axis] <= 1 or bool((rid == rid.narrow(axis, 0, 1)).all())


def row_matrix(value: torch.Tensor, rid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Group a tensor's elements by row: (row ids (R,), values (R, n)) with aligned features.

    Raises:
        ValueError: rows do not all have the same number of features.
    """
    flat_r = rid.reshape(-1)
    order = torch.sort(flat_r, stable=True).indices
    r_sorted = flat_r[order]
    rows, counts = torch.unique_consecutive(r_sorted, return_counts=True)
    if len(counts) and not bool((counts == counts[0]).all()):
        raise ValueError("rows with different numbers of features")
    n = int(counts[0]) if len(counts) else 0
    vals = value.detach().reshape(-1)[order].to(torch.float64).reshape(len(rows), n)
    return rows.numpy(), vals.numpy()


def features_per_row(rid: torch.Tensor) -> int:
    """Elements per row (the same for every row)."""
    rows = torch.unique(rid)
    return int(rid.numel() // max(len(rows), 1))


def present_positions(space: Space, rid: torch.Tensor) -> np.ndarray:
    """Bool (T,): the positions that appear in ``rid``."""
    out = np.zeros(space.T, dtype=bool)
    rows = torch.unique(rid).numpy()
    out[space.pos[rows]] = True
    return out


def data_stats(space: Space, value: torch.Tensor, rid: torch.Tensor) -> Stats:
    """Second moments of an actual input-dependent tensor, per feature (see :class:`Stats`)."""
    rows, m = row_matrix(value, rid)  # (R, n)
    n = m.shape[1]
    x = np.zeros((space.B, space.T, n))
    x[space.ex[rows], space.pos[rows]] = m
    present = np.zeros(space.T, dtype=bool)
    present[space.pos[rows]] = True
    B = space.B
    a = np.einsum("btn,bsn->ts", x, x) / (B * n)
    mu = x.mean(axis=(0, 2))
    c = None
    if space.track_cross and B > 1:
        tot = x.sum(axis=0)  # (T, n)
        c = (np.einsum("tn,sn->ts", tot, tot) - a * B * n) / (B * (B - 1) * n)
    return Stats(A=a, C=c, mu=mu, present=present)


def table_rows(value: torch.Tensor) -> torch.Tensor:
    """Own row ids of a parameter-derived tensor: flat index over all axes but the last."""
    if value.dim() == 0:
        return torch.zeros((), dtype=torch.long)
    lead = value.shape[:-1]
    n_rows = int(np.prod(lead)) if len(lead) else 1
    return torch.arange(n_rows).reshape(lead if len(lead) else ()).unsqueeze(-1).expand(value.shape)
