"""Numeric helpers shared by the statistics: accumulation dtypes and robust norms."""

from __future__ import annotations

import torch

F32 = torch.float32

#: Real floating dtypes the fused hot path handles directly.
PLAIN_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """Accumulation dtype for a reduction.

    float64 for float64 tensors, float32 for other real tensors, None (their own) for complex.
    """
    if dtype.is_complex:
        return None
    return torch.float64 if dtype == torch.float64 else torch.float32


def norm32(t: torch.Tensor) -> torch.Tensor:
    """L2 norm accumulated in float32 (float64 for float64 input), returned as float32.

    Complex tensors give the norm of their moduli (‖z‖₂ = √Σ|z|²), in their own precision.
    """
    if t.dtype == torch.float64 or t.is_complex():
        return torch.linalg.vector_norm(t).float()
    return torch.linalg.vector_norm(t, dtype=torch.float32)


def is_plain(t: torch.Tensor) -> bool:
    """Whether ``t`` is a dense, strided, real floating tensor on a real device."""
    return t.layout == torch.strided and t.dtype in PLAIN_DTYPES and t.device.type != "meta"


def dense_real(t: torch.Tensor) -> torch.Tensor | None:
    """A dense real view (or small copy) of ``t`` whose L2 norm is ``t``'s, or None.

    Sparse tensors give their stored values (the norm of the missing zeros is 0), complex
    tensors their moduli (‖z‖₂ = ‖|z|‖₂), quantized tensors their dequantized values;
    tensors on the ``meta`` device hold no values (None).
    """
    if t.device.type == "meta":
        return None
    if t.layout != torch.strided:
        if t.layout == torch.sparse_coo:
            t = t.coalesce().values()
        elif t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
            t = t.values()
        else:
            return None
    if t.is_quantized:
        t = t.dequantize()
    if t.is_complex():
        t = t.abs()
    if not t.is_floating_point():
        t = t.to(F32)
    return t


class Stacked:
    """A (n, *shape) buffer kept across steps, filled from n same-shape tensors in one call.

    One fused ``torch._foreach_copy_`` into the buffer's rows: on CPU it is faster than
    ``torch.stack(..., out=)`` for many small tensors (0.50 vs 0.64 ms for 200 64x64
    gradients right after a backward pass), and a buffer allocated once spares the page
    faults of a fresh multi-megabyte tensor every step.
    """

    def __init__(self, n: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        self.buf = torch.empty((n, *shape), dtype=dtype, device=device)
        self.rows = list(self.buf.unbind())

    def fits(self, t: torch.Tensor) -> bool:
        """Whether tensors like ``t`` can be copied in (same dtype and device)."""
        return t.dtype == self.buf.dtype and t.device == self.buf.device

    def fill(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Copy ``tensors`` into the rows; return the (n, *shape) buffer."""
        torch._foreach_copy_(self.rows, tensors)
        return self.buf

    @property
    def nbytes(self) -> int:
        """Memory held."""
        return self.buf.numel() * self.buf.element_size()
