"""The accelerator path's non-finite counts: exact, per tensor, in bounded pieces.

On accelerators the counts are taken every step without a host sync
(:func:`gradwatch.stats.gradient.nonfinite_counts`); the function is device-agnostic, so it is
checked here on CPU tensors against a brute-force count.
"""

from __future__ import annotations

import pytest
import torch

import gradwatch.stats.gradient as gradient


def brute(tensors):
    return [float((~torch.isfinite(t)).sum()) for t in tensors]


def gradients():
    g = torch.Generator().manual_seed(0)
    big = torch.ones(5000, dtype=torch.bfloat16)
    big[:3000] = float("nan")  # more than bfloat16 counts exactly (2**8 significand bits)
    big[-1] = float("-inf")
    small = torch.randn(10, generator=g)
    small[2] = float("inf")
    strided = torch.randn(30, 40, generator=g).t()  # not contiguous: counted whole
    strided[3, 7] = float("nan")
    clean = torch.randn(2500, generator=g)
    return [big, small, strided, clean]


def test_counts_equal_brute_force_in_one_piece():
    tensors = gradients()
    assert gradient.nonfinite_counts(tensors).tolist() == brute(tensors)


def test_counts_equal_brute_force_in_pieces_and_the_temporary_stays_bounded(monkeypatch):
    monkeypatch.setattr(gradient, "COUNT_CHUNK", 1000)
    seen = []
    real = torch._foreach_mul

    def spy(tensors, scalar):
        seen.append(sum(t.numel() for t in tensors))
        return real(tensors, scalar)

    monkeypatch.setattr(torch, "_foreach_mul", spy)
    tensors = gradients()
    counts = gradient.nonfinite_counts(tensors)
    assert counts.dtype == torch.float32
    assert counts.tolist() == brute(tensors)
    # each temporary holds at most one piece more than the chunk (the non-contiguous 1200
    # elements go whole), never every gradient at once (8710 elements)
    assert len(seen) > 3 and max(seen) < 2 * 1000 + 1200


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_counts_are_exact_past_their_significand(dtype):
    t = torch.zeros(70_000, dtype=dtype)
    t[:65_537] = float("nan")
    assert gradient.nonfinite_counts([t]).tolist() == [65_537.0]
