"""Convolutional nets on digit images: VGG-16 (± BN, two inits), plain deep CNNs, and a plain
chain of 50 BN-ReLU convolutions."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .case import Case, Train
from .data import image_batch
from .mlp import CHANCE, adam, sgd

#: VGG-16, configuration D of Simonyan & Zisserman (2015), Table 1: channels, "M" = max-pool.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def init_(model: nn.Module, scheme: str) -> nn.Module:
    """Initialise every conv and linear layer; biases 0; BN at γ = 1, β = 0.

    Schemes: "vgg" normal with std 0.01 (as He et al. 2015, §2.2, cite the VGG init);
    "he" N(0, 2/fan_in)
    (He et al. 2015, eq. 10); "standard" PyTorch's default, U[-1/√fan_in, 1/√fan_in].
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if scheme == "vgg":
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif scheme == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif scheme == "standard":
                bound = 1 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                raise ValueError(f"unknown init {scheme!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def vgg16(init: str, bn: bool, scale: int = 1, size: int = 32) -> nn.Sequential:
    """VGG-16 for ``size``×``size`` inputs: 13 convs (3×3) and 3 linear layers.

    ``scale`` divides every width (the training runs use 1/8). The classifier is
    512/scale → 512/scale → 512/scale → 10 (the paper's 4096-wide layers fit 224×224
    ImageNet; dropout is left out so that the check is deterministic).
    """
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))  # (N, C, H, W) -> (N, C, H/2, W/2)
            continue
        c = v // scale
        layers.append(nn.Conv2d(c_in, c, 3, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(c))
        layers.append(nn.ReLU())
        c_in = c
    side = size // 32  # five 2× poolings
    width = 512 // scale
    layers += [nn.Flatten(), nn.Linear(c_in * side * side, width), nn.ReLU(),
               nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)]
    return init_(nn.Sequential(*layers), init)


def plain_cnn(depth: int, width: int, act: type[nn.Module], init: str,
              head: str = "gap") -> nn.Sequential:
    """``depth`` 3×3 convs (stride 1, same padding) with ``act``; then a head and a linear.

    head "gap": global average pooling (N, C, H, W) -> (N, C); "strided": the convs
    alternate stride 1 and 2 and double the width at each stride (a 32×32 input ends at
    2×2 after 8 convs), then flatten.
    """
    layers: list[nn.Module] = []
    c_in = 3
    c = width
    for i in range(depth):
        stride = 2 if head == "strided" and i % 2 == 1 else 1
        layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), act()]
        c_in = c
        if stride == 2:
            c = c * 2
    if head == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10)]
    else:
        layers += [nn.Flatten(), nn.LazyLinear(10)]
    return init_(_materialise(nn.Sequential(*layers)), init)


def _materialise(model: nn.Sequential, size: int = 32) -> nn.Sequential:
    """Run one dummy input through a model with lazy layers so every weight exists."""
    if any(isinstance(m, nn.modules.lazy.LazyModuleMixin) for m in model.modules()):
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    return model


def _case(name: str, build, expect_init: str, expect_run: str, source: str, outcome: str, *,
          size: int = 32, train_size: int | None = None, train_model=None, steps: int = 200,
          lr: float = 1e-3, drop: float = 0.3, batch: int = 16, why: str = "",
          quick: bool = False) -> Case:
    train_size = train_size or size
    return Case(
        name=name, family="cnn", model=build, expect_init=expect_init, expect_run=expect_run,
        batch=partial(image_batch, 10_000, size=size, batch=8), source=source, why=why,
        quick=quick,
        train=Train(steps=steps, optimizer=adam(lr), outcome=outcome, baseline=CHANCE, drop=drop,
                    batch=partial(image_batch, size=train_size, batch=batch),
                    model=train_model),
    )


