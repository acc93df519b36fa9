"""The precision statistics in real mixed-precision training: torch.autocast on CPU with a
GradScaler, against brute-force casts of what autograd produced at each step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw

FMT = {"fp16": torch.float16, "bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn,
       "e5m2": torch.float8_e5m2}
LAYERS = {"0": 0, "2": 2, "4": 4}


def counts(v: torch.Tensor, fmt: str) -> tuple[int, int]:
    v = v.float()
    c = v.to(FMT[fmt]).float()
    under = int(((v != 0) & (c == 0)).sum())
    if fmt == "e4m3":
        over = int((c.isnan() | ((v / 2).to(FMT[fmt]).float().abs() > 224)).sum())
    else:
        over = int((~torch.isfinite(c)).sum())
    return under, over


def frac(ts, fmt, kind):
    got = [counts(t, fmt) for t in ts]
    return sum(g[kind == "overflow"] for g in got) / sum(t.numel() for t in ts)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_with_grad_scaler_matches_brute_force_casts(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    with torch.no_grad():
        model[0].weight.mul_(1e-3)  # small gradients below: some flush in the 8-bit formats
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6)
    outs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(m, a, o):
            if torch.is_grad_enabled():
                o.retain_grad()
                outs[name] = o
        return hook

    for name, i in LAYERS.items():
        model[i].register_forward_hook(keep(name))
    g = torch.Generator().manual_seed(1)
    want: dict[tuple[int, str, str], float] = {}
    with gw.watch(model, optimizer=opt, scaler=scaler, precision="fp16", detail_every=1,
                  diagnose=False) as mon:
        for step in range(3):
            x = torch.randn(64, 12, generator=g) * 10.0 ** torch.randint(-6, 2, (64, 1),
                                                                           generator=g)
            y = torch.randint(0, 4, (64,), generator=g)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                out = model(x)
                loss = nn.functional.cross_entropy(out, y)
            scaler.scale(loss).backward()
            s = scaler.get_scale()
            scaler.unscale_(opt)
            for name, i in LAYERS.items():
                assert outs[name].grad.dtype == dtype  # autocast's own low-precision signal
                grads = [p.grad.detach() * s for p in model[i].parameters()]
                for fmt in FMT:
                    for kind in ("underflow", "overflow"):
                        want[(step, name, f"grad_{kind}_{fmt}")] = frac(grads, fmt, kind)
                        want[(step, name, f"bp_{kind}_{fmt}")] = frac([outs[name].grad], fmt,
                                                                      kind)
                want[(step, name, "grad_log2_max")] = float(
                    torch.log2(max(t.abs().max() for t in grads)))
            scaler.step(opt)
            scaler.update()
            mon.step(loss)
    df = mon.run.stats
    got = {(int(s), ly, st): v for s, ly, st, v in zip(df.step, df.layer, df.stat, df.value,
                                                       strict=True)}
    assert not df[df.stat == "skipped"].value.any()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    # the test sees something: the 8-bit formats flush part of the small signal
    assert max(v for k, v in want.items() if k[2] == "grad_underflow_e4m3") > 0.003
    assert max(v for k, v in want.items() if k[2] == "bp_underflow_e4m3") > 0.003
