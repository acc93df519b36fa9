"""The attention, output-logit and Adam taps inside a watched training loop.

The statistics themselves are checked against brute force in tests/stats (test_attention,
test_adam_and_logits, the conformance test); here: that the Monitor records them at detail
steps only, for the models people train (Hugging Face GPT-2 through SDPA, nn.TransformerEncoder
through nn.MultiheadAttention), that it leaves nothing behind (no mode, no global hook), and
that the class dimension of the logits follows the loss.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import gradwatch as gw

NEW = ("attn_logit_max", "attn_entropy_min", "logit_max", "logsumexp_mean", "update_rms",
       "eps_frac")


def _gpt2():
    tf = pytest.importorskip("transformers", reason="pip install gradwatch[transformers]")

    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                        eos_token_id=0)
    return tf.GPT2LMHeadModel(cfg)


def _no_leftovers():
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks
    assert torch.overrides._get_current_function_mode() is None


def test_hugging_face_gpt2_at_detail_steps_only():
    model = _gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(1, 40, (4, 12), generator=torch.Generator().manual_seed(1))
    with gw.watch(model, optimizer=opt, detail_every=3) as mon:
        for _ in range(7):
            out = model(ids, labels=ids)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            mon.step(out.loss)
            _no_leftovers()
    run = mon.run
    att = run.pivot("attn_logit_max")
    assert list(att.columns) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert att.index.tolist() == [0, 3, 6]  # detail steps only
    assert (run.pivot("attn_entropy_min") > 0).all().all()
    assert set(run.pivot("update_rms").index) == {0, 3, 6}
    lse = run.pivot("logsumexp_mean")[""]
    assert lse.index.tolist() == [0, 3, 6] and (lse > math.log(40) - 1).all()
    # the last detail step's logits, by hand: the model's own output at that step
    assert run.pivot("logit_max")[""].iloc[-1] == pytest.approx(
        float(out.logits.detach().max()), rel=1e-5
    )
    _no_leftovers()


class Encoder(nn.Module):
    """nn.TransformerEncoder with a read-out at every position, logits (B, V, T)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.enc = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
            enable_nested_tensor=False,
        )
        self.head = nn.Linear(16, 20)

    def forward(self, x):
        return self.head(self.enc(self.embed(x))).transpose(1, 2)  # (B, V, T)


def test_the_class_dimension_follows_the_loss_and_manual_mode():
    torch.manual_seed(0)
    model = Encoder()
    x = torch.randint(0, 20, (3, 7))
    outs = []
    with gw.watch(model, detail_every=1) as mon:  # manual mode: no optimizer
        for _ in range(3):
            logits = model(x)
            outs.append(logits.detach())
            loss = F.cross_entropy(logits, x)  # classes on dim 1
            loss.backward()
            mon.step(loss)
    run = mon.run
    lse = run.pivot("logsumexp_mean")[""]
    # (B, V, T): the class dimension is learnt from the loss's gradient at the first step
    for step in (0, 1, 2):
        want = float(torch.logsumexp(outs[step].double(), dim=1).mean())
        assert lse.loc[step] == pytest.approx(want, rel=1e-5)
    assert set(run.pivot("attn_logit_max").columns) == {"enc.layers.0.self_attn",
                                                        "enc.layers.1.self_attn"}
    assert "update_rms" not in set(run.stats["stat"])  # no optimizer, no Adam state
    _no_leftovers()


