"""The third batch of held-out nets against their definitions.

What the held-out truth of these families rests on: Swin attends inside its windows (shifted
in every second block), an IndRNN unit carries its gradient over time as u^T and its
recurrent weight stays inside the paper's bound, the Conformer's convolution is depthwise and
every frame reaches its output, the concatenating modules (Fire, Inception) give the widths
the papers give, a maxout unit is its largest piece, and the no-skip layer has no identity
path.
"""

import pytest
import torch
from benchmarks.zoo.heldout.families3 import row_sequence_batch
from benchmarks.zoo.heldout.nets3 import (
    Conformer,
    Fire,
    Inception,
    IndRNN,
    IndRNNLayer,
    Maxout,
    NoSkipLayer,
    SwinBlock,
    squeezenet,
)


def _changed_tokens(block: SwinBlock, res: int, at: tuple[int, int]) -> set[tuple[int, int]]:
    """The grid positions whose output changes when the token at ``at`` is perturbed."""
    torch.manual_seed(0)
    x = torch.randn(1, res * res, block.norm1.normalized_shape[0], dtype=torch.float64)
    y = x.clone()
    y[0, at[0] * res + at[1]] += torch.randn(x.shape[-1], dtype=torch.float64)  # not a shift
    with torch.no_grad():
        diff = (block(y) - block(x)).abs().sum(-1)[0].view(res, res)
    return {(int(i), int(j)) for i, j in (diff > 1e-12).nonzero()}


def test_swin_attends_inside_windows_and_shifted_windows():
    torch.manual_seed(0)
    plain = SwinBlock(8, 2, res=8, w=4, shift=0).double()
    # a token in the first window reaches exactly that 4×4 window
    assert _changed_tokens(plain, 8, (1, 1)) == {(i, j) for i in range(4) for j in range(4)}
    shifted = SwinBlock(8, 2, res=8, w=4, shift=2).double()
    # shifted by 2: the window around the centre covers rows and columns 2..5
    assert _changed_tokens(shifted, 8, (3, 3)) == {(i, j) for i in range(2, 6)
                                                   for j in range(2, 6)}
    # a corner token's shifted window wraps around, but the mask keeps it to its own region
    assert _changed_tokens(shifted, 8, (0, 0)) == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_indrnn_gradient_through_time_is_u_to_the_lag():
    # positive inputs keep every unit on: h_T = sum_t u^(T-t) (w x_t + b), so ∂h_T/∂x_t = u^(T-t) w
    torch.manual_seed(0)
    layer = IndRNNLayer(1, 3, 0.5, 0.9, 2.0).double()
    layer.bn = None
    with torch.no_grad():
        layer.inp.weight.fill_(1.0)
        layer.inp.bias.fill_(0.1)
    x = torch.rand(1, 12, 1, dtype=torch.float64, requires_grad=True)
    for unit in range(3):
        (g,) = torch.autograd.grad(layer(x)[0, -1, unit], x)
        u = float(layer.u[unit].detach())
        want = torch.tensor([u ** (11 - t) for t in range(12)], dtype=torch.float64)
        torch.testing.assert_close(g[0, :, 0], want)


def test_indrnn_init_and_bound():
    t = 256
    net = IndRNN(t, 64, 2, init="paper")
    bound = 2 ** (1 / t)
    first, last = (lay.u.detach() for lay in net.layers)
    assert float(first.min()) >= 0 and float(first.max()) <= bound
    assert float(last.min()) >= 2 ** (-1 / t)  # the last layer keeps half its state over T
    default = IndRNN(t, 64, 2, init="default", bn=False)
    assert all(float(lay.u.abs().max()) <= 1 / 8 for lay in default.layers)
    assert all(lay.bn is None for lay in default.layers)
    # a recurrent weight pushed past the bound acts as the bound
    layer = IndRNNLayer(1, 1, 3.0, 3.0, bound)
    layer.bn = None
    with torch.no_grad():
        layer.inp.weight.fill_(1.0)
        layer.inp.bias.zero_()
    x = torch.zeros(1, 5, 1)
    x[0, 0, 0] = 1.0
    assert float(layer(x)[0, -1, 0]) == pytest.approx(bound ** 4)
    with pytest.raises(ValueError, match="init"):
        IndRNN(t, 8, 1, init="xavier")


def test_conformer_convolution_is_depthwise_and_every_frame_reaches_the_output():
    torch.manual_seed(0)
    net = Conformer(frames=16, features=16, d=32, layers=2, heads=4).double()
    for block in net.blocks:
        assert block.conv.dw.groups == 32 and block.conv.dw.weight.shape[1] == 1
    x, y = row_sequence_batch(0, batch=4)
    assert x.shape == (4, 16, 16) and y.shape == (4,)
    x = x.double().requires_grad_(True)
    net(x).sum().backward()
    assert torch.all(x.grad.abs().sum((0, 2)) > 0)


def test_fire_and_inception_concatenate_their_branches():
    fire = Fire(32, 8, 16)
    assert fire(torch.randn(2, 32, 7, 7)).shape == (2, 32, 7, 7)  # e1 + e3 = 2 × 16
    net = squeezenet(scale=2)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    inc = Inception(16, 8, 8, 16, 4, 8, 8)
    assert inc(torch.randn(2, 16, 6, 6)).shape == (2, 8 + 16 + 8 + 8, 6, 6)
    # the double-3×3 branch sees a 5×5 neighbourhood (Ioffe & Szegedy 2015's factorisation)
    x = torch.zeros(1, 16, 11, 11, requires_grad=True)
    inc.eval()
    inc.bd(x)[0, :, 5, 5].sum().backward()
    seen = x.grad.abs().sum((0, 1)) > 0
    assert int(seen.sum()) == 25 and bool(seen[3:8, 3:8].all())


def test_maxout_is_the_largest_piece_and_the_no_skip_layer_has_no_identity_path():
    torch.manual_seed(0)
    layer = Maxout(5, 3, 4).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    pieces = x @ layer.lin.weight.T + layer.lin.bias  # (7, 3·4), unit-major
    torch.testing.assert_close(layer(x), pieces.view(7, 3, 4).max(-1).values)
    # without a residual, a layer whose attention output projection is zero forgets its input
    block = NoSkipLayer(8, 2).double()
    with torch.no_grad():
        block.attn.out_proj.weight.zero_()
    h = torch.randn(2, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(block(h), block(torch.randn(2, 4, 8, dtype=torch.float64)))
