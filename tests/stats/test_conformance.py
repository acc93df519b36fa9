"""Every registered statistic, through one shared tester, against brute-force autograd.

The torchmetrics pattern: one tester runs each statistic the same way. For each name in the
registry (``gradwatch.stats.STATISTICS``) a *reference* computes the value from plain autograd
and the tensors themselves, independently of gradwatch; the tester records the scenario the
reference names with ``gw.watch`` and compares layer by layer. A statistic added to the
registry without a reference fails ``test_every_statistic_has_a_reference``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.stats import STATISTICS


def net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # some tanh units saturate
        model[2].bias[:4].fill_(-9.0)  # some ReLU units die
    return model


LAYERS = {"0": 0, "2": 2, "4": 4}


@dataclass
class Brute:
    """What plain autograd saw in one training step, and what gradwatch recorded."""

    grads: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    before: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    after: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    outs: dict[str, torch.Tensor] = field(default_factory=dict)  # retained layer outputs
    acts: dict[str, torch.Tensor] = field(default_factory=dict)  # activation after a layer
    run: dict[tuple[str, str], float] = field(default_factory=dict)
    x: torch.Tensor | None = None
    loss: float = math.nan
    scale: float = math.nan
    clip: tuple[float, float] = (math.nan, math.nan)
    lr: dict[str, float] = field(default_factory=dict)  # per layer, largest over its groups


def train_step(scaler: bool = False, clip: float | None = None, nan_input: bool = False,
               lr: bool = False):
    """One optimizer step, watched, with the brute-force quantities taken beside it.

    ``lr``: two parameter groups (layer 2's bias at 0.05, everything else at 0.3) and the
    opt-in ``lr`` statistic named.
    """
    model = net()
    if lr:
        rest = [p for n, p in model.named_parameters() if n != "2.bias"]
        opt = torch.optim.SGD([{"params": rest}, {"params": [model[2].bias], "lr": 0.05}],
                              lr=0.3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
    b_lr = {ly: max(g["lr"] for g in opt.param_groups
                    if any(p is q for p in model[i].parameters() for q in g["params"]))
            for ly, i in LAYERS.items()}
    stats = [n for n, s in STATISTICS.items() if s.default] + ["lr"] if lr else None
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    if nan_input:
        x[3, 2] = math.nan
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    b = Brute(x=x)
    b.lr = b_lr
    handles = []
    for name, i in LAYERS.items():
        def keep(m, a, o, name=name):
            if not torch.is_grad_enabled():
                return  # the Monitor's NaN-forensics replay runs under no_grad
            o.retain_grad()
            b.outs[name] = o
        handles.append(model[i].register_forward_hook(keep))
    for name, i in (("0", 1), ("2", 3)):
        handles.append(model[i].register_forward_hook(
            lambda m, a, o, name=name: b.acts.__setitem__(name, o.detach().double())))
    sc = torch.amp.GradScaler("cpu", init_scale=2.0**4) if scaler else None
    extra = {"stats": stats} if stats else {}
    with gw.watch(model, optimizer=opt, detail_every=1, scaler=sc, **extra) as mon:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        b.loss = float(loss)
        (sc.scale(loss) if sc else loss).backward()
        if sc:
            b.scale = float(sc.get_scale())
            sc.unscale_(opt)
        for name, i in LAYERS.items():
            ps = list(model[i].parameters())
            b.grads[name] = [p.grad.detach().double().clone() for p in ps]
            b.before[name] = [p.detach().double().clone() for p in ps]
            b.outs[name] = b.outs[name].grad.double() * (b.scale if sc else 1.0)
        if clip is not None:
            res = gw.remedies.clip_grad_norm_(model, clip)
            b.clip = (float(res.total_norm), float(res.clip_coef))
        (sc.step(opt) if sc else opt.step())
        if sc:
            sc.update()
        mon.step(loss)
    for h in handles:
        h.remove()
    for name, i in LAYERS.items():
        b.after[name] = [p.detach().double().clone() for p in model[i].parameters()]
    df = mon.run.stats
    b.run = {(ly, st): v for ly, st, v in zip(df.layer, df.stat, df.value, strict=True)}
    return b


FP8 = {"fp16": torch.float16, "bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn,
       "e5m2": torch.float8_e5m2}
#: Input features from 1e-43 (a float32 subnormal) to 1: gradients over 40 decades.
FEATURE_SCALES = torch.tensor([1e-43, 1e-36, 1e-12, 1e-7, 1e-2, 1.0])


def precision_step(scale: str) -> Brute:
    """One watched step whose gradients span the four formats' ranges, cast by hand.

    ``scale``: ``"scaler"``, a GradScaler at 2**10 (gradients read unscaled, as
    GradScaler.step leaves them, and multiplied by the scale); ``"x17"`` or ``"x126"``, a loss
    read as if the loss were multiplied by 2**17 or 2**126 (``watch(loss_scale=)``; at 2**126
    float32 products overflow, as bf16 would). ``b.grads``/``b.outs`` hold the float32
    values the cast sees.
    """
    model = net()
    with torch.no_grad():
        if scale == "scaler":  # column j of the last weight times 1e-3j: layer 2's signal
            model[4].weight.mul_(10.0 ** (-3.0 * torch.arange(16)))  # spans 45 decades
        else:  # a large back-propagated signal: some entries overflow
            model[4].weight.mul_(3000.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1)) * FEATURE_SCALES
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    s = {"scaler": 2.0**10, "x17": 2.0**17, "x126": 2.0**126}[scale]
    sc = torch.amp.GradScaler("cpu", init_scale=s) if scale == "scaler" else None
    extra = {"scaler": sc} if sc else {"loss_scale": s}
    b = Brute(x=x)
    outs = {}

    def keep(m, a, o, name):
        o.retain_grad()
        outs[name] = o

    handles = [model[i].register_forward_hook(
        lambda m, a, o, name=name: keep(m, a, o, name)) for name, i in LAYERS.items()]
    with gw.watch(model, optimizer=opt, detail_every=1, precision="fp16", **extra) as mon:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        (sc.scale(loss) if sc else loss).backward()
        if sc:
            sc.unscale_(opt)  # what GradScaler.step does before the optimizer steps
        for name, i in LAYERS.items():
            # under GradScaler backward's signal is scaled already; watch(loss_scale=s) reads
            # an unscaled backward as if the loss were multiplied by s
            b.outs[name] = outs[name].grad.detach().clone() * (1.0 if sc else s)
            b.grads[name] = [p.grad.detach().clone() * s for p in model[i].parameters()]
        (sc.step(opt) if sc else opt.step())
        if sc:
            sc.update()
        mon.step(loss)
    for h in handles:
        h.remove()
    df = mon.run.stats
    b.run = {(ly, st): v for ly, st, v in zip(df.layer, df.stat, df.value, strict=True)}
    return b


def cast_counts(v: torch.Tensor, fmt: str) -> tuple[int, int]:
    """(underflow, overflow) entries of float32 ``v`` by real casts to ``fmt``.

    Underflow: nonzero and zero after the cast. Overflow: the cast is not finite (fp16,
    bf16, e5m2); for e4m3fn, whose cast saturates to ±448, NaN after the cast or |v| / 2
    rounding above 224 (|v| > 464: v rounds beyond 448 at e4m3's precision).
    """
    c = v.to(FP8[fmt]).float()
    under = int(((v != 0) & (c == 0)).sum())
    if fmt == "e4m3":
        half = (v / 2).to(FP8[fmt]).float()
        over = int((c.isnan() | (half.abs() > 224)).sum())
    else:
        over = int((~torch.isfinite(c)).sum())
    return under, over


def cast_fraction(ts, fmt: str, kind: str) -> float:
    got = [cast_counts(t, fmt) for t in ts]
    return sum(g[kind == "overflow"] for g in got) / sum(t.numel() for t in ts)


def log2_range(ts, which: str) -> float:
    a = torch.cat([t.abs().reshape(-1) for t in ts]).double()
    return math.log2(float(a.max() if which == "max" else a[a > 0].min()))


class Reader(nn.Module):
    """A tanh RNN (batch first) read at its last step."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 8, batch_first=True)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


def rnn_step(rnn: bool = True) -> Brute:
    """One watched optimizer step of a tanh RNN on raw data; dL/dx from plain autograd."""
    torch.manual_seed(0)
    model = Reader()
    x = torch.randn(16, 12, 3, generator=torch.Generator().manual_seed(1))
    y = torch.randn(16, 1, generator=torch.Generator().manual_seed(2))
    xr = x.clone().requires_grad_(True)
    nn.functional.mse_loss(model(xr), y).backward()
    model.zero_grad()
    g = xr.grad.double()
    b = Brute(x=x)
    b.outs["first"], b.outs["last"] = g[:, 0], g[:, -1]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
    assert not x.requires_grad and x.grad is None  # the user's tensor is left alone
    df = mon.run.stats
    b.run = {(ly, st): v for ly, st, v in zip(df.layer, df.stat, df.value, strict=True)}
    return b


def norm(ts) -> float:
    return math.sqrt(sum(float((t**2).sum()) for t in ts))


def per_layer(fn):
    return lambda b: {ly: fn(b, ly) for ly in LAYERS}


def act_ref(fn):
    return lambda b: {ly: fn(b.acts[ly]) for ly in b.acts}


REFERENCES = {
    # name: (scenario, reference: Brute -> {layer: value})
    "grad_norm": ({}, per_layer(lambda b, ly: norm(b.grads[ly]))),
    "grad_rms": ({}, per_layer(
        lambda b, ly: norm(b.grads[ly]) / math.sqrt(sum(g.numel() for g in b.grads[ly])))),
    "grad_max_abs": ({}, per_layer(lambda b, ly: max(float(g.abs().max()) for g in b.grads[ly]))),
    "nonfinite": ({}, per_layer(
        lambda b, ly: float(sum(int((~torch.isfinite(g)).sum()) for g in b.grads[ly])))),
    "backprop_norm": ({}, per_layer(lambda b, ly: float(b.outs[ly].norm()))),
    "weight_norm": ({}, per_layer(lambda b, ly: norm(b.after[ly]))),
    "update_ratio": ({}, per_layer(lambda b, ly: norm(
        [a - c for a, c in zip(b.after[ly], b.before[ly], strict=True)]) / norm(b.after[ly]))),
    "act_mean": ({}, act_ref(lambda a: float(a.mean()))),
    "act_std": ({}, act_ref(lambda a: float(a.std(unbiased=False)))),
    "saturated_frac": ({}, lambda b: {"0": float((b.acts["0"].abs() > 0.97).double().mean())}),
    "dead_frac": ({}, lambda b: {"2": float((b.acts["2"].amax(0) <= 0).double().mean())}),
    "loss": ({}, lambda b: {"": b.loss}),
    "clip_norm": ({"clip": 0.05}, lambda b: {"": b.clip[0]}),
    "clip_coef": ({"clip": 0.05}, lambda b: {"": b.clip[1]}),
    "skipped": ({"scaler": True}, lambda b: {"": 0.0}),
    "loss_scale": ({"scaler": True}, lambda b: {"": b.scale}),
    "input_nonfinite": ({"nan_input": True},
                        lambda b: {"": float((~torch.isfinite(b.x)).sum())}),
    "weight_nonfinite": ({"nan_input": True}, per_layer(lambda b, ly: 0.0)),
    # one NaN input row: every layer's output row 3 is NaN, all its features
    "forward_nonfinite": ({"nan_input": True}, lambda b: {"0": 16.0, "2": 16.0, "4": 3.0}),
    # a tanh RNN (batch first) on raw data: ‖∂L/∂x_t‖ at t = 0 and t = T - 1, and T
    "time_grad_first": ({"rnn": True}, lambda b: {"rnn": float(b.outs["first"].norm())}),
    "time_grad_last": ({"rnn": True}, lambda b: {"rnn": float(b.outs["last"].norm())}),
    "time_steps": ({"rnn": True}, lambda b: {"rnn": 12.0}),
    # two parameter groups: layer 2 holds both rates, and records the larger
    "lr": ({"lr": True}, lambda b: dict(b.lr)),
    "grad_log2_max": ({"precision": "scaler"}, per_layer(
        lambda b, ly: log2_range(b.grads[ly], "max"))),
    "grad_log2_min": ({"precision": "scaler"}, per_layer(
        lambda b, ly: log2_range(b.grads[ly], "min"))),
}
# the low-precision fractions, by real casts: underflow under a GradScaler at 2**10, overflow
# at a loss scaled by 2**17 (2**126 for bf16, whose range is float32's)
for _fmt in FP8:
    for _kind, _sc in (("underflow", "scaler"), ("overflow", "x126" if _fmt == "bf16" else "x17")):
        REFERENCES[f"grad_{_kind}_{_fmt}"] = ({"precision": _sc}, per_layer(
            lambda b, ly, f=_fmt, k=_kind: cast_fraction(b.grads[ly], f, k)))
        REFERENCES[f"bp_{_kind}_{_fmt}"] = ({"precision": _sc}, per_layer(
            lambda b, ly, f=_fmt, k=_kind: cast_fraction([b.outs[ly]], f, k)))

_CACHE: dict[tuple, Brute] = {}


def scenario(**kw) -> Brute:
    key = tuple(sorted(kw.items()))
    if key not in _CACHE:
        _CACHE[key] = (rnn_step(**kw) if kw.get("rnn") else precision_step(kw["precision"])
                       if "precision" in kw else train_step(**kw))
    return _CACHE[key]


def test_every_statistic_has_a_reference():
    assert set(STATISTICS) == set(REFERENCES)


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_statistic_equals_brute_force(name):
    kw, ref = REFERENCES[name]
    b = scenario(**kw)
    want = ref(b)
    assert want, name
    for layer, value in want.items():
        assert (layer, name) in b.run, f"{name} not recorded for layer {layer!r}"
        got = b.run[(layer, name)]
        assert got == pytest.approx(value, rel=1e-4, abs=1e-6), (name, layer)
    if STATISTICS[name].scope == "run":
        assert set(want) == {""}
