"""Attention statistics: ``attn_logit_max`` and ``attn_entropy_min``, per attention layer.

An attention call turns queries q (B, H, L, d) and keys k (B, H, S, d) into logits
``z = q·kᵀ · scale`` (scale 1/√d unless the call says otherwise), adds its mask and takes a
softmax over the keys. Two things go wrong when a transformer trains at too high a learning
rate (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities", §3.1; Zhai et al. 2023, "Stabilizing Transformer Training by Preventing
Attention Entropy Collapse"): the logits grow without bound, and the softmax collapses onto
one key per query, its entropy falling to 0. Per attention layer and recorded step:

- ``attn_logit_max``: the largest logit ``q·kᵀ · scale`` over heads, queries and keys that
  the mask lets take part (an additive float mask decides which keys take part, but its
  value is not added: the statistic is the logit that qk-layernorm bounds);
- ``attn_entropy_min``: per head, the mean over (batch element, query) of the entropy
  ``-Σ_j p_j ln p_j`` of the attention distribution (the softmax of the logits plus the
  mask, as the call computes it, before dropout), in nats; then the smallest over heads.
  Queries for which the mask leaves no key are left out.

**Sampling.** The reduction forms the logits again for a sample of the queries: at most
:data:`QUERY_ROWS` (batch element, query) rows per call, every key and every head for each.
When B·L is larger, the first ``min(B, QUERY_ROWS)`` batch elements are kept and, in each,
``QUERY_ROWS // B`` query positions evenly spaced from the first to the last. The maximum is
exact on the sample (every key of every sampled query); the entropy is the mean over the
sampled rows. The cost is one ``(rows, H, S, d)`` product per call, at detail steps only.

Where the calls come from (``nn.MultiheadAttention``, i.e. ``F.multi_head_attention_forward``,
and ``F.scaled_dot_product_attention``, which Hugging Face GPT-2, BERT and Llama call) is the
Monitor's business; this module only reduces the tensors of one call (:func:`attention_row`,
:func:`mha_queries_keys`) and decodes the rows on the host.

Block ``attn``: per call, one row ``[max, entropy sum per head (H), rows per head (H)]``;
the key lists ``(layer index, H)`` per row. Rows of one layer in one step (micro-batches,
a module called twice) are merged on the host: the largest maximum, the summed entropies
and rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from gradwatch.stats.registry import define_block, define_statistic

F32 = torch.float32

#: The most (batch element, query) rows one call's logits are formed for.
QUERY_ROWS = 256


def sample_queries(b: int, n_q: int, rows: int = QUERY_ROWS) -> tuple[int, torch.Tensor | None]:
    """(batch elements kept, query positions kept or None for all) for B = ``b``, L = ``n_q``."""
    if b * n_q <= rows:
        return b, None
    nb = min(b, rows)
    nq = max(1, min(n_q, rows // nb))
    if nq == 1:
        return nb, torch.tensor([n_q - 1])
    return nb, torch.linspace(0, n_q - 1, nq).round().long().unique()


def _heads(t: torch.Tensor) -> torch.Tensor:
    """(..., L, d) -> (B, H, L, d): one head when there is no head dimension."""
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() == 2:
        return t.unsqueeze(0).unsqueeze(0)
    return t.reshape(-1, *t.shape[-3:])


def attention_row(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    rows: int = QUERY_ROWS,
) -> torch.Tensor:
    """One call's row ``[max logit, entropy sum per head, rows per head]``, float32 (1 + 2H,).

    Arguments follow ``F.scaled_dot_product_attention``: ``q`` (..., H, L, d), ``k``
    (..., H_k, S, d); ``attn_mask`` broadcastable to (..., H, L, S), boolean (True: the key
    takes part) or float (added to the logits; a key whose mask is -inf or below half the
    dtype's lowest value does not take part); ``is_causal`` (query i sees keys j ≤ i, top-left
    aligned); ``scale`` (default 1/√d); ``enable_gqa`` (H_k divides H: each key head serves
    H / H_k query heads).
    """
    with torch.no_grad():
        q4, k4 = _heads(q.detach()), _heads(k.detach())
        b, h, n_q, d = q4.shape
        n_k = k4.shape[-2]
        if k4.shape[1] != h:
            if not enable_gqa and k4.shape[1] != 1:
                raise ValueError(f"query heads {h} and key heads {k4.shape[1]} differ")
            k4 = k4.repeat_interleave(h // k4.shape[1], dim=1)
        if k4.shape[0] != b:
            k4 = k4.expand(b, *k4.shape[1:])
        acc = torch.float64 if q4.dtype == torch.float64 else F32
        nb, qi = sample_queries(b, n_q, rows)
        qs = q4[:nb].to(acc)
        if qi is not None:
            qs = qs.index_select(2, qi.to(q4.device))
        sc = (1.0 / math.sqrt(d)) if scale is None else float(scale)
        z = torch.matmul(qs, k4[:nb].to(acc).transpose(-2, -1)).mul_(sc)  # (nb, H, nq, S)
        allowed, add = _mask(attn_mask, is_causal, q.shape, b, h, n_q, n_k, nb, qi, z.device,
                            acc)
        top = z.masked_fill(~allowed, -math.inf) if allowed is not None else z
        zmax = top.amax() if top.numel() else torch.full((), -math.inf, device=z.device)
        if add is not None:
            z = z + add
        if allowed is not None:
            z = z.masked_fill_(~allowed, -math.inf)
        logp = torch.log_softmax(z, dim=-1)
        ent = -(logp.exp() * logp).nan_to_num_(nan=0.0).sum(-1)  # (nb, H, nq); 0·(-inf) -> 0
        valid = torch.isfinite(z).any(-1) if allowed is not None else None
        if valid is not None:
            ent = ent.masked_fill_(~valid, 0.0)
            count = valid.sum(dim=(0, 2), dtype=acc)
        else:
            count = torch.full((h,), float(ent.shape[0] * ent.shape[2]), dtype=acc,
                               device=z.device)
        esum = ent.sum(dim=(0, 2))
        return torch.cat([zmax.reshape(1).to(acc), esum, count]).to(F32)


def _mask(attn_mask, is_causal, q_shape, b, h, n_q, n_k, nb, qi, device, acc):
    """(allowed (nb, H|1, nq, S) bool or None, additive float mask or None) for the sample.

    The mask is expanded, not copied, to the call's (..., H, L, S); only the sampled rows are
    materialised.
    """
    allowed = add = None
    if attn_mask is not None:
        m = attn_mask.detach().expand(*q_shape[:-2], n_q, n_k)
        if len(q_shape) != 4:
            m = m.reshape(b, h, n_q, n_k)
        m = m[:nb]
        if qi is not None:
            m = m.index_select(2, qi.to(m.device))
        if m.dtype == torch.bool:
            allowed = m
        else:
            low = torch.finfo(m.dtype).min / 2
            allowed = m > low
            add = m.to(acc).masked_fill(~allowed, 0.0)
    if is_causal:
        rows = torch.arange(n_q, device=device) if qi is None else qi.to(device)
        causal = torch.arange(n_k, device=device)[None, :] <= rows[:, None]  # (nq, S)
        allowed = causal[None, None] if allowed is None else allowed & causal
    return allowed, add


def mha_queries_keys(
    query: torch.Tensor,
    key: torch.Tensor,
    num_heads: int,
    in_proj_weight: torch.Tensor | None,
    in_proj_bias: torch.Tensor | None,
    bias_k: torch.Tensor | None = None,
    add_zero_attn: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: torch.Tensor | None = None,
    k_proj_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(q (B, H, L, d), k (B, H, S, d), mask) of one ``F.multi_head_attention_forward`` call.

    Inputs as that function takes them: ``query`` (L, B, E) or unbatched (L, E); boolean
    masks True where a key may *not* be attended (``nn.MultiheadAttention``'s convention),
    float masks added. The mask returned follows ``F.scaled_dot_product_attention``'s
    convention (boolean True: takes part; float: added), broadcastable to (B, H, L, S).
    """
    with torch.no_grad():
        if query.dim() == 2:
            query, key = query.unsqueeze(1), key.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        n_q, b, e = query.shape
        d = e // num_heads
        if use_separate_proj_weight:
            wq, wk = q_proj_weight, k_proj_weight
        else:
            wq, wk = in_proj_weight[:e], in_proj_weight[e : 2 * e]
        bq, bk = (None, None) if in_proj_bias is None else (in_proj_bias[:e], in_proj_bias[e:2 * e])
        q = F.linear(query, wq, bq)  # (L, B, E)
        k = F.linear(key, wk, bk)  # (S, B, E)
        pad = 0
        if bias_k is not None:
            k = torch.cat([k, bias_k.expand(1, b, e)])
            pad += 1
        q = q.reshape(n_q, b, num_heads, d).permute(1, 2, 0, 3)  # (B, H, L, d)
        k = k.reshape(k.shape[0], b, num_heads, d).permute(1, 2, 0, 3)  # (B, H, S, d)
        if add_zero_attn:
            k = torch.cat([k, k.new_zeros(b, num_heads, 1, d)], dim=2)
            pad += 1
        n_k = k.shape[2]
        mask = _mha_mask(attn_mask, key_padding_mask, b, num_heads, n_q, n_k, pad, q.dtype)
        return q, k, mask


