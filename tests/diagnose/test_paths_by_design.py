"""Verdicts on residual, normalised and parametrized nets that hold by design.

1. A ResNet without normalisation whose backward growth is below the ratio an error needs
   on its own, but whose loss at init is far above chance: the forward signal explodes with
   the backward one, so the stream is judged as a plain chain (Zhang et al. 2019).
2. ReLU units that are never positive inside residual branches that start at scale 0
   (SkipInit, De & Smith 2020) block no path: the stream carries the gradient.
3. A scalar gain that starts at 0 (SkipInit's α) has no bound on ‖Δw‖/‖w‖ as it crosses 0:
   not an update that swamps the weights.
4. A parametrized layer (spectral norm) is read as the layer it is, not at the
   parametrization that computes its weight.
5. A chain of normalised layers without shortcuts that starts in batch norm's growth (Yang et
   al. 2019) and whose loss is not learnt down is exploding after training; at init the
   note states the growth instead of calling the gradients healthy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

import gradwatch as gw
from gradwatch.diagnose import diagnose
from gradwatch.layers import find_layers
from gradwatch.verdicts import (
    EXPLODING_FACTOR,
    EXPLODING_RATIO,
    LOSS_OVER_CHANCE,
    UPDATE_SWAMP,
    VANISHING_RATIO,
)
from tests.diagnose.nets_by_design import NoNormResNet
from tests.diagnose.synthetic import geometric, make_run


def _images(n=4, side=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


# -------------------------------------------- 1. forward explosion beside backward growth
def test_a_resnet_without_norm_explodes_below_the_backward_ratio_when_its_loss_does():
    x, y = _images()
    torch.manual_seed(0)
    cu = gw.check(NoNormResNet(12, 8), x, y)
    (f,) = [f for f in cu.findings if f.kind == "exploding"]
    ev = f.evidence
    assert (cu.verdict, f.severity, ev["path"]) == ("exploding", "error", "residual")
    # the backward ratio alone would not be an error; the loss and the growth per block are
    assert 10 < ev["backprop_ratio"] < EXPLODING_RATIO
    assert ev["per_layer_factor"] > EXPLODING_FACTOR
    assert ev["loss_over_chance"] > LOSS_OVER_CHANCE and ev["forward_exploding"] is True
    assert "× chance" in f.message  # the loss against chance, with its figure
    assert "‖∇W‖/‖W‖" in f.message  # the input-side layer's relative step is reported
    assert "batchnorm" in f.remedies and "residual" not in f.remedies


def test_a_bn_resnet_whose_loss_is_at_chance_is_not_judged_as_a_plain_chain():
    # the same backward growth per block is healthy when the forward signal is held
    from gradwatch.verdicts import depth_verdict

    assert depth_verdict(54.0, 1.39, path="residual", forward_exploding=False) is None
    assert depth_verdict(54.0, 1.39, path="residual", forward_exploding=True) == (
        "exploding", "error")
    assert depth_verdict(54.0, 1.39, path="normalized", forward_exploding=False) is None
    assert depth_verdict(5.0, 1.39, path="residual", forward_exploding=True) is None


# --------------------------------------------------- 2. dead units the stream bypasses
class SkipInitBlock(nn.Module):
    """relu(x + α·conv2(relu(conv1 x))), α a learnt scalar that starts at 0 (SkipInit).

    ``dead`` of conv1's channels have a bias of -10: never positive on any input.
    """

    def __init__(self, c: int, dead: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.alpha = nn.Parameter(torch.zeros(1))
        with torch.no_grad():
            self.conv1.bias[:dead] = -10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.alpha * self.conv2(self.relu1(self.conv1(x))))


def skipinit_net(blocks: int = 6, c: int = 8, dead: int = 6) -> nn.Sequential:
    """Stem, ``blocks`` SkipInit blocks, pooled linear head."""
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(),
                         *[SkipInitBlock(c, dead) for _ in range(blocks)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def test_dead_units_inside_branches_that_start_at_zero_block_no_path():
    x, y = _images(n=8)
    torch.manual_seed(0)
    cu = gw.check(skipinit_net(), x, y)
    assert cu.verdict == "healthy", [f.message for f in cu.findings]
    (f,) = [f for f in cu.findings if f.kind == "dead"]
    assert f.severity == "info" and f.evidence["bypassed"] is True
    assert f.evidence["branches_start_at_zero"] is True
    assert set(f.layers) == {f"{i}.conv1" for i in range(2, 8)}
    assert all(v == pytest.approx(0.75) for v in f.evidence["dead_frac"].values())
    assert f.evidence["backprop_ratio"] == pytest.approx(1.0, rel=0.05)  # the stream's flow
    assert "he_init" not in f.remedies


def test_dead_units_on_a_plain_chain_are_still_a_warning():
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        lin = nn.Linear(16, 16)
        with torch.no_grad():
            lin.bias[:12] = -10.0
        layers += [lin, nn.ReLU()]
    cu = gw.check(nn.Sequential(*layers, nn.Linear(16, 10)), torch.randn(16, 16),
                  torch.randint(0, 10, (16,)))
    (f,) = [f for f in cu.findings if f.kind == "dead"]
    assert f.severity in ("warning", "error") and "bypassed" not in f.evidence


# ----------------------------------------------------- 3. a gain that starts at zero
def _swamp_run(shapes):
    steps, n = 8, 3
    ur = np.full((steps, n), 1e-3)
    ur[4:, 1] = 1.5  # layer l1's relative update, still there at the last step
    wn = np.ones((steps, n))
    wn[:, 1] = np.linspace(0.0, 0.1, steps)  # grows from 0
    run = make_run(n, {"update_ratio": ur, "weight_norm": wn, "grad_norm": np.ones((steps, n)),
                       "backprop_norm": np.ones((steps, n))},
                   loss=list(np.linspace(2.3, 1.0, steps)))
    run.meta["layer_info"]["l1"]["shapes"] = shapes
    return run


def test_a_scalar_gain_crossing_zero_does_not_swamp_its_updates():
    found = [f for f in diagnose(_swamp_run([[1]])) if f.evidence.get("axis") == "updates"]
    assert found == []


def test_a_weight_matrix_whose_updates_match_its_size_still_swamps():
    (f,) = [f for f in diagnose(_swamp_run([[8, 8], [8]])) if f.evidence.get("axis") == "updates"]
    assert f.layers == ("l1",) and f.severity == "error"
    assert f.evidence["update_ratio"]["l1"] >= UPDATE_SWAMP


# ------------------------------------------------------- 4. parametrized layers
def spectral_relu(depth: int = 12, width: int = 64) -> nn.Sequential:
    """``depth`` Linear-ReLU layers, He init, then spectral norm (σ_max = 1) on each."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        layers += [spectral_norm(lin), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def test_a_parametrized_layer_is_the_layer_it_is():
    model = spectral_relu(2, 8)
    layers = find_layers(model)
    assert [ly.name for ly in layers] == ["0", "2", "4"]
    assert layers[0].param_names == ("0.bias", "0.parametrizations.weight.original")
    assert {id(p) for ly in layers for p in ly.parameters()} == {
        id(p) for p in model.parameters()}


