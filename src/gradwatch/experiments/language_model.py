"""A small GPT and its training loop, shared by ``wortsman2023`` and the spike benchmark.

The model is a decoder-only transformer in the GPT-2 layout (Radford et al. 2019), written
with ``torch.nn`` parts: token embeddings and learned positions, pre-LN
``nn.TransformerEncoderLayer`` blocks under a causal mask, a final LayerNorm and an untied
linear read-out. The optimizer is AdamW with β = (0.9, 0.95) and the learning rate warms up
linearly, then stays or follows a cosine to 0 (Wortsman et al. 2023 train this way, with
qk-layernorm and z-loss as the two switches their paper studies). The data is
:func:`gradwatch.experiments.data.copy_language`: next-token prediction on a synthetic
language, nothing downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from gradwatch.experiments.data import copy_language


class TinyGPT(nn.Module):
    """Tokens (B, T) -> next-token logits (B, T, V): a pre-LN decoder-only transformer.

    Args:
        vocab: vocabulary size V.
        length: the longest sequence T.
        d_model: model width.
        layers: transformer blocks.
        heads: attention heads per block.
        qk_norm: add qk-layernorm to every block's attention
            (:func:`gradwatch.remedies.qk_layernorm_`).
    """

    def __init__(self, vocab: int = 64, length: int = 32, d_model: int = 64, layers: int = 2,
                 heads: int = 4, qk_norm: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(length, d_model) * 0.02)
        block = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        mask = torch.full((length, length), -math.inf).triu(1)  # query i sees keys j <= i
        self.register_buffer("causal", mask, persistent=False)
        if qk_norm:
            from gradwatch.experiments import gw

            gw.remedies.qk_layernorm_(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for tokens (B, T)."""
        t = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:t]  # (B, T, D)
        h = self.blocks(h, mask=self.causal[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of logits (B, T, V) against targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@dataclass(frozen=True)
class Schedule:
    """AdamW and its learning-rate schedule for one training run.

    Attributes:
        lr: the peak learning rate.
        steps: optimizer steps.
        warmup: linear warmup steps (from lr / warmup up to lr).
        decay: "cosine" (to 0 at the last step) or "constant" after the warmup.
        batch: sequences per step.
        betas: AdamW's β.
        eps: AdamW's ε.
        weight_decay: AdamW's decoupled weight decay.
        z_loss: coefficient of z-loss (0: none; Wortsman et al. use 1e-4).
    """

    lr: float
    steps: int = 200
    warmup: int = 20
    decay: str = "cosine"
    batch: int = 16
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    z_loss: float = 0.0

    def factor(self, s: int) -> float:
        """The learning rate at step s as a fraction of the peak."""
        if s < self.warmup:
            return (s + 1) / self.warmup
        if self.decay == "constant" or self.steps <= self.warmup:
            return 1.0
        frac = (s - self.warmup) / max(1, self.steps - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * frac))


def training_data(n: int, length: int, vocab: int, seed: int = 7) -> torch.Tensor:
    """``n`` sequences of ``length + 1`` tokens (inputs and shifted targets) of the language."""
    return copy_language(n, length + 1, vocab, seed=seed)


def train_lm(
    model: nn.Module,
    schedule: Schedule,
    data: torch.Tensor,
    seed: int,
    run_dir: str | Path | None = None,
    watch: dict[str, Any] | None = None,
    on_step: Callable[[int, float], bool | None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on minibatches of ``data``; watched by ``gw.watch`` if ``watch`` is set.

    Minibatches are drawn with replacement by a generator seeded with ``seed``. A loss that
    turns non-finite ends the run (what follows would only repeat it).

    Args:
        model: a :class:`TinyGPT` (or any tokens -> (B, T, V) logits model).
        schedule: optimizer and learning-rate schedule.
        data: (N, T + 1) tokens (:func:`training_data`).
        seed: seed of the minibatch draw.
        run_dir: the run directory of ``gw.watch`` (None: in memory).
        watch: keyword arguments of ``gw.watch`` (``every``, ``detail_every``, ``config``,
            ...); None: not watched.
        on_step: called with (step, loss) after each step; a true return value ends the
            run there.

    Returns:
        {"losses": per-step losses, "finite": whether every loss was finite, "run": the
        ``gw.load``-able Run (None when not watched)}.
    """
    from gradwatch.experiments import gw

    opt = torch.optim.AdamW(model.parameters(), lr=schedule.lr, betas=schedule.betas,
                            eps=schedule.eps, weight_decay=schedule.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    loss_fn = gw.remedies.z_loss(lm_loss, schedule.z_loss) if schedule.z_loss else lm_loss
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    mon = None
    if watch is not None:
        mon = gw.watch(model, run_dir, optimizer=opt, overwrite=run_dir is not None, **watch)
    try:
        for step in range(schedule.steps):
            batch = data[torch.randint(0, len(data), (schedule.batch,), generator=gen)]
            x, y = batch[:, :-1], batch[:, 1:]  # (B, T) inputs and next tokens
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if mon is not None:
                mon.step(loss=loss)
            sched.step()
            value = float(loss.detach())
            losses.append(value)
            if on_step is not None and on_step(step, value):
                break
            if not math.isfinite(value):
                break
    finally:
        if mon is not None:
            mon.close()
    run = mon.run if mon is not None else None
    return {"losses": losses, "finite": bool(np.isfinite(losses).all()), "run": run}


@torch.no_grad()
def eval_loss(model: nn.Module, data: torch.Tensor, batch: int = 256) -> float:
    """Mean next-token cross-entropy of ``model`` on ``data`` (N, T + 1), in eval mode."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for lo in range(0, len(data), batch):
        part = data[lo : lo + batch]
        logits = model(part[:, :-1])
        total += float(F.cross_entropy(logits.flatten(0, 1), part[:, 1:].flatten(),
                                       reduction="sum"))
        n += part[:, 1:].numel()
    model.train(was)
    return total / n if math.isfinite(total) else math.inf
