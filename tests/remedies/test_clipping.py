import copy
import math

import pytest
import torch
from torch import nn

import gradwatch.remedies as R
from gradwatch.errors import GradwatchTypeError, GradwatchValueError


def model_with_grads(scale=100.0):
    model = nn.Sequential(
        nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    x, y = torch.randn(64, 10), torch.randn(64, 1)
    (scale * (model(x) - y).square().mean()).backward()
    return model


def copy_with_grads(model):
    twin = copy.deepcopy(model)  # deepcopy does not copy .grad of parameters
    for p, q in zip(twin.parameters(), model.parameters(), strict=True):
        p.grad = q.grad.clone()
    return twin


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def global_norm(tensors):
    return math.sqrt(sum(t.double().square().sum().item() for t in tensors))


def test_clip_grad_norm_matches_torch_and_bounds_the_norm():
    ours = model_with_grads()
    theirs = copy_with_grads(ours)
    before = global_norm(grads(ours))
    result = R.clip_grad_norm_(ours, max_norm=1.0)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm=1.0)
    assert before > 10.0
    assert result.total_norm.item() == pytest.approx(torch_norm.item(), rel=1e-6)
    assert result.total_norm.item() == pytest.approx(before, rel=1e-5)
    assert global_norm(grads(ours)) <= 1.0 + 1e-6
    for a, b in zip(grads(ours), grads(theirs), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
    assert result.clip_coef.item() == pytest.approx(1.0 / (before + 1e-6), rel=1e-5)
    assert bool(result.clipped)
    assert isinstance(result.total_norm, torch.Tensor) and result.total_norm.dim() == 0


def test_clip_grad_norm_below_the_threshold_changes_nothing():
    model = model_with_grads(scale=1e-3)
    kept = grads(model)
    result = R.clip_grad_norm_(list(model.parameters()), max_norm=100.0)
    assert all(torch.equal(a, b) for a, b in zip(grads(model), kept, strict=True))
    assert result.clip_coef.item() == 1.0 and not bool(result.clipped)


def test_clip_grad_value_bounds_every_entry_like_torch():
    ours = model_with_grads()
    theirs = copy_with_grads(ours)
    before = global_norm(grads(ours))
    result = R.clip_grad_value_(ours, clip_value=0.05)
    torch.nn.utils.clip_grad_value_(theirs.parameters(), clip_value=0.05)
    assert max(g.abs().max().item() for g in grads(ours)) <= 0.05 + 1e-7  # float32(0.05)
    assert all(torch.equal(a, b) for a, b in zip(grads(ours), grads(theirs), strict=True))
    assert result.total_norm.item() == pytest.approx(before, rel=1e-5)
    assert result.clip_coef.item() == pytest.approx(global_norm(grads(ours)) / before, rel=1e-5)


def test_adaptive_clipping_on_a_hand_checked_example():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # row norms 5 and 1
        layer.bias.zero_()  # norm 0: floored at eps
    layer.weight.grad = torch.tensor([[0.3, 0.4], [1.0, 0.0]])  # row norms 0.5 and 1
    layer.bias.grad = torch.tensor([0.3, 0.4])  # norm 0.5
    result = R.adaptive_clip_grad_(layer, clipping=0.2, eps=1e-3)
    # row 0: 0.5/5 = 0.1 <= 0.2, kept.  row 1: 1/1 = 1 > 0.2, scaled to norm 0.2*1 = 0.2.
    expected_w = torch.tensor([[0.3, 0.4], [0.2, 0.0]])
    # bias: 0.5/max(0, 1e-3) = 500 > 0.2, scaled by 0.2 * 1e-3 / 0.5 = 4e-4
    expected_b = torch.tensor([0.3 * 4e-4, 0.4 * 4e-4])
    assert torch.allclose(layer.weight.grad, expected_w, atol=1e-7)
    assert torch.allclose(layer.bias.grad, expected_b, atol=1e-9)
    assert result.total_norm.item() == pytest.approx(math.sqrt(0.25 + 1.0 + 0.25), rel=1e-6)
    after = math.sqrt(0.25 + 0.04 + 0.2e-3**2)
    assert result.clip_coef.item() == pytest.approx(after / math.sqrt(1.5), rel=1e-5)


def test_adaptive_clipping_treats_conv_output_channels_as_units():
    conv = nn.Conv2d(1, 2, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]).reshape(2, 1, 1, 2))
    conv.weight.grad = torch.tensor([[0.3, 0.4], [1.0, 0.0]]).reshape(2, 1, 1, 2)
    R.adaptive_clip_grad_([conv.weight], clipping=0.2)
    assert torch.allclose(conv.weight.grad.flatten(1), torch.tensor([[0.3, 0.4], [0.2, 0.0]]))


