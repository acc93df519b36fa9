"""The second batch of held-out families: grouped and mobile convs, old and unnormalised conv
nets, ReLU and chrono-gated recurrences, a bidirectional tagger, ReZero and mixture-of-experts
transformers, graph convolutions and a deep LayerNorm MLP.

Each case's truth was written from :mod:`.measure`'s brute-force figures and its training run
(``benchmarks/zoo_heldout_truth.py``) before gradwatch was run on it.
"""

from __future__ import annotations

import math
from functools import partial

from torch import nn

from ..case import Case, Train
from ..data import adding_batch, progression_batch
from ..mlp import CHANCE
from ..recurrent import BASELINE, mse
from ..transformer import token_loss
from .attnnets import VOCAB
from .common import Entry, adamw, image_case, sgd
from .convnets2 import AlexNetLRN, EfficientNet, ResNeXt
from .data2 import TAG_VOCAB, TAGS, graph_batch, sbm_graph, tagging_batch
from .measure import Probe, children_of, modules_of
from .nets2 import (
    GCN,
    BiLSTMTagger,
    GraphConv,
    MoEEncoder,
    Perceiver,
    ReZeroEncoder,
    RNNReader,
)

BLOCKS = Probe(trunk=children_of("blocks"), chance=CHANCE)
RELUS = Probe(trunk=modules_of((nn.ReLU,)), chance=CHANCE, unit_dim=1)
ADDING = Probe(trunk=lambda m: [], time_at="", time_dim=1, chance=BASELINE)
TOKEN_CHANCE = math.log(VOCAB)


def _adding(name: str, family: str, build, t: int, expect_init: str, expect_run: str,
            source: str, outcome: str, *, steps: int, lr: float, why: str = "") -> Entry:
    """The adding problem at lag ``t`` (checked on 16 sequences, trained on 16), Adam."""
    case = Case(name=name, family=family, model=build, loss=mse,
                batch=partial(adding_batch, 10_000, t, 16),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(steps=steps, optimizer=adamw(lr, wd=0.0),
                            batch=partial(adding_batch, steps=t, batch=16), outcome=outcome,
                            baseline=BASELINE, drop=0.5))
    return Entry(case, ADDING)


def _tokens(name: str, family: str, build, expect_init: str, expect_run: str, source: str,
            outcome: str, *, lr: float, steps: int = 200, why: str = "") -> Entry:
    """Next-token prediction on progressions (16 tokens, vocabulary 16), AdamW."""
    case = Case(name=name, family=family, model=build, loss=token_loss,
                batch=lambda: progression_batch(10_000, length=16, vocab=VOCAB, batch=8),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(steps=steps, optimizer=adamw(lr, wd=0.01, betas=(0.9, 0.98)),
                            batch=partial(progression_batch, length=16, vocab=VOCAB, batch=16),
                            outcome=outcome, baseline=TOKEN_CHANCE))
    probe = Probe(trunk=lambda m: ["emb", *children_of("layers")(m)], time_at="emb",
                  time_dim=1, chance=TOKEN_CHANCE)
    return Entry(case, probe)


def _graph(name: str, layers: int, expect_init: str, expect_run: str, source: str,
           outcome: str, *, steps: int = 200, lr: float = 1e-2, why: str = "") -> Entry:
    """Node classification on the stochastic block model, full batch, Adam (Kipf & Welling
    2017: lr 0.01, weight decay 5e-4)."""
    adj = sbm_graph()[0]
    case = Case(name=name, family="gcn", model=partial(GCN, adj, 16, 32, 4, layers),
                batch=graph_batch, expect_init=expect_init, expect_run=expect_run,
                source=source, why=why,
                train=Train(steps=steps, optimizer=adamw(lr, wd=5e-4), batch=graph_batch,
                            outcome=outcome, baseline=math.log(4)))
    probe = Probe(trunk=modules_of((GraphConv,)), chance=math.log(4))
    return Entry(case, probe)


