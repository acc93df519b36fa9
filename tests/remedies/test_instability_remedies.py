"""qk-layernorm, z-loss, warmup, lower_lr, adam_eps, and fix's training trials.

qk-layernorm is checked against attention written out by hand (LayerNorm on each head's q and
k, then softmax(q·kᵀ/√d + mask)·v), with every mask form of nn.MultiheadAttention, in both
layouts; and inside nn.TransformerEncoder in eval mode without gradients, where PyTorch's
fused path would silently skip the norms. The training-loop remedies are checked against
their formulas; fix's trials on a network whose learning rate is too high.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import gradwatch as gw
from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.remedies import QKNormMultiheadAttention, qk_layernorm_


def by_hand(mod: QKNormMultiheadAttention, q_in, k_in, v_in, add_mask=None):
    """(output, weights) of qk-layernorm attention, batch first, float64."""
    e, h = mod.embed_dim, mod.num_heads
    d = e // h
    b = mod.in_proj_bias.double()
    q = q_in.double() @ mod.q_proj_weight.double().T + b[:e]
    k = k_in.double() @ mod.k_proj_weight.double().T + b[e : 2 * e]
    v = v_in.double() @ mod.v_proj_weight.double().T + b[2 * e :]
    n, lq, lk = q.shape[0], q.shape[1], k.shape[1]

    def ln(t, norm):  # LayerNorm over the head dimension, per head
        t = t.view(n, -1, h, d)
        mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        t = (t - mu) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()
        return t.transpose(1, 2)

    q, k = ln(q, mod.q_norm), ln(k, mod.k_norm)
    v = v.view(n, lk, h, d).transpose(1, 2)
    z = q @ k.transpose(-1, -2) / math.sqrt(d)
    if add_mask is not None:
        z = z + add_mask.double()
    w = z.softmax(-1)
    out = (w @ v).transpose(1, 2).reshape(n, lq, e)
    out = out @ mod.out_proj.weight.double().T + mod.out_proj.bias.double()
    return out, w


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "causal-bool", "float"])
def test_qk_norm_attention_by_hand(batch_first, masks):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    new = QKNormMultiheadAttention.from_attention(mha)
    with torch.no_grad():  # non-trivial norm parameters
        new.q_norm.weight.uniform_(0.5, 2.0)
        new.k_norm.bias.normal_()
    e = 16
    assert torch.equal(new.q_proj_weight, mha.in_proj_weight[:e])
    assert torch.equal(new.v_proj_weight, mha.in_proj_weight[2 * e :])
    assert new.in_proj_weight is None and not new._qkv_same_embed_dim
    x = torch.randn(3, 5, 16)
    kw, add = {}, torch.zeros(3, 1, 5, 5)
    if masks == "padding":
        pad = torch.zeros(3, 5, dtype=torch.bool)
        pad[1, 3:] = True
        kw["key_padding_mask"] = pad
        add = add.masked_fill(pad[:, None, None, :], -math.inf)
    elif masks == "causal-bool":
        cm = torch.ones(5, 5, dtype=torch.bool).triu(1)  # True: may not attend
        kw["attn_mask"] = cm
        add = add.masked_fill(cm, -math.inf)
    elif masks == "float":
        fm = torch.randn(5, 5)
        kw["attn_mask"] = fm
        add = add + fm
    inp = x if batch_first else x.transpose(0, 1)
    out, w = new(inp, inp, inp, need_weights=True, average_attn_weights=False, **kw)
    want, want_w = by_hand(new, x, x, x, add)
    got = out if batch_first else out.transpose(0, 1)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert torch.allclose(w.double(), want_w, atol=1e-5)
    out2, none = new(inp, inp, inp, need_weights=False, **kw)
    assert none is None and torch.allclose(out2, out, atol=1e-6)


def test_qk_layernorm_in_a_transformer_encoder_and_its_fast_path():
    torch.manual_seed(1)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
        enable_nested_tensor=True,
    )
    names = qk_layernorm_(enc)
    assert names == ["layers.0.self_attn", "layers.1.self_attn"]
    assert all(isinstance(layer.self_attn, QKNormMultiheadAttention) for layer in enc.layers)
    with torch.no_grad():
        for layer in enc.layers:
            layer.self_attn.q_norm.weight.fill_(3.0)  # the norms change the output
    x = torch.randn(2, 6, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    enc.eval()
    with torch.enable_grad():
        slow = enc(x, src_key_padding_mask=pad)
    with torch.no_grad():  # the conditions of PyTorch's fused inference path
        fast = enc(x, src_key_padding_mask=pad)
    assert torch.allclose(slow[~pad], fast[~pad], atol=1e-5)
    # gradients reach the new norms in training
    enc.train()
    enc(x).sum().backward()
    assert enc.layers[0].self_attn.q_norm.weight.grad.abs().sum() > 0
    assert qk_layernorm_(enc) == []  # already done: nothing to rewrite


def test_qk_layernorm_refuses_what_it_cannot_rewrite_with_the_recipe():
    with pytest.raises(GradwatchValueError, match="LayerNorm over the head dimension"):
        qk_layernorm_(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(GradwatchValueError, match="add_bias_kv"):
        qk_layernorm_(nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True)))
    with pytest.raises(GradwatchTypeError):
        qk_layernorm_("model")


def test_z_loss_against_its_formula():
    torch.manual_seed(0)
    z = torch.randn(4, 7, 11) * 3
    y = torch.randint(0, 11, (4, 7))
    ce = F.cross_entropy(z.flatten(0, 1), y.flatten())
    lse = torch.logsumexp(z, -1)
    want = ce + 1e-4 * (lse**2).mean()
    assert gw.remedies.z_loss()(z, y) == pytest.approx(want.item(), rel=1e-6)
    assert gw.remedies.z_loss()({"logits": z}, y) == pytest.approx(want.item(), rel=1e-6)

    def mse(out, t):
        return ((out - t) ** 2).mean()

    wrapped = gw.remedies.z_loss(mse, coef=0.5, dim=1)
    t = torch.randn_like(z)
    want = mse(z, t) + 0.5 * (torch.logsumexp(z, 1) ** 2).mean()
    assert wrapped(z, t).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(GradwatchValueError):
        gw.remedies.z_loss(coef=0)
    with pytest.raises(GradwatchTypeError):
        gw.remedies.z_loss("ce")
    with pytest.raises(GradwatchTypeError, match="logits"):
        gw.remedies.z_loss()("text", y)


def test_warmup_lower_lr_and_adam_eps():
    p = [nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW(p, lr=0.1)
    sched = gw.remedies.warmup(opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert gw.remedies.lower_lr_(opt, 0.5) == pytest.approx([0.05])
    assert gw.remedies.adam_eps_(opt) == 1e-8 and opt.param_groups[0]["eps"] == 1e-15
    with pytest.raises(GradwatchValueError, match="below 1"):
        gw.remedies.lower_lr_(opt, 2.0)
    with pytest.raises(GradwatchValueError, match="no eps"):
        gw.remedies.adam_eps_(torch.optim.SGD(p, lr=0.1))
    with pytest.raises(GradwatchTypeError):
        gw.remedies.warmup("opt", 3)


# -- fix(..., trial=...) ----------------------------------------------------------------------

def _regression(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    return x, y


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def test_fix_trials_recommend_what_helps_a_too_high_learning_rate():
    x, y = _regression()
    trial = gw.remedies.Trial(
        data=(x, y), optimizer=lambda ps: torch.optim.SGD(ps, lr=0.6), steps=40,
        seeds=(0, 1), remedies=("lower_lr", "clip_grad_norm"), lr_factor=0.05,
    )
    fixed, report = gw.fix(_mlp(), x[:32], y[:32], trial=trial)
    base = report.trials["baseline"]
    assert base["unstable_trials"] == 2  # the loss diverges on both seeds
    tried = {e["remedy"]: e for e in report.trials["tried"]}
    assert tried["lower_lr"]["accepted"] and tried["lower_lr"]["unstable_trials"] == 0
    assert "lower_lr" in report.trials["recommended"]
    assert any("lower_lr_(optimizer, 0.05)" in r for r in report.recommendations)
    assert "trained in trials: 2/2 unstable" in report.summary()
    # the trials are seeded: the same numbers again
    _, again = gw.fix(_mlp(), x[:32], y[:32], trial=trial)
    assert again.trials["baseline"]["median_final_loss"] == base["median_final_loss"]


def test_fix_trials_leave_a_stable_run_alone_and_respect_the_budget():
    x, y = _regression()
    calm = gw.remedies.Trial(data=(x, y), optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01),
                             steps=20, seeds=(0,))
    _, report = gw.fix(_mlp(), x[:32], y[:32], trial=calm)
    assert report.trials["baseline"]["unstable_trials"] == 0 and not report.trials["tried"]
    hot = gw.remedies.Trial(data=(x, y), optimizer=lambda ps: torch.optim.SGD(ps, lr=0.6),
                            steps=20, seeds=(0,), budget_s=1e-6)
    _, report = gw.fix(_mlp(), x[:32], y[:32], trial=hot)
    assert report.trials["tried"] and all("budget" in e["skipped"]
                                          for e in report.trials["tried"])


def test_fix_trials_run_after_the_checkup_remedies():
    """A net that vanishes at init gets its checkup remedy, then still its training trials."""
    x, y = _regression()
    torch.manual_seed(0)
    layers = [nn.Linear(8, 32), nn.Sigmoid()]
    for _ in range(7):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    deep = nn.Sequential(*layers, nn.Linear(32, 1))
    trial = gw.remedies.Trial(data=(x, y), optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01),
                              steps=10, seeds=(0,))
    _, report = gw.fix(deep, x[:32], y[:32], trial=trial, max_rounds=1)
    assert report.applied and report.tried  # the checkup's candidates were tried
    assert report.trials is not None and len(report.trials["baseline"]["trials"]) == 1


def test_trial_arguments_are_checked():
    x, y = _regression(8)
    with pytest.raises(GradwatchTypeError, match="Trial"):
        gw.fix(_mlp(), x, y, trial={"steps": 3})
    with pytest.raises(GradwatchValueError, match="unknown"):
        gw.fix(_mlp(), x, y, trial=gw.remedies.Trial(data=(x, y), optimizer=torch.optim.SGD,
                                                     remedies=("magic",)))
    with pytest.raises(GradwatchTypeError, match="data"):
        gw.fix(_mlp(), x, y, trial=gw.remedies.Trial(data=x, optimizer=torch.optim.SGD))


@pytest.mark.slow
def test_fix_trials_apply_qk_layernorm_to_a_small_gpt():
    from gradwatch.experiments.language_model import TinyGPT, lm_loss, training_data

    data = training_data(512, 32, 64)
    x, y = data[:, :-1], data[:, 1:]
    torch.manual_seed(0)
    trial = gw.remedies.Trial(
        data=(x, y), optimizer=lambda ps: torch.optim.AdamW(ps, lr=0.3, betas=(0.9, 0.95)),
        steps=80, seeds=(0,), remedies=("qk_layernorm",),
    )
    fixed, report = gw.fix(TinyGPT(), x[:8], y[:8], loss_fn=lm_loss, trial=trial)
    assert report.trials["applied"] == ["qk_layernorm"]
    assert any(isinstance(m, QKNormMultiheadAttention) for m in fixed.modules())
    assert report.changed_architecture and report.applied[-1][0] == "qk_layernorm_"
