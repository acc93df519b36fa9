"""The second batch of held-out nets and data against their definitions.

What the held-out truth of these families rests on: a WaveNet sees exactly its receptive
field, stochastic depth keeps the expected output, a Switch layer sends each token through
its top expert scaled by the router's probability, the graph's propagation matrix is the
normalised adjacency, the tags need both neighbours, and recording figures keeps what other
cases recorded.
"""

import json
import math

import pytest
import torch
from benchmarks.zoo.from_heldout import WaveNet
from benchmarks.zoo.heldout.convnets2 import ResNeXt, drop_path
from benchmarks.zoo.heldout.data2 import TAGS, sbm_graph, tagging_batch
from benchmarks.zoo.heldout.nets2 import SwitchFFN
from benchmarks.zoo.heldout.truth import figures_json


def test_wavenet_output_depends_on_exactly_its_receptive_field():
    # kernel 2, dilations 1, 2, 4, 8: the last output sees the last 1 + 15 = 16 steps
    torch.manual_seed(0)
    net = WaveNet(c=4, skip=4, layers=4, classes=3).double()
    x = torch.randn(2, 40, 1, dtype=torch.float64, requires_grad=True)
    net(x).sum().backward()
    g = x.grad[0, :, 0].abs()
    assert torch.all(g[:24] == 0)  # steps before the receptive field: exactly no gradient
    assert torch.all(g[24:] > 0)


def test_drop_path_keeps_the_mean_and_drops_whole_examples():
    torch.manual_seed(0)
    x = torch.ones(20_000, 3, 2, 2)
    y = drop_path(x, 0.25, training=True)
    per_example = y.flatten(1)
    # each example is all zeros or all 1/(1 - p)
    assert torch.all((per_example == 0).all(1) | (per_example == 1 / 0.75).all(1))
    kept = (per_example[:, 0] > 0).float().mean()
    assert float(kept) == pytest.approx(0.75, abs=0.01)  # 3 standard errors: 0.009
    assert float(y.mean()) == pytest.approx(1.0, abs=0.02)
    assert torch.equal(drop_path(x, 0.25, training=False), x)


def test_switch_layer_routes_each_token_to_its_top_expert():
    torch.manual_seed(0)
    layer = SwitchFFN(8, 16, 3).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    out = layer(x)
    for n in range(2):
        for t in range(5):
            probs = layer.router(x[n, t]).softmax(-1)
            e = int(probs.argmax())
            want = probs[e] * layer.experts[e](x[n, t])
            torch.testing.assert_close(out[n, t], want)


def test_sbm_propagation_matrix_is_the_symmetric_normalised_adjacency():
    adj, x, y = sbm_graph()
    assert torch.allclose(adj, adj.T)
    # D^-1/2 (A + I) D^-1/2 has largest eigenvalue 1, with eigenvector D^1/2 · 1
    eig = torch.linalg.eigvalsh(adj.double())
    assert float(eig.max()) == pytest.approx(1.0, abs=1e-6)
    assert float(eig.min()) >= -1 - 1e-6
    assert x.shape == (256, 16) and set(y.tolist()) == {0, 1, 2, 3}
    # more edges within communities than across (p_in = 10 p_out)
    a = (adj > 0).float() - torch.eye(256)
    same = (y[:, None] == y[None, :]).float()
    assert float((a * same).sum()) > 2 * float((a * (1 - same)).sum())


def test_tags_need_both_neighbours():
    ids, tags = tagging_batch(3, length=6, batch=4)
    assert tags.shape == ids.shape and int(tags.max()) < TAGS
    assert torch.equal(tags[:, 0], ids[:, 1] % TAGS)  # nothing to the left of t = 0
    assert torch.equal(tags[:, 3], (ids[:, 2] + ids[:, 4]) % TAGS)
    assert torch.equal(tags[:, -1], ids[:, -2] % TAGS)


def test_resnext_blocks_use_grouped_convolutions():
    net = ResNeXt(1, 8, 4, 16)
    grouped = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert [m.groups for m in grouped] == [8, 8, 8]
    assert [m.in_channels // m.groups for m in grouped] == [4, 8, 16]


def test_recording_figures_keeps_the_other_cases_and_drops_the_departed():
    rows = [{"name": "b", "init": {"trunk_ratio": 0.123456}, "train": {}, "after": {}}]
    previous = {"a": {"init.trunk_ratio": 2.0}, "b": {"init.trunk_ratio": 9.0},
                "gone": {"init.trunk_ratio": 1.0}}
    text = figures_json(rows, previous, ["a", "b", "c"])
    assert json.loads(text) == {"a": {"init.trunk_ratio": 2.0},
                                "b": {"init.trunk_ratio": 0.123}}
    assert len(text.splitlines()) == 4  # one case per line, between the braces
    nan = figures_json([{"name": "a", "init": {"trunk_ratio": math.nan}}], {}, ["a"])
    assert json.loads(nan) == {"a": {}}  # only finite figures are recorded
