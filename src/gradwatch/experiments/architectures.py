"""Residual MLPs and transformer encoders, built from torch.nn parts, for the theory's checks.

- :class:`ResidualMLP`: x_{l+1} = x_l + α·branch(x_l), the branch made of Linear layers and
  an activation (optionally a norm first: pre-LN / pre-RMSNorm / pre-activation BatchNorm,
  a BatchNorm inside, or a norm after each sum: post-norm), an optional final norm, a
  linear read-out (Yang & Schoenholz 2017).
- :class:`TokenEncoder`: token and position embeddings, ``nn.TransformerEncoder`` (post-LN or
  pre-LN with a final LayerNorm), a linear read-out. ``nn.TransformerEncoder`` copies its
  layer, so all layers start identical; ``independent=True`` gives each copy its own
  initialisation (:func:`independent_layers_`), as Hugging Face and fairseq models have.
- :class:`DeepNormEncoder`: post-LN with x_{l+1} = LN(α x_l + F(x_l)), α = (2N)^¼, and the
  value, output and feed-forward projections initialised with gain β = (8N)^-¼ (Wang et al.
  2022, encoder-only DeepNet).

Used by ``gradwatch theory --blocks`` (a model built from settings), the ``xiong2020``
experiment's DeepNorm arm, and the Monte Carlo check of ``gw.theory.predict``
(``benchmarks/theory_mc``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """Linear(d_in, width), ``depth`` residual blocks, an optional final norm, a read-out.

    ``copies=True`` makes every block a deep copy of the first (they start identical, as the
    layers of ``nn.TransformerEncoder`` do); ``shared=True`` applies the first block at every
    depth (one set of parameters, as ALBERT shares its layers).
    """

    def __init__(
        self,
        d_in: int,
        width: int,
        depth: int,
        act: type[nn.Module],
        alpha: float,
        *,
        sigma_w2: float | None = None,
        pre_norm: str | None = None,
        inner_norm: str | None = None,
        post_norm: str | None = None,
        final_norm: str | None = None,
        branch_layers: int = 2,
        d_out: int = 10,
        copies: bool = False,
        shared: bool = False,
    ):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.alpha = alpha
        blocks = []
        for _ in range(depth):
            layers: list[nn.Module] = []
            if pre_norm:
                layers.append(_norm(pre_norm, width))
            for j in range(branch_layers):
                lin = nn.Linear(width, width)
                if sigma_w2 is not None:
                    nn.init.normal_(lin.weight, std=math.sqrt(sigma_w2 / width))
                    nn.init.zeros_(lin.bias)
                layers.append(lin)
                if j < branch_layers - 1:
                    if inner_norm:
                        layers.append(_norm(inner_norm, width))
                    layers.append(act())
            blocks.append(nn.Sequential(*layers))
        if copies:  # every block a deep copy of the first, as nn.TransformerEncoder builds
            blocks = [copy.deepcopy(blocks[0]) for _ in blocks]
        if shared:  # one block applied at every depth (its parameters shared, as in ALBERT)
            blocks = [blocks[0]] * len(blocks)
        self.blocks = nn.ModuleList(blocks)
        # post-norm: x_{l+1} = N(x_l + α branch(x_l)), one norm after each sum
        self.post = (
            nn.ModuleList(_norm(post_norm, width) for _ in range(depth)) if post_norm else None
        )
        self.norm = _norm(final_norm, width) if final_norm else nn.Identity()
        self.out = nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_in) -> (N, d_out)."""
        h = self.inp(x)
        for k, block in enumerate(self.blocks):
            h = h + self.alpha * block(h)
            if self.post is not None:
                h = self.post[k](h)
        return self.out(self.norm(h))


def _norm(kind: str, width: int) -> nn.Module:
    return {"ln": nn.LayerNorm, "rms": nn.RMSNorm, "bn": nn.BatchNorm1d}[kind](width)


def independent_layers_(encoder: nn.TransformerEncoder) -> nn.TransformerEncoder:
    """Give each layer of an ``nn.TransformerEncoder`` its own random initialisation.

    ``nn.TransformerEncoder`` deep-copies the layer it is given, so every layer starts with
    the same weights; this draws each copy's attention and feed-forward weights afresh.
    """
    for layer in encoder.layers:
        layer.self_attn._reset_parameters()
        layer.self_attn.out_proj.reset_parameters()
        layer.linear1.reset_parameters()
        layer.linear2.reset_parameters()
    return encoder


class TokenEncoder(nn.Module):
    """Embeddings, ``nn.TransformerEncoder`` (post- or pre-LN), a per-position read-out.

    ``independent=True`` draws each layer afresh (``nn.TransformerEncoder`` copies its
    layer); ``shared=True`` applies the first layer at every depth (ALBERT-style sharing).
    """

    def __init__(
        self,
        layers: int,
        norm_first: bool,
        *,
        d: int = 64,
        heads: int = 4,
        vocab: int = 32,
        length: int = 16,
        activation: str = "relu",
        batch_first: bool = True,
        independent: bool = True,
        shared: bool = False,
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(length, d)
        self.batch_first = batch_first
        layer = nn.TransformerEncoderLayer(
            d,
            heads,
            2 * d,
            dropout=0.0,
            batch_first=batch_first,
            norm_first=norm_first,
            activation=activation,
        )
        final = nn.LayerNorm(d) if norm_first else None
        self.body = nn.TransformerEncoder(layer, layers, norm=final, enable_nested_tensor=False)
        if independent:
            independent_layers_(self.body)
        if shared:  # one layer applied at every depth (ALBERT-style sharing)
            self.body.layers = nn.ModuleList([self.body.layers[0]] * layers)
        self.out = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (N, T) -> logits (N, T, vocab)."""
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        if not self.batch_first:
            h = h.transpose(0, 1)  # (T, N, d)
        h = self.body(h)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.out(h)


class DeepNormLayer(nn.Module):
    """x ← LN(α x + attention(x)); x ← LN(α x + FFN(x)) (Wang et al. 2022)."""

    def __init__(self, d: int, heads: int, d_ff: int, alpha: float, beta: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.alpha = alpha
        with torch.no_grad():  # queries and keys gain 1; values, output, FFN gain β
            w = self.attn.in_proj_weight
            nn.init.xavier_normal_(w[:d])
            nn.init.xavier_normal_(w[d : 2 * d])
            nn.init.xavier_normal_(w[2 * d :], gain=beta)
            nn.init.xavier_normal_(self.attn.out_proj.weight, gain=beta)
            nn.init.xavier_normal_(self.fc1.weight, gain=beta)
            nn.init.xavier_normal_(self.fc2.weight, gain=beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, d) -> (N, T, d)."""
        x = self.ln1(self.alpha * x + self.attn(x, x, x, need_weights=False)[0])
        return self.ln2(self.alpha * x + self.fc2(torch.relu(self.fc1(x))))


class DeepNormEncoder(nn.Module):
    """Embeddings, N DeepNorm layers (α = (2N)^¼, β = (8N)^-¼), a per-position read-out."""

    def __init__(
        self, layers: int, *, d: int = 64, heads: int = 4, vocab: int = 32, length: int = 16
    ):
        super().__init__()
        alpha, beta = (2 * layers) ** 0.25, (8 * layers) ** -0.25
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(length, d)
        self.layers = nn.ModuleList(
            DeepNormLayer(d, heads, 2 * d, alpha, beta) for _ in range(layers)
        )
        self.out = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (N, T) -> logits (N, T, vocab)."""
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for layer in self.layers:
            h = layer(h)
        return self.out(h)
