"""The compiled kernels equal their torch definitions.

Slow: the first of them builds the kernels (about a minute of one core on a machine that has
not built them); test_native_optional covers a machine without them.
"""

from __future__ import annotations

import math

import pytest
import torch

from gradwatch.stats import native
from gradwatch.stats.activation import FAMILY_CODE, SATURATION

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nat():
    mod = native.build()
    if mod is None:
        pytest.skip("no C++ compiler here: the compiled kernels cannot be built")
    return mod


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ISAS = {0: "portable", 1: "avx2", 2: "avx512"}


@pytest.fixture(params=sorted(ISAS), ids=list(ISAS.values()))
def isa(request, nat):
    """Every float32 vector code this CPU has (the portable loops, AVX2, AVX-512), in turn."""
    best = nat.set_isa(2)
    if nat.set_isa(request.param) != request.param:
        nat.set_isa(best)
        pytest.skip(f"this CPU has no {ISAS[request.param]}")
    yield request.param
    nat.set_isa(best)


def cpu_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags")
            for f in line.split(":", 1)[1].split()}


def test_the_widest_vector_code_the_cpu_has_is_chosen(nat):
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo here")
    want = 2 if "avx512f" in flags else 1 if {"avx2", "fma"} <= flags else 0
    assert nat.isa() == want


def tensors(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3,), (64, 64), (7, 5, 3), (70_000,), (0,), (1 << 17,)]
    return [(torch.randn(s, generator=g) * 3).to(dtype) for s in shapes]


@pytest.mark.parametrize("dtype", DTYPES)
def test_norms_and_max_equal_torch(nat, dtype, isa):
    if isa and dtype != torch.float32:
        pytest.skip("the vector code is float32's")
    ts = tensors(dtype)
    out, total = nat.sumsq_max(ts, True)
    p = len(ts)
    want = torch.stack([t.double().norm() for t in ts])
    tol = 1e-6 if dtype != torch.float64 else 1e-7  # the norms come back in float32
    torch.testing.assert_close(out[:p].double(), want, rtol=tol, atol=0)
    want_max = torch.stack([t.double().abs().max() if t.numel() else torch.tensor(0.0,
                            dtype=torch.float64) for t in ts])
    torch.testing.assert_close(out[p:].double(), want_max, rtol=1e-7, atol=0)
    assert total == pytest.approx(float(sum(t.double().square().sum() for t in ts)), rel=1e-6)
    only, _ = nat.sumsq_max(ts, False)
    assert torch.equal(only, out[:p])


@pytest.mark.parametrize("where", [17, 4990])  # in the vector loop, in the tail
def test_a_nonfinite_entry_shows_in_the_total_and_in_max(nat, isa, where):
    a, b = torch.randn(100), torch.randn(5000)
    b[where] = float("nan")
    out, total = nat.sumsq_max([a, b], True)
    assert math.isnan(total) and math.isnan(out[1]) and math.isnan(out[3])
    assert out[0] == pytest.approx(float(a.norm()), rel=1e-6)
    b[where] = float("inf")
    out, total = nat.sumsq_max([a, b], True)
    assert total == math.inf and out[3] == math.inf
    b[where] = -1e30  # finite: its square overflows float32 only
    out, _ = nat.sumsq_max([a, b], True)
    assert out[3] == pytest.approx(1e30, rel=1e-6)


def test_refuses_what_it_does_not_take(nat):
    with pytest.raises(RuntimeError, match="contiguous"):
        nat.sumsq_max([torch.randn(4, 4).t()], False)
    with pytest.raises(RuntimeError):
        nat.sumsq_max([torch.randn(4, dtype=torch.complex64)], False)
    with pytest.raises(RuntimeError):
        nat.sumsq_max([torch.randn(4).to_sparse()], False)


