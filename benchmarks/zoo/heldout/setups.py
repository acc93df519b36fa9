"""Held-out training setups and init mistakes: learning rates past the edge, dead and saturated
units from biases, scales and raw inputs."""

from __future__ import annotations

from functools import partial

from torch import nn

from ..case import Case, Train
from ..cnn import plain_cnn
from ..mlp import CHANCE
from .common import Entry, adamw, image_case, sgd
from .convnets import UNet
from .data import denoise_batch, raw_digits_batch, raw_probe
from .dense import default_mlp, mse
from .measure import Probe, modules_of

RELUS = Probe(trunk=modules_of((nn.ReLU,)), chance=CHANCE, unit_dim=1)


def conv_negative_bias(bias: float = -2.0) -> nn.Sequential:
    """The zoo's plain 8-conv He-init ReLU net (global pooling) with every conv bias at
    ``bias``: the first conv's pre-activations have std ≈ 1.4 on standardised images, so a
    bias of −2 leaves few units on, and the layers after see almost nothing."""
    model = plain_cnn(8, 16, nn.ReLU, "he")
    for m in model:
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.bias, bias)
    return model


ENTRIES = [
    Entry(Case(
        name="unet_sgd_lr_nan", family="unet", model=partial(UNet, 1, 16, 3), loss=mse,
        batch=partial(denoise_batch, 10_000, batch=8), expect_init="healthy",
        expect_run="nonfinite",
        source="zoo training run: the U-Net (no normalization) trained with SGD at lr 0.5, "
               "momentum 0.9 (50× the usual rate) overflows to NaN",
        train=Train(steps=100, optimizer=sgd(0.5), batch=denoise_batch, outcome="diverges"),
        why="At init this is unet_denoise (healthy). SGD at lr 0.5, momentum 0.9: the "
            "first updates are 1.8e3× the weights and the loss is NaN at step 2."),
        Probe(trunk=lambda m: ["down.0", "down.1", "down.2", "bottom", "dec.0", "dec.1",
                               "dec.2"])),
    image_case(
        "conv_bias_minus2_dead", "dead_conv", partial(conv_negative_bias, -2.0), "dead", "dead",
        "Maas et al. 2013; Lu et al. 2020: a rectifier that is off on every input gets no "
        "gradient; zoo training run", dict(steps=150, optimizer=adamw(1e-3, 0.0),
                                           outcome="stalls", size=16),
        RELUS, size=16,
        why="8 He-init 3×3 convs (16 channels, 16×16) with every bias at −2: from the second "
            "conv on, every channel is zero on every input (dead fraction 1.0), so no gradient "
            "reaches any conv (‖∂L/∂h‖ exactly 0 below the head); Adam (lr 1e-3) leaves the "
            "loss at chance (2.30 → 2.30), and every channel is still off after training."),
    Entry(Case(
        name="tanh_raw_pixels", family="saturated_input", model=partial(default_mlp, 4, 128,
                                                                         nn.Tanh),
        batch=raw_probe, expect_init="saturated", expect_run="saturated",
        source="LeCun et al. 1998 ('Efficient BackProp', §4.3: normalise the inputs, else "
               "tanh units saturate); zoo training run on 8-bit pixels (0-255)",
        train=Train(steps=300, optimizer=adamw(1e-3, 0.0), batch=raw_digits_batch,
                    outcome="trains", baseline=CHANCE),
        why="4 tanh layers of width 128, default init, fed 8-bit pixels (0-255) without "
            "standardising: 97% of the first layer's outputs are in the flat tails (|tanh| > "
            "0.99) at init, 97.5% after training: that layer is a fixed sign function that "
            "does not learn. The layers above learn from its random sign features, so the loss "
            "falls (2.07 → 0.047): a run that trains around a saturated first layer. The fix "
            "is to standardise the inputs (LeCun et al. 1998)."),
        Probe(trunk=modules_of((nn.Tanh,)), chance=CHANCE)),
]
