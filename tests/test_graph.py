"""gradwatch.graph: shortcuts, the branch output nearest each join, loops over time, the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from gradwatch.graph import read_graph
from gradwatch.structure import branch_scale, describe, drawn_at, init_scale
from tests.diagnose.nets_by_design import ConvNeXt, DenseBlockNet, DiagonalSSM
from tests.test_structure import Net


def test_the_branch_output_is_the_layer_nearest_the_join():
    net = Net()  # He et al.'s blocks: the last BN feeds the addition
    facts = read_graph(net, net(torch.randn(2, 3, 8, 8)).sum())
    assert [j.nearest for j in facts.residual] == [
        "blocks.0.bn2", "blocks.1.bn2", "blocks.2.bn2"
    ]
    # a ConvNeXt block multiplies its branch by γ, which the block itself owns: the block is
    # nearer the join than its last linear layer (registered last)
    cnx = ConvNeXt((8,), (2,))
    facts = read_graph(cnx, cnx(torch.randn(2, 3, 8, 8)).sum())
    assert [j.nearest for j in facts.residual] == ["features.2", "features.3"]
    assert facts.residual[0].branch[-1] == "features.2.pw2"  # last in registration order
    modules = dict(cnx.named_modules())
    assert branch_scale(modules["features.2"]) == pytest.approx(1e-6)
    assert branch_scale(modules["features.2.pw2"]) is None  # not one number
    bn = nn.BatchNorm2d(4)
    nn.init.zeros_(bn.weight)
    assert branch_scale(bn) == 0.0  # zero-init of the last norm (Goyal et al. 2017)


def test_concatenations_of_x_with_f_x_are_dense_shortcuts():
    net = DenseBlockNet(layers=4)
    d = describe(net, net(torch.randn(2, 3, 8, 8)).sum())
    assert d["dense_joins"] == 4 and d["residual_joins"] == 0
    assert d["shortcuts"] is True and d["residual"] is False

    class Heads(nn.Module):  # parallel branches of one input: not a shortcut
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.stem = nn.Linear(4, 4)

        def forward(self, x):
            h = self.stem(x)
            return torch.cat([self.a(h), self.b(h)], -1)

    m = Heads()
    d = describe(m, m(torch.randn(3, 4)).sum())
    assert d["dense_joins"] == 0 and d["shortcuts"] is False


def test_the_additions_of_a_loop_over_time_are_not_residual_depth():
    m = DiagonalSSM(d=4)
    x = torch.randn(2, 30, 2)
    d = describe(m, m(x).sum())
    assert d["residual_joins"] == 0 and d["shortcuts"] is False
    # the same update unrolled by hand as depth (fresh weights per step) is residual
    blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    stem = nn.Linear(2, 4)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.blocks = stem, blocks

        def forward(self, x):
            h = self.stem(x)
            for b in self.blocks:
                h = h + b(torch.tanh(h))
            return h

    r = Res()
    assert describe(r, r(torch.randn(2, 2)).sum())["residual_joins"] == 3


def test_cross_entropy_and_its_chance_loss_before_and_after_backward():
    logits = nn.Linear(5, 7)
    x = torch.randn(6, 5)
    y = torch.randint(0, 7, (6,))
    y[0] = -100  # ignored
    loss = F.cross_entropy(logits(x), y, reduction="sum")
    before = read_graph(logits, loss).loss
    assert before == {"kind": "cross_entropy", "classes": 7, "reduction": "sum", "targets": 5,
                      "chance": pytest.approx(5 * math.log(7))}
    loss.backward()  # saved tensors freed: shapes still tell the classes
    after = read_graph(logits, loss).loss
    assert after["classes"] == 7 and after["targets"] == 6
    # per-token logits (N, T, C) flattened, mean
    out = torch.randn(2, 3, 11, requires_grad=True)
    tok = F.cross_entropy(out.flatten(0, 1), torch.randint(0, 11, (6,)))
    assert read_graph(logits, tok).loss["chance"] == pytest.approx(math.log(11))
    # other losses: none
    assert read_graph(logits, F.mse_loss(logits(x), torch.zeros(6, 7))).loss is None
    assert read_graph(logits, logits(x).sum()).parametrised is True


def test_init_scale_tells_he_from_pytorch_default():
    he = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    for m in he:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    assert drawn_at(init_scale(he), 2.0) and not drawn_at(init_scale(he), 1.0)
    default = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))  # U[-1/√n, 1/√n]
    assert init_scale(default)["fan_in"] == pytest.approx(1 / 3, rel=0.05)
    assert not drawn_at(init_scale(default), 2.0)
    fan_out = nn.Conv2d(16, 64, 3)
    nn.init.kaiming_normal_(fan_out.weight, mode="fan_out", nonlinearity="relu")
    assert drawn_at(init_scale(fan_out), 2.0)  # the ResNet reference init
    assert init_scale(nn.Sequential(nn.ReLU())) is None