ENTRIES = [
    image_case(
        "resnext29_8x4d", "resnext", partial(ResNeXt, 3, 8, 4, 16), "healthy", "healthy",
        "Xie et al. 2017, §5.2 (CIFAR ResNeXt-29: grouped bottlenecks, BN, SGD lr 0.1, "
        "Nesterov, wd 5e-4, batch 128); Goyal et al. 2017 (the rate scaled with the batch); "
        "zoo training run",
        dict(steps=100, optimizer=sgd(0.02, wd=5e-4, nesterov=True), outcome="trains",
             size=16), BLOCKS, size=16,
        why="ResNeXt-29 8×4d (cardinality 8, 4 channels per group; outputs 64-128-256) on "
            "16×16 digits: ‖∂L/∂h‖ grows ×13 toward the input along the 9 blocks (1.38 per "
            "block: BN's batch statistics), the forward std ×1.5, ‖∇W‖/‖W‖ ≤ 4.5. SGD at lr "
            "0.02 (the paper's 0.1 at batch 128, scaled to batch 16), Nesterov, trains it: "
            "2.76 → 0.66 in 100 steps; the profile after training is ×5."),
    image_case(
        "efficientnet_b0_half", "efficientnet", EfficientNet, "healthy", "healthy",
        "Tan & Le 2019 (MBConv with SE and SiLU, stochastic depth 0.2); zoo training run",
        dict(steps=100, optimizer=adamw(2e-3), outcome="trains", size=16), BLOCKS, size=16,
        why="The first five stages of EfficientNet-B0 at half width (12 MBConv blocks, SE, "
            "SiLU), stochastic depth up to 0.2 (on in the check, as in training), 16×16: "
            "‖∂L/∂h‖ grows ×11 toward the input (1.27 per block; BN), ‖∇W‖/‖W‖ ≤ 5.6. "
            "AdamW (lr 2e-3, wd 0.05) trains it: 2.20 → 0.87 in 100 steps."),
    image_case(
        "alexnet_lrn_he", "alexnet", partial(AlexNetLRN, 4, 10, "he"), "healthy", "healthy",
        "Krizhevsky et al. 2012, §3.3 and §5 (LRN, overlapping pooling, dropout; SGD lr 0.01, "
        "momentum 0.9, wd 5e-4) with He init (He et al. 2015); zoo training run",
        dict(steps=150, optimizer=sgd(0.01, wd=5e-4), outcome="trains"), RELUS,
        why="Convs of 24-64-96-96-64 channels (5×5, 5×5, 3×3 ×3) with LRN after the first "
            "two, fully connected 256-256 with dropout, He init, 32×32: ‖∂L/∂h‖ 0.94 from the "
            "first ReLU to the last (0.99 per layer), 9% of one layer's units off on the "
            "batch. SGD (lr 0.01, momentum 0.9, wd 5e-4) trains it: 2.57 → 1.48 in 150 "
            "steps."),
    image_case(
        "alexnet_lrn_sgd_lr_0p2", "alexnet", partial(AlexNetLRN, 4, 10, "he"), "healthy",
        "nonfinite",
        "zoo training run: alexnet_lrn_he at SGD lr 0.2 (20× its rate), momentum 0.9",
        dict(steps=100, optimizer=sgd(0.2, wd=5e-4), outcome="diverges"), RELUS,
        why="At init this is alexnet_lrn_he (healthy). At lr 0.2 the loss climbs 3.2 → 9 → "
            "23 → 64 → 9e3 → 3e10 over the first five steps and is NaN at step 6; the last "
            "finite update is 7.5e6× the weights."),
    _adding("relu_rnn_default_t200", "relu_rnn", partial(RNNReader, 64), 200, "vanishing",
            "vanishing",
            "Le et al. 2015, §3.1 (a ReLU RNN solves the adding problem only from an identity "
            "recurrent matrix); Pascanu et al. 2013 (the gradient through time shrinks as the "
            "recurrent Jacobian's norm to the lag); zoo training run", "stalls", steps=200,
            lr=1e-3,
            why="nn.RNN with ReLU (hidden 64), default init U[−1/√h, 1/√h] (recurrent spectral "
                "radius ≈ 0.58, and the ReLU's zeros cut it further), the adding problem at "
                "T = 200 read at the last step: ‖∂L/∂x_0‖/‖∂L/∂x_T‖ = 1.3e-85, above 1e-4 of "
                "its maximum over the last 10 steps only; the loss at init is 5.5× the mean "
                "predictor's. Adam (lr 1e-3) takes it from 0.94 to 0.155, the mean's 1/6: the "
                "marked numbers are not learnt. After training the ratio is 1e-32."),
    Entry(Case(
        name="bilstm_tagger", family="bilstm", model=partial(BiLSTMTagger, TAG_VOCAB, TAGS),
        batch=lambda: tagging_batch(10_000, batch=8), loss=token_loss,
        expect_init="healthy", expect_run="healthy",
        source="Huang et al. 2015; Lample et al. 2016 (bidirectional LSTM taggers); zoo "
               "training run",
        train=Train(steps=150, optimizer=adamw(3e-3, wd=0.0), batch=tagging_batch,
                    outcome="trains", baseline=math.log(TAGS)),
        why="Embedding 32, 2-layer bidirectional LSTM (64 per direction), 24 tokens, the tag "
            "at t is (x_{t−1} + x_{t+1}) mod 4: ‖∂L/∂x_t‖ at the embedding is flat over t "
            "(first/last 1.06); AdamW (lr 3e-3) trains it: 1.39 → 0.005 in 150 steps."),
        Probe(trunk=lambda m: [], time_at="emb", time_dim=1, chance=math.log(TAGS))),
    _tokens("rezero_transformer_12", "rezero", partial(ReZeroEncoder, VOCAB, 64, 12),
            "healthy", "healthy",
            "Bachlechner et al. 2020 (ReZero: α = 0, no LayerNorm, trains deep transformers "
            "with Adam); zoo training run", "trains", lr=1e-3,
            why="12 ReZero layers (d 64, 4 heads, ReLU MLP 256), causal, next token on "
                "progressions: every α is 0, so each layer is the identity at init (‖∂L/∂h‖ "
                "equal along the stream, ratio 1.00; flat over the tokens) and the branches "
                "learn through α. AdamW (lr 1e-3) trains it: 2.93 → 0.51 in 200 steps."),
    _tokens("switch_moe_transformer", "moe", partial(MoEEncoder, VOCAB, 64, 4),
            "healthy", "healthy",
            "Fedus et al. 2022 (Switch Transformer: top-1 routing, router at scale 0.1); zoo "
            "training run", "trains", lr=1e-3,
            why="4 pre-LN layers (d 64), each feed-forward layer 4 GELU experts with top-1 "
                "routing: ‖∂L/∂h‖ 1.09 from the embedding to the last layer, ‖∂L/∂x_t‖ over "
                "the tokens 1.17; AdamW (lr 1e-3) trains it: 2.80 → 0.30 in 200 steps."),
    _graph("gcn_2layer", 2, "healthy", "healthy",
           "Kipf & Welling 2017, §3 (the two-layer GCN, Glorot init, Adam lr 0.01)", "trains",
           why="Two graph convolutions (16 → 32 → 4) on a 256-node stochastic block model (4 "
               "communities; features a noisy community mean): ‖∂L/∂h‖ 0.81 between the "
               "layers; Adam (lr 0.01, wd 5e-4, full batch) fits it: 0.98 → 0.012 in 200 "
               "steps."),
    _graph("gcn_plain_16", 16, "vanishing", "dead",
           "Kipf & Welling 2017, appendix B (GCNs without residuals do not train beyond "
           "about 7 layers); Li et al. 2018 (over-smoothing); zoo training run", "stalls",
           why="16 graph convolutions of width 32 on the same graph, Glorot init, ReLU, no "
               "residual: each layer keeps 0.54 of ‖∂L/∂h‖ (1.1e-4 over the net) and the "
               "forward std falls ×1.2e-3 as every node's features converge to the same "
               "vector (over-smoothing), so a unit is on or off for all nodes at once (59% of "
               "one layer's units off); ‖∇W‖/‖W‖ ≤ 6.6e-5. Adam (lr 0.01) gets nothing (1.39 "
               "→ 1.42 against ln 4 = 1.39). After the run every unit of a layer is off on "
               "every node and no gradient passes below it (‖∂L/∂h‖ exactly 0): dead."),
    image_case(
        "perceiver_tiny", "perceiver", Perceiver, "healthy", "healthy",
        "Jaegle et al. 2021 (Perceiver: latents cross-attend to Fourier-featured pixels); zoo "
        "training run",
        dict(steps=150, optimizer=adamw(1e-3), outcome="trains", size=16, batch=32),
        Probe(trunk=lambda m: ["cross", *children_of("latent.layers")(m)], chance=CHANCE),
        size=16,
        why="16 latents (d 64) cross-attend once to the 256 pixels of a 16×16 digit with 2-d "
            "Fourier position features, then 4 pre-LN self-attention layers over the "
            "latents: ‖∂L/∂h‖ grows ×7.2 from the last latent layer back to the cross-"
            "attention (1.64 per block), the forward std ×6.6, ‖∇W‖/‖W‖ ≤ 1.8. AdamW (lr "
            "1e-3, batch 32) trains it: 2.39 → 1.14 in 150 steps."),
]
