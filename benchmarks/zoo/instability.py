"""Transformers trained at a learning rate too high for them: attention logit growth.

Wortsman et al. (2023) reproduce in small transformers the instability of large ones: at a
high learning rate the attention logits q·kᵀ/√d grow by orders of magnitude and the loss
fails; qk-layernorm prevents it. The cases train on the built-in copy language
(:func:`gradwatch.experiments.data.copy_language`, chance ln 64 = 4.16 nats) with AdamW
(β = 0.9, 0.95): the small GPTs with a warmup and a cosine decay, as GPTs are trained, the
Hugging Face GPT-2 at a constant learning rate. At initialisation nothing shows in
one batch (the logits are small), so every check expects "healthy"; the truth after
training comes from the training run itself (the loss stalls near chance, or trains).
"""

from __future__ import annotations

import math
from functools import lru_cache, partial

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .case import Case, Train

VOCAB = 64
LENGTH = 32
CHANCE = math.log(VOCAB)


@lru_cache(maxsize=1)
def _language() -> torch.Tensor:
    from gradwatch.experiments.data import copy_language

    return copy_language(2048, LENGTH + 1, VOCAB, seed=7)  # (N, T + 1) tokens


def lm_batch(i: int, batch: int = 16):
    """The i-th minibatch of the copy language: (tokens (B, T), next tokens (B, T))."""
    data = _language()
    g = torch.Generator().manual_seed(1000 + i)
    rows = data[torch.randint(0, len(data), (batch,), generator=g)]
    return rows[:, :-1], rows[:, 1:]


def token_loss(out, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of per-token logits (N, T, V) — a tensor or a HF output's ``logits``."""
    logits = out if isinstance(out, torch.Tensor) else out["logits"]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def tiny_gpt(qk_norm: bool) -> nn.Module:
    """2 pre-LN blocks of ``nn.TransformerEncoderLayer`` under a causal mask, width 64."""
    from gradwatch.experiments.language_model import TinyGPT

    return TinyGPT(VOCAB, LENGTH, d_model=64, layers=2, heads=4, qk_norm=qk_norm)


def hf_gpt2() -> nn.Module:
    """Hugging Face GPT2LMHeadModel from a config: 4 layers, 64 wide (its attention: SDPA)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=4, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def warmup_cosine(s: int, steps: int = 150, warmup: int = 15) -> float:
    """Linear warmup over 15 steps, then a cosine to 0 at step 150 (how GPTs are trained)."""
    if s < warmup:
        return (s + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (s - warmup) / (steps - warmup)))


def adamw(lr: float):
    """``model -> AdamW`` with the β of GPT training."""
    return lambda model: torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))


CASES = [
    Case(
        name="gpt_lr_too_high", family="transformer", model=partial(tiny_gpt, False),
        batch=lambda: lm_batch(10_000), loss=token_loss,
        expect_init="healthy", expect_run="exploding", budget_s=25,
        source="Wortsman et al. 2023, §3.1 (attention logit growth at high learning rates); "
               "zoo training run: at AdamW lr 0.3 (warmup, cosine) the largest attention logit "
               "grows from ~2 to ~1e5 and the loss stalls far above what the same model with "
               "qk-layernorm reaches",
        train=Train(steps=150, optimizer=adamw(0.3), batch=lm_batch, outcome="stalls",
                    baseline=CHANCE, drop=0.4, schedule=warmup_cosine),
        why="Nothing shows at init; during training gradwatch's attention_logit_growth names "
            "the layer whose logits grow first.",
    ),
    Case(
        name="gpt_qk_layernorm_lr_high", family="transformer", model=partial(tiny_gpt, True),
        batch=lambda: lm_batch(10_000), loss=token_loss,
        expect_init="healthy", expect_run="healthy", budget_s=25,
        source="Wortsman et al. 2023, §3.1 (qk-layernorm removes attention logit growth and "
               "widens the range of learning rates that train); zoo training run: the same "
               "model and lr with qk-layernorm trains to ~1.5 nats, logits stay below 60",
        train=Train(steps=150, optimizer=adamw(0.3), batch=lm_batch, outcome="trains",
                    baseline=CHANCE, drop=0.4, schedule=warmup_cosine),
    ),
    Case(
        name="gpt2_lr_too_high", family="transformer", model=hf_gpt2,
        batch=lambda: lm_batch(10_000), loss=token_loss,
        expect_init="healthy", expect_run="exploding", budget_s=40,
        source="Wortsman et al. 2023, §3.1; zoo training run: Hugging Face GPT-2 (4 layers, "
               "attention through F.scaled_dot_product_attention) at AdamW lr 0.3 without "
               "warmup: attention logits to ~1e5, the loss ends at chance (ln 64)",
        train=Train(steps=150, optimizer=adamw(0.3), batch=lm_batch, outcome="stalls",
                    baseline=CHANCE, drop=0.3),
        why="The same instability in a library's attention, seen through its SDPA calls.",
    ),
    Case(
        name="gpt2_lr_normal", family="transformer", model=hf_gpt2,
        batch=lambda: lm_batch(10_000), loss=token_loss,
        expect_init="healthy", expect_run="healthy", budget_s=40,
        source="zoo training run: the same GPT-2 at AdamW lr 1e-3 trains (4.2 -> ~1.5 nats), "
               "attention logits stay below 3",
        train=Train(steps=150, optimizer=adamw(1e-3), batch=lm_batch, outcome="trains",
                    baseline=CHANCE, drop=0.5),
    ),
]
