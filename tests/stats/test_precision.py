"""The low-precision statistics' thresholds against real casts, entry by entry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.errors import GradwatchValueError
from gradwatch.stats import precision
from gradwatch.stats.precision import (
    BOUNDS_LIST,
    FORMATS,
    NBINS,
    OVER_FROM,
    UNDER_TOP,
    PrecisionPlan,
    bounds,
    float32_bits,
    grad_rows,
    magnitudes,
)

F32 = torch.float32


def cast_masks(v: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of float32 ``v`` flushed (nonzero -> 0) and overflowed by a real cast."""
    dt = FORMATS[fmt]["dtype"]
    c = v.to(dt).float()
    under = (v != 0) & (c == 0)
    if fmt == "e4m3":  # the cast saturates to ±448: v rounds beyond 448 iff v/2 beyond 224
        over = c.isnan() | ((v / 2).to(dt).float().abs() > 224)
    else:
        over = ~torch.isfinite(c)
    return under, over


def bin_masks(v: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.bucketize(v.abs(), bounds(v.device))
    return (idx >= 1) & (idx <= UNDER_TOP[fmt]), idx >= OVER_FROM[fmt]


def edge_values() -> torch.Tensor:
    """Every threshold, one float32 step either side, both signs, zeros, inf and NaN."""
    pts = []
    for spec in FORMATS.values():
        pts += [spec["min_sub"] / 2, spec["min_sub"], spec["max"]]
    pts += [464.0, 61440.0, 65520.0, 2.0**128 - 2.0**119, *BOUNDS_LIST[1:]]
    t = torch.tensor(pts, dtype=F32)
    t = torch.cat([t, torch.nextafter(t, torch.zeros_like(t)),
                   torch.nextafter(t, torch.full_like(t, math.inf))])
    t = torch.cat([t, -t, torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])])
    return t


def every_exponent(n: int = 200_000) -> torch.Tensor:
    """Random float32 bit patterns: every exponent, subnormals, inf and NaN included."""
    bits = torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int64,
                         generator=torch.Generator().manual_seed(0))
    return bits.to(torch.int32).view(F32)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_thresholds_match_real_casts_at_the_boundaries(fmt):
    v = edge_values()
    under, over = cast_masks(v, fmt)
    got_u, got_o = bin_masks(v, fmt)
    assert torch.equal(got_u, under), v[got_u != under]
    assert torch.equal(got_o, over), v[got_o != over]
    assert under.any() and over.any()  # the boundaries are exercised on both sides
    assert not (under & over).any()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_thresholds_match_real_casts_over_every_float32(fmt):
    v = every_exponent()
    under, over = cast_masks(v, fmt)
    got_u, got_o = bin_masks(v, fmt)
    assert torch.equal(got_u, under)
    assert torch.equal(got_o, over)
    assert 0 < int(under.sum()) < len(v) and 0 < int(over.sum()) < len(v)


def test_float32_bits_are_the_casts_bits_for_every_float32():
    v = every_exponent(20_000)
    v = torch.cat([v[torch.isfinite(v)], edge_values()[:-3]])  # finite ones, signed zeros
    want = v.view(torch.int32).tolist()
    # the float32 values read exactly as float64 (no float32 arithmetic: nothing flushed)
    got = [float32_bits(x) for x in v.double().tolist()]
    assert got == [0 if w == -(2**31) else w for w in want]  # -0.0 as +0.0: same bin
    with pytest.raises(ValueError, match="not exact"):
        float32_bits(2.0**-149 * 1.5)
    with pytest.raises(ValueError, match="not"):
        float32_bits(1.0 + 2.0**-30)


def test_bounds_first_made_while_subnormals_are_flushed_keep_bf16s_flush_line(monkeypatch):
    # benchmarks/zoo/run.py and the demo flush subnormals while they run; the boundary vector
    # is cached for the process, so the first one made there must still hold 2**-134 (a
    # float32 subnormal) once flushing stops, or bf16 underflow reads 0 from then on
    monkeypatch.setattr(precision, "_BOUNDS", {})
    torch.set_flush_denormal(True)
    try:
        made = bounds(torch.device("cpu"))
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default (there is no getter)
    assert made.view(torch.int32).tolist() == [float32_bits(b) for b in BOUNDS_LIST]
    assert made[1].item() == 2.0**-134
    v = torch.tensor([2.0**-140, 2.0**-134, 2.0**-133, 2.0**-30, 1.0])  # bf16 flushes 2
    assert cast_masks(v, "bf16")[0].tolist() == [True, True, False, False, False]
    assert bin_masks(v, "bf16")[0].tolist() == [True, True, False, False, False]


def test_the_e4m3_cast_saturates_so_overflow_is_defined_by_rounding():
    # PyTorch's float8_e4m3fn cast has no inf: it saturates; 464 (halfway to 480) rounds to
    # the even 448 and is not an overflow, the float32 above it is
    x = torch.tensor([448.0, 464.0, float(torch.nextafter(torch.tensor(464.0),
                                                          torch.tensor(500.0))), 1e30, math.inf])
    assert x.to(torch.float8_e4m3fn).float().tolist() == [448.0] * 5
    assert bin_masks(x, "e4m3")[1].tolist() == [False, False, True, True, True]


def test_stacked_groups_count_as_tensor_by_tensor():
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(8, 5, generator=g) * 10.0 ** torch.randint(-45, 6, (8, 5), generator=g)
               for _ in range(3)]
    tensors += [torch.randn(300, 70, generator=g) * 1e-6, torch.randn(7, generator=g) * 1e4]
    tensors.insert(1, torch.randn(7, generator=g))
    plan = PrecisionPlan(tensors)
    assert plan.groups == [[0, 2, 3], [1, 5]] and plan.single == [4] and plan.fits(tensors)
    for scale in (1.0, torch.tensor([1024.0])):
        rows = plan.rows(tensors, scale)
        for i, t in enumerate(tensors):
            want = grad_rows(magnitudes(t, scale))[0]
            assert torch.equal(rows[i], want), i
            assert float(rows[i, :NBINS].sum()) == t.numel()


def test_unsupported_formats_and_scales_are_refused_by_name():
    model = nn.Linear(3, 2)
    with pytest.raises(GradwatchValueError, match=r"precision 'fp8'.*e4m3"):
        gw.watch(model, precision="fp8")
    with pytest.raises(GradwatchValueError, match="precision torch.float64"):
        gw.watch(model, precision=torch.float64)
    with pytest.raises(GradwatchValueError, match="loss_scale"):
        gw.watch(model, precision="fp16", loss_scale=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(GradwatchValueError, match="loss_scale= and scaler="):
        gw.watch(model, optimizer=opt, precision="fp16", loss_scale=8.0,
                 scaler=torch.amp.GradScaler("cpu"))


def test_precision_accepts_the_torch_dtype_and_records_meta():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with gw.watch(model, precision=torch.float8_e5m2, loss_scale=4.0, detail_every=1,
                  diagnose=False) as mon:
        model(torch.randn(5, 3)).square().mean().backward()
        mon.step()
    assert mon.run.meta["settings"]["precision"] == "e5m2"
    assert mon.run.meta["settings"]["loss_scale"] == 4.0
    assert "grad_underflow_e5m2" in set(mon.run.stats.stat)
