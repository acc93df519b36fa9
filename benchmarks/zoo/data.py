"""The zoo's data: scikit-learn's digits (bundled), digit images, the adding problem, tokens.

Everything is generated or loaded locally, deterministically: ``batch(i)`` of every task is
the same tensor in every process and on every run.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F  # noqa: N812


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 digits, standardised per pixel: x (1797, 64), y (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, y


@lru_cache(maxsize=4)
def digit_images(size: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as images: (1797, channels, size, size), bilinear upsampling of 8×8."""
    x, y = digits()
    img = x.view(-1, 1, 8, 8)  # (N, 1, 8, 8)
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    return img.expand(-1, channels, -1, -1).contiguous(), y


def _rows(n_total: int, batch: int, i: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + i)
    return torch.randint(0, n_total, (batch,), generator=g)


def digits_batch(i: int, batch: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The i-th minibatch of digits (rows drawn with replacement)."""
    x, y = digits()
    idx = _rows(len(x), batch, i, seed)
    return x[idx], y[idx]


def image_batch(
    i: int, size: int = 32, batch: int = 16, channels: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The i-th minibatch of digit images (N, channels, size, size)."""
    x, y = digit_images(size, channels)
    idx = _rows(len(x), batch, i, seed)
    return x[idx], y[idx]


def adding_batch(
    i: int, steps: int, batch: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    Each sequence has ``steps`` time steps of two features: a number drawn from U[0, 1]
    and a marker, 1 at exactly two positions (one in each half), 0 elsewhere. The target
    is the sum of the two marked numbers. Predicting 1 (the mean) gives a mean squared
    error of 1/6: a model that stays there has learnt nothing.

    Returns:
        x of shape (N, T, 2) (batch first), y of shape (N, 1).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + i)
    values = torch.rand(batch, steps, generator=g)  # (N, T)
    half = steps // 2
    first = torch.randint(0, half, (batch,), generator=g)
    second = torch.randint(half, steps, (batch,), generator=g)
    marks = torch.zeros(batch, steps)
    rows = torch.arange(batch)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = torch.stack([values, marks], dim=-1)  # (N, T, 2)
    y = (values * marks).sum(1, keepdim=True)  # (N, 1)
    return x, y


def reverse_batch(
    i: int, length: int = 16, vocab: int = 16, batch: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token reversal: the target at position t is the input token at position T-1-t.

    A chance-level model has cross-entropy ln(vocab); learning it needs attention between
    positions. Returns ids (N, T) and targets (N, T), both int64.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + i)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    return ids, ids.flip(1)


def progression_batch(
    i: int, length: int = 16, vocab: int = 16, batch: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token prediction on progressions x_t = (a + b·t) mod vocab.

    After two tokens the rest of the sequence is determined; a chance-level model has
    cross-entropy ln(vocab). Returns ids (N, T) and next-token targets (N, T) (the last
    target continues the progression).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + i)
    a = torch.randint(0, vocab, (batch, 1), generator=g)
    b = torch.randint(1, vocab, (batch, 1), generator=g)
    t = torch.arange(length + 1)  # (T+1,)
    seq = (a + b * t) % vocab  # (N, T+1)
    return seq[:, :-1], seq[:, 1:]


def pixel_sequence_batch(i: int, size: int = 16, batch: int = 16,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential digits: each image read pixel by pixel, row-major, as a sequence of
    ``size²`` steps of one feature (the "sequential MNIST" task of Le et al. 2015 and Bai et
    al. 2018, on the bundled digits): x (N, size², 1), labels (N,)."""
    x, y = image_batch(i, size=size, batch=batch, channels=1, seed=seed)
    return x.flatten(1)[:, :, None], y