def test_clip_on_step_clips_before_every_optimizer_step():
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = R.clip_on_step(opt, max_norm=0.5)
    x, y = torch.randn(64, 10), torch.randn(64, 1)
    for _ in range(5):
        opt.zero_grad()
        (100 * (model(x) - y).square().mean()).backward()
        raw = global_norm(grads(model))
        old = [p.detach().clone() for p in model.parameters()]
        opt.step()
        assert raw > 0.5
        assert hook.last.total_norm.item() == pytest.approx(raw, rel=1e-5)
        assert global_norm(grads(model)) <= 0.5 + 1e-6  # clipped in place, before the step
        for p, p0 in zip(model.parameters(), old, strict=True):
            assert torch.allclose(p.detach(), p0 - 0.1 * p.grad, atol=1e-7)
    hook.remove()
    opt.zero_grad()
    (100 * (model(x) - y).square().mean()).backward()
    opt.step()
    assert global_norm(grads(model)) > 0.5


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        (
            {"clip_value": 0.01},
            lambda m: max(p.grad.abs().max().item() for p in m.parameters()) <= 0.01 + 1e-7,
        ),
        (
            {"agc": 0.01},
            lambda m: all(
                (p.grad.norm(dim=1) <= 0.01 * p.detach().norm(dim=1).clamp(min=1e-3) + 1e-7).all()
                for p in m.parameters()
                if p.dim() == 2
            ),
        ),
    ],
)
def test_clip_on_step_with_value_or_adaptive_clipping(kwargs, check):
    model = model_with_grads()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    hook = R.clip_on_step(opt, **kwargs)
    opt.step()
    assert check(model) and hook.last is not None


def rnn_losses(clip, steps, seed=0):
    """A tanh RNN whose recurrent matrix has largest singular value 3, trained by SGD, lr 1."""
    torch.manual_seed(seed)
    rnn = nn.RNN(4, 64, nonlinearity="tanh", batch_first=True)
    head = nn.Linear(64, 1)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(3.0 / torch.linalg.matrix_norm(rnn.weight_hh_l0, 2))
    params = [*rnn.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=1.0)
    if clip:
        R.clip_on_step(opt, max_norm=0.5)
    x = torch.randn(64, 50, 4)  # sequence length 50
    y = 2 * x[:, -1, :1] + 1
    losses, norms = [], []
    for _ in range(steps):
        out, _ = rnn(x)
        loss = (head(out[:, -1]) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        norms.append(global_norm([p.grad for p in params]))
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(loss.item()):
            break
    return losses, norms


def test_clipping_tames_an_exploding_rnn():
    losses, norms = rnn_losses(clip=False, steps=8)
    assert max(norms) > 1e6 or not all(map(math.isfinite, norms))
    assert max(losses) > 1e6 or not all(map(math.isfinite, losses))
    losses, norms = rnn_losses(clip=True, steps=40)
    assert all(map(math.isfinite, losses)) and max(losses) < 50.0
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]  # it trains


def test_bad_clipping_arguments_are_clear_errors():
    model = model_with_grads()
    kept = grads(model)
    with pytest.raises(GradwatchValueError, match="max_norm"):
        R.clip_grad_norm_(model, max_norm=-1.0)
    with pytest.raises(GradwatchValueError, match="clip_value"):
        R.clip_grad_value_(model, clip_value=0)
    with pytest.raises(GradwatchValueError, match="clipping"):
        R.adaptive_clip_grad_(model, clipping=float("nan"))
    with pytest.raises(GradwatchTypeError, match="params_or_model"):
        R.clip_grad_norm_("weights", max_norm=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(GradwatchValueError, match="exactly one"):
        R.clip_on_step(opt)
    with pytest.raises(GradwatchValueError, match="exactly one"):
        R.clip_on_step(opt, max_norm=1.0, agc=0.01)
    with pytest.raises(GradwatchValueError, match="max_norm"):
        R.clip_on_step(opt, max_norm=-2.0)
    with pytest.raises(GradwatchTypeError, match="optimizer"):
        R.clip_on_step(model, max_norm=1.0)
    assert all(torch.equal(a, b) for a, b in zip(grads(model), kept, strict=True))