@pytest.mark.parametrize("big", [False, True], ids=["cached", "streamed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_snapshot_and_update_norms_equal_torch(nat, dtype, isa, big):
    # float64 too: a streamed snapshot copies its bytes with the vector stores
    ws = tensors(dtype, seed=1)
    if big:  # a snapshot over 2 MiB: its stores bypass the cache (odd offsets included)
        ws.append(torch.randn(1_200_001, dtype=dtype))
    before = [w.clone() for w in ws]
    flat = torch.empty(sum(w.numel() for w in ws), dtype=dtype)
    nat.snapshot_take(ws, flat)
    assert torch.equal(flat, torch.cat([w.reshape(-1) for w in ws]))
    for w in ws:
        w.add_(torch.randn(w.shape, dtype=dtype) * 1e-3)
    out = nat.update_norms(ws, flat)
    p = len(ws)
    want_dw = torch.stack([(w.double() - b.double()).norm() for w, b in zip(ws, before,
                                                                           strict=True)])
    want_w = torch.stack([w.double().norm() for w in ws])
    torch.testing.assert_close(out[:p].double(), want_dw, rtol=1e-5, atol=0)
    torch.testing.assert_close(out[p:].double(), want_w, rtol=1e-6, atol=0)
    with pytest.raises(RuntimeError, match="dtype"):
        nat.snapshot_take([ws[0].float() if dtype == torch.float64 else ws[0].double()],
                          flat[: ws[0].numel()])


def brute_act(a: torch.Tensor, fam: str, unit: int | None) -> list[float]:
    d = a.double()
    sat = dead = math.nan
    if fam in SATURATION:
        centre, thr = SATURATION[fam]
        sat = float(((d - centre).abs() > thr).sum())
    if fam == "rectifier":
        dead = 0.0
        if unit is not None:
            others = tuple(i for i in range(a.dim()) if i != unit)
            dead = float((d.amax(dim=others) <= 0).sum())
    return [float(d.sum()), float(d.norm()), sat, dead]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_statistics_equal_their_definitions(nat, dtype, isa):
    if isa and dtype != torch.float32:
        pytest.skip("the vector code is float32's")
    g = torch.Generator().manual_seed(2)
    conv = torch.randn(4, 6, 5, 5, generator=g)
    conv[:, 1] = -1.0  # channel 1 dead
    seq = torch.randn(3, 9, 7, generator=g)
    seq[..., 2] = -0.5  # feature 2 dead
    cases = [
        (torch.tanh(torch.randn(32, 64, generator=g) * 3), "tanh", -1),
        (torch.sigmoid(torch.randn(70_000, generator=g) * 4), "sigmoid", -1),
        (torch.relu(conv), "rectifier", 1),
        (torch.relu(seq), "rectifier", 2),
        (torch.relu(torch.randn(16, 8, generator=g) - 1), "rectifier", 1),
        (torch.randn(10, 3, generator=g), "other", -1),
    ]
    acts = [a.to(dtype) for a, _, _ in cases]
    out = nat.act_stats(acts, [FAMILY_CODE[f] for _, f, _ in cases], [u for *_, u in cases],
                        True)
    for row, a, (_, fam, unit) in zip(out.tolist(), acts, cases, strict=True):
        want = brute_act(a, fam, unit if unit >= 0 else None)
        for got_v, want_v in zip(row, want, strict=True):
            if math.isnan(want_v):
                assert math.isnan(got_v)
            else:
                assert got_v == pytest.approx(want_v, rel=1e-5, abs=1e-3), (fam, row, want)
    plain = nat.act_stats(acts, [FAMILY_CODE[f] for _, f, _ in cases],
                          [u for *_, u in cases], False)
    torch.testing.assert_close(plain[:, :2], out[:, :2])
    assert torch.isnan(plain[:, 2:]).all()  # saturation and dead units: detail steps only


def test_the_cpp_gradient_hook_adds_squares_per_step(nat):
    x = torch.randn(5, 4, requires_grad=True)
    sq = torch.zeros(3)
    stamp = torch.full((3,), -1, dtype=torch.long)
    y = x * 2
    nat.hook_sumsq(y, sq, stamp, 1, 7)
    nat.hook_sumsq(y, sq, stamp, 1, 7)  # the same output twice: both calls count
    y.square().sum().backward()
    g = 2 * (2 * x.detach())  # d (y^2).sum() / d y = 2 y
    assert stamp.tolist() == [-1, 7, -1]
    assert float(sq[1]) == pytest.approx(2 * float(g.square().sum()), rel=1e-6)
    z = x * 3
    nat.hook_sumsq(z, sq, stamp, 1, 8)  # a new step overwrites
    z.sum().backward()
    assert stamp.tolist() == [-1, 8, -1] and float(sq[1]) == pytest.approx(20.0)
    assert float(sq[0]) == 0.0 and float(sq[2]) == 0.0
    layers, vals = nat.stamped(sq, stamp, 8)  # the slots written at step 8, and their sums
    assert layers == [1] and vals.dtype == torch.float32 and vals.tolist() == [sq[1].item()]
    layers, vals = nat.stamped(sq, stamp, 7)
    assert layers == [] and vals.shape == (0,)


def test_the_layer_output_listener_hangs_the_hook_or_hands_back(nat):
    sq = torch.zeros(3)
    stamp = torch.full((3,), -1, dtype=torch.long)
    back = []
    fn = nat.LayerOutputHook(sq, stamp, lambda li, out: back.append((li, out)))
    fn.step = 4
    x = torch.randn(5, 4, requires_grad=True)
    y = x * 2
    fn(2, y)  # a CPU float tensor that requires grad: the C++ hook
    fn(0, x.detach())  # no grad needed: nothing, nothing handed back
    with torch.no_grad():
        fn(0, x * 2)  # grad mode off: nothing
    pair = (x * 3, x * 4)
    fn(1, pair)  # not a tensor: handed back as it is
    fn(1, y.to(torch.complex64))  # not real floating: handed back
    assert [li for li, _ in back] == [1, 1] and back[0][1] is pair
    y.square().sum().backward()
    assert stamp.tolist() == [-1, -1, 4]
    assert float(sq[2]) == pytest.approx(float((2 * y.detach()).square().sum()), rel=1e-6)


def test_the_gradient_reader_equals_the_pass_over_the_listed_gradients(nat):
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    params = list(model.parameters())
    reader = nat.ParamGrads(params)
    assert reader.sumsq_max(True) is None  # no gradient yet
    model(torch.randn(4, 6)).square().sum().backward()
    for with_max in (False, True):
        out, total = reader.sumsq_max(with_max)
        want, want_total = nat.sumsq_max([p.grad for p in params], with_max)
        assert torch.equal(out, want) and total == want_total
    brute = torch.stack([p.grad.double().norm() for p in params]).float()
    torch.testing.assert_close(reader.sumsq_max(False)[0], brute)
    params[1].grad = None  # one parameter without a gradient: the caller lists them
    assert reader.sumsq_max(False) is None


def test_switched_off_by_the_environment(monkeypatch, nat):
    monkeypatch.setenv(native.ENV, "0")
    assert native.refresh() is None and native.get() is None  # each Monitor reads it
    monkeypatch.setenv(native.ENV, "1")
    assert native.refresh() is nat


@pytest.mark.parametrize("detail", [True, False])
def test_activation_rows_come_back_flat_with_norms_squared(nat, detail):
    buf = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    got = nat.act_rows(buf, [4, 1], detail)
    want = buf[[4, 1]].clone()
    want[:, 1] = want[:, 1].square()
    if not detail:
        want[:, 2:] = float("nan")
    torch.testing.assert_close(got, want.reshape(-1), equal_nan=True)
    with pytest.raises(RuntimeError, match="out of range"):
        nat.act_rows(buf, [6], detail)
