import math

import pytest
import torch
from torch import nn

import gradwatch.remedies as R

W = 512  # width: 262 144 weights per layer, so the sample std is within ~0.3% of the truth


def rel_err(actual, expected):
    return abs(actual - expected) / expected


def assert_drawn(weight, std, tol=0.02):
    w = weight.detach().double()
    assert rel_err(w.std().item(), std) < tol
    # the sample mean has standard error std/sqrt(numel): allow 5 of them
    assert abs(w.mean().item()) < 5 * std / math.sqrt(w.numel())


def test_he_gain_follows_the_activation_after_each_layer():
    m = nn.Sequential(nn.Linear(W, W), nn.ReLU(), nn.Linear(W, W), nn.Tanh(), nn.Linear(W, W))
    rec = R.he_init_(m)
    gains = [math.sqrt(2.0), 5.0 / 3.0, 1.0]
    for idx, gain in zip((0, 2, 4), gains, strict=True):
        assert_drawn(m[idx].weight, gain / math.sqrt(W))
        assert torch.count_nonzero(m[idx].bias) == 0
    assert [rec[k]["gain"] for k in ("0", "2", "4")] == pytest.approx(gains)
    assert [rec[k]["activation"] for k in ("0", "2", "4")] == ["relu", "tanh", "linear"]
    assert {r["scheme"] for r in rec.values()} == {"he"}


def test_he_leaky_relu_uses_the_modules_own_slope_and_selu_gets_lecun():
    m = nn.Sequential(nn.Linear(W, W), nn.LeakyReLU(0.2), nn.Linear(W, W), nn.SELU())
    R.he_init_(m)
    assert_drawn(m[0].weight, math.sqrt(2.0 / (1 + 0.2**2)) / math.sqrt(W))
    assert_drawn(m[2].weight, 1.0 / math.sqrt(W))


class Crossed(nn.Module):
    """Registered b, relu, a, tanh; runs a -> relu -> b -> tanh."""

    def __init__(self):
        super().__init__()
        self.b = nn.Linear(W, W)
        self.relu = nn.ReLU()
        self.a = nn.Linear(W, W)
        self.tanh = nn.Tanh()

    def forward(self, x):
        return self.tanh(self.b(self.relu(self.a(x))))


def test_he_with_inputs_follows_the_forward_pass_not_registration_order():
    m = Crossed()
    R.he_init_(m, torch.randn(4, W))
    assert_drawn(m.a.weight, math.sqrt(2.0) / math.sqrt(W))
    assert_drawn(m.b.weight, (5.0 / 3.0) / math.sqrt(W))
    R.he_init_(m)  # registration order pairs them the other way round
    assert_drawn(m.a.weight, (5.0 / 3.0) / math.sqrt(W))
    assert_drawn(m.b.weight, math.sqrt(2.0) / math.sqrt(W))


def test_he_fan_out_and_uniform():
    m = nn.Sequential(nn.Linear(256, W), nn.ReLU())  # weight (512, 256)
    R.he_init_(m, mode="fan_out")
    assert_drawn(m[0].weight, math.sqrt(2.0) / math.sqrt(W))
    R.he_init_(m, distribution="uniform")
    std = math.sqrt(2.0) / math.sqrt(256)
    assert_drawn(m[0].weight, std)
    assert m[0].weight.abs().max().item() <= math.sqrt(3.0) * std


def test_he_conv_uses_channels_times_kernel_as_fan_in():
    m = nn.Sequential(nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Conv1d(128, 128, 5))
    R.he_init_(m)
    assert_drawn(m[0].weight, math.sqrt(2.0) / math.sqrt(64 * 9))
    assert_drawn(m[2].weight, 1.0 / math.sqrt(128 * 5))


def test_xavier_uniform_and_normal_match_glorot_bengio():
    m = nn.Sequential(nn.Linear(W, 256), nn.Tanh(), nn.Linear(256, 256))  # weight (256, 512)
    rec = R.init_(m, "xavier")
    std = math.sqrt(2.0 / (W + 256))
    assert_drawn(m[0].weight, std)
    assert m[0].weight.abs().max().item() <= math.sqrt(6.0 / (W + 256))
    assert rec["0"]["gain"] == 1.0
    R.init_(m, "xavier_normal")
    assert_drawn(m[0].weight, std)
    # a normal sample has ~8% of its entries beyond sqrt(3) std, a uniform one none
    assert m[0].weight.abs().max().item() > 1.5 * math.sqrt(3.0) * std
    R.init_(m, "glorot", gain="activation")
    assert_drawn(m[0].weight, (5.0 / 3.0) * std)


