"""Fully connected nets on the digits: sigmoid, the tanh phase diagram, ReLU inits, SELU."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .case import Case, Train
from .data import digits_batch

CHANCE = math.log(10)  # cross-entropy of a uniform guess over the 10 digits


def mlp(depth: int, width: int, act: type[nn.Module], init: str, sigma_w2: float = 1.0,
        sigma_b2: float = 0.0, n_in: int = 64, n_out: int = 10) -> nn.Sequential:
    """``depth`` Linear layers, ``act`` between them, initialised by ``init``.

    Inits: "standard" U[-1/√n, 1/√n] (Glorot & Bengio 2010), "xavier" normal
    Var = 2/(n_in + n_out), "he" normal Var = 2/n_in (He et al. 2015), "lecun" normal
    Var = 1/n_in (Klambauer et al. 2017), "gauss" W ~ N(0, σw²/n_in), b ~ N(0, σb²)
    (Poole et al. 2016; Schoenholz et al. 2017). Biases are 0 unless "gauss".
    """
    dims = [n_in] + [width] * (depth - 1) + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        lin = nn.Linear(a, b)
        if init == "standard":
            nn.init.uniform_(lin.weight, -1 / math.sqrt(a), 1 / math.sqrt(a))
        elif init == "xavier":
            nn.init.xavier_normal_(lin.weight)
        elif init == "he":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        elif init == "lecun":
            nn.init.normal_(lin.weight, 0.0, 1 / math.sqrt(a))
        elif init == "gauss":
            nn.init.normal_(lin.weight, 0.0, math.sqrt(sigma_w2 / a))
        else:
            raise ValueError(f"unknown init {init!r}")
        if init == "gauss" and sigma_b2 > 0:
            nn.init.normal_(lin.bias, 0.0, math.sqrt(sigma_b2))
        else:
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < depth - 1:
            layers.append(act())
    return nn.Sequential(*layers)


def sgd(lr: float, momentum: float = 0.9):
    """``model -> SGD`` (the classic experiments' optimizer)."""
    return lambda model: torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def adam(lr: float):
    """``model -> Adam``."""
    return lambda model: torch.optim.Adam(model.parameters(), lr=lr)


def probe() -> tuple[torch.Tensor, torch.Tensor]:
    """The batch every digits case is checked on: 256 digits."""
    return digits_batch(10_000, batch=256)


def _digits_case(name: str, build, expect_init: str, expect_run: str, source: str,
                 outcome: str, *, steps: int = 300, opt=None, drop: float = 0.3,
                 why: str = "", quick: bool = False) -> Case:
    return Case(
        name=name, family="mlp", model=build, batch=probe, expect_init=expect_init,
        expect_run=expect_run, source=source, why=why, quick=quick,
        train=Train(steps=steps, optimizer=opt or sgd(0.01), batch=digits_batch,
                    outcome=outcome, drop=drop, baseline=CHANCE),
    )


CASES = [
    _digits_case(
        "mlp_sigmoid_standard", partial(mlp, 16, 64, nn.Sigmoid, "standard"),
        "vanishing", "vanishing",
        "Glorot & Bengio 2010, §4 and Fig. 2/6: sigmoid with standard init, back-propagated "
        "gradients shrink toward the input; deep sigmoid nets do not escape saturation",
        "stalls", opt=adam(1e-3), quick=True,
        why="16 sigmoid layers: |σ'| ≤ 1/4 and n·Var[w] = 1/3, so ‖δ‖ shrinks ≥ 4× per "
            "layer (the demo's sick model).",
    ),
    _digits_case(
        "mlp_tanh_ordered", partial(mlp, 50, 128, nn.Tanh, "gauss", 0.5, 0.0),
        "vanishing", "vanishing",
        "Schoenholz et al. 2017, §3-4: ordered phase, χ1 = σw² = 0.5 < 1, ξ∇ = 1.4 ≪ depth 50",
        "stalls", why="tanh, σw² = 0.5, σb² = 0: ‖δ‖² × 0.5 per layer, 2^-25 over 50 layers.",
    ),
    _digits_case(
        "mlp_tanh_critical", partial(mlp, 50, 128, nn.Tanh, "gauss", 1.0, 0.0),
        "healthy", "healthy",
        "Schoenholz et al. 2017, §4: at criticality (σw², σb²) = (1, 0) gradients neither "
        "vanish nor explode and deep tanh nets train", "trains", opt=sgd(0.003),
        why="At lr 0.01 (momentum 0.9) the 50-layer net sits at the edge of stability: its "
            "loss after 300 steps ranged 0.59-1.83 with the CPU's vector width (AVX2, AVX-512); "
            "at 0.003 it trains to 0.13 on both, identically.",
    ),
    _digits_case(
        "mlp_tanh_chaotic", partial(mlp, 100, 64, nn.Tanh, "gauss", 4.0, 0.0),
        "exploding", "exploding",
        "Schoenholz et al. 2017, §3-4: chaotic phase, χ1 = 1.36 > 1 (ξ∇ = -3.2), "
        "gradients grow ×10^6 over 100 layers; depth 100 ≫ 6ξc = 48 does not train", "stalls",
        quick=True,
        why="At 50 layers (≈ 6ξc, the trainability edge) this net still learns the digits "
            "with a small learning rate; at 100 it does not.",
    ),
    _digits_case(
        "mlp_relu_xavier_22", partial(mlp, 22, 128, nn.ReLU, "xavier"),
        "vanishing", "healthy",
        "He et al. 2015, §2.2 and Fig. 2: the 22-layer model converges with Xavier init too, "
        "later than with He init", "trains", steps=400, opt=sgd(0.01),
        why="At init ‖δ‖ halves in variance per layer (2^-11 in norm over 22 layers: "
            "vanishing by measurement, as he2015's claim 5 says); the net still trains.",
    ),
    _digits_case(
        "mlp_relu_he_22", partial(mlp, 22, 128, nn.ReLU, "he"), "healthy", "healthy",
        "He et al. 2015, §2.2 and Fig. 2: 22-layer model trains with He init", "trains",
        steps=400, opt=sgd(0.01),
    ),
    _digits_case(
        "mlp_relu_xavier_30", partial(mlp, 30, 128, nn.ReLU, "xavier"),
        "vanishing", "vanishing",
        "He et al. 2015, §2.2 and Fig. 3: the 30-layer model with Xavier init 'completely "
        "stalls' (gradients diminishing)", "stalls", steps=400, opt=sgd(0.005), quick=True,
    ),
    _digits_case(
        "mlp_relu_he_30", partial(mlp, 30, 128, nn.ReLU, "he"), "healthy", "healthy",
        "He et al. 2015, §2.2 and Fig. 3: the 30-layer model converges with He init", "trains",
        steps=400, opt=sgd(0.005), quick=True,
    ),
    _digits_case(
        "mlp_selu_lecun", partial(mlp, 32, 128, nn.SELU, "lecun"), "healthy", "healthy",
        "Klambauer et al. 2017, §3 and Fig. 1: SELU with LeCun normal init is "
        "self-normalizing; deep SNNs train", "trains",
    ),
]
