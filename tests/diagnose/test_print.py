"""``print(gw.diagnose(run))``, the README's own line, prints something a person reads: the
verdict and a paragraph per finding, not the reprs of every field (evidence included)."""

from __future__ import annotations

import json
import pickle

import torch
from torch import nn

import gradwatch as gw
from gradwatch.findings import Finding
from gradwatch.verdicts import Findings


def vanishing_run():
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 2))
    gw.remedies.standard_init_(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 16), torch.randint(0, 2, (64,))
    with gw.watch(model, None, optimizer=opt, detail_every=1) as mon:
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss=loss)
    return mon.run


def test_print_of_a_diagnosis_is_a_readable_report():
    found = gw.diagnose(vanishing_run())
    assert isinstance(found, list) and isinstance(found, Findings)
    assert found == list(found) and found[0] is list(found)[0]  # still a plain list
    text = str(found)
    lines = text.splitlines()
    assert lines[0] == f"verdict: vanishing ({len(found)} finding{'s' * (len(found) > 1)})"
    for f in found:
        assert f.message in text and f"[{f.severity}] {f.kind}" in text
        assert f"try: {', '.join(f.remedies)}" in text
    # no field reprs, no evidence dump: about the length of the messages themselves
    assert "evidence" not in text and "Finding(" not in text and "{" not in text
    assert len(text) < sum(len(f.message) for f in found) + 200 * len(found)
    # repr: one short line per finding
    for f in found:
        assert len(repr(f)) < 250 and repr(f).startswith(f"Finding(kind={f.kind!r}")
        assert "evidence" not in repr(f)
    assert repr(found).startswith("Findings([") and len(repr(found)) < 260 * len(found) + 20


def test_findings_stay_a_list_for_json_and_pickle():
    found = gw.diagnose(vanishing_run())
    assert pickle.loads(pickle.dumps(found)) == found
    assert json.loads(json.dumps([f.to_dict() for f in found]))[0]["kind"] == found[0].kind
    assert str(Findings()) == "verdict: healthy (no findings)"
    one = Finding("dead", ("a",), None, "warning", "m")
    assert str(one) == "[warning] dead in layers 'a': m"
    assert Findings([one]).verdict == "dead"
