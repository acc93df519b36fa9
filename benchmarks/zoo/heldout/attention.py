"""Held-out attention and mixing nets: ViT, a LayerScale ViT, MLP-Mixer, Llama and T5."""

from __future__ import annotations

import math
from functools import partial

import torch

from ..case import Case, Train
from ..data import progression_batch, reverse_batch
from ..mlp import CHANCE
from ..transformer import llama, token_loss
from .attnnets import VOCAB, CaiT, Mixer, T5Translate, ViT
from .common import Entry, adamw, image_case
from .measure import Probe, children_of

TOKEN_CHANCE = math.log(VOCAB)


def translate_batch(i: int, length: int = 8, batch: int = 32, seed: int = 0):
    """Reversal as translation for T5: ((source, decoder input), target); the decoder input
    is the target shifted right after the start token ``VOCAB``."""
    src, tgt = reverse_batch(i, length=length, vocab=VOCAB, batch=batch, seed=seed)
    start = torch.full((len(tgt), 1), VOCAB, dtype=tgt.dtype)
    return (src, torch.cat([start, tgt[:, :-1]], 1)), tgt


def _lm(name: str, build, expect_init: str, expect_run: str, source: str, outcome: str, *,
        lr: float, steps: int = 200, why: str = "", measured: dict | None = None,
        rise: float = 3.0) -> Entry:
    case = Case(name=name, family="llama", model=build, loss=token_loss,
                batch=lambda: progression_batch(10_000, length=16, vocab=VOCAB, batch=8),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(steps=steps, optimizer=adamw(lr, wd=0.1, betas=(0.9, 0.95)),
                            batch=partial(progression_batch, length=16, vocab=VOCAB, batch=16),
                            outcome=outcome, baseline=TOKEN_CHANCE, rise=rise),
                measured=measured or {})
    probe = Probe(trunk=lambda m: ["model.embed_tokens", *children_of("model.layers")(m)],
                  time_at="model.embed_tokens", time_dim=1, chance=TOKEN_CHANCE)
    return Entry(case, probe)


ENTRIES = [
    image_case(
        "vit_tiny_patch4", "vit", partial(ViT, 16, 4, 64, 6, 4, 128), "healthy", "healthy",
        "Dosovitskiy et al. 2021 (pre-LN ViT trains with AdamW); zoo training run",
        dict(steps=150, optimizer=adamw(1e-3), outcome="trains", batch=32),
        Probe(trunk=lambda m: ["patch", *children_of("encoder.layers")(m)], chance=CHANCE),
        size=16,
        why="16×16 digits in 4×4 patches (16 tokens and a class token), d 64, 6 pre-LN "
            "layers. The head reads the class token, which sees the patches only through "
            "attention, so ‖∂L/∂h‖ at the patch embedding is 0.08× that at the last block "
            "(0.66 per block); AdamW (lr 1e-3, batch 32) trains it: 2.34 → 1.05 in 150 steps.",
    ),
    image_case(
        "vit_layerscale_12", "layerscale_vit", partial(CaiT, 16, 4, 48, 12, 4, 96, 1e-5),
        "healthy", "healthy",
        "Touvron et al. 2021 ('Going deeper with image transformers', §2: LayerScale, "
        "branches start at ε = 1e-5, trains deep ViTs with AdamW); zoo training run",
        dict(steps=150, optimizer=adamw(2e-3), outcome="trains", batch=32),
        Probe(trunk=lambda m: ["patch", *children_of("encoder")(m)], chance=CHANCE), size=16,
        why="12 pre-LN blocks (d 48) whose attention and MLP outputs are scaled by γ = 1e-5 "
            "at init, read by the mean over the tokens: the residual stream is the identity "
            "(‖∂L/∂h‖ equal along the blocks to 1e-6), the branches' outputs 1e-5 of their "
            "input. AdamW (lr 2e-3, batch 32) trains it: 2.30 → 1.41 in 150 steps, the γ "
            "grow and the patch embedding moved 3.4× its norm.",
    ),
    image_case(
        "mixer_tiny", "mlp_mixer", partial(Mixer, 32, 4, 64, 6, 32, 128), "healthy", "healthy",
        "Tolstikhin et al. 2021 (MLP-Mixer, zero-initialised head, Adam); zoo training run",
        dict(steps=100, optimizer=adamw(1e-3), outcome="trains"),
        Probe(trunk=lambda m: ["patch", *children_of("blocks")(m)], chance=CHANCE),
        why="6 mixer blocks over 64 tokens, the head at 0 as the reference initialises it: "
            "at init no gradient reaches below the head (every ‖∂L/∂h‖ is 0, the head's "
            "‖∇W‖/‖W‖ is infinite); after the first step it does. AdamW (lr 1e-3) trains it: "
            "2.29 → 0.60.",
    ),
    _lm("llama_tiny", partial(llama, 4, 64), "healthy", "healthy",
        "Touvron et al. 2023 (Llama: RMSNorm, SwiGLU, rotary; AdamW β2 0.95, wd 0.1); zoo "
        "training run on next-token prediction of progressions", "trains", lr=1e-3,
        why="4 layers, d 64, 4 query and 2 key-value heads, 16-token progressions: ‖∂L/∂h‖ "
            "1.47× from the embedding to the last layer, ‖∂L/∂x_t‖ flat over the tokens "
            "(first/last 2.5); AdamW (lr 1e-3, β2 0.95, wd 0.1) trains it: 2.67 → 0.30."),
    Entry(Case(
        name="t5_tiny_reverse", family="t5", model=partial(T5Translate, 2, 64),
        batch=lambda: translate_batch(10_000, batch=8), loss=token_loss,
        expect_init="healthy", expect_run="healthy",
        source="Raffel et al. 2020 (T5 encoder-decoder: RMSNorm without bias, relative "
               "position buckets; gated GELU of v1.1); zoo training run on sequence reversal",
        train=Train(steps=200, optimizer=adamw(2e-3, wd=0.0), batch=translate_batch,
                    outcome="trains", baseline=TOKEN_CHANCE),
        why="2 encoder and 2 decoder blocks, d 64, input and output embeddings tied (the "
            "output rescaled by d^-1/2), reversing 8 tokens: ‖∂L/∂h‖ flat along the encoder "
            "and decoder blocks (0.92), ‖∂L/∂x_t‖ flat over the source tokens (0.96); the "
            "loss starts at 1.7× chance and AdamW (lr 2e-3) trains it: 3.13 → 1.52."),
        Probe(trunk=lambda m: [*children_of("t5.encoder.block")(m),
                               *children_of("t5.decoder.block")(m)],
              time_at="t5.encoder.embed_tokens", time_dim=1, chance=TOKEN_CHANCE)),
]
