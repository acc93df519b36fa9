"""Training setups around a healthy model: loss scaling, accumulation, frozen layers, bad
learning rates, plain Adam/SGD runs, dead units, and the demo's repaired model."""

from __future__ import annotations

import copy
from functools import partial

import torch
from torch import nn

import gradwatch as gw

from .case import Case, Train
from .data import digits, digits_batch
from .mlp import CHANCE, adam, mlp, probe, sgd


def frozen_mlp() -> nn.Sequential:
    """A 12-layer He-init ReLU MLP whose first 6 Linear layers are frozen (fine-tuning)."""
    model = mlp(12, 128, nn.ReLU, "he")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for lin in linears[:6]:
        lin.requires_grad_(False)
    return model


def dead_mlp() -> nn.Sequential:
    """A 10-layer He-init ReLU MLP whose hidden biases start at -3: every unit is off.

    The pre-activations have variance ≈ 2 (He init on standardised inputs), so a bias of -3
    puts all but the rare units more than 2σ below zero at the first layer, and the layers
    after it see zeros. No gradient reaches any weight but the last layer's.
    """
    model = mlp(10, 128, nn.ReLU, "he")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin in linears[:-1]:
            lin.bias.fill_(-3.0)
    return model


def full_digits_one_hot() -> tuple[torch.Tensor, torch.Tensor]:
    """Every digit (1797, 64) with one-hot targets (1797, 10): a full-batch regression."""
    x, y = digits()
    return x, nn.functional.one_hot(y, 10).float()


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every output."""
    return nn.functional.mse_loss(out, target)


def sgd_past_the_edge(factor: float = 2.05):
    """``model -> SGD`` at ``factor / λmax`` for linear least squares on the full digits.

    Gradient descent on a quadratic diverges when lr > 2/λmax of its Hessian; the error
    along the top eigenvector then grows by |1 - lr·λmax| per step: 1.05 at factor 2.05,
    so the loss climbs steadily (×1000 in 100 steps) and stays finite.
    """

    def make(model: nn.Module) -> torch.optim.Optimizer:
        x, _ = digits()
        xa = torch.cat([x, torch.ones(len(x), 1)], 1)  # (N, 65): the bias as a feature
        lam = 2 / 10 * float(torch.linalg.eigvalsh(xa.T @ xa / len(x)).max())
        return torch.optim.SGD(model.parameters(), lr=factor / lam)

    return make


def repaired_demo_model() -> nn.Module:
    """The demo's sick model (16 sigmoid layers, standard init) as ``gw.fix`` repairs it."""
    from gradwatch.demo import sigmoid_mlp  # the demo's own builder: the same sick model

    sick = sigmoid_mlp(16, 64, seed=0)
    x, y = probe()
    fixed, _report = gw.fix(copy.deepcopy(sick), x, y)
    return fixed


def _case(name: str, build, expect_init: str, expect_run: str, source: str, train: Train,
          why: str = "", quick: bool = False) -> Case:
    return Case(name=name, family="setup", model=build, batch=probe, expect_init=expect_init,
                expect_run=expect_run, source=source, train=train, why=why, quick=quick)


def _train(outcome: str, opt, steps: int = 200, **kw) -> Train:
    return Train(steps=steps, optimizer=opt, batch=digits_batch, outcome=outcome,
                 baseline=CHANCE, **kw)


he12 = partial(mlp, 12, 128, nn.ReLU, "he")

CASES = [
    _case("setup_adam_digits", he12, "healthy", "healthy",
          "zoo training run: Adam (lr 1e-3) on a 12-layer He-init ReLU MLP",
          _train("trains", adam(1e-3))),
    _case("setup_sgd_digits", he12, "healthy", "healthy",
          "zoo training run: SGD with momentum (lr 0.01) on a 12-layer He-init ReLU MLP",
          _train("trains", sgd(0.01))),
    _case("setup_grad_scaler_skips", he12, "healthy", "healthy",
          "zoo training run; PyTorch AMP docs: GradScaler skips steps whose scaled gradients "
          "overflow and lowers the scale, routinely so in the first steps of fp16 training",
          _train("trains", adam(1e-3), scaler_init_scale=2.0**127), quick=True,
          why="init_scale 2^127 overflows the scaled loss; the scaler halves the scale and "
              "skips the step until it fits (about 7 skipped steps), then trains normally."),
    _case("setup_grad_accumulation", he12, "healthy", "healthy",
          "zoo training run: 4 micro-batches of 16 per optimizer step (Adam, lr 1e-3)",
          Train(steps=150, optimizer=adam(1e-3), outcome="trains", baseline=CHANCE,
                batch=partial(digits_batch, batch=16), accumulate=4)),
    _case("setup_frozen_layers", frozen_mlp, "healthy", "healthy",
          "zoo training run: the first 6 of 12 layers frozen (no gradients, by choice)",
          _train("trains", adam(1e-3)),
          why="Frozen layers have no parameter gradients and nothing flows into them: "
              "that is a choice, not a vanished gradient."),
    _case("setup_lr_nan", he12, "healthy", "nonfinite",
          "zoo training run: SGD with lr 10 on the same healthy net; the loss becomes NaN",
          _train("diverges", sgd(10.0, momentum=0.0), steps=60),
          why="A healthy model and a learning rate 1000× too large: the weights blow up "
              "within a few steps, then the loss and gradients are NaN."),
    Case(name="setup_lr_diverging", family="setup", model=partial(nn.Linear, 64, 10),
         batch=full_digits_one_hot, loss=mse, expect_init="healthy", expect_run="exploding",
         source="zoo training run; gradient descent on a quadratic diverges for lr > 2/λmax "
                "(e.g. Goodfellow et al. 2016, §4.3.1): the loss climbs ×1000 in 100 steps",
         train=Train(steps=100, optimizer=sgd_past_the_edge(), batch=lambda i:
                     full_digits_one_hot(), outcome="diverges"),
         why="Linear least squares at 2.05/λmax: a finite, steadily climbing loss (the issue's "
             "'2.3 to 166'), which only a rule that reads the loss can call."),
    _case("setup_dead_relu", dead_mlp, "dead", "dead",
          "zoo training run: hidden biases at -3 switch every ReLU off; the loss cannot "
          "fall below the class-frequency baseline", _train("stalls", adam(1e-3)), quick=True,
          why="Dying ReLU (Maas et al. 2013; Lu et al. 2020): a unit that is never active "
              "gets no gradient and never recovers."),
    _case("setup_demo_repaired", repaired_demo_model, "healthy", "healthy",
          "zoo training run: the demo's 16-layer sigmoid MLP after gw.fix, trained with "
          "Adam (lr 1e-3) as the demo trains it", _train("trains", adam(1e-3), steps=300),
          quick=True),
]
