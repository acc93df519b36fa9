"""Cases that came from the held-out set: a rule was changed because of each, so it moved here.

The held-out zoo's discipline (``benchmarks/zoo/heldout``): a case that a rule change is made
for joins the development set, with the truth and the figures measured when it was written
down (``measured``, by ``benchmarks/zoo_heldout_truth.py`` before gradwatch ran on it), and
a new held-out case replaces it.

- ``nonorm_resnet38_he``: a ResNet without normalization whose loss at init is 225× chance
  while the backward ratio alone (×2e2) is under the error line: the forward signal's
  explosion is evidence beside it (``gradwatch.verdicts.depth_verdict``).
- ``skipinit_resnet38``: ReLU units that are zero inside residual branches that start at
  scale 0 block no path (the ``dead`` rule), and the SkipInit scalar α, which crosses 0 as it
  learns, is a gain whose relative update has no bound (the ``exploding`` rule's updates).
- ``spectral_norm_relu_16``: a parametrized layer is read as the layer it is, not at the
  parametrization computing its weight (``gradwatch.layers``).

Their checks at init run in the default test suite (``tests/zoo/test_zoo.py``), their training
runs with the rest of the zoo under ``-m slow``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .case import Case, Train
from .cifar_resnets import CifarNet
from .data import digits_batch, image_batch
from .mlp import CHANCE, probe


def sgd(lr: float, momentum: float = 0.9):
    """``model -> SGD`` with momentum (the CIFAR ResNet recipe, no weight decay)."""
    return lambda model: torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def adamw(lr: float, wd: float = 0.0):
    """``model -> AdamW``."""
    return lambda model: torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)


def spectral_relu(depth: int = 16, width: int = 128, n_in: int = 64,
                  n_out: int = 10) -> nn.Sequential:
    """A He-init ReLU MLP with spectral normalisation on every layer (Miyato et al. 2018):
    each weight is divided by its largest singular value (power iteration)."""
    dims = [n_in] + [width] * (depth - 1) + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
            model[i] = spectral_norm(m)
    return model


def _image_case(name: str, build, expect_init: str, expect_run: str, source: str, *,
                steps: int, outcome: str, why: str, measured: dict) -> Case:
    """Checked on 8 digit images of 16×16, trained on batches of 16 (as when held out)."""
    return Case(name=name, family="resnet", model=build,
                batch=partial(image_batch, 10_000, size=16, batch=8),
                expect_init=expect_init, expect_run=expect_run, source=source, why=why,
                train=Train(steps=steps, optimizer=sgd(0.1), outcome=outcome, baseline=CHANCE,
                            batch=partial(image_batch, size=16, batch=16)),
                measured=measured, budget_s=20.0)


CASES = [
    _image_case(
        "nonorm_resnet38_he", partial(CifarNet, "nonorm", 6), "exploding", "nonfinite",
        "Zhang et al. 2019, §2 (Fixup): without normalization the output variance of a ResNet "
        "with He init grows exponentially with depth; zoo training run",
        steps=100, outcome="diverges",
        why="18 basic blocks without normalization, He init: each block adds a branch as large "
            "as its input, so the forward std grows ×531 along the blocks, the loss at init is "
            "225× chance, ‖∂L/∂h‖ grows ×244 toward the input (1.38 per block) and the largest "
            "‖∇W‖/‖W‖ is 2e3. With SGD at lr 0.1 (a BN ResNet's rate) the first update is "
            "14.5× the weights and the loss is NaN at step 1.",
        measured={
            "init.loss_over_chance": 225.0, "init.trunk_ratio": 244.0,
            "init.trunk_factor": 1.38, "init.fwd_growth": 531.0, "init.gw_ratio_max": 2040.0,
            "init.dead_max": 0.0625, "init.saturated_max": 0.0, "train.loss_start": 367.0,
            "train.nan_step": 1.0, "train.update_ratio_max": 14.5, "after.dead_max": 0.0,
            "after.saturated_max": 0.0,
        },
    ),
    _image_case(
        "skipinit_resnet38", partial(CifarNet, "skipinit", 6), "healthy", "healthy",
        "De & Smith 2020, §4-5 (SkipInit): the same unnormalised net with each branch scaled by "
        "a scalar that starts at 0 trains at the learning rate of a BN ResNet",
        steps=150, outcome="trains",
        why="nonorm_resnet38_he with each branch × α, α = 0 at init: every block starts as "
            "the identity (‖∂L/∂h‖ at the first block 0.40× the last's, 0.95 per block; loss "
            "at chance). Option A pads the new channels of stages 2 and 3 with zeros, so 75% "
            "of the last blocks' ReLU channels are zero on every input until α grows (0.14 "
            "after training): zeros by construction, not dead units. SGD at lr 0.1 trains it: "
            "2.31 → 0.87 in 150 steps.",
        measured={
            "init.loss_over_chance": 1.01, "init.trunk_ratio": 0.399,
            "init.trunk_factor": 0.947, "init.fwd_growth": 0.55, "init.gw_ratio_max": 0.369,
            "init.dead_max": 0.75, "init.saturated_max": 0.0, "train.loss_start": 2.31,
            "train.loss_end": 0.868, "train.move_first": 0.509,
            "train.update_ratio_max": 0.015, "after.trunk_ratio": 2.03,
            "after.dead_max": 0.141, "after.saturated_max": 0.0,
        },
    ),
    Case(
        name="spectral_norm_relu_16", family="mlp",
        model=partial(spectral_relu, 16, 128), batch=probe,
        expect_init="vanishing", expect_run="vanishing",
        source="Anil et al. 2019, §3 ('gradient norm attenuation'): a ReLU net with every "
               "layer's spectral norm at 1 loses gradient norm at each layer",
        why="16 ReLU layers of width 128, He init then spectral norm (σ_max = 1): ‖∂L/∂h‖ "
            "shrinks 0.36 per layer (7e-7 over the net) and the forward std as much (6e-7); "
            "‖∇W‖/‖W‖ ≤ 2e-8. Adam (lr 1e-3) learns nothing (2.30 → 2.30; the first layer "
            "moved 0.6%). After the run the ratio is 5.5e-9 and 92% of one layer's units are "
            "off: their inputs vanished and the biases rule them, a consequence of the "
            "vanishing.",
        train=Train(steps=300, optimizer=adamw(1e-3), batch=digits_batch, outcome="stalls",
                    baseline=CHANCE),
        measured={
            "init.loss_over_chance": 1.0, "init.trunk_ratio": 6.99e-07,
            "init.trunk_factor": 0.363, "init.fwd_growth": 6.05e-07,
            "init.gw_ratio_max": 2.19e-08, "init.dead_max": 0.227, "init.saturated_max": 0.0,
            "train.loss_start": 2.3, "train.loss_end": 2.3, "train.move_first": 0.00611,
            "train.update_ratio_max": 0.00182, "after.trunk_ratio": 5.48e-09,
            "after.dead_max": 0.922, "after.saturated_max": 0.0,
        },
    ),
]
