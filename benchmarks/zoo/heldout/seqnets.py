"""Sequence models written after their papers: stacked gated RNNs, diagonal linear recurrences
(LRU) and a GRU encoder-decoder (the temporal convolutional network moved to
``benchmarks/zoo/from_heldout.py`` with its case).

The adding-problem readers take ``(N, T, 2)`` batch-first sequences and predict one number
from the last step (``benchmarks/zoo/data.py: adding_batch``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class StackedReader(nn.Module):
    """``layers`` stacked LSTM/GRU layers read at the last step by a linear layer.

    ``gate_init``: None (PyTorch's default, every weight and bias U[−1/√h, 1/√h]), or
    "chrono" (Tallec & Ollivier 2018, §4: LSTM forget bias log(U[1, T_max − 1]), input bias
    its negative, so that the cell keeps its state for up to T_max steps).
    """

    def __init__(self, cell: str, hidden: int, layers: int, gate_init: str | None = None,
                 t_max: int = 0, n_in: int = 2, n_out: int = 1):
        super().__init__()
        kind = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = kind(n_in, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, n_out)
        if gate_init == "chrono":
            _chrono_(self.rnn, hidden, t_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 2) -> (N, 1)
        h, _ = self.rnn(x)  # (N, T, hidden)
        return self.out(h[:, -1])


def _chrono_(lstm: nn.LSTM, hidden: int, t_max: int) -> None:
    """Chrono init of every layer: b_f = log(U[1, t_max − 1]), b_i = −b_f, b_hh gates 0."""
    with torch.no_grad():
        for name, b in lstm.named_parameters():
            if name.startswith("bias_ih"):
                bf = torch.log(torch.empty(hidden).uniform_(1, t_max - 1))
                b[:hidden] = -bf  # input gate
                b[hidden:2 * hidden] = bf  # forget gate
            elif name.startswith("bias_hh"):
                b[: 2 * hidden] = 0.0


# ------------------------------------------------------------------ linear recurrent unit
def causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """h_t = Σ_{s ≤ t} k_{t−s} u_s along the last axis, by FFT: u (..., n, T), k (n, T)."""
    t = u.shape[-1]
    return torch.fft.ifft(torch.fft.fft(u, 2 * t) * torch.fft.fft(k, 2 * t))[..., :t]


class LRU(nn.Module):
    """Linear Recurrent Unit (Orvieto et al. 2023): a diagonal complex linear recurrence.

    h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t), y_t = Re(C h_t) + D ⊙ x_t, with λ = exp(−e^ν + iθ) drawn
    uniformly on the ring r_min ≤ |λ| ≤ r_max, θ ∈ [0, θ_max], and the normalisation
    γ = √(1 − |λ|²); B, C complex Gaussian with variance 1/(2·fan_in) per part (§3.3).
    The recurrence is computed as the equal causal convolution h_t = Σ_s λ^(t−s) γ B x_s, by
    FFT.
    """

    def __init__(self, d: int, n: int, r_min: float, r_max: float, theta_max: float = math.pi):
        super().__init__()
        u1, u2 = torch.rand(n), torch.rand(n)
        nu = -0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)  # |λ| uniform on the ring
        self.nu_log = nn.Parameter(torch.log(nu))
        self.theta_log = nn.Parameter(torch.log(theta_max * u2 + 1e-4))
        self.b_re = nn.Parameter(torch.randn(n, d) / math.sqrt(2 * d))
        self.b_im = nn.Parameter(torch.randn(n, d) / math.sqrt(2 * d))
        self.c_re = nn.Parameter(torch.randn(d, n) / math.sqrt(n))
        self.c_im = nn.Parameter(torch.randn(d, n) / math.sqrt(n))
        self.d = nn.Parameter(torch.randn(d))

    def magnitudes(self) -> torch.Tensor:
        """|λ| of every state (n,)."""
        return torch.exp(-torch.exp(self.nu_log))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> (N, T, d)
        t = x.shape[1]
        mag = self.magnitudes()
        steps = torch.arange(t, device=x.device, dtype=mag.dtype)
        powers = torch.polar(mag[:, None] ** steps, torch.exp(self.theta_log)[:, None] * steps)
        b = torch.complex(self.b_re, self.b_im) * torch.sqrt(1 - mag**2)[:, None]  # (n, d)
        u = torch.einsum("ni,bti->bnt", b, x.to(b.dtype))  # (N, n, T): γ ⊙ B x_t
        h = causal_conv(u, powers)  # (N, n, T): h_t = Σ λ^(t−s) u_s
        y = torch.einsum("on,bnt->bto", torch.complex(self.c_re, self.c_im), h).real
        return y + self.d * x


class LRUBlock(nn.Module):
    """x + GLU(GELU(LRU(LN(x)))): the pre-norm residual block of Orvieto et al. 2023, Fig. 1."""

    def __init__(self, d: int, n: int, r_min: float, r_max: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.lru = LRU(d, n, r_min, r_max)
        self.act = nn.GELU()
        self.glu = nn.Linear(d, 2 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.glu(self.act(self.lru(self.norm(x)))).chunk(2, -1)
        return x + a * torch.sigmoid(b)


class LRUReader(nn.Module):
    """Linear encoder, ``layers`` LRU blocks, LayerNorm, a linear readout at the last step."""

    def __init__(self, d: int = 32, n: int = 32, layers: int = 2, r_min: float = 0.4,
                 r_max: float = 0.65, n_in: int = 2, n_out: int = 1):
        super().__init__()
        self.enc = nn.Linear(n_in, d)
        self.blocks = nn.Sequential(*[LRUBlock(d, n, r_min, r_max) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 2) -> (N, 1)
        return self.out(self.norm(self.blocks(self.enc(x)))[:, -1])


# ------------------------------------------------------------------ GRU encoder-decoder
class Seq2SeqGRU(nn.Module):
    """Cho et al. 2014 / Sutskever et al. 2014: a GRU encodes the source, its last state starts
    a GRU decoder fed the target shifted right (teacher forcing); a linear layer gives the
    next-token logits. Inputs: source ids (N, S), decoder input ids (N, T)."""

    def __init__(self, vocab: int = 17, d: int = 64, hidden: int = 128):
        super().__init__()
        self.src_emb = nn.Embedding(vocab, d)
        self.tgt_emb = nn.Embedding(vocab, d)
        self.encoder = nn.GRU(d, hidden, batch_first=True)
        self.decoder = nn.GRU(d, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, src: torch.Tensor, dec_in: torch.Tensor) -> torch.Tensor:
        _, h = self.encoder(self.src_emb(src))  # h: (1, N, hidden)
        y, _ = self.decoder(self.tgt_emb(dec_in), h)  # (N, T, hidden)
        return self.out(y)  # (N, T, vocab)
