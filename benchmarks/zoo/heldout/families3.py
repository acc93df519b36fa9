"""The third batch of held-out families: a Conformer, a Swin transformer, IndRNN (at the
paper's init with BN, and at a standard RNN's init), SqueezeNet at PyTorch's default init, a
BN-Inception net, a deep LayerNorm MLP and a transformer without residuals, and a maxout net.

Each case's truth was written from :mod:`.measure`'s brute-force figures and its training run
(``benchmarks/zoo_heldout_truth.py``) before gradwatch was run on it.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from ..case import Case, Train
from ..data import digits_batch, image_batch, pixel_sequence_batch
from ..mlp import CHANCE, probe
from .common import Entry, adamw, image_case, sgd
from .measure import Probe, children_of, modules_of
from .nets2 import ln_mlp
from .nets3 import (
    Conformer,
    Fire,
    Inception,
    InceptionBN,
    IndRNN,
    Maxout,
    NoSkipTransformer,
    Swin,
    maxout_mlp,
    squeezenet,
)


def row_sequence_batch(i: int, size: int = 16, batch: int = 16, seed: int = 0):
    """Digits read row by row: each 16×16 image a sequence of 16 frames of 16 features
    (the frames of a spectrogram, for a speech encoder): x (N, 16, 16), labels (N,)."""
    x, y = image_batch(i, size=size, batch=batch, channels=1, seed=seed)
    return x[:, 0], y


def _fire_trunk(model: nn.Module) -> list[str]:
    """The stem's ReLU and every Fire module's output (the concatenation), in order."""
    return [n for n, m in model.named_children() if isinstance(m, nn.ReLU | Fire)]


def _inception_trunk(model: nn.Module) -> list[str]:
    """The stem and every Inception module's output (the concatenation), in order."""
    return ["stem", *(f"blocks.{n}" for n, m in model.blocks.named_children()
                      if isinstance(m, Inception))]


def _indrnn(name: str, init: str, bn: bool, expect_init: str, expect_run: str, source: str,
            outcome: str, *, steps: int = 150, lr: float = 2e-3, why: str = "") -> Entry:
    """Sequential digits (16×16 images pixel by pixel, T = 256), a 2-layer IndRNN, Adam."""
    case = Case(name=name, family="indrnn", model=partial(IndRNN, 256, 64, 2, init=init, bn=bn),
                batch=lambda: pixel_sequence_batch(10_000, batch=16),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(steps=steps, optimizer=adamw(lr, wd=0.0),
                            batch=pixel_sequence_batch, outcome=outcome, baseline=CHANCE),
                budget_s=60.0)
    probe = Probe(trunk=children_of("layers"), time_at="", time_dim=1, chance=CHANCE)
    return Entry(case, probe)


