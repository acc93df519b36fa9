"""Held-out sequence models: long-lag gated RNNs, linear recurrences, a GRU seq2seq."""

from __future__ import annotations

import math
from functools import partial

from ..case import Case, Train
from ..data import adding_batch, pixel_sequence_batch
from ..mlp import CHANCE
from ..recurrent import BASELINE, mse
from ..transformer import token_loss
from .attention import translate_batch
from .common import Entry, adamw
from .measure import Probe, children_of
from .seqnets import LRUReader, Seq2SeqGRU, StackedReader

ADDING = Probe(trunk=lambda m: [], time_at="", time_dim=1, chance=BASELINE)


def _adding(name: str, family: str, build, t: int, expect_init: str, expect_run: str,
            source: str, outcome: str, *, steps: int, lr: float, probe: Probe = ADDING,
            why: str = "", measured: dict | None = None, batch: int = 16) -> Entry:
    case = Case(name=name, family=family, model=build, loss=mse,
                batch=partial(adding_batch, 10_000, t, 16),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(steps=steps, optimizer=adamw(lr, wd=0.0),
                            batch=partial(adding_batch, steps=t, batch=batch), outcome=outcome,
                            baseline=BASELINE, drop=0.5),
                measured=measured or {})
    return Entry(case, probe)


LRU_PROBE = Probe(trunk=lambda m: ["enc", *children_of("blocks")(m)], time_at="", time_dim=1,
                  chance=CHANCE)


def _pixels(name: str, family: str, build, expect_init: str, expect_run: str, source: str,
            outcome: str, *, probe: Probe, steps: int = 100, lr: float = 2e-3, why: str = "",
            measured: dict | None = None) -> Entry:
    """Sequential digits (16×16 images read pixel by pixel, T = 256), Adam(W) at ``lr``."""
    case = Case(name=name, family=family, model=build,
                batch=lambda: pixel_sequence_batch(10_000, batch=16),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(steps=steps, optimizer=adamw(lr, wd=0.0),
                            batch=pixel_sequence_batch, outcome=outcome, baseline=CHANCE),
                measured=measured or {})
    return Entry(case, probe)


ENTRIES = [
    _adding("lstm2_t300", "lstm_long", partial(StackedReader, "lstm", 24, 2), 300,
            "vanishing", "vanishing",
            "Hochreiter & Schmidhuber 1997; Bengio et al. 1994; zoo training run (the adding "
            "problem at T = 300, default init: forget gate σ(≈0) ≈ 1/2 per step)",
            "stalls", steps=100, lr=1e-2,
            why="2 stacked LSTMs (hidden 24), PyTorch's default init, the adding problem at "
                "T = 300 read at the last step: ‖∂L/∂x_t‖ falls geometrically back from the "
                "last step, to 1.5e-56 of it at t = 0 (0 in float32); it stays above 1e-4 of "
                "its maximum over the last 25 steps only. Adam (lr 1e-2) takes the loss from "
                "0.32 to 0.17, the 1/6 of predicting the mean: nothing of the marked numbers is "
                "learnt. After training the ratio is 4e-39."),
    _adding("gru2_t300", "gru_long", partial(StackedReader, "gru", 16, 2), 300,
            "vanishing", "vanishing",
            "Cho et al. 2014; Chung et al. 2014; zoo training run (2 stacked GRUs, default "
            "init, adding problem at T = 300)",
            "stalls", steps=50, lr=1e-2,
            why="2 stacked GRUs (hidden 16), default init, T = 300: ‖∂L/∂x_0‖/‖∂L/∂x_T‖ = 1e-55 "
                "(above 1e-4 of the maximum over the last 27 steps only); the loss goes from "
                "0.44 to 0.18, the mean's 1/6; after training the ratio is 1e-14."),
    _pixels("lru_ring_0p65_seqdigits", "linear_recurrence",
            partial(LRUReader, 32, 32, 2, 0.4, 0.65, 1, 10), "vanishing", "vanishing",
            "Orvieto et al. 2023, §3.3 (the eigenvalues' ring must reach |λ| ≈ 1 for "
            "long-range tasks); the gradient through a diagonal recurrence at lag k is "
            "|λ|^k ≤ 0.65^k: 0.65^255 ≈ 1e-48 across the 256 pixels", "stalls",
            probe=LRU_PROBE,
            why="2 LRU blocks (32 complex states, |λ| uniform on [0.4, 0.65]) on 16×16 digits "
                "read pixel by pixel. The exact gradient at lag k is ≤ 0.65^k (1.7e-48 at t = "
                "0); through the FFT convolution it is measured down to a round-off floor of "
                "~3e-19 of the last step's, above 1e-4 of its maximum over the last 18 steps "
                "only. Adam (lr 2e-3) gets 2.31 → 1.91, what the last rows of pixels tell, "
                "where the same net with |λ| near 1 reaches 0.51."),
    _pixels("lru_ring_0p999_seqdigits", "linear_recurrence",
            partial(LRUReader, 32, 32, 2, 0.99, 0.999, 1, 10), "healthy", "healthy",
            "Orvieto et al. 2023, §3.3 and §5: eigenvalues on the ring [0.99, 0.999] with the "
            "γ normalisation carry the signal over hundreds of steps (sequential images); zoo "
            "training run", "trains", probe=LRU_PROBE,
            why="lru_ring_0p65_seqdigits with |λ| on [0.99, 0.999]: ‖∂L/∂x_t‖ flat over the 256 "
                "steps at ~1e-3 of the last step's (whose direct path D·x_T dominates; first/last "
                "0.015); AdamW (lr 2e-3) trains it: 2.25 → 0.51."),
    Entry(Case(
        name="seq2seq_gru_reverse", family="seq2seq", model=partial(Seq2SeqGRU, 17, 64, 128),
        batch=lambda: translate_batch(10_000, batch=16), loss=token_loss,
        expect_init="healthy", expect_run="healthy",
        source="Sutskever et al. 2014; Cho et al. 2014: a recurrent encoder-decoder learns "
               "to map sequences (reversal of 8 tokens); zoo training run",
        train=Train(steps=200, optimizer=adamw(3e-3, wd=0.0), batch=translate_batch,
                    outcome="trains", baseline=math.log(16)),
        why="Encoder and decoder GRUs (hidden 128) over 8 tokens: ‖∂L/∂x_t‖ at the source "
            "embedding is 0.02 at t = 0 against t = 7 (the first token is decoded last); "
            "AdamW (lr 3e-3) trains it: 2.74 → 0.71."),
        Probe(trunk=lambda m: [], time_at="src_emb", time_dim=1, chance=math.log(16))),
]
