"""qk-layernorm: LayerNorm on the queries and keys of every attention head.

Without it the attention logits ``q·kᵀ/√d`` of a transformer trained at a high learning rate
grow without bound, the softmax collapses onto one key (attention-entropy collapse) and the
loss diverges; normalising q and k per head before the dot product bounds the logits and
widens the range of learning rates that train (Dehghani et al. 2023, "Scaling Vision
Transformers to 22 Billion Parameters"; Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities", §3.1).

:func:`qk_layernorm_` rewrites, in place, every ``nn.MultiheadAttention`` of a model (the
attention of ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` included) into a
:class:`QKNormMultiheadAttention`: the same projections (the packed ``in_proj_weight`` split
into ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``, values unchanged), plus one
``nn.LayerNorm(head_dim)`` for the queries and one for the keys, shared by the heads. The
module is still an ``nn.MultiheadAttention`` with the same call signature; with separate
projection weights (``_qkv_same_embed_dim`` False) PyTorch's fused inference path, which
would skip the norms, is never taken. Attention written by hand or by a library (Hugging Face
GPT-2, BERT, Llama) is not rewritten: :data:`RECIPE` says what to change in its code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from gradwatch.errors import GradwatchValueError
from gradwatch.remedies._targets import check_model

#: What to do for attention that :func:`qk_layernorm_` cannot rewrite.
RECIPE = (
    "in the attention's forward, after splitting the projected queries and keys into heads "
    "(shape (B, H, T, d)), apply a LayerNorm over the head dimension d to each "
    "(q = q_norm(q); k = k_norm(k), with q_norm = k_norm-shaped nn.LayerNorm(d) created in "
    "__init__) before q·kᵀ (and before rotary embeddings); Wortsman et al. 2023, §3.1"
)


class QKNormMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with LayerNorm on each head's queries and keys.

    Same arguments and call signature as ``nn.MultiheadAttention`` (``add_bias_kv`` and
    ``add_zero_attn`` are not supported), plus ``eps`` of the two norms. The projection
    weights are kept separate (``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``).
    The output is computed with ``F.scaled_dot_product_attention``; the weights returned
    with ``need_weights=True`` are the softmax before dropout.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        eps: float = 1e-5,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(
            embed_dim, num_heads, dropout, bias, kdim=kdim, vdim=vdim, batch_first=batch_first,
            device=device, dtype=dtype,
        )
        if self._qkv_same_embed_dim:  # unpack: q, k and v each get their own weight
            w = self.in_proj_weight.detach()
            e = embed_dim
            del self.in_proj_weight
            self.q_proj_weight = nn.Parameter(w[:e].clone())
            self.k_proj_weight = nn.Parameter(w[e : 2 * e].clone())
            self.v_proj_weight = nn.Parameter(w[2 * e :].clone())
            self.register_parameter("in_proj_weight", None)
            self._qkv_same_embed_dim = False
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps, device=device, dtype=dtype)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps, device=device, dtype=dtype)

    @classmethod
    def from_attention(cls, mha: nn.MultiheadAttention, eps: float = 1e-5):
        """A copy of ``mha`` (weights, dtype, device, mode) with qk-layernorm added.

        Raises:
            GradwatchValueError: ``mha`` uses ``add_bias_kv`` or ``add_zero_attn``.
        """
        if mha.bias_k is not None or mha.add_zero_attn:
            raise GradwatchValueError(
                "qk_layernorm_ cannot rewrite an nn.MultiheadAttention built with "
                f"add_bias_kv=True or add_zero_attn=True; {RECIPE}"
            )
        ref = mha.out_proj.weight
        new = cls(
            mha.embed_dim, mha.num_heads, mha.dropout, bias=mha.in_proj_bias is not None,
            kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first, eps=eps,
            device=ref.device, dtype=ref.dtype,
        )
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                w = mha.in_proj_weight
                parts = (w[:e], w[e : 2 * e], w[2 * e :])
            else:
                parts = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            for dst, src in zip(
                (new.q_proj_weight, new.k_proj_weight, new.v_proj_weight), parts, strict=True
            ):
                dst.copy_(src)
            if mha.in_proj_bias is not None:
                new.in_proj_bias.copy_(mha.in_proj_bias)
            new.out_proj.load_state_dict(mha.out_proj.state_dict())
        for name, p in new.named_parameters():
            if not name.startswith(("q_norm", "k_norm")):
                p.requires_grad_(_requires_grad(mha, name))
        new.train(mha.training)
        return new

    def forward(  # noqa: D417 - the arguments are nn.MultiheadAttention's
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention as ``nn.MultiheadAttention.forward``, with q and k layer-normed per head."""
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) -> (1, L, E)
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1)
                                 for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, n_q, e = query.shape
        n_k, h, d = key.shape[1], self.num_heads, self.head_dim
        bias = self.in_proj_bias
        bq, bk, bv = (None, None, None) if bias is None else bias.split(e)
        q = F.linear(query, self.q_proj_weight, bq).view(b, n_q, h, d)
        k = F.linear(key, self.k_proj_weight, bk).view(b, n_k, h, d)
        v = F.linear(value, self.v_proj_weight, bv).view(b, n_k, h, d)
        q = self.q_norm(q).transpose(1, 2)  # (B, H, L, d)
        k = self.k_norm(k).transpose(1, 2)  # (B, H, S, d)
        v = v.transpose(1, 2)
        mask = additive_mask(attn_mask, key_padding_mask, b, h, n_q, n_k, q.dtype)
        causal = bool(is_causal) and mask is None
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                             is_causal=causal)  # (B, H, L, d)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n_q, e))
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (B, H, L, S)
            if causal:
                scores = scores.masked_fill(_causal(n_q, n_k, q.device).logical_not(), -math.inf)
            elif mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            if average_attn_weights:
                weights = weights.mean(1)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights


