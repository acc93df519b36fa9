"""Held-out conv nets: residual variants, modern conv nets, dense and encoder-decoder nets."""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..case import Case, Train
from ..cifar_resnets import CifarNet, plain_bn
from ..mlp import CHANCE
from .common import Entry, adamw, image_case, sgd
from .convnets import ConvNeXt, ConvNeXtBlock, DenseNet, MobileNetV2, ResnetGenerator, UNet
from .data import denoise_batch
from .measure import Probe, children_of, modules_of

BLOCKS = Probe(trunk=children_of("blocks"), chance=CHANCE)


def mse(out, target):
    """Mean squared error (denoising)."""
    return F.mse_loss(out, target)


def _denoise(name: str, family: str, build, expect_init: str, expect_run: str, source: str,
             probe: Probe, *, steps: int, optimizer, outcome: str = "trains", why: str = "",
             measured: dict | None = None) -> Entry:
    case = Case(name=name, family=family, model=build, loss=mse,
                batch=partial(denoise_batch, 10_000, batch=8),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(steps=steps, optimizer=optimizer, batch=denoise_batch,
                            outcome=outcome),
                measured=measured or {})
    return Entry(case, probe)


ENTRIES = [
    image_case(
        "convnext_ls1e6", "convnext", partial(ConvNeXt, (24, 48, 96, 192), (2, 2, 4, 2), 1e-6),
        "healthy", "healthy",
        "Liu et al. 2022 (ConvNeXt trains with AdamW and layer scale 1e-6); Touvron et al. "
        "2021 (layer scale); zoo training run",
        dict(steps=100, optimizer=adamw(2e-3), outcome="trains"),
        Probe(trunk=modules_of((ConvNeXtBlock,)), chance=CHANCE),
        why="Dims 24-48-96-192, depths 2-2-4-2, 32×32. Each branch starts at 1e-6 of its input, "
            "so the residual stream carries the signal and its gradient: along the 10 blocks "
            "‖∂L/∂h‖ at the first block is 0.39× the last block's (0.90 per block), the loss "
            "starts at chance (1.04×) and AdamW (lr 2e-3, wd 0.05) trains it: 1.14 → 0.21 in "
            "100 steps, the stem moved 72%. Read through the branch outputs the flow would "
            "shrink by 1e-6 per block; along the trunk it is healthy.",
    ),
    image_case(
        "preact_resnet56", "preact_resnet", partial(CifarNet, "preact", 9), "healthy", "healthy",
        "He et al. 2016b, §4 and Table 3: pre-activation ResNets train with SGD at lr 0.1",
        dict(steps=100, optimizer=sgd(0.1, wd=5e-4), outcome="trains", size=16),
        BLOCKS, size=16,
        why="27 blocks on 16×16 digits: ‖∂L/∂h‖ grows toward the input along the blocks "
            "(×31.5, 1.14 per block; BN's batch statistics, Yang et al. 2019), the forward std "
            "×2.3, but ‖∇W‖/‖W‖ stays ≤ 0.83 and SGD (lr 0.1, momentum 0.9) trains it: 2.30 → "
            "0.62 in 100 steps, the first conv moved 73%. Growth through skips that trains is "
            "not an explosion.",
    ),
    image_case(
        "wrn16_2_dropout", "wide_resnet", partial(CifarNet, "wide", 2, 32, 0.3),
        "healthy", "healthy",
        "Zagoruyko & Komodakis 2016, §3-4: WRN-16-k with dropout 0.3 trains with SGD lr 0.1",
        dict(steps=100, optimizer=sgd(0.1, wd=5e-4, nesterov=True), outcome="trains", size=16),
        BLOCKS, size=16,
        why="WRN-16-2 (widths 32-64-128), dropout 0.3 between the convs (on in the check, as in "
            "training): ‖∂L/∂h‖ ×2.7 toward the input, ‖∇W‖/‖W‖ ≤ 1.3; SGD (lr 0.1, "
            "Nesterov) trains it: 2.33 → 0.55.",
    ),
    image_case(
        "se_resnet20", "se_resnet", partial(CifarNet, "se", 3), "healthy", "healthy",
        "Hu et al. 2018: squeeze-and-excitation ResNets train with the ResNet recipe",
        dict(steps=100, optimizer=sgd(0.1, wd=5e-4), outcome="trains", size=16),
        BLOCKS, size=16,
        why="ResNet-20 with SE blocks (reduction 4: 4 to 16 units in the squeeze). Half the "
            "units of one squeeze layer are zero on the whole check batch, at init and after "
            "training (dead fraction 0.5): two units of a gate's bottleneck, not a dead "
            "network. ‖∂L/∂h‖ ×2.6 toward the input; SGD (lr 0.1) trains it: 2.25 → 0.53.",
    ),
    image_case(
        "gn_resnet20", "groupnorm", partial(CifarNet, "gn", 3), "healthy", "healthy",
        "Wu & He 2018: GroupNorm ResNets train like BN ones, at any batch size",
        dict(steps=100, optimizer=sgd(0.1, wd=5e-4), outcome="trains", size=16),
        BLOCKS, size=16,
        why="ResNet-20 with GroupNorm (groups of 4 channels): ‖∂L/∂h‖ ×2.2 toward the input, "
            "‖∇W‖/‖W‖ ≤ 2.8; SGD (lr 0.1) trains it: 2.87 → 1.02.",
    ),
    image_case(
        "plain_bn_36", "plain_bn", partial(plain_bn, 12), "exploding", "exploding",
        "Yang et al. 2019, §3-4: BN makes the gradient of a deep plain net explode at init, "
        "and such nets do not train at large depth; zoo training run",
        dict(steps=100, optimizer=sgd(0.1), outcome="stalls", size=16),
        Probe(trunk=modules_of((nn.ReLU,)), chance=CHANCE), size=16,
        why="36 conv-BN-ReLU layers, no shortcut (16×16, widths 16-32-64): ‖∂L/∂h‖ grows ×224 "
            "toward the input (1.17 per layer; Yang et al. predict √(π/(π−1)) ≈ 1.21 for "
            "BN-ReLU) while the forward std stays flat: the explosion is in the backward pass "
            "alone. ‖∇W‖/‖W‖ reaches 10, so SGD at lr 0.1 rewrites the input-side convs (the "
            "first moved 4.2× its norm in 100 steps) and the net does not learn (2.34 → 2.28), "
            "where preact_resnet56 trains at the same rate. After the run the profile has "
            "collapsed (ratio 0.2); the run failed from the explosion.",
    ),
    image_case(
        "mobilenetv2_half", "mobilenet", partial(MobileNetV2, 0.5), "healthy", "healthy",
        "Sandler et al. 2018: inverted residuals with linear bottlenecks train; zoo training run",
        dict(steps=100, optimizer=sgd(0.05, wd=4e-5), outcome="trains", size=16),
        BLOCKS, size=16,
        why="Width 0.5, 17 inverted residual blocks, 16×16: ‖∂L/∂h‖ grows ×62 toward the "
            "input (1.29 per block: BN, and linear bottlenecks that skip only where the shape "
            "is kept) and a depthwise filter's ‖∇W‖/‖W‖ reaches 12, yet SGD (lr 0.05) trains "
            "it: 2.41 → 0.98, and the profile after training is flat (1.18).",
    ),
    image_case(
        "densenet_bc28", "densenet", partial(DenseNet, 28, 12), "healthy", "healthy",
        "Huang et al. 2017, §4: DenseNet-BC (k = 12) trains with SGD lr 0.1, Nesterov; every "
        "layer reaches the loss through the concatenations",
        dict(steps=100, optimizer=sgd(0.1, wd=1e-4, nesterov=True), outcome="trains", size=16),
        Probe(trunk=children_of("features"), chance=CHANCE), size=16,
        why="DenseNet-BC-28 (k = 12, 16×16): ‖∂L/∂h‖ ×1.9 toward the input along the dense "
            "layers and transitions; SGD (lr 0.1, Nesterov) trains it: 2.19 → 0.52.",
    ),
    _denoise(
        "unet_denoise", "unet", partial(UNet, 1, 16, 3), "healthy", "healthy",
        "Ronneberger et al. 2015 (U-Net, He init, no normalization); zoo training run",
        Probe(trunk=lambda m: ["down.0", "down.1", "down.2", "bottom", "dec.0", "dec.1",
                               "dec.2"]),
        steps=100, optimizer=adamw(1e-3, wd=0.0),
        why="3 levels, widths 16-128, on 16×16 digits with noise std 0.5: ‖∂L/∂h‖ flat from "
            "the first encoder block through the bottleneck to the last decoder block (1.03); "
            "7% of one layer's ReLU channels are off on the batch. AdamW (lr 1e-3) trains it: "
            "MSE 0.59 → 0.089.",
    ),
    _denoise(
        "resnet_generator_in", "instancenorm", partial(ResnetGenerator, 1, 16, 4),
        "healthy", "healthy",
        "Johnson et al. 2016; Ulyanov et al. 2016; Zhu et al. 2017 (CycleGAN generator with "
        "instance norm, N(0, 0.02) init, Adam lr 2e-4, β1 0.5); zoo training run",
        Probe(trunk=lambda m: ["encode", *children_of("blocks")(m), "decode"]),
        steps=100, optimizer=adamw(2e-4, wd=0.0, betas=(0.5, 0.999)),
        why="Instance norm after every conv but the last, 4 residual blocks: ‖∂L/∂h‖ ×1.4 "
            "toward the input; the N(0, 0.02) weights are small, so ‖∇W‖/‖W‖ reaches 11 "
            "without any large gradient. Adam (lr 2e-4, β1 0.5) trains it: MSE 0.54 → 0.26.",
    ),
]
