"""Attention and mixing nets: ViT on ``nn.TransformerEncoder``, a CaiT-style deep ViT with
LayerScale, MLP-Mixer, and Hugging Face T5 built from a config (no download; the Llama is
``benchmarks/zoo/transformer.py``'s)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 16


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches, linearly embedded: (N, C, H, W) -> (N, HW/p², d)."""

    def __init__(self, c: int, d: int, p: int):
        super().__init__()
        self.proj = nn.Conv2d(c, d, p, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """Dosovitskiy et al. 2021: patch embedding, a class token, learned positions, pre-LN
    ``nn.TransformerEncoder`` (GELU MLP), a final LayerNorm and a linear head on the class
    token. Init as timm's default: positions, class token and every linear layer (the
    attention's input projection included) trunc-normal(0.02), biases 0."""

    def __init__(self, size: int = 32, p: int = 4, d: int = 64, layers: int = 6, heads: int = 4,
                 mlp: int = 128, classes: int = 10, pool: str = "cls"):
        super().__init__()
        self.patch = PatchEmbed(3, d, p)
        tokens = (size // p) ** 2
        self.pool = pool
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if pool == "cls" else None
        self.pos = nn.Parameter(torch.zeros(1, tokens + (pool == "cls"), d))
        if self.cls is not None:
            nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d, heads, mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)
        _trunc_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, classes)
        h = self.patch(x)  # (N, T, d)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(len(h), -1, -1), h], 1)
        h = self.norm(self.encoder(h + self.pos))
        return self.head(h[:, 0] if self.cls is not None else h.mean(1))


def _trunc_normal_(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.trunc_normal_(m.in_proj_weight, std=0.02)
            nn.init.zeros_(m.in_proj_bias)


class LayerScaleBlock(nn.Module):
    """x + γ1 ⊙ Attn(LN(x)); x + γ2 ⊙ MLP(LN(x)), γ initialised to ``eps`` (Touvron et al.
    2021, "Going deeper with image transformers", §2, Fig. 1d: LayerScale)."""

    def __init__(self, d: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.gamma1 = nn.Parameter(eps * torch.ones(d))
        self.norm2 = nn.LayerNorm(d)
        self.fc1, self.act, self.fc2 = nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d)
        self.gamma2 = nn.Parameter(eps * torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> same
        h = self.norm1(x)
        x = x + self.gamma1 * self.attn(h, h, h, need_weights=False)[0]
        return x + self.gamma2 * self.fc2(self.act(self.fc1(self.norm2(x))))


class CaiT(ViT):
    """A deep ViT whose blocks carry LayerScale, read by the mean over the tokens (CaiT's
    class-attention stage is left out; global average pooling as Beyer et al. 2022 read a
    plain ViT). Linear layers trunc-normal(0.02), biases 0, as the reference code."""

    def __init__(self, size: int = 32, p: int = 4, d: int = 48, layers: int = 24,
                 heads: int = 4, mlp: int = 96, eps: float = 1e-5, classes: int = 10):
        super().__init__(size, p, d, 1, heads, mlp, classes, pool="mean")
        self.encoder = nn.Sequential(*[LayerScaleBlock(d, heads, mlp, eps)
                                       for _ in range(layers)])
        _trunc_normal_(self.encoder)


class MixerBlock(nn.Module):
    """x + W2 GELU(W1 LN(x)ᵀ)ᵀ over tokens, then x + W4 GELU(W3 LN(x)) over channels
    (Tolstikhin et al. 2021, Fig. 1)."""

    def __init__(self, tokens: int, d: int, token_mlp: int, channel_mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.tok1, self.act1, self.tok2 = (nn.Linear(tokens, token_mlp), nn.GELU(),
                                           nn.Linear(token_mlp, tokens))
        self.norm2 = nn.LayerNorm(d)
        self.ch1, self.act2, self.ch2 = nn.Linear(d, channel_mlp), nn.GELU(), nn.Linear(
            channel_mlp, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> same
        y = self.norm1(x).transpose(1, 2)  # (N, d, T)
        x = x + self.tok2(self.act1(self.tok1(y))).transpose(1, 2)
        return x + self.ch2(self.act2(self.ch1(self.norm2(x))))


class Mixer(nn.Module):
    """MLP-Mixer: patch embedding, ``layers`` mixer blocks, LayerNorm, mean over tokens, head.

    The head starts at 0, as the reference (and timm) initialise it: at init no gradient
    reaches below it, after the first step it does."""

    def __init__(self, size: int = 32, p: int = 4, d: int = 64, layers: int = 6,
                 token_mlp: int = 32, channel_mlp: int = 128, classes: int = 10):
        super().__init__()
        tokens = (size // p) ** 2
        self.patch = PatchEmbed(3, d, p)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, d, token_mlp, channel_mlp)
                                      for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.patch(x))).mean(1))


class T5Translate(nn.Module):
    """T5ForConditionalGeneration (Raffel et al. 2020: RMSNorm, relative position buckets; gated
    GELU of v1.1; the input embedding tied to the output, which rescales by d^-1/2) from a
    config: ``model(src, dec_in)`` returns the logits (N, T, vocab). Token ``VOCAB`` is the
    decoder's start token."""

    def __init__(self, layers: int = 2, d: int = 64):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = T5Config(vocab_size=VOCAB + 1, d_model=d, d_kv=d // 4, d_ff=2 * d,
                       num_layers=layers, num_heads=4, dropout_rate=0.0,
                       feed_forward_proj="gated-gelu", decoder_start_token_id=VOCAB,
                       pad_token_id=VOCAB, tie_word_embeddings=True)
        self.t5 = T5ForConditionalGeneration(cfg)

    def forward(self, src: torch.Tensor, dec_in: torch.Tensor) -> torch.Tensor:
        return self.t5(input_ids=src, decoder_input_ids=dec_in).logits
