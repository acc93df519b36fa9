"""attn_logit_max and attn_entropy_min against explicit attention computed by brute force.

For each supported form -- ``nn.MultiheadAttention`` (``F.multi_head_attention_forward``) and
``F.scaled_dot_product_attention`` as Hugging Face GPT-2, BERT and Llama call it -- the
statistics gradwatch reduces from the calls it catches are compared with attention written
out by hand in float64: the logits q·kᵀ/√d from the model's own projections, the masks built
here from the padding and causality of the batch, and the attention probabilities the model
itself returns (``need_weights=True``; Hugging Face's eager attention), with and without masks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.monitor.attention_capture import AttentionCapture
from gradwatch.stats.attention import QUERY_ROWS, attention_row, decode_attn, sample_queries


def layer_index(model):
    names = [n or "(root)" for n, m in model.named_modules() if list(m.parameters(False))]
    return {n: i for i, n in enumerate(names)}, names


def captured(model, run):
    """{layer name: (attn_logit_max, attn_entropy_min)} of the calls during ``run()``."""
    layer_of, names = layer_index(model)
    cap = AttentionCapture(model, layer_of)
    cap.armed = True
    try:
        run()
    finally:
        cap.remove()
    rows = cap.take()
    assert rows, "no attention call was caught"
    key = tuple((li, h) for li, h, _ in rows)
    values = torch.cat([r for _, _, r in rows]).numpy()[None]
    out = decode_attn(values, key)
    layers, mx = out["attn_logit_max"]
    _, ent = out["attn_entropy_min"]
    return {names[li]: (mx[0, j], ent[0, j]) for j, li in enumerate(layers)}


def brute(q, k, allowed, probs=None):
    """(max logit over allowed entries, min over heads of mean entropy) in float64.

    q (B, H, L, d), k (B, H, S, d); allowed bool (B, H|1, L, S); probs (B, H, L, S) if the
    model returned its attention probabilities (else the softmax of the masked logits).
    """
    q, k = q.double(), k.double()
    z = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = allowed.expand_as(z)
    zmax = z[allowed].max().item()
    if probs is None:
        probs = z.masked_fill(~allowed, -math.inf).softmax(-1)
    p = probs.double()
    ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)  # (B, H, L)
    rows = allowed.any(-1)
    per_head = [(ent[:, h][rows[:, h]]).mean().item() for h in range(ent.shape[1])]
    return zmax, min(per_head)


def causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


# -- nn.MultiheadAttention ------------------------------------------------------------------

def _mha_qk(mha, x):
    e, h = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight.double(), mha.in_proj_bias.double()
    q = x.double() @ w[:e].T + b[:e]
    k = x.double() @ w[e : 2 * e].T + b[e : 2 * e]
    bsz, n, _ = x.shape
    return (q.view(bsz, n, h, e // h).transpose(1, 2), k.view(bsz, n, h, e // h).transpose(1, 2))


@pytest.mark.parametrize("masks", ["none", "padding", "causal", "causal+padding", "float"])
def test_multihead_attention(masks):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.mul_(3.0)  # logits of a few units, not all near 0
    x = torch.randn(3, 7, 32)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True  # True: ignored (nn.MultiheadAttention's convention)
    pad[2, 3:] = True
    kw, allowed = {}, torch.ones(3, 1, 7, 7, dtype=torch.bool)
    if "padding" in masks:
        kw["key_padding_mask"] = pad
        allowed = allowed & ~pad[:, None, None, :]
    if "causal" in masks:
        kw["attn_mask"] = ~causal(7)
        allowed = allowed & causal(7)
    if masks == "float":  # an additive mask: -inf excludes, finite values bias the softmax
        fm = torch.randn(7, 7)
        fm[0, 3] = -math.inf
        kw["attn_mask"] = fm
        allowed = allowed & torch.isfinite(fm)
    got = captured(mha, lambda: mha(x, x, x, need_weights=False, **kw))
    _, w = mha(x, x, x, need_weights=True, average_attn_weights=False, **kw)  # (B, H, L, S)
    q, k = _mha_qk(mha, x)
    zmax, emin = brute(q, k, allowed, probs=w)
    assert got["(root)"][0] == pytest.approx(zmax, rel=1e-5)
    assert got["(root)"][1] == pytest.approx(emin, rel=1e-4, abs=1e-6)


def test_encoder_layer_attention_is_attributed_to_its_self_attn():
    torch.manual_seed(1)
    model = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
        enable_nested_tensor=False,
    )
    x = torch.randn(2, 5, 16)
    inputs = {}
    model.layers[1].register_forward_pre_hook(lambda m, a: inputs.setdefault("h", a[0]))
    got = captured(model, lambda: model(x, mask=~causal(5), is_causal=True).sum().backward())
    assert set(got) == {"layers.0.self_attn", "layers.1.self_attn"}
    q, k = _mha_qk(model.layers[1].self_attn, inputs["h"].detach())
    zmax, emin = brute(q, k, causal(5)[None, None])
    assert got["layers.1.self_attn"][0] == pytest.approx(zmax, rel=1e-5)
    assert got["layers.1.self_attn"][1] == pytest.approx(emin, rel=1e-4)


# -- F.scaled_dot_product_attention: Hugging Face GPT-2, BERT, Llama -----------------------

def _hf(kind):
    tf = pytest.importorskip("transformers", reason="pip install gradwatch[transformers]")

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                            bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0)
        model = tf.GPT2LMHeadModel(cfg)
        mod = tf.models.gpt2.modeling_gpt2
    elif kind == "bert":
        cfg = tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=16, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
        model = tf.BertForMaskedLM(cfg)
        mod = tf.models.bert.modeling_bert
    else:
        cfg = tf.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=16)
        model = tf.LlamaForCausalLM(cfg)
        mod = tf.models.llama.modeling_llama
    for p in model.parameters():  # larger logits than at init
        if p.dim() == 2:
            p.data.mul_(4.0)
    return model, mod


#: the layer each model's attention is attributed to: the first layer inside the module
FIRST = {"gpt2": "transformer.h.{}.attn.c_attn",
         "bert": "bert.encoder.layer.{}.attention.self.query",
         "llama": "model.layers.{}.self_attn.q_proj"}


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("padded", [False, True])
def test_hugging_face_sdpa_against_eager(kind, padded, monkeypatch):
    model, mod = _hf(kind)
    ids = torch.randint(1, 50, (3, 9))
    am = torch.ones(3, 9, dtype=torch.long)
    if padded:
        am[1, :4] = 0 if kind != "bert" else 1
        if kind == "bert":
            am[1, 6:] = 0
        am[2, :2] = 0 if kind != "bert" else 1
    model.config._attn_implementation = "sdpa"
    got = captured(model, lambda: model(ids, attention_mask=am))

    # brute force: the eager path's own q and k (after rotary embeddings) and probabilities
    seen = []
    orig = mod.eager_attention_forward

    def spy(module, query, key, value, attention_mask, *a, **kw):
        out, w = orig(module, query, key, value, attention_mask, *a, **kw)
        seen.append((query.detach(), key.detach(), w.detach()))
        return out, w

    monkeypatch.setattr(mod, "eager_attention_forward", spy)
    model.config._attn_implementation = "eager"
    model(ids, attention_mask=am)
    assert len(seen) == 2
    keep = am.bool()[:, None, None, :]  # (B, 1, 1, S): padding excluded
    allowed = keep if kind == "bert" else keep & causal(9)
    for i, (q, k, w) in enumerate(seen):
        if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves two
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        # queries whose every key is masked (left padding): left out, as by gradwatch
        zmax, emin = brute(q, k, allowed, probs=w.masked_fill(~allowed, 0.0))
        name = FIRST[kind].format(i)
        assert got[name][0] == pytest.approx(zmax, rel=1e-5), name
        assert got[name][1] == pytest.approx(emin, rel=1e-4, abs=1e-6), name


# -- the reduction itself ---------------------------------------------------------------------

def test_sampled_queries_give_the_exact_max_on_the_sample():
    torch.manual_seed(0)
    q, k = torch.randn(4, 3, 200, 8), torch.randn(4, 3, 200, 8)
    nb, qi = sample_queries(4, 200)
    assert nb == 4 and qi is not None and len(qi) == QUERY_ROWS // 4 and qi[-1] == 199
    row = attention_row(q, k, is_causal=True)
    z = (q.double()[:, :, qi] @ k.double().transpose(-1, -2)) / math.sqrt(8)
    z = z.masked_fill(torch.arange(200)[None, :] > qi[:, None], -math.inf)
    assert row[0].item() == pytest.approx(z.max().item(), rel=1e-6)
    p = z.softmax(-1)
    ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)  # (B, H, nq)
    assert row[1:4].double().numpy() == pytest.approx(ent.sum((0, 2)).numpy(), rel=1e-5)
    assert row[4:].tolist() == [4 * len(qi)] * 3
    # the full computation's max is at least the sample's
    full = attention_row(q, k, is_causal=True, rows=10**9)
    assert full[0] >= row[0]


def test_uniform_attention_has_entropy_log_n_and_one_hot_has_zero():
    q = torch.zeros(1, 2, 4, 8)
    k = torch.randn(1, 2, 6, 8)
    row = attention_row(q, k)
    assert row[0].item() == 0.0
    assert (row[1:3] / row[3:]).tolist() == pytest.approx([math.log(6)] * 2, rel=1e-6)
    k = torch.zeros(1, 2, 6, 8)
    k[..., 0, 0] = 1000.0
    q = torch.ones(1, 2, 4, 8)
    row = attention_row(q, k)
    assert (row[1:3] / row[3:]).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_decode_merges_calls_of_one_layer_and_skips_empty_rows():
    a = attention_row(torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4))
    b = attention_row(torch.randn(2, 2, 3, 4) * 5, torch.randn(2, 2, 3, 4))
    out = decode_attn(torch.cat([a, b]).numpy()[None], ((0, 2), (0, 2)))
    layers, mx = out["attn_logit_max"]
    assert layers == [0] and mx[0, 0] == pytest.approx(max(a[0], b[0]).item())
    e = (a[1:3] + b[1:3]) / (a[3:] + b[3:])
    assert out["attn_entropy_min"][1][0, 0] == pytest.approx(e.min().item(), rel=1e-6)
    # a query whose keys are all masked is left out; a call with no key at all gives NaN
    none = attention_row(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4),
                         attn_mask=torch.zeros(2, 2, dtype=torch.bool))
    out = decode_attn(none.numpy()[None], ((3, 1),))
    assert np.isnan(out["attn_logit_max"][1][0, 0]) and np.isnan(out["attn_entropy_min"][1][0, 0])


def test_capture_leaves_nothing_behind_when_the_forward_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            self.mha(x, x, x)
            raise RuntimeError("boom")

    model = Boom()
    layer_of, _ = layer_index(model)
    cap = AttentionCapture(model, layer_of)
    cap.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.randn(1, 3, 8))
    assert not cap.active and len(cap.take()) == 1
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks
    assert torch.overrides._get_current_function_mode() is None
    cap.remove()
    assert not model._forward_hooks and not model._forward_pre_hooks
