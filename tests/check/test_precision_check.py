"""``gw.check(precision=...)``, ``gradwatch check --precision`` and the underflow/overflow rules,
against brute-force casts of the checkup's own gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.cli import main
from gradwatch.errors import GradwatchValueError

FMT = {"fp16": torch.float16, "bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn,
       "e5m2": torch.float8_e5m2}


def mlp(act, depth: int = 12, width: int = 64, gain: float = 1.0) -> nn.Sequential:
    """A plain MLP with N(0, gain / width) weights and zero biases (the issue's sigmoid net at
    gain 1, He init at gain 2)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.normal_(lin.weight, 0.0, math.sqrt(gain / width))
        nn.init.zeros_(lin.bias)
        layers += [lin, act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g)


def brute_underflow(model, x, y, fmt, scale=1.0) -> dict[str, float]:
    """Per Linear layer, the fraction of gradient entries a real cast flushes."""
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    out = {}
    for name, m in model.named_children():
        if isinstance(m, nn.Linear):
            g = torch.cat([p.grad.reshape(-1) for p in m.parameters()]) * scale
            out[name] = float(((g != 0) & (g.to(FMT[fmt]).float() == 0)).double().mean())
    model.zero_grad()
    return out


def underflow(cu):
    findings = cu.findings if hasattr(cu, "findings") else cu  # a Checkup or gw.diagnose's list
    return [f for f in findings if f.kind == "underflow"]


def test_fp16_names_the_flushed_layers_of_a_deep_sigmoid_net_and_blames_the_vanishing():
    model, (x, y) = mlp(nn.Sigmoid), batch()
    cu = gw.check(model, x, y, precision="fp16")
    want = brute_underflow(model, x, y, "fp16")
    got = dict(zip(cu.table.layer, cu.table.grad_underflow_fp16, strict=True))
    for layer, frac in want.items():
        assert got[layer] == pytest.approx(frac, abs=1e-6)  # stored as float32
    assert want["0"] == 1.0 and want["24"] == 0.0  # input side flushes, output side not
    (f,) = underflow(cu)
    assert f.severity == "error" and f.layers[0] == "0" and "24" not in f.layers
    flushed = {ly for ly, v in want.items() if v >= 0.1}
    assert flushed <= set(f.layers)  # grad or back-propagated: at least the flushed ones
    assert f.evidence["cause"] == "vanishing" and f.remedies[0] == "relu"
    assert {"grad_scaler", "bf16", "fp32_layers", "unit_scaling"} <= set(f.remedies)
    assert "'0'" in f.message and "fp16" in f.message and "vanishing" in f.message
    assert cu.verdict == "vanishing"


def test_bf16_flushes_nothing_and_e4m3_loses_half_of_every_hidden_layer():
    model, (x, y) = mlp(nn.Sigmoid), batch()
    cu = gw.check(model, x, y, precision="bf16")
    assert not underflow(cu) and (cu.table.grad_underflow_bf16 == 0).all()
    cu8 = gw.check(model, x, y, precision="e4m3")
    want = brute_underflow(model, x, y, "e4m3")
    hidden = [str(2 * i) for i in range(12)]
    assert min(want[ly] for ly in hidden) >= 0.47  # the measurement
    (f,) = underflow(cu8)
    assert set(hidden) <= set(f.layers)


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "e5m2"])
def test_a_healthy_he_net_gets_no_underflow_finding(fmt):
    model, (x, y) = mlp(nn.ReLU, gain=2.0), batch()
    cu = gw.check(model, x, y, precision=fmt)
    assert not underflow(cu) and cu.verdict == "healthy", cu.findings


def test_a_tiny_loss_underflows_for_want_of_a_loss_scale_and_a_scale_rescues_it():
    model, (x, y) = mlp(nn.ReLU, depth=4, gain=2.0), batch()

    def tiny(out, t):
        return nn.functional.cross_entropy(out, t) * 1e-5

    cu = gw.check(model, x, y, tiny, precision="fp16")
    (f,) = underflow(cu)
    assert f.evidence["cause"] == "loss_scale" and f.remedies[0] == "grad_scaler"
    assert "without loss scaling" in f.message
    rescued = gw.check(model, x, y, tiny, precision="fp16", loss_scale=2.0**16)
    assert not underflow(rescued)
    assert rescued.run.meta["checkup"]["loss_scale"] == 2.0**16


