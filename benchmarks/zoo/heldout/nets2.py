"""More held-out nets: recurrent readers and a tagger, ReZero and mixture-of-experts
transformers, a deep graph convolutional net, a deep LayerNorm MLP.

- :class:`RNNReader`: ``nn.RNN`` with ReLU (Elman 1990) read at the last step, PyTorch's
  default init (every weight U[−1/√h, 1/√h]);
- :class:`GRUReader`: a GRU read at the last step, default init or chrono init of its
  update gate (Tallec & Ollivier 2018, §4, for the gate that keeps the state);
- :class:`BiLSTMTagger`: embedding → 2-layer bidirectional LSTM → a linear layer per
  position (Huang et al. 2015; Lample et al. 2016, without the CRF);
- :class:`ReZeroEncoder`: x + α·F(x) with α = 0 at init and no LayerNorm (Bachlechner et
  al. 2020), causal, learned positions, over tokens;
- :class:`MoEEncoder`: a pre-LN causal transformer whose feed-forward layers are Switch
  layers (Fedus et al. 2022): a router picks one of E expert MLPs per token (top-1), the
  output scaled by the router's probability; router weights at small scale;
- :class:`GCN`: graph convolutions H' = relu(Â H W) (Kipf & Welling 2017) with Â the
  symmetric-normalised adjacency with self loops, Glorot init, stacked without residuals;
- :func:`ln_mlp`: Linear → LayerNorm → ReLU stacked without residuals, He init.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RNNReader(nn.Module):
    """A ReLU ``nn.RNN`` read at the last step by a linear layer; ``irnn``: identity
    recurrent weights, zero biases, N(0, 0.001) input weights (Le et al. 2015, §2)."""

    def __init__(self, hidden: int = 64, n_in: int = 2, n_out: int = 1, irnn: bool = False):
        super().__init__()
        self.rnn = nn.RNN(n_in, hidden, nonlinearity="relu", batch_first=True)
        self.out = nn.Linear(hidden, n_out)
        if irnn:
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(torch.eye(hidden))
                nn.init.normal_(self.rnn.weight_ih_l0, std=1e-3)
                self.rnn.bias_ih_l0.zero_()
                self.rnn.bias_hh_l0.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


class GRUReader(nn.Module):
    """A GRU (``layers`` stacked) read at the last step. ``chrono``: the update gate's bias
    b_z = log(U[1, t_max − 1]) (its hidden-side bias 0), so that z = σ(b_z) keeps the state for
    up to t_max steps (the chrono init, Tallec & Ollivier 2018, transposed to the GRU's gate
    h_t = (1 − z) n + z h_{t−1})."""

    def __init__(self, hidden: int = 32, layers: int = 1, chrono: int = 0, n_in: int = 2,
                 n_out: int = 1):
        super().__init__()
        self.rnn = nn.GRU(n_in, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, n_out)
        if chrono:
            with torch.no_grad():
                for name, b in self.rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        b[hidden:2 * hidden] = torch.log(
                            torch.empty(hidden).uniform_(1, chrono - 1))
                    elif name.startswith("bias_hh"):
                        b[hidden:2 * hidden] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


class BiLSTMTagger(nn.Module):
    """Token embedding (d) → ``layers``-layer bidirectional LSTM (hidden h per direction) →
    a linear classifier at every position: (N, T) ids → (N, T, tags)."""

    def __init__(self, vocab: int, tags: int, d: int = 32, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, num_layers=layers, batch_first=True,
                            bidirectional=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(ids))
        return self.out(h)


def _causal_mask(t: int) -> torch.Tensor:
    return torch.triu(torch.full((t, t), float("-inf")), 1)


class ReZeroLayer(nn.Module):
    """x + α·SelfAttention(x), then x + α·MLP(x) (the same α), α = 0 at init, no norm."""

    def __init__(self, d: int, heads: int, mlp: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.ReLU(), nn.Linear(mlp, d))
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = _causal_mask(x.shape[1]).to(x.dtype)
        x = x + self.alpha * self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
        return x + self.alpha * self.mlp(x)


class ReZeroEncoder(nn.Module):
    """Token and learned position embeddings, ``layers`` ReZero layers, a linear head."""

    def __init__(self, vocab: int, d: int = 64, layers: int = 12, heads: int = 4,
                 mlp: int = 256, max_len: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, max_len, d) * 0.02)
        self.layers = nn.Sequential(*[ReZeroLayer(d, heads, mlp) for _ in range(layers)])
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) + self.pos[:, : ids.shape[1]]
        return self.head(self.layers(h))


class SwitchFFN(nn.Module):
    """Top-1 routing to ``experts`` GELU MLPs (Fedus et al. 2022, §2.1): each token goes to
    the expert of largest router probability p, its output scaled by p. The router's weights
    are drawn at scale 0.1 (truncated normal, std √(0.1/d), §2.4)."""

    def __init__(self, d: int, hidden: int, experts: int):
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        nn.init.trunc_normal_(self.router.weight, std=math.sqrt(0.1 / d))
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, hidden), nn.GELU(),
                                                   nn.Linear(hidden, d))
                                     for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        probs = self.router(flat).softmax(-1)
        p, idx = probs.max(-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            sel = (idx == e).nonzero(as_tuple=True)[0]
            if len(sel):
                out = out.index_add(0, sel, expert(flat[sel]) * p[sel, None])
        return out.reshape(x.shape)


class MoELayer(nn.Module):
    """Pre-LN: x + Attention(LN(x)), then x + Switch(LN(x))."""

    def __init__(self, d: int, heads: int, hidden: int, experts: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = SwitchFFN(d, hidden, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = _causal_mask(x.shape[1]).to(x.dtype)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.ffn(self.ln2(x))


class MoEEncoder(nn.Module):
    """Token and learned position embeddings, ``layers`` Switch layers, LayerNorm, head."""

    def __init__(self, vocab: int, d: int = 64, layers: int = 4, heads: int = 4,
                 hidden: int = 128, experts: int = 4, max_len: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, max_len, d) * 0.02)
        self.layers = nn.Sequential(*[MoELayer(d, heads, hidden, experts)
                                      for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) + self.pos[:, : ids.shape[1]]
        return self.head(self.norm(self.layers(h)))


class GraphConv(nn.Module):
    """H' = Â H W + b (Kipf & Welling 2017, eq. 2), W Glorot-uniform, b = 0."""

    def __init__(self, adj: torch.Tensor, n_in: int, n_out: int):
        super().__init__()
        self.register_buffer("adj", adj)
        self.lin = nn.Linear(n_in, n_out)
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.adj.to(h.dtype) @ self.lin(h)


