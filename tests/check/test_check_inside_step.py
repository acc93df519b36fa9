"""``gw.check`` inside a watched training step leaves that step's record as it would be.

The check runs its own forward and backward pass on the same model. The live Monitor's hooks
used to count that pass as part of the step (``backprop_norm`` grew by about √2, the
activation statistics mixed two batches); while a check runs, the live Monitors stand aside.
Compared value for value with the same training without the check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def batches(n):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(n)]


def check_twice(model, probe):
    """A check of the watched model, and one of an unwatched twin of it (the reference)."""
    twin = make()[0]
    twin.load_state_dict(model.state_dict())
    return gw.check(model, probe), gw.check(twin, probe)


def record(tmp_path, name, where, manual=False):
    """4 steps; at step 2 a check runs at ``where`` ("none", "after_forward",
    "after_backward"); returns the run's statistics and the two checkups."""
    model, opt = make()
    probe = torch.randn(16, 6, generator=torch.Generator().manual_seed(2))
    checked = None
    mon = gw.watch(model, tmp_path / name, optimizer=None if manual else opt, detail_every=1)
    with mon:
        for step, (x, y) in enumerate(batches(4)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if step == 2 and where == "after_forward":
                checked = check_twice(model, probe)
            loss.backward()
            if step == 2 and where == "after_backward":
                checked = check_twice(model, probe)
            if manual:
                mon.step(loss)
                opt.step()
            else:
                opt.step()
                mon.step(loss)
        assert mon.step_count == 4
    return gw.load(tmp_path / name).stats.set_index(["step", "layer", "stat"])["value"], checked


@pytest.mark.parametrize("manual", [False, True], ids=["optimizer", "manual"])
@pytest.mark.parametrize("where", ["after_forward", "after_backward"])
def test_a_check_inside_a_step_leaves_its_record_unchanged(tmp_path, where, manual):
    want, _ = record(tmp_path, "plain", "none", manual)
    got, (checkup, reference) = record(tmp_path, "checked", where, manual)
    assert got.sort_index().equals(want.sort_index())  # bit for bit, every step
    bp = got.xs((2, "0", "backprop_norm"))
    assert bp > 0 and math.isfinite(bp)
    # and the check saw its own pass alone, as on an unwatched copy of the model
    cols = ["grad_norm", "backprop_norm", "act_mean", "act_std", "dead_frac"]
    np.testing.assert_array_equal(checkup.table[cols].to_numpy(), reference.table[cols].to_numpy())
    assert checkup.verdict == reference.verdict
