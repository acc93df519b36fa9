"""Data sets for the experiments, all built in: nothing is ever downloaded.

- :func:`digits`: scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes),
  standardised, with a seeded train/test split.
- :func:`shapeset`: a Shapeset-3×2-style generator (Glorot & Bengio 2010): 32×32 grey
  images of one or two shapes among triangle, parallelogram and ellipse; 9 classes.
- :func:`adding_problem` and :func:`temporal_order`: the long-lag sequence tasks of
  Hochreiter & Schmidhuber (1997), used by Pascanu et al. (2013).

Everything is a pure function of its arguments (and ``seed``): the same call gives the
same tensors.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
import torch

from gradwatch.errors import GradwatchValueError

# -- digits -------------------------------------------------------------------------------


def digits(
    split: str = "train", test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scikit-learn digits, standardised with the training split's statistics.

    Args:
        split: "train", "test" or "all".
        test_fraction: share of the 1797 images held out for "test" (stratified by class).
        seed: seed of the split.

    Returns:
        (x, y): x float32 of shape (n, 64), each pixel with mean 0 and std 1 over the
        training split (constant pixels are left at 0); y int64 labels in 0..9.

    Raises:
        GradwatchValueError: unknown ``split`` or ``test_fraction`` outside (0, 1).
    """
    if split not in ("train", "test", "all"):
        raise GradwatchValueError(f'split must be "train", "test" or "all", got {split!r}')
    if not 0 < test_fraction < 1:
        raise GradwatchValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float64)  # (1797, 64), values 0..16
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):  # stratified: the same share of each class in the test split
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, round(test_fraction * len(idx)), replace=False)] = True
    mean = x[~test].mean(0)
    std = x[~test].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    pick = {"train": ~test, "test": test, "all": np.ones(len(y), dtype=bool)}[split]
    order = rng.permutation(np.flatnonzero(pick))
    return torch.from_numpy(x[order].astype(np.float32)), torch.from_numpy(y[order])


# -- Shapeset-3x2 -----------------------------------------------------------------------------

SHAPES = ("triangle", "parallelogram", "ellipse")
#: The 9 classes: each shape alone, then each unordered pair (with repetition).
SHAPESET_CLASSES: tuple[tuple[int, ...], ...] = tuple(
    [(s,) for s in range(3)] + list(combinations_with_replacement(range(3), 2))
)
SHAPESET_CLASS_NAMES = tuple("+".join(SHAPES[s] for s in c) for c in SHAPESET_CLASSES)


#: Reference shapes, in the order of :data:`SHAPES`: (u, v) -> inside?
_REFERENCE_SHAPES = (
    lambda u, v: (u >= -1.0) & (v >= -1.0) & (u + v <= 0.5),  # triangle
    lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0),  # parallelogram
    lambda u, v: u * u + v * v <= 1.0,  # ellipse
)