class GCN(nn.Module):
    """``layers`` graph convolutions, ReLU between them, no residual and no norm; the last
    gives the class logits of every node. Input: node features (nodes, features)."""

    def __init__(self, adj: torch.Tensor, n_in: int, hidden: int, classes: int, layers: int):
        super().__init__()
        dims = [n_in] + [hidden] * (layers - 1) + [classes]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            mods.append(GraphConv(adj, a, b))
            if i < layers - 1:
                mods.append(nn.ReLU())
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def ln_mlp(depth: int = 32, width: int = 128, n_in: int = 64, n_out: int = 10
           ) -> nn.Sequential:
    """(Linear → LayerNorm → ReLU) × (depth − 1), then a linear classifier; He init, biases
    0, no residual."""
    dims = [n_in] + [width] * (depth - 1) + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        lin = nn.Linear(a, b)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < depth - 1:
            layers += [nn.LayerNorm(b), nn.ReLU()]
    return nn.Sequential(*layers)


def fourier_positions(size: int, bands: int = 4) -> torch.Tensor:
    """2-d Fourier position features of a size×size grid (Jaegle et al. 2021, §3.2):
    [x, y, sin(π f x), cos(π f x), sin(π f y), cos(π f y)] for f = 1 … bands (log-spaced up to
    size/2), x and y in [−1, 1]: (size², 2 + 4·bands)."""
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    pos = torch.stack([xx.flatten(), yy.flatten()], 1)  # (P, 2)
    freqs = torch.logspace(0, math.log10(size / 2), bands)
    ang = math.pi * pos[:, :, None] * freqs  # (P, 2, bands)
    return torch.cat([pos, ang.sin().flatten(1), ang.cos().flatten(1)], 1)


class CrossAttend(nn.Module):
    """Latents ← x + Attention(LN(latents), LN(inputs)), then + MLP(LN(·)) (Jaegle et al.
    2021, §2: one cross-attention head, pre-LN)."""

    def __init__(self, d: int, mlp: int):
        super().__init__()
        self.ln_q, self.ln_kv, self.ln_mlp = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 1, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d))

    def forward(self, latents: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        kv = self.ln_kv(inputs)
        h = latents + self.attn(self.ln_q(latents), kv, kv, need_weights=False)[0]
        return h + self.mlp(self.ln_mlp(h))


class Perceiver(nn.Module):
    """Pixels with Fourier positions, linearly embedded to d; ``latents`` learned latent
    vectors cross-attend to them once, then ``layers`` pre-LN self-attention layers
    (``nn.TransformerEncoder``) over the latents; the mean latent → LayerNorm → classes."""

    def __init__(self, size: int = 16, d: int = 64, latents: int = 16, layers: int = 4,
                 heads: int = 4, classes: int = 10):
        super().__init__()
        self.register_buffer("pos", fourier_positions(size))
        self.embed = nn.Linear(3 + self.pos.shape[1], d)
        self.latents = nn.Parameter(torch.randn(latents, d) * 0.02)
        self.cross = CrossAttend(d, 2 * d)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.latent = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W)
        x = img.flatten(2).transpose(1, 2)  # (N, P, 3)
        pos = self.pos.to(x.dtype).expand(len(x), -1, -1)
        inputs = self.embed(torch.cat([x, pos], -1))
        h = self.cross(self.latents.expand(len(x), -1, -1), inputs)
        return self.head(self.norm(self.latent(h).mean(1)))