CASES = [
    _case("vgg16_paper_init", partial(vgg16, "vgg", False), "vanishing", "vanishing",
          "He et al. 2015, §2.2: 'With fixed standard deviations (e.g., 0.01 ...), very deep "
          "models (e.g., >8 conv layers) have difficulties to converge, as reported by the VGG "
          "team [Simonyan & Zisserman 2015, §3.1] and also observed in our experiments'",
          "stalls", steps=150, train_model=partial(vgg16, "vgg", False, 8),
          why="n·Var[w] = 9·C·10^-4 ≪ 2: under ReLU the signal shrinks 2× (C = 512) to 6× "
              "(C = 64) per conv layer, forward and backward (at 1/8 width: more). Simonyan & "
              "Zisserman write 'variance 10^-2' (std 0.1, which would explode instead); the "
              "zoo follows He et al.'s reading, std 0.01."),
    _case("vgg16_he_init", partial(vgg16, "he", False), "healthy", "healthy",
          "He et al. 2015, §2.2 and Fig. 3: VGG-style nets train from scratch with their init",
          "trains", steps=150, train_model=partial(vgg16, "he", False, 8)),
    _case("vgg16_bn_paper_init", partial(vgg16, "vgg", True), "healthy", "healthy",
          "Ioffe & Szegedy 2015, §3.3: with BN back-propagation is unaffected by the scale "
          "of the weights; zoo training run", "trains", drop=0.2,
          train_model=partial(vgg16, "vgg", True, 8),
          why="BN divides each conv's output by its std, so N(0, 0.01) weights no longer "
              "shrink the signal through the convs; the three linear layers of the head have "
              "no BN and shrink it ~6× each, which slows the start (Adam trains it; SGD with "
              "lr 0.01 did not within 150 steps)."),
    _case("vgg16_bn_he_init", partial(vgg16, "he", True), "healthy", "healthy",
          "Ioffe & Szegedy 2015; zoo training run (vgg16_bn trains with the standard recipe)",
          "trains", steps=150, train_model=partial(vgg16, "he", True, 8)),
    _case("cnn_sigmoid_20", partial(plain_cnn, 20, 16, nn.Sigmoid, "standard"),
          "vanishing", "vanishing",
          "Glorot & Bengio 2010 (sigmoid, standard init: gradients shrink ≥ 4× per layer); "
          "zoo training run", "stalls", size=16,
          why="Conv layers with n·Var[w] = 1/3 and |σ'| ≤ 1/4, as the sigmoid MLP."),
    _case("cnn_relu_he_20", partial(plain_cnn, 20, 16, nn.ReLU, "he"), "healthy", "healthy",
          "He et al. 2015, §2.2: plain ReLU nets of this depth train with He init; zoo "
          "training run", "trains", size=16),
    _case("cnn_strided_he", partial(plain_cnn, 8, 16, nn.ReLU, "he", "strided"),
          "healthy", "healthy",
          "He et al. 2015 init with strided convs (as in ResNets' downsampling); zoo "
          "training run", "trains",
          why="Stride-2 convs shrink H×W by 4 and double the channels: the L2 norm of a "
              "layer's output gradient changes with its shape, not with the signal's health."),
    _case("cnn_gap_10_64px", partial(plain_cnn, 10, 16, nn.ReLU, "he"), "healthy", "healthy",
          "He et al. 2015 init; zoo training run (trained at 32×32: the net is fully "
          "convolutional)", "trains", size=64, train_size=16, quick=True,
          why="Global average pooling over 64×64 divides ‖δ‖ by √4096 = 64 in one step; the "
              "conv layers' back-propagated signal per position is flat."),
    _case("cnn_relu_he_30", partial(plain_cnn, 30, 16, nn.ReLU, "he"), "healthy", "healthy",
          "He et al. 2015, §2.2 and Fig. 3: the 30-layer plain ReLU net converges with He "
          "init; zoo training run", "trains", size=32, train_size=16, steps=300, lr=3e-4,
          drop=0.2,
          why="About half the ReLU outputs are 0 at any position; a channel is dead only if "
              "it is 0 at every position of every example, which none is."),
]


def plain_bn(depth: int = 50, width: int = 16) -> nn.Sequential:
    """``depth`` 3×3 conv-BN-ReLU layers (stride 1, He init, no bias), no shortcut; GAP, linear."""
    layers: list[nn.Module] = []
    c_in = 3
    for _ in range(depth):
        layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU()]
        c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


CASES += [
    Case(
        name="plain_bn_50", family="cnn", model=plain_bn,
        batch=partial(image_batch, 10_000, size=32, batch=8),
        expect_init="exploding", expect_run="exploding",
        source="Yang et al. 2019, 'A Mean Field Theory of Batch Normalization', §3 and Thm. "
               "3.9: without shortcuts batch norm explodes the gradient geometrically with "
               "depth at any init (~1.21 per ReLU layer); zoo training runs at width 8: SGD "
               "(lr 0.1 and 0.01, momentum 0.9) and Adam (lr 1e-3) stay at chance for 200 steps",
        train=Train(steps=100, optimizer=sgd(0.1), outcome="stalls", baseline=CHANCE,
                    batch=partial(image_batch, size=16, batch=16),
                    model=partial(plain_bn, 50, 8)),
        why="The gradient grows ~1.2× per layer toward the input, ~2e3-8e3× over the 50 "
            "layers, and the first conv's ‖∇W‖/‖W‖ is 5-60: an SGD step at lr 0.1 moves it by "
            "several times its own size (measured: 62× over the run). A plain-34 with BN "
            "(He et al. 2016) grows ~140× and trains: the rule speaks past 10³, as a warning.",
        budget_s=45, forbid_remedies=("he_init", "batchnorm"),
    ),
]