@pytest.mark.parametrize("kind", ["cross_entropy", "mse", "bce"])
def test_a_plain_output_holds_logits_when_its_loss_is_a_softmax_cross_entropy(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    outs = []
    with gw.watch(model, optimizer=opt, detail_every=1) as mon:
        for _ in range(3):
            opt.zero_grad()
            z = model(x)
            outs.append(z.detach())
            if kind == "cross_entropy":
                loss = F.cross_entropy(z, y)
            elif kind == "mse":
                loss = F.mse_loss(z, torch.zeros_like(z))
            else:
                loss = F.binary_cross_entropy_with_logits(z, F.one_hot(y, 4).float())
            loss.backward()
            opt.step()
            mon.step(loss)
        tap = mon._ctx.tap("logits")
    stats = set(mon.run.stats["stat"])
    if kind != "cross_entropy":  # a regression's output, or independent sigmoids: no logits
        assert tap.flat is False and not {"logit_max", "logsumexp_mean"} & stats
        return
    assert tap.flat is True
    lse, top = mon.run.pivot("logsumexp_mean")[""], mon.run.pivot("logit_max")[""]
    for step in (0, 1, 2):  # the first step's too, reduced when its gradient arrived
        assert lse.loc[step] == pytest.approx(float(torch.logsumexp(outs[step].double(), 1)
                                                    .mean()), rel=1e-5)
        assert top.loc[step] == pytest.approx(float(outs[step].max()), rel=1e-6)


def test_new_statistics_can_be_left_out():
    model = _gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(1, 40, (2, 8))
    from gradwatch.stats import ALL_STATS

    keep = [s for s in ALL_STATS if s not in NEW]
    with gw.watch(model, optimizer=opt, detail_every=1, stats=keep) as mon:
        out = model(ids, labels=ids)
        out.loss.backward()
        opt.step()
        mon.step(out.loss)
    assert not set(NEW) & set(mon.run.stats["stat"])
    _no_leftovers()


class _Attends(nn.Module):
    """A block of a user's class: its forward may call attention (here from step ``start``)."""

    def __init__(self, start: int = 0):
        super().__init__()
        self.proj = nn.Linear(8, 24)
        self.start, self.calls = start, 0

    def forward(self, x):  # (B, T, 8)
        self.calls += 1
        if self.calls <= self.start:
            return x
        q, k, v = self.proj(x).unflatten(-1, (3, 8)).unbind(-2)
        return F.scaled_dot_product_attention(q, k, v)


def _armed_steps(model, steps):
    """The steps at which the attention capture was armed, and the attention run's steps."""
    armed = []
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    with gw.watch(model, detail_every=1, stats=["attn_logit_max", "loss"]) as mon:
        tap = mon._ctx.tap("attention")
        for step in range(steps):
            if tap.capture is not None and tap.capture.armed:
                armed.append(step)
            loss = model(x).square().mean()
            loss.backward()
            mon.step(loss)
    run = mon.run
    got = sorted(run.stats.loc[run.stats.stat == "attn_logit_max", "step"].unique())
    return tap, armed, got


def test_a_model_of_torch_nn_modules_gets_no_attention_capture():
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    tap, armed, got = _armed_steps(model, 3)
    assert tap.capture is None and not tap.active and armed == [] and got == []
    _no_leftovers()


def test_a_model_that_never_attends_is_probed_every_tenth_detail_step():
    from gradwatch.monitor.taps.attention import PROBE_EVERY

    model = nn.Sequential(_Attends(start=10**9), nn.Linear(8, 8))  # a user class: may attend
    _, armed, got = _armed_steps(model, 2 * PROBE_EVERY + 1)
    assert armed == [0, PROBE_EVERY, 2 * PROBE_EVERY] and got == []


def test_attention_that_starts_later_is_caught_at_the_next_probe_then_every_step():
    from gradwatch.monitor.taps.attention import PROBE_EVERY

    model = nn.Sequential(_Attends(start=3), nn.Linear(8, 8))
    _, armed, got = _armed_steps(model, PROBE_EVERY + 3)
    assert armed == [0, *range(PROBE_EVERY, PROBE_EVERY + 3)]
    assert got == list(range(PROBE_EVERY, PROBE_EVERY + 3))
    model = nn.Sequential(_Attends(start=0), nn.Linear(8, 8))
    _, armed, got = _armed_steps(model, 4)
    assert armed == got == [0, 1, 2, 3]
