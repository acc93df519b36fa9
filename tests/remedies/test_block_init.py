"""zero_init_last_norm_ and forget_gate_bias_: what they change, and what it does to the signal."""

from __future__ import annotations

import pytest
import torch
from tests.test_structure import Net
from torch import nn

import gradwatch as gw
from gradwatch.errors import GradwatchTypeError, GradwatchValueError


def test_zero_init_last_norm_makes_every_block_the_identity():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(4, 3, 8, 8)
    running = net.blocks[0].bn1.running_mean.clone()
    record = gw.remedies.zero_init_last_norm_(net, x)
    assert list(record) == ["blocks.0.bn2", "blocks.1.bn2", "blocks.2.bn2"]
    for block in net.blocks:
        assert block.bn2.weight.abs().sum() == 0 and block.bn2.bias.abs().sum() == 0
        assert block.proj is None or block.proj[1].weight.abs().sum() > 0  # shortcut kept
    assert torch.equal(net.blocks[0].bn1.running_mean, running)  # buffers untouched
    # each block is now relu(x + 0): block 0 only applies its output ReLU to the stem's output
    h = net.stem(x)
    assert torch.allclose(net.blocks[0](h), torch.relu(h))


def test_zero_init_last_norm_needs_a_branch_ending_with_a_norm():
    plain = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(GradwatchValueError, match="none of its 0 residual branches"):
        gw.remedies.zero_init_last_norm_(plain, torch.randn(3, 4))
    with pytest.raises(GradwatchTypeError, match="inputs must be a tensor"):
        gw.remedies.zero_init_last_norm_(plain, [1, 2])


def test_forget_gate_bias_sets_the_sum_of_both_biases():
    torch.manual_seed(0)
    model = nn.ModuleDict({"lstm": nn.LSTM(3, 5, num_layers=2), "cell": nn.LSTMCell(3, 5)})
    record = gw.remedies.forget_gate_bias_(model, 1.0)
    assert len(record) == 6
    lstm = model["lstm"]
    for layer in range(2):
        b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        assert torch.equal(b[5:10], torch.ones(5))
        assert not torch.equal(b[:5], torch.ones(5))  # the other gates untouched
    with pytest.raises(GradwatchValueError, match="no nn.LSTM"):
        gw.remedies.forget_gate_bias_(nn.RNN(3, 5))
    with pytest.raises(GradwatchValueError, match="finite"):
        gw.remedies.forget_gate_bias_(model, float("inf"))


def test_forget_gate_bias_carries_the_gradient_further_back_in_time():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 32, batch_first=True)
    x = torch.randn(8, 100, 4, requires_grad=True)

    def first_over_last(m):
        x.grad = None
        m(x)[0][:, -1].sum().backward()
        g = x.grad.norm(dim=(0, 2))
        return float(g[0] / g[-1])

    before = first_over_last(lstm)
    gw.remedies.forget_gate_bias_(lstm, 1.0)
    after = first_over_last(lstm)
    assert after > 1e3 * before  # σ(1)/σ(0) ≈ 1.46 per step over 99 steps, in expectation
