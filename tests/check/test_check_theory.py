"""check's second opinion: a theory_mismatch note where mean-field theory and measurement
disagree, none where they agree, and never a change of verdict."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

import gradwatch as gw
from gradwatch.theory.opinion import MISMATCH_DECADES, compare


class GradScale(torch.autograd.Function):
    """Identity forward; backward scales the gradient: a backward the forward does not show."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1e-3


class Hidden(nn.Module):
    def __init__(self, scale: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(5))
        self.out = nn.Linear(32, 4)
        self.scale = scale
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = torch.relu(layer(x))
            if i == 2 and self.scale:
                x = GradScale.apply(x)
        return self.out(x)


def test_a_hidden_gradient_scale_is_a_mismatch_note_and_changes_no_verdict():
    torch.manual_seed(0)
    model, x = Hidden(), torch.randn(32, 32)
    with_theory = gw.check(model, x)
    without = gw.check(model, x, theory=False)
    notes = [f for f in with_theory.findings if f.kind == "theory_mismatch"]
    assert len(notes) == 1 and notes[0].severity == "info"
    ev = notes[0].evidence
    assert notes[0].layers[0] in ("layers.0", "layers.1", "layers.2")
    # ‖δ‖ is 1e-3 of what the weights predict below the scaling
    assert ev["measured_ratio"] < 1e-2 * ev["predicted_ratio"]
    assert ev["layers_beyond"] == 3
    assert with_theory.verdict == without.verdict
    assert [f.kind for f in without.findings if f.kind == "theory_mismatch"] == []


def test_no_note_where_theory_and_measurement_agree():
    torch.manual_seed(1)
    for model, x in (
        (Hidden(scale=False), torch.randn(32, 32)),
        (nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4)),
         torch.randn(16, 16)),
    ):
        cu = gw.check(model, x)
        assert not [f for f in cu.findings if f.kind == "theory_mismatch"], cu.findings


def test_compare_reads_the_threshold_on_squared_norms():
    predicted = pd.DataFrame({"layer": ["a", "b", "c"], "attenuation": [1.0, 1.0, 1.0]})
    close = pd.DataFrame({"layer": ["a", "b", "c"], "backprop_norm": [2.0, 1.0, 1.0]})
    assert compare(predicted, close) == []  # 4× in ‖δ‖² is 0.6 decade: within
    big = 10 ** (MISMATCH_DECADES / 2 + 0.3)  # ‖δ‖ beyond a decade of ‖δ‖²
    far = pd.DataFrame({"layer": ["a", "b", "c"], "backprop_norm": [big, 1.0, 1.0]})
    (note,) = compare(predicted, far)
    assert note.layers == ("a",) and note.evidence["output_side_layer"] == "c"
    nan = pd.DataFrame({"layer": ["a", "b", "c"], "backprop_norm": [float("nan"), 1.0, 1.0]})
    assert compare(predicted, nan) == []  # a layer without a measurement is left out


def test_check_rejects_a_bad_theory_flag():
    import pytest

    from gradwatch.errors import GradwatchTypeError

    with pytest.raises(GradwatchTypeError, match="theory"):
        gw.check(nn.Linear(4, 2), torch.randn(3, 4), theory="yes")
