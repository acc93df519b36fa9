"""``config=`` keys that name the Monitor's own settings never overwrite them in meta.json."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gradwatch as gw


def test_a_config_key_naming_a_setting_keeps_the_setting_and_the_value(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = {"every": "each epoch", "optimizer": "adamw", "lr": 0.1}
    with pytest.warns(UserWarning, match=r"\['every', 'optimizer'\] name gradwatch's own"):
        mon = gw.watch(model, tmp_path / "run", optimizer=opt, every=2, config=config)
    with mon:
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(5, 3)).pow(2).mean().backward()
            opt.step()
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    # the settings in use, as the recorded steps show them
    assert meta["settings"]["every"] == 2 and meta["settings"]["optimizer"] == ["SGD"]
    assert gw.load(tmp_path / "run").steps == [0, 2]
    # the user's values, all of them, as given; the others merged into settings as before
    assert meta["config"] == config
    assert meta["settings"]["lr"] == 0.1


def test_a_config_without_clashes_warns_nothing(tmp_path, recwarn):
    with gw.watch(nn.Linear(2, 2), tmp_path / "run", config={"lr": 0.1}):
        pass
    assert not [w for w in recwarn if "config" in str(w.message)]
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["settings"]["lr"] == 0.1 and meta["config"] == {"lr": 0.1}