def test_spectral_norm_on_every_layer_vanishes_read_at_the_layers():
    torch.manual_seed(0)
    model = spectral_relu()
    cu = gw.check(model, torch.randn(32, 64), torch.randint(0, 10, (32,)))
    assert not any("parametrizations" in ly for ly in cu.run.layers)
    (f,) = [f for f in cu.findings if f.kind == "vanishing"]
    assert (cu.verdict, f.severity) == ("vanishing", "error")
    # ReLU halves the variance and σ_max = 1 caps each layer's gain: ~0.35-0.5 per layer
    assert f.evidence["backprop_ratio"] < VANISHING_RATIO
    assert 0.2 < f.evidence["per_layer_factor"] < 0.6
    assert f.evidence["input_side_layer"] == "0"
    # spectral norm sets the weights' scale at every forward: no init can lift the factor
    assert cu.run.meta["structure"]["parametrized_layers"]["0"] == ["weight"]
    assert not {"he_init", "lsuv", "xavier_init"} & set(f.remedies)
    assert {"batchnorm", "residual"} <= set(f.remedies)
    table = cu.table.set_index("layer")
    assert np.isfinite(table.loc["0", "grad_norm"]) and table.loc["0", "grad_norm"] > 0


# ------------------------------------------- 5. a BN chain that starts in its explosion
def _bn_chain_run(losses):
    """30 layers through norms, no shortcut: ×196 at 1.2 per layer at step 0, flat after."""
    n, steps = 30, len(losses)
    bp = np.ones((steps, n))
    bp[0] = geometric(1.2, n)[0]
    return make_run(n, {"backprop_norm": bp, "grad_norm": np.ones((steps, n)),
                        "weight_norm": np.ones((steps, n))},
                    loss=list(losses), norm=("l0",))


def test_a_bn_chain_that_starts_in_its_explosion_and_does_not_learn_is_exploding():
    losses = 2.3 + 0.02 * np.sin(np.arange(40))
    fs = diagnose(_bn_chain_run(losses))
    (f,) = [f for f in fs if f.kind == "exploding"]
    assert (fs.verdict, f.severity) == ("exploding", "warning")
    assert f.evidence["stalled_from_start"] is True and f.evidence["path"] == "normalized"
    assert f.evidence["backprop_ratio"] == pytest.approx(1.2**29, rel=1e-5)
    assert f.evidence["backprop_ratio"] < EXPLODING_RATIO
    assert "not learnt down" in f.message and "Yang et al. 2019" in f.message
    assert "residual" in f.remedies and "batchnorm" not in f.remedies


def test_the_same_growth_in_a_run_that_learns_is_not_exploding():
    losses = np.linspace(2.3, 1.5, 40)  # a BN plain-34 at lr 0.01 grows ×115 and learns
    assert not [f for f in diagnose(_bn_chain_run(losses)) if f.kind == "exploding"]


def test_the_healthy_deep_note_states_a_bn_chains_growth():
    x = torch.randn(16, 3, 8, 8)
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c_in = 3
    for _ in range(30):
        layers += [nn.Conv2d(c_in, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()]
        c_in = 8
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    cu = gw.check(model, x, torch.randint(0, 10, (16,)))
    (f,) = [f for f in cu.findings if f.kind == "healthy_deep"]
    ratio = f.evidence["backprop_ratio"]
    assert 10 < ratio < EXPLODING_RATIO and f.evidence["bn_growth"] is True
    assert "healthy" not in f.message and "Yang et al. 2019" in f.message
    assert "‖∇W‖/‖W‖" in f.message and f.remedies == ("lower_lr", "residual")
