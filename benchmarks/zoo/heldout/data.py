"""Data the held-out cases add to the zoo's (``benchmarks/zoo/data.py``): denoising and raw pixels.

Deterministic in the batch index, like the zoo's own tasks.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..data import image_batch
from ..data import pixel_sequence_batch as pixel_sequence_batch  # now the development zoo's


def denoise_batch(i: int, size: int = 16, batch: int = 16, channels: int = 1, noise: float = 0.5,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising digit images: (noisy, clean), both (N, channels, size, size).

    The clean images are the zoo's standardised digit images; the noise is Gaussian with std
    ``noise``. Predicting the noisy input itself scores an MSE of ``noise²`` (0.25); predicting
    0 scores the mean square of the images (≈ 0.8 at 16×16).
    """
    clean, _ = image_batch(i, size=size, batch=batch, channels=channels, seed=seed)
    g = torch.Generator().manual_seed(seed * 100_003 + i + 7)
    return clean + noise * torch.randn(clean.shape, generator=g), clean


@lru_cache(maxsize=1)
def raw_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as 8-bit pixels, 0…255 (the 0…16 values × 16), not standardised."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (torch.tensor(d.data, dtype=torch.float32) * 16).clamp(max=255), \
        torch.tensor(d.target, dtype=torch.long)


def raw_digits_batch(i: int, batch: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The i-th minibatch of raw 8-bit digits (rows drawn with replacement)."""
    x, y = raw_digits()
    g = torch.Generator().manual_seed(seed * 100_003 + i)  # the zoo's digits_batch rows
    idx = torch.randint(0, len(x), (batch,), generator=g)
    return x[idx], y[idx]


def raw_probe() -> tuple[torch.Tensor, torch.Tensor]:
    """The batch raw-pixel cases are checked on: 256 raw digits."""
    return raw_digits_batch(10_000, batch=256)