def _requires_grad(mha: nn.MultiheadAttention, name: str) -> bool:
    if name in ("q_proj_weight", "k_proj_weight", "v_proj_weight") and mha._qkv_same_embed_dim:
        return mha.in_proj_weight.requires_grad
    p = dict(mha.named_parameters()).get(name)
    return True if p is None else p.requires_grad


def _causal(n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """Boolean (L, S), True where query i may attend to key j (top-left aligned, as SDPA)."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()


def additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    b: int,
    h: int,
    n_q: int,
    n_k: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s two masks as one float mask broadcastable to (B, H, L, S).

    Boolean masks follow ``nn.MultiheadAttention``: True marks a position that may *not* be
    attended (-inf); float masks are added to the logits.
    """
    out = None
    if attn_mask is not None:
        m = _as_float(attn_mask, dtype)
        if m.dim() == 3:  # (B*H, L, S)
            m = m.view(b, h, n_q, n_k)
        out = m
    if key_padding_mask is not None:
        m = _as_float(key_padding_mask, dtype).view(b, 1, 1, n_k)
        out = m if out is None else out + m
    return out


def _as_float(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, -math.inf
        )
    return mask.to(dtype)


def qk_layernorm_(model: nn.Module, eps: float = 1e-5) -> list[str]:
    """Add qk-layernorm to every ``nn.MultiheadAttention`` of ``model``, in place.

    Each one is replaced by a :class:`QKNormMultiheadAttention` with the same weights; an
    ``nn.TransformerEncoder`` holding one stops converting its input to nested tensors (a
    path that would skip the norms). Create the optimizer after calling it: the projection
    weights are new parameters.

    Args:
        model: the network.
        eps: the LayerNorms' epsilon.

    Returns:
        the qualified names of the rewritten attention modules.

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module.
        GradwatchValueError: the model has no ``nn.MultiheadAttention`` to rewrite (the
            message gives the recipe for attention written by hand), or one uses
            ``add_bias_kv`` / ``add_zero_attn``.

    References:
        Dehghani et al. 2023; Wortsman et al. 2023, "Small-scale proxies for large-scale
        Transformer training instabilities", §3.1.
    """
    check_model(model)
    targets = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention) and not isinstance(m, QKNormMultiheadAttention)
    ]
    if not targets:
        if any(isinstance(m, QKNormMultiheadAttention) for m in model.modules()):
            return []
        raise GradwatchValueError(
            "model: qk_layernorm_ rewrites nn.MultiheadAttention modules and this model has "
            f"none; for attention written by hand or by a library, {RECIPE}"
        )
    new = {name: QKNormMultiheadAttention.from_attention(m, eps) for name, m in targets}
    for name, mod in new.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, mod)
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False
    return [n or "(root)" for n in new]
