"""Numeric helpers shared by the statistics: accumulation dtypes and robust norms."""

from __future__ import annotations

import torch

F32 = torch.float32

#: Real floating dtypes the fused hot path handles directly.
PLAIN_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for a reduction: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def norm32(t: torch.Tensor) -> torch.Tensor:
    """L2 norm accumulated in float32 (float64 for float64 input), returned as float32."""
    if t.dtype == torch.float64:
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