def test_overflow_at_scale_one_is_an_error_and_at_a_loss_scale_a_note():
    model, (x, y) = mlp(nn.ReLU, depth=4, gain=2.0), batch()

    def huge(out, t):
        return nn.functional.cross_entropy(out, t) * 1e7

    cu = gw.check(model, x, y, huge, precision="fp16")
    (f,) = [f for f in cu.findings if f.kind == "overflow"]
    assert f.severity == "error" and cu.verdict == "exploding" and "inf" in f.message
    assert f.remedies[0] == "lower_loss_scale" and "bf16" in f.remedies
    scaled = gw.check(model, x, y, precision="fp16", loss_scale=2.0**24)
    (g,) = [f for f in scaled.findings if f.kind == "overflow"]
    assert g.severity == "info" and scaled.verdict == "healthy"
    e4 = gw.check(model, x, y, huge, precision="e4m3")
    assert "448" in next(f for f in e4.findings if f.kind == "overflow").message


def test_check_refuses_an_unsupported_format_naming_it():
    model, (x, y) = mlp(nn.ReLU, depth=2, gain=2.0), batch()
    with pytest.raises(GradwatchValueError, match=r"precision 'fp4' is not supported.*e5m2"):
        gw.check(model, x, y, precision="fp4")
    with pytest.raises(GradwatchValueError, match="loss_scale"):
        gw.check(model, x, y, precision="fp16", loss_scale=-1.0)


def test_a_training_run_watched_for_fp16_reports_underflow_over_its_steps():
    model, (x, y) = mlp(nn.Sigmoid, depth=8), batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, optimizer=opt, precision="fp16", detail_every=2,
                  diagnose=False) as mon:
        for _ in range(10):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    (f,) = underflow(gw.diagnose(mon.run))
    assert f.steps == (0, 8) and f.layers[0] == "0"
    recorded = sorted(mon.run.stats[mon.run.stats.stat == "grad_underflow_fp16"].step.unique())
    assert recorded == [0, 2, 4, 6, 8]  # detail steps only
    # the same run without precision= records none of it and judges no format
    plain = mlp(nn.Sigmoid, depth=8)
    with gw.watch(plain, diagnose=False) as mon2:
        nn.functional.cross_entropy(plain(x), y).backward()
        mon2.step()
    assert not underflow(gw.diagnose(mon2.run))
    assert "grad_underflow_fp16" not in set(mon2.run.stats.stat)


def test_cli_precision(capsys, tmp_path):
    factory = tmp_path / "nets.py"
    factory.write_text(
        "import math, torch\nfrom torch import nn\n"
        "def make():\n    torch.manual_seed(0)\n    layers = []\n"
        "    for _ in range(12):\n        lin = nn.Linear(64, 64)\n"
        "        nn.init.normal_(lin.weight, 0, math.sqrt(1 / 64)); nn.init.zeros_(lin.bias)\n"
        "        layers += [lin, nn.Sigmoid()]\n"
        "    return nn.Sequential(*layers, nn.Linear(64, 10))\n")
    spec = f"{factory}:make"
    common = [spec, "--input-shape", "128,64", "--targets", "classes:10"]
    assert main(["check", *common, "--precision", "fp16", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    (f,) = [f for f in out["findings"] if f["kind"] == "underflow"]
    assert f["layers"][0] == "0" and out["table"][0]["grad_underflow_fp16"] == 1.0
    assert main(["check", *common, "--precision", "bf16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not [f for f in out["findings"] if f["kind"] == "underflow"]
    assert main(["check", *common, "--loss-scale", "8"]) == 2
    assert "--loss-scale needs --precision" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["check", *common, "--precision", "fp8"])
    assert exc.value.code == 2 and "fp8" in capsys.readouterr().err
