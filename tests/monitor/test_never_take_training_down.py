"""Whatever the model does, training goes on: the Monitor records what it can, warns once.

A hypothesis property drives dtypes (float16, bfloat16, float32, float64), complex
parameters, sparse gradients, a frozen quantized parameter, parameters on two devices and a
model moved to another device mid-run (the ``meta`` device stands in for a second device).
The training loop must run to the end exactly as without the Monitor, and what is recorded
must be right where it can be checked against brute force.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import gradwatch as gw


class Zoo(nn.Module):
    """A small model whose odd parts are switched on by the property's draw."""

    def __init__(self, dtype, complex_param, sparse, quantized, meta_side):
        super().__init__()
        self.emb = nn.Embedding(10, 6, sparse=sparse).to(dtype)
        self.lin = nn.Linear(6, 6).to(dtype)
        self.act = nn.Tanh()
        self.head = nn.Linear(6, 2).to(dtype)
        self.cplx = nn.Parameter(torch.randn(6, dtype=torch.complex64)) if complex_param else None
        if quantized:  # a frozen quantized tensor owned by a layer
            q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
            self.qlayer = nn.Module()
            self.qlayer.register_parameter("w", nn.Parameter(q, requires_grad=False))
        if meta_side:  # a layer that lives on another device and takes no part in this step
            self.side = nn.Linear(3, 3, device="meta")

    def forward(self, idx):
        h = self.act(self.lin(self.emb(idx).mean(1)))
        if self.cplx is not None:
            h = h + (self.cplx * self.cplx.conj()).real.to(h.dtype) * 0.01
        return self.head(h)


def brute_grad_norm(p: torch.Tensor) -> float:
    g = p.grad
    if g.layout != torch.strided:
        g = g.coalesce().values()
    return float(torch.linalg.vector_norm(g.to(torch.complex128 if g.is_complex() else
                                                torch.float64)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    complex_param=st.booleans(),
    sparse=st.booleans(),
    quantized=st.booleans(),
    meta_side=st.booleans(),
    move=st.booleans(),
    detail_every=st.sampled_from([1, 3]),
)
def test_training_goes_on_whatever_the_model_does(
    dtype, complex_param, sparse, quantized, meta_side, move, detail_every
):
    assume(not (quantized and move))  # PyTorch itself cannot move quantized tensors to meta
    torch.manual_seed(0)
    model = Zoo(dtype, complex_param, sparse, quantized, meta_side)
    params = [p for p in model.parameters() if p.requires_grad and p.device.type != "meta"]
    opt = torch.optim.SGD(params, lr=0.01)
    idx = torch.randint(0, 10, (4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per skipped kind: not the subject here
        with gw.watch(model, optimizer=opt, detail_every=detail_every) as mon:
            for step in range(4):
                if move and step == 2:  # the model moves to another device mid-run
                    model.to("meta")
                    idx = idx.to("meta")
                opt.zero_grad()
                loss = model(idx).float().square().mean()
                loss.backward()
                if step == 1:
                    want = brute_grad_norm(model.lin.weight) ** 2 + brute_grad_norm(
                        model.lin.bias) ** 2
                    want_emb = brute_grad_norm(model.emb.weight)
                opt.step()
                mon.step(loss)
    assert mon.closed and mon.step_count == 4  # training went on to the end
    gn = mon.run.pivot("grad_norm")
    assert list(gn.index)[:2] == [0, 1]  # the steps before any move are all recorded
    rel = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
    assert gn["lin"].loc[1] == pytest.approx(math.sqrt(want), rel=rel)
    assert gn["emb"].loc[1] == pytest.approx(want_emb, rel=rel)
    if move:
        assert set(gn.index) <= {0, 1}  # nothing from the meta device, nothing broken


def test_complex_gradients_are_normed_by_modulus():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, dtype=torch.complex64)
    with gw.watch(lin, activations=False) as mon:
        out = lin(torch.randn(5, 4, dtype=torch.complex64))
        out.abs().square().mean().backward()
        mon.step()
    want = math.sqrt(sum(float(p.grad.abs().double().square().sum()) for p in lin.parameters()))
    assert mon.run.pivot("grad_norm")["(root)"].iloc[0] == pytest.approx(want, rel=1e-5)


def test_a_skipped_kind_is_warned_once():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning) as caught:
        with gw.watch(model, optimizer=opt, detail_every=1):
            model.to("meta")
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(2, 3, device="meta")).sum().backward()
                opt.step()
    texts = [str(w.message) for w in caught if "meta" in str(w.message)]
    assert texts and len(texts) == len(set(texts))