ENTRIES = [
    Entry(Case(
        name="conformer_rows", family="conformer", model=Conformer,
        batch=lambda: row_sequence_batch(10_000, batch=16),
        expect_init="healthy", expect_run="healthy",
        source="Gulati et al. 2020 (Conformer: macaron half-step FFNs, MHSA, a conv module "
               "with GLU, depthwise conv, BatchNorm and Swish); zoo training run",
        train=Train(steps=150, optimizer=adamw(1e-3, wd=0.01, betas=(0.9, 0.98)),
                    batch=row_sequence_batch, outcome="trains", baseline=CHANCE),
        why="4 Conformer blocks (d 64, 4 heads, FFN 256 with Swish, depthwise kernel 7, BN in "
            "the conv module) over the 16 rows of a digit as frames of 16 features: ‖∂L/∂h‖ "
            "grows ×4.6 from the last block back to the input projection (1.46 per block), the "
            "forward std ×2.4, ‖∂L/∂x_t‖ is flat over the 16 frames (first/last 0.93), "
            "‖∇W‖/‖W‖ ≤ 0.97. AdamW (lr 1e-3, β₂ 0.98, wd 0.01) trains it: 1.77 → 0.34 in "
            "150 steps."),
        Probe(trunk=lambda m: ["inp", *children_of("blocks")(m)], time_at="", time_dim=1,
              chance=CHANCE)),
    image_case(
        "swin_tiny_16px", "swin", Swin, "healthy", "healthy",
        "Liu et al. 2021 (Swin: shifted windows, relative position bias, patch merging; "
        "AdamW, wd 0.05); zoo training run",
        dict(steps=150, optimizer=adamw(1e-3), outcome="trains", size=16, batch=32),
        Probe(trunk=lambda m: ["embed_norm", *children_of("blocks")(m)], chance=CHANCE),
        size=16,
        why="Three stages (d 48-96-192, heads 3-6-12, two blocks each: window 4, shifted by 2 "
            "in the second), patch 2, on 16×16 digits: ‖∂L/∂h‖ along the residual stream is "
            "0.41 at the patch embedding of the last block's (0.90 per block; the merging "
            "layers rescale it), the forward std ×0.42, ‖∇W‖/‖W‖ ≤ 6.0. AdamW (lr 1e-3, wd "
            "0.05, batch 32) trains it: 1.81 → 0.24 in 150 steps; after training the stream's "
            "gradient grows ×8.4 toward the input."),
    _indrnn("indrnn_bn_seqdigits", "paper", True, "healthy", "healthy",
            "Li et al. 2018 (IndRNN: |u| ≤ 2^(1/T), the last layer's u in [2^(−1/T), "
            "2^(1/T)], BatchNorm after each layer); zoo training run", "trains",
            why="2 IndRNN layers of 64 ReLU units, BN after each, the first layer's u in [0, "
                "2^(1/256)], the last's in [2^(−1/256), 2^(1/256)], digits read pixel by pixel "
                "(T = 256) and classified at the last step: ‖∂L/∂x_t‖ at the input is flat over "
                "t (t = 0 against t = T−1: 0.63; every step above 1e-4 of the maximum), "
                "‖∂L/∂h‖ 0.79 between the layers, ‖∇W‖/‖W‖ ≤ 1.7. Adam (lr 2e-3) trains it: "
                "2.11 → 0.96 in 150 steps."),
    _indrnn("indrnn_default_init", "default", False, "vanishing", "vanishing",
            "Li et al. 2018, §3 (an IndRNN unit keeps its gradient over T steps as u^T); "
            "recurrent weights drawn as nn.RNN's, U[−1/√h, 1/√h]; zoo training run",
            "stalls",
            why="2 IndRNN layers of 64 ReLU units without BN, the recurrent weights drawn as "
                "nn.RNN draws its own, U[−1/8, 1/8]: a unit keeps at most 1/8 of its state per "
                "step, so ‖∂L/∂x_t‖ falls by about 15 decades every 16 steps and is exactly 0 "
                "in float64 for t ≤ 68 (t = 0 against t = T−1: 0; above 1e-4 of the maximum "
                "over the last 5 steps only). The last pixels of a digit say little: Adam (lr "
                "2e-3) gets 2.30 → 2.23 in 150 steps (ln 10 = 2.30); after training the "
                "gradient reaches 7 steps."),
    image_case(
        "squeezenet_default_init", "squeezenet", squeezenet, "vanishing", "dead",
        "Iandola et al. 2016 (SqueezeNet: Fire modules, no BN; SGD lr 0.04, momentum 0.9, "
        "wd 2e-4); He et al. 2015, §2.2 (PyTorch's default init keeps 1/6 of the variance "
        "per ReLU layer); zoo training run",
        dict(steps=150, optimizer=sgd(0.04, wd=2e-4), outcome="stalls"),
        Probe(trunk=_fire_trunk, chance=CHANCE, unit_dim=1),
        why="SqueezeNet v1.1 at half width (a strided 3×3 stem, 8 Fire modules, max pooling, a "
            "1×1 conv classifier with its ReLU, global pooling), PyTorch's default init, "
            "32×32: each ReLU layer keeps about 1/6 of the variance, so ‖∂L/∂h‖ at the stem is "
            "2.9e-8 of the classifier's (×0.15 per Fire module) and the forward std falls "
            "×0.20; 59% of one layer's channels are zero on every image. SGD (lr 0.04, "
            "momentum 0.9) learns nothing (2.30 → 2.30; the stem moved 1.1%). After the run "
            "every channel of the classifier's ReLU is zero on every image (all logits 0, the "
            "loss exactly ln 10) and no gradient passes below it (‖∂L/∂h‖ exactly 0): dead."),
    image_case(
        "inception_bn_16px", "inception", InceptionBN, "healthy", "healthy",
        "Szegedy et al. 2015 (Inception modules); Ioffe & Szegedy 2015 (BN after every conv, "
        "the 5×5 branch as two 3×3, SGD momentum 0.9 at BN-x30's rate 0.045); zoo training run",
        dict(steps=150, optimizer=sgd(0.045, wd=4e-5), outcome="trains", size=16),
        Probe(trunk=_inception_trunk, chance=CHANCE, unit_dim=1), size=16,
        why="A 3×3 stem and 5 Inception modules (1×1, 3×3, double-3×3 and pool-projection "
            "branches, BN-ReLU after every conv, He init; max pooling after the second), "
            "16×16: ‖∂L/∂h‖ grows ×4.7 from the last module back to the stem (1.36 per "
            "module; BN's batch statistics), the forward std is flat (×1.03), ‖∇W‖/‖W‖ ≤ "
            "1.1. SGD (lr 0.045, momentum 0.9) trains it: 2.25 → 0.22 in 150 steps."),
    Entry(Case(
        name="layernorm_mlp_32", family="layernorm_mlp", model=partial(ln_mlp, 32, 128),
        batch=probe, expect_init="healthy", expect_run="healthy",
        source="Ba et al. 2016 (layer normalization: each example's features normalised, "
               "no batch statistics); He et al. 2015 (init); zoo training run",
        train=Train(steps=300, optimizer=adamw(1e-3, wd=0.0), batch=digits_batch,
                    outcome="trains", baseline=CHANCE),
        why="31 Linear-LayerNorm-ReLU layers of width 128, He init, no residual, on the 8×8 "
            "digits: ‖∂L/∂h‖ at the first ReLU is 0.42 of the last's (0.97 per layer), the "
            "forward std flat (×0.99), ‖∇W‖/‖W‖ ≤ 0.46; 43% of one layer's units are off on "
            "the whole check batch. AdamW (lr 1e-3) trains it: 2.37 → 0.90 in 300 steps "
            "(0.77 with AVX2 kernels); after training the gradient grows toward the input, "
            "×7.2 (×1.9 with AVX2 kernels: the one recorded figure that depends on the "
            "vector width)."),
        Probe(trunk=modules_of((nn.ReLU,)), chance=CHANCE)),
    Entry(Case(
        name="noskip_transformer_8", family="noskip_transformer", model=NoSkipTransformer,
        batch=lambda: row_sequence_batch(10_000, batch=16),
        expect_init="healthy", expect_run="vanishing",
        source="Dong et al. 2021 (attention without skip connections loses rank doubly "
               "exponentially with depth); zoo training run",
        train=Train(steps=150, optimizer=adamw(1e-3, wd=0.01), batch=row_sequence_batch,
                    outcome="stalls", baseline=CHANCE),
        why="8 post-LN transformer layers (d 64, 4 heads, GELU MLP 256) with both residual "
            "connections removed, over the 16 rows of a digit as frames: at init the gradient "
            "reaches every layer (‖∂L/∂h‖ grows ×6.1 toward the input projection, 1.25 per "
            "layer; flat over the frames, first/last 1.01; ‖∇W‖/‖W‖ ≤ 2.3). AdamW (lr 1e-3) "
            "does not train it: 2.41 → 2.12 in 150 steps (2.29 with AVX2 kernels; ln 10 = "
            "2.30). Over the run the flow collapses: after training ‖∂L/∂h‖ shrinks ×0.2-0.3 "
            "per layer, the input projection's is 5.5e-5 of the last layer's (1.7e-5 with "
            "AVX2 kernels) and the first weight's ‖∇W‖/‖W‖ is 1.7e-6: vanishing."),
        Probe(trunk=lambda m: ["inp", *children_of("layers")(m)], time_at="", time_dim=1,
              chance=CHANCE)),
    Entry(Case(
        name="maxout_mlp_dropout", family="maxout", model=maxout_mlp,
        batch=probe, expect_init="healthy", expect_run="healthy",
        source="Goodfellow et al. 2013 (maxout networks with dropout; SGD with momentum); zoo "
               "training run",
        train=Train(steps=300, optimizer=sgd(0.01), batch=digits_batch,
                    outcome="trains", baseline=CHANCE),
        why="3 maxout layers of 128 units with 4 pieces each and dropout 0.2, PyTorch's "
            "default init, on the 8×8 digits: ‖∂L/∂h‖ at the first layer is 0.42 of the "
            "last's (0.65 per layer), the forward std ×0.63, ‖∇W‖/‖W‖ ≤ 0.23, no unit off "
            "(a maximum of pieces is never a constant 0). SGD (lr 0.01, momentum 0.9) trains "
            "it: 2.33 → 0.067 in 300 steps."),
        Probe(trunk=modules_of((Maxout,)), chance=CHANCE)),
]