def test_lecun_is_normal_with_variance_one_over_fan_in():
    m = nn.Sequential(nn.Linear(256, W), nn.SELU(), nn.Linear(W, W))
    R.lecun_init_(m)
    assert_drawn(m[0].weight, 1.0 / math.sqrt(256))
    assert m[0].weight.abs().max().item() > 1.5 * math.sqrt(3.0) / math.sqrt(256)


def test_standard_init_gives_n_var_one_third():
    m = nn.Sequential(nn.Linear(W, W), nn.Tanh(), nn.Linear(W, 256))
    R.init_(m, "standard")
    for layer in (m[0], m[2]):
        w = layer.weight.detach().double()
        assert rel_err(W * w.var().item(), 1.0 / 3.0) < 0.02
        assert w.abs().max().item() <= 1.0 / math.sqrt(W)
        assert torch.count_nonzero(layer.bias) == 0


def gram(weight):
    w = weight.detach().double().flatten(1)  # conv kernels as (out, in*k*k)
    return w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T


@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(W, W),
        nn.Linear(128, 256),  # tall (256, 128)
        nn.Linear(256, 128),  # wide (128, 256)
        nn.Conv2d(16, 32, 3),  # wide (32, 144)
        nn.Conv2d(4, 64, 3),  # tall (64, 36)
    ],
)
def test_orthogonal_gives_identity_gram_matrix(layer):
    R.orthogonal_init_(nn.Sequential(layer), gain=1.0)
    g = gram(layer.weight)
    assert torch.allclose(g, torch.eye(g.shape[0], dtype=g.dtype), atol=1e-5)


def test_orthogonal_gain_follows_the_activation():
    m = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 256))
    rec = R.init_(m, "orthogonal")
    assert torch.allclose(
        gram(m[0].weight), (5 / 3) ** 2 * torch.eye(256, dtype=torch.float64), atol=1e-5
    )
    assert torch.allclose(gram(m[2].weight), torch.eye(256, dtype=torch.float64), atol=1e-5)
    assert rec["0"]["gain"] == pytest.approx(5 / 3)


def test_orthogonal_lstm_gets_an_orthogonal_block_per_gate():
    lstm = nn.LSTM(32, 64, num_layers=2)
    rec = R.orthogonal_init_(nn.Sequential(lstm))
    assert {"0.weight_ih_l0", "0.weight_hh_l0", "0.weight_ih_l1", "0.weight_hh_l1"} <= set(rec)
    for name, p in lstm.named_parameters():
        if name.startswith("bias"):
            assert torch.count_nonzero(p) == 0
            continue
        for block in p.chunk(4, 0):
            g = gram(block)
            assert torch.allclose(g, torch.eye(g.shape[0], dtype=g.dtype), atol=1e-5), name


def test_he_rnn_uses_its_nonlinearity_and_per_matrix_fans():
    rnn = nn.RNN(256, W, nonlinearity="tanh")
    rec = R.he_init_(rnn)
    assert_drawn(rnn.weight_ih_l0, (5 / 3) / math.sqrt(256))
    assert_drawn(rnn.weight_hh_l0, (5 / 3) / math.sqrt(W))
    assert rec["weight_hh_l0"]["scheme"] == "he"


def test_norm_layers_are_reset_and_layers_restricts_the_change():
    m = nn.Sequential(
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64)
    )
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(2.0, 3.0)
    kept = m[3].weight.detach().clone()
    rec = R.he_init_(m, layers=["0", "1"])
    assert torch.equal(m[1].weight, torch.ones(64)) and torch.equal(m[1].bias, torch.zeros(64))
    assert torch.equal(m[3].weight, kept)
    assert (m[4].weight >= 2.0).all() and set(rec) == {"0", "1"}  # not in layers
    R.init_(m, "kaiming")
    assert torch.equal(m[4].weight, torch.ones(64)) and torch.equal(m[4].bias, torch.zeros(64))
    assert rec["1"]["scheme"] == "reset"