def _shape_masks(kind: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Rasterise one random shape per row of ``kind``; returns bool masks (n, size, size).

    Each shape is the image of a reference shape under a random affine map
    p = c + R(θ)·S·diag(sx, sy)·u (rotation θ, shear S, scales sx, sy): the unit disc for an
    ellipse, the square [-1, 1]² for a parallelogram, the triangle u ≥ -1, v ≥ -1, u + v ≤ 0.5
    for a triangle. A pixel is inside when its centre, mapped back to u, is inside.
    """
    n = len(kind)
    theta = rng.uniform(0, np.pi, n)
    scale = size * rng.uniform(0.12, 0.26, (n, 2))  # half-lengths in pixels
    shear = rng.uniform(-0.6, 0.6, n)
    centre = size * rng.uniform(0.3, 0.7, (n, 2))
    cos, sin = np.cos(theta), np.sin(theta)
    # forward map A = R @ Shear @ diag(scale); we need its inverse for each shape: (n, 2, 2)
    a = np.empty((n, 2, 2))
    a[:, 0, 0] = cos * scale[:, 0]
    a[:, 0, 1] = (cos * shear - sin) * scale[:, 1]
    a[:, 1, 0] = sin * scale[:, 0]
    a[:, 1, 1] = (sin * shear + cos) * scale[:, 1]
    a_inv = np.linalg.inv(a).astype(np.float32)
    coords = np.arange(size, dtype=np.float32) + 0.5
    dx = coords[None, None, :] - centre[:, 0, None, None].astype(np.float32)  # (n, 1, W)
    dy = coords[None, :, None] - centre[:, 1, None, None].astype(np.float32)  # (n, H, 1)
    m = a_inv[:, :, :, None, None]  # (n, 2, 2, 1, 1)
    uu = m[:, 0, 0] * dx + m[:, 0, 1] * dy  # (n, H, W): pixel centres in the reference frame
    vv = m[:, 1, 0] * dx + m[:, 1, 1] * dy
    mask = np.empty((n, size, size), dtype=bool)
    for k, inside in enumerate(_REFERENCE_SHAPES):
        rows = kind == k
        if rows.any():
            mask[rows] = inside(uu[rows], vv[rows])
    return mask


def shapeset(
    n: int, seed: int = 0, size: int = 32, max_overlap: float = 0.5, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapeset-3×2-style images: one or two shapes among triangle/parallelogram/ellipse.

    Following Glorot & Bengio (2010): each image holds one or two objects, each from 3 shape
    categories with random shape parameters (relative lengths and angles), scale, rotation,
    translation and grey level; the second object may not cover more than ``max_overlap``
    of the first's area. The task is to name the objects present, without telling which is
    in front: 3 single shapes + 6 unordered pairs = 9 classes (:data:`SHAPESET_CLASSES`).
    Classes are drawn uniformly. The background is 0, each shape a grey level in [0.3, 1]
    (the second painted over the first).

    Args:
        n: number of images.
        seed: the seed; the same (n, seed, size) gives the same images.
        size: image side in pixels.
        max_overlap: largest share of the first shape's area the second may cover.
        chunk: images rasterised at once (memory: about chunk × size² × 40 bytes).

    Returns:
        (x, y): x float32 of shape (n, 1, size, size) in [0, 1]; y int64 in 0..8.

    Raises:
        GradwatchValueError: ``n < 1`` or ``size < 8``.

    References:
        Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward
        neural networks", section 2.1.
    """
    if n < 1 or size < 8:
        raise GradwatchValueError(f"shapeset needs n >= 1 and size >= 8, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    classes = np.asarray([c + (-1,) * (2 - len(c)) for c in SHAPESET_CLASSES])  # (9, 2)
    y = rng.integers(0, len(SHAPESET_CLASSES), n)
    # which object is painted first is random, so the front shape tells nothing
    swap = rng.random(n) < 0.5
    kinds = classes[y].copy()
    two = kinds[:, 1] >= 0
    kinds[swap & two] = kinds[swap & two][:, ::-1]
    x = np.zeros((n, size, size), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        k = kinds[lo:hi]
        first = _shape_masks(k[:, 0], rng, size)
        img = np.where(first, rng.uniform(0.3, 1.0, (hi - lo, 1, 1)), 0.0)
        todo = np.flatnonzero(k[:, 1] >= 0)
        area = first.reshape(hi - lo, -1).sum(1)
        for attempt in range(50):  # resample second shapes that hide too much of the first
            if not len(todo):
                break
            second = _shape_masks(k[todo, 1], rng, size)
            covered = (second & first[todo]).reshape(len(todo), -1).sum(1)
            ok = (covered <= max_overlap * area[todo]) | (attempt == 49)  # the label stays true
            grey = rng.uniform(0.3, 1.0, (len(todo), 1, 1))
            img[todo[ok]] = np.where(second[ok], grey[ok], img[todo[ok]])
            todo = todo[~ok]
        x[lo:hi] = img
    return torch.from_numpy(x[:, None]), torch.from_numpy(y.astype(np.int64))


# -- sequence tasks ---------------------------------------------------------------------------


def adding_problem(n: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Pascanu et al. 2013).

    Each sequence has two channels: values drawn from U[0, 1] and a marker that is 1 at
    exactly two positions, one in the first half and one in the second half, 0 elsewhere.
    The target is the sum of the two marked values. Predicting the mean (1) scores a mean
    squared error of 1/6 ≈ 0.167; solving the task needs the signal of the first marker to
    survive about ``length / 2`` steps.

    Args:
        n: number of sequences.
        length: sequence length T (≥ 2).
        seed: the seed.

    Returns:
        (x, y): x float32 of shape (n, T, 2) (batch first); y float32 of shape (n, 1).
    """
    if n < 1 or length < 2:
        raise GradwatchValueError(f"adding_problem needs n >= 1, length >= 2; got {n}, {length}")
    rng = np.random.default_rng(seed)
    values = rng.random((n, length))
    half = length // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    marks = np.zeros((n, length))
    rows = np.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = np.stack([values, marks], -1).astype(np.float32)  # (n, T, 2)
    y = (values[rows, first] + values[rows, second]).astype(np.float32)[:, None]
    return torch.from_numpy(x), torch.from_numpy(y)


#: Symbols of the temporal order task: 4 distractors, the 2 relevant symbols, begin, end.
TEMPORAL_SYMBOLS = ("a", "b", "c", "d", "X", "Y", "B", "E")


def temporal_order(n: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The temporal order task (Hochreiter & Schmidhuber 1997, experiment 6a).

    A sequence of one-hot symbols: "B" first, "E" last, random distractors a–d between,
    except at two positions t1 ∈ [0.1 T, 0.2 T] and t2 ∈ [0.5 T, 0.6 T], which hold X or
    Y. The class is the ordered pair at (t1, t2): XX, XY, YX or YY (chance: 25%).

    Args:
        n: number of sequences.
        length: sequence length T (≥ 10).
        seed: the seed.

    Returns:
        (x, y): x float32 one-hot of shape (n, T, 8) (:data:`TEMPORAL_SYMBOLS`); y int64
        in 0..3 (2·[first is Y] + [second is Y]).
    """
    if n < 1 or length < 10:
        raise GradwatchValueError(f"temporal_order needs n >= 1, length >= 10; got {n}, {length}")
    rng = np.random.default_rng(seed)
    sym = rng.integers(0, 4, (n, length))  # distractors a..d
    sym[:, 0], sym[:, -1] = 6, 7  # B, E
    t1 = rng.integers(int(0.1 * length), int(0.2 * length) + 1, n)
    t2 = rng.integers(int(0.5 * length), int(0.6 * length) + 1, n)
    b1, b2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
    rows = np.arange(n)
    sym[rows, t1] = 4 + b1
    sym[rows, t2] = 4 + b2
    x = np.eye(len(TEMPORAL_SYMBOLS), dtype=np.float32)[sym]  # (n, T, 8)
    return torch.from_numpy(x), torch.from_numpy((2 * b1 + b2).astype(np.int64))


# -- a small language -------------------------------------------------------------------------

#: Seed of the fixed Markov chain behind :func:`copy_language` (the same language everywhere).
LANGUAGE_SEED = 1234


def markov_chain(vocab: int, branching: int = 4, seed: int = LANGUAGE_SEED):
    """A random sparse Markov chain over ``vocab`` tokens: (successors (V, k), probs (V, k)).

    Each token has ``branching`` possible successors, drawn without replacement, with fixed
    random probabilities (a softmax of N(0, 1.5²) scores): an entropy rate of about 1 nat.
    """
    g = torch.Generator().manual_seed(seed)
    succ = torch.stack([torch.randperm(vocab, generator=g)[:branching] for _ in range(vocab)])
    probs = torch.softmax(1.5 * torch.randn(vocab, branching, generator=g), dim=-1)
    return succ, probs


def copy_language(
    n: int, length: int, vocab: int = 64, seed: int = 0, branching: int = 4
) -> torch.Tensor:
    """Sequences of a small synthetic language, for training language models on the CPU.

    The first half of each sequence is a walk on a fixed random Markov chain
    (:func:`markov_chain`: the same chain for every ``seed``); the second half repeats the
    first. A model learns the first half from the chain's statistics (next-token entropy
    about 1 nat against ln V for a uniform guess) and the second half only by attending
    back half a sequence (a copy, or "induction", head), so both the feed-forward and the
    attention layers have something to learn, as in natural text.

    Args:
        n: number of sequences.
        length: tokens per sequence (≥ 4).
        vocab: vocabulary size V (≥ ``branching``).
        seed: seed of the walks (not of the chain).
        branching: successors of each token in the chain.

    Returns:
        int64 tokens (n, length) in 0..V-1.

    Raises:
        GradwatchValueError: ``n < 1``, ``length < 4`` or ``vocab < branching``.
    """
    if n < 1 or length < 4 or vocab < branching or branching < 1:
        raise GradwatchValueError(
            f"copy_language needs n >= 1, length >= 4 and vocab >= branching >= 1; got n={n}, "
            f"length={length}, vocab={vocab}, branching={branching}"
        )
    succ, probs = markov_chain(vocab, branching)
    g = torch.Generator().manual_seed(seed)
    half = (length + 1) // 2
    x = torch.empty(n, length, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(1, half):
        j = torch.multinomial(probs[x[:, t - 1]], 1, generator=g).squeeze(1)
        x[:, t] = succ[x[:, t - 1], j]
    x[:, half:] = x[:, : length - half]
    return x


def chain_entropy(vocab: int = 64, branching: int = 4) -> float:
    """Entropy rate of :func:`markov_chain` in nats (stationary distribution weighted)."""
    succ, probs = markov_chain(vocab, branching)
    trans = torch.zeros(vocab, vocab, dtype=torch.float64)
    trans.scatter_(1, succ, probs.double())
    pi = torch.full((vocab,), 1.0 / vocab, dtype=torch.float64)
    for _ in range(500):  # power iteration to the stationary distribution
        pi = pi @ trans
    h = -(probs.double() * probs.double().log()).sum(1)
    return float((pi * h).sum())
