"""Convolutions and pooling in the traced theory: closed forms against direct computation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import gradwatch as gw
from gradwatch.theory.kernels import pair_kernel, relu_kernel
from gradwatch.theory.values import Stats


def test_relu_closed_form_is_the_gaussian_integral():
    rng = np.random.default_rng(0)
    L = rng.standard_normal((5, 5))
    A = L @ L.T + 0.5 * np.eye(5)
    C = 0.3 * A
    st = Stats(A=A, C=C, mu=np.zeros(5), present=np.ones(5, bool))
    relu = lambda u: np.maximum(u, 0.0)  # noqa: E731
    step = lambda u: (u > 0).astype(float)  # noqa: E731
    for cross in (False, True):
        quad = pair_kernel(relu, relu, st, cross=cross, kinks=(0.0,))
        np.testing.assert_allclose(relu_kernel(st, cross, deriv=False), quad, rtol=2e-3, atol=1e-6)
        quad_d = pair_kernel(step, step, st, cross=cross, kinks=(0.0,))
        np.testing.assert_allclose(relu_kernel(st, cross, deriv=True), quad_d, rtol=2e-3, atol=1e-6)


def test_a_strided_padded_convolution_gives_the_average_over_its_weights():
    # forward: the predicted mean square of each output position of a conv of actual data
    # equals the average over freshly drawn weights (padding and stride included)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 7, 7) + 0.5
    conv = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv
            self.lin = nn.Linear(64, 4)

        def forward(self, t):
            return self.lin(self.conv(t).mean(dim=(2, 3)))

    head = Head()
    pred = gw.theory.predict(head, inputs=(x,))
    assert pred.method == "graph" and pred.verdict != "uncertain", pred.reason
    q_pred = float(pred.table.set_index("layer").loc["conv", "q"])
    var_w = float(conv.weight.detach().double().var(unbiased=False))
    draws = []
    with torch.no_grad():
        for s in range(200):
            torch.manual_seed(100 + s)
            w = torch.randn_like(conv.weight)
            h = torch.nn.functional.conv2d(x, w, stride=2, padding=1)  # Var(w) = 1
            draws.append(float(h.double().pow(2).mean()) * var_w)
    assert abs(q_pred / np.mean(draws) - 1) < 0.03, (q_pred, np.mean(draws))
    # an unpadded conv of the same data reads more: the padding is counted
    assert q_pred < 0.95 * var_w * 27 * float((x * x).mean())


def test_max_pooling_of_a_relu_field_matches_sampling():
    # a conv of Gaussian images, BN, ReLU, 2x2 max pooling, then a linear read of the mean:
    # the gradient at the conv (through BN, ReLU, the pooling's argmax) against autograd
    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    logs = []
    pred_logs = []
    for s in range(6):
        torch.manual_seed(10 + s)
        model = nn.Sequential(
            nn.Conv2d(3, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, 10),
        )  # fmt: skip
        if s == 0:
            pred = gw.theory.predict(model, inputs=(x,))
            att = pred.table.set_index("layer")["attenuation"]
            pred_logs = [np.log10(att["0"]), np.log10(att["4"])]
        outs = {}

        def keep(_m, _a, o, i, outs=outs):
            o.retain_grad()
            outs[i] = o

        hooks = [
            model[i].register_forward_hook(lambda m, a, o, i=i: keep(m, a, o, i)) for i in (0, 4, 7)
        ]
        y = model(x)
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(50 + s))
        (y * r).sum().backward()
        for h in hooks:
            h.remove()
        last = float(outs[7].grad.pow(2).sum())
        logs.append([np.log10(float(outs[i].grad.pow(2).sum()) / last) for i in (0, 4)])
    measured = np.mean(logs, axis=0)
    assert np.all(np.abs(np.array(pred_logs) - measured) < 0.1), (pred_logs, measured)
