"""gradwatch.structure: norms, recurrence, attention, residual connections from types and graphs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError
from gradwatch.structure import describe, register_norm_type, register_residual_type


class Block(nn.Module):
    """y = relu(x + f(x)), optionally with a projection shortcut (He et al. 2016)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out))
        self.proj = proj if c_in != c_out else None

    def forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        out += skip  # in place, as torchvision writes it
        return torch.relu(out)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8, 8), Block(8, 16), Block(16, 16))
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class TwoTowers(nn.Module):
    """tok_emb + pos_emb: an addition of unrelated inputs, and x + c*x**3: no layer on a path."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(10, 8)
        self.pos = nn.Embedding(5, 8)
        self.lin = nn.Linear(8, 8)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        h = self.lin(h)
        return h + 0.044715 * h**3


def test_residual_joins_are_found_in_the_graph_projection_shortcuts_included():
    net = Net()
    d = describe(net, net(torch.randn(2, 3, 8, 8)).sum())
    assert d["residual"] is True and d["residual_joins"] == 3 and d["from_graph"]
    # the projection shortcut's conv and BN are the skip path, not the block
    assert d["residual_branches"][1] == [
        "blocks.1.conv1", "blocks.1.bn1", "blocks.1.conv2", "blocks.1.bn2"
    ]
    assert d["has_norm"] and len(d["norm_layers"]) == 7
    json.dumps(d)  # JSON-safe


def test_additions_that_are_not_residual():
    m = TwoTowers()
    d = describe(m, m(torch.randint(0, 5, (2, 5))).sum())
    assert d["residual"] is False and d["residual_joins"] == 0
    assert d["embedding_layers"] == ["tok", "pos"] and not d["attention"]
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    assert describe(plain, plain(torch.randn(3, 4)).sum())["residual"] is False


def test_without_a_graph_residual_is_unknown():
    d = describe(Net())
    assert d["residual"] is None and not d["from_graph"]


def test_transformer_encoder_has_residual_joins_attention_and_layer_norms():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3)
    d = describe(enc, enc(torch.randn(2, 5, 16)).sum())
    # 2 joins per layer; the first layer's attention join starts at the model's input, which
    # has no autograd node, so it is not seen
    assert d["residual_joins"] == 5 and d["attention"] and len(d["norm_layers"]) == 6
    assert d["residual_branches"][0] == ["layers.0.linear1", "layers.0.linear2"]


def test_attention_from_the_graph_without_multihead_attention_modules():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            w = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 8**0.5, dim=-1)
            return w @ self.v(x)

    m = Attn()
    assert describe(m, m(torch.randn(2, 4, 8)).sum())["attention"] is True
    soft = nn.Sequential(nn.Linear(8, 3), nn.Softmax(-1))  # a classifier's softmax
    assert describe(soft, soft(torch.randn(2, 8)).sum())["attention"] is False


def test_recurrent_layers_and_lstm_forget_bias():
    lstm = nn.LSTM(3, 4)
    with torch.no_grad():
        lstm.bias_ih_l0.zero_()
        lstm.bias_hh_l0.zero_()
        lstm.bias_ih_l0[4:8] = 1.0
    d = describe(nn.ModuleDict({"rnn": nn.RNN(3, 4), "lstm": lstm}))
    assert d["recurrent_layers"]["rnn"] == {"type": "RNN", "nonlinearity": "tanh"}
    assert d["lstm_forget_bias"]["lstm"] == pytest.approx(1.0)


def test_registered_types():
    class MyNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.g * x / x.pow(2).mean(-1, keepdim=True).sqrt()

    class MyBlock(nn.Linear):
        pass

    assert describe(nn.Sequential(MyNorm()))["has_norm"] is False
    register_norm_type(MyNorm)
    register_residual_type(MyBlock)
    d = describe(nn.Sequential(MyNorm(), MyBlock(4, 4)))
    assert d["norm_layers"] == ["0"] and d["residual"] is True
    with pytest.raises(GradwatchTypeError, match="cls must be a subclass"):
        register_norm_type("LayerNorm")


def test_bad_arguments():
    with pytest.raises(GradwatchTypeError, match="model must be"):
        describe("net")
    with pytest.raises(GradwatchTypeError, match="output must be"):
        describe(nn.Linear(2, 2), output=3.0)
