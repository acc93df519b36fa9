import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradwatch.remedies as R
from gradwatch.errors import GradwatchValueError


def residual_io(model, x):
    """(input, output) of every Residual on one forward pass."""
    seen = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
        for m in model.modules()
        if isinstance(m, R.Residual)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def test_relu_mlp_becomes_pre_activation_residual_and_starts_as_identity(snapshot):
    layers = [nn.Linear(8, 32)]
    for _ in range(3):
        layers += [nn.ReLU(), nn.Linear(32, 32)]
    model = nn.Sequential(*layers, nn.ReLU(), nn.Linear(32, 4))
    unchanged = snapshot(model)
    new = R.add_residual(model)
    assert [type(m) for m in new] == [
        nn.Linear,
        R.Residual,
        R.Residual,
        R.Residual,
        nn.ReLU,
        nn.Linear,
    ]
    assert [type(m) for m in new[1].branch] == [nn.ReLU, nn.Linear]
    x = torch.randn(16, 8)
    io = residual_io(new, x)
    assert len(io) == 3
    for inp, out in io:
        assert torch.equal(out, inp)
    assert new(x).shape == model(x).shape == (16, 4)
    assert len(model) == 9 and not any(isinstance(m, R.Residual) for m in model.modules())
    unchanged()


def test_tanh_blocks_and_no_zero_init():
    model = nn.Sequential(
        nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    )
    new = R.add_residual(model)
    assert [type(m) for m in new] == [R.Residual, R.Residual, nn.Linear]
    x = torch.randn(5, 32)
    assert all(torch.equal(o, i) for i, o in residual_io(new, x))
    kept = R.add_residual(model, zero_init=False)
    assert torch.equal(kept[0].branch[0].weight, model[0].weight)
    assert all(not torch.allclose(o, i) for i, o in residual_io(kept, x))
    assert torch.allclose(kept(x), model[4](kept[1](kept[0](x))))


def test_conv_blocks_with_same_padding_only():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding="same"),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),  # changes the shape: stays outside
    )
    new = R.add_residual(model, block_size=2)
    assert [type(m) for m in new] == [nn.Conv2d, R.Residual, R.Residual, nn.ReLU, nn.Conv2d]
    x = torch.randn(2, 3, 8, 8)
    assert new(x).shape == model(x).shape == (2, 16, 4, 4)
    assert all(torch.equal(o, i) for i, o in residual_io(new, x))


def test_nothing_to_wrap_or_unfollowable_is_an_error(snapshot):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    unchanged = snapshot(model)
    with pytest.raises(GradwatchValueError, match="block_size=2"):
        R.add_residual(model)
    with pytest.raises(GradwatchValueError, match="block_size"):
        R.add_residual(model, block_size=0)
    unchanged()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(GradwatchValueError, match="own forward"):
        R.add_residual(Net())


ACTS = [nn.ReLU, nn.Tanh, nn.GELU, nn.LeakyReLU]


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.sampled_from([4, 6]), min_size=2, max_size=7),
    act=st.sampled_from(ACTS),
    block_size=st.integers(1, 2),
)
def test_property_shapes_kept_identity_at_init_and_input_untouched(widths, act, block_size):
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), act()]
    model = nn.Sequential(*layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, widths[0])
    # with block_size <= 2 any Linear(n, n) (then its activation) can be wrapped
    square = any(a == b for a, b in zip(widths[:-1], widths[1:], strict=True))
    if not square:
        with pytest.raises(GradwatchValueError):
            R.add_residual(model, block_size=block_size)
        return
    new = R.add_residual(model, block_size=block_size)
    assert new(x).shape == model(x).shape
    io = residual_io(new, x)
    assert io and all(torch.equal(o, i) for i, o in io)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