def _mha_mask(attn_mask, key_padding_mask, b, h, n_q, n_k, pad, dtype):
    """``nn.MultiheadAttention``'s masks (True: excluded) as one SDPA-style float mask."""
    out = None
    for m, shape in ((attn_mask, None), (key_padding_mask, (b, 1, 1, n_k))):
        if m is None:
            continue
        m = m.detach()
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(m, -math.inf)
        else:
            m = m.to(dtype)
        if pad:
            m = F.pad(m, (0, pad))
        if shape is not None:
            m = m.reshape(shape)
        elif m.dim() == 3:
            m = m.reshape(b, h, n_q, n_k)
        out = m if out is None else out + m
    return out


def decode_attn(values: np.ndarray, key: Sequence[tuple[int, int]]):
    """Host side: (steps, Σ(1 + 2H)) rows -> per-layer ``attn_logit_max``, ``attn_entropy_min``."""
    v = values.astype(np.float64)
    merged: dict[int, list] = {}
    col = 0
    for li, h in key:
        mx = v[:, col]
        es, n = v[:, col + 1 : col + 1 + h], v[:, col + 1 + h : col + 1 + 2 * h]
        col += 1 + 2 * h
        if li in merged:
            m0, e0, n0 = merged[li]
            merged[li] = [np.fmax(m0, mx), e0 + es, n0 + n] if e0.shape == es.shape else \
                [np.fmax(m0, mx), e0, n0]
        else:
            merged[li] = [mx, es, n]
    layers = sorted(merged)
    if not layers:
        return {}
    mx = np.stack([np.where(np.isneginf(merged[li][0]), np.nan, merged[li][0])
                   for li in layers], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = [np.where(merged[li][2] > 0, merged[li][1] / merged[li][2], np.nan)
               for li in layers]
    emin = np.stack([np.nanmin(np.where(np.isnan(e), np.inf, e), axis=1) for e in ent], axis=1)
    emin = np.where(np.isinf(emin), np.nan, emin)
    return {"attn_logit_max": (layers, mx), "attn_entropy_min": (layers, emin)}


def _combine(values: np.ndarray, key, world: int):
    # per row: the largest maximum over ranks; entropy sums and row counts add up
    out = values.sum(axis=0)
    col = 0
    for _, h in key:
        out[col] = values[:, col].max()
        col += 1 + 2 * h
    return out, key


define_block(
    "attn",
    lambda values, key, layout: decode_attn(values, key),
    _combine,
    "per attention call: [max logit, entropy sum per head, rows per head]; key (layer, H)",
)
define_statistic(
    "attn_logit_max", "attn", "attn", "detail",
    "largest pre-softmax attention logit q·kᵀ/√d over heads, (sampled) queries and the keys "
    "the mask lets take part (attention layers)",
    "max over ranks",
)
define_statistic(
    "attn_entropy_min", "attn", "attn", "detail",
    "smallest over heads of the mean attention entropy (nats) over batch and (sampled) "
    "queries (attention layers)",
    "entropy sums and rows add up over ranks",
)
