"""The configurations on which ``gw.theory.predict`` is checked against Monte Carlo.

Each :class:`Config` builds a fresh model (its weights drawn by the seed set just before),
names a fixed batch (the theory averages over the random weights, not over the data, so
every seed sees the same batch) and says how many seeds the geometric mean takes.
``quick`` configurations run in the default test suite; the others under ``-m slow``.
``expect`` is "predicted", or "uncertain" for a model the theory declares outside itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .convnets import PreActResNet, conv_bn_chain, conv_bn_flatten
from .models import DeepNormEncoder, ResidualMLP, TokenEncoder, bert, gpt2
from .rnn import SequenceClassifier


@dataclass(frozen=True)
class Config:
    """One architecture at one setting (see the module docstring)."""

    name: str
    family: str
    description: str
    build: Callable[[], nn.Module]
    batch: Callable[[], tuple[torch.Tensor, ...]]
    seeds: int = 8
    quick: bool = False
    expect: str = "predicted"


def features(n: int = 32, d: int = 64) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A fixed batch of standard Gaussian features."""
    return lambda: (torch.randn(n, d, generator=torch.Generator().manual_seed(0)),)


def tokens(vocab: int, n: int = 4, t: int = 16) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A fixed batch of uniformly random tokens."""
    return lambda: (torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(0)),)


def _res(depth, act, alpha, sw2, **kw):
    return partial(ResidualMLP, 64, 128, depth, act, alpha, sigma_w2=sw2, **kw)


ACTS = {"tanh": (nn.Tanh, 1.0), "relu": (nn.ReLU, 2.0), "gelu": (nn.GELU, 2.0)}


def _residual_mlps() -> list[Config]:
    out = []
    for act_name, (act, sw2) in ACTS.items():
        for depth, alpha, label in (
            (12, 1 / math.sqrt(12), "1/√L"),
            (50, 1 / math.sqrt(50), "1/√L"),
            (30, 1.0, "1"),
        ):
            if act_name == "relu" and alpha == 1.0:
                depth = 20  # ‖δ‖² doubles per block: 20 blocks give 10⁶ already
            out.append(
                Config(
                    name=f"residual_{act_name}_{depth}_alpha_{'1' if alpha == 1.0 else 'isqrtL'}",
                    family="residual MLP",
                    description=f"{depth} blocks x + α·W₂ {act_name}(W₁ x), α = {label}, "
                    f"width 128, σw² = {sw2:g}",
                    build=_res(depth, act, alpha, sw2),
                    batch=features(),
                    seeds=4 if act_name == "tanh" and depth == 12 else 8,
                    quick=act_name == "tanh" and depth == 12,
                )
            )
    return out


def _normalised() -> list[Config]:
    return [
        Config(
            "residual_relu_20_final_ln",
            "residual MLP",
            "20 ReLU blocks, α = 1, default init, final LayerNorm",
            partial(ResidualMLP, 64, 128, 20, nn.ReLU, 1.0, final_norm="ln"),
            features(),
        ),
        Config(
            "pre_ln_residual_gelu_30",
            "pre-norm MLP",
            "30 blocks x + W₂ GELU(W₁ LN(x)), final LayerNorm",
            partial(ResidualMLP, 64, 128, 30, nn.GELU, 1.0, pre_norm="ln", final_norm="ln"),
            features(),
        ),
        Config(
            "pre_rms_residual_gelu_30",
            "pre-norm MLP",
            "30 blocks x + W₂ GELU(W₁ RMSNorm(x)), final RMSNorm",
            partial(ResidualMLP, 64, 128, 30, nn.GELU, 1.0, pre_norm="rms", final_norm="rms"),
            features(),
        ),
        Config(
            "bn_residual_relu_20",
            "BatchNorm residual",
            "20 pre-activation blocks x + W₂ ReLU(W₁ BN(x)), batch 64",
            partial(ResidualMLP, 64, 128, 20, nn.ReLU, 1.0, pre_norm="bn"),
            features(64),
            seeds=6,
        ),
        Config(
            "bn_inner_residual_relu_10",
            "BatchNorm residual",
            "10 blocks x + W₂ ReLU(BN(W₁ x)), final BatchNorm, batch 64",
            partial(ResidualMLP, 64, 128, 10, nn.ReLU, 1.0, inner_norm="bn", final_norm="bn"),
            features(64),
            seeds=6,
        ),
        Config(
            "bn_residual_relu_6",
            "BatchNorm residual",
            "6 pre-activation BN blocks, width 64, batch 32",
            partial(ResidualMLP, 64, 64, 6, nn.ReLU, 1.0, pre_norm="bn"),
            features(32),
            seeds=4,
            quick=True,
        ),
    ]


def _transformers() -> list[Config]:
    v = 32
    return [
        Config(
            "encoder_pre_ln_6",
            "nn.TransformerEncoder",
            "pre-LN, 6 layers, d = 64, 4 heads, independent layers",
            partial(TokenEncoder, 6, True),
            tokens(v),
            seeds=6,
        ),
        Config(
            "encoder_post_ln_6",
            "nn.TransformerEncoder",
            "post-LN, 6 layers, d = 64, 4 heads, independent layers",
            partial(TokenEncoder, 6, False),
            tokens(v),
            seeds=6,
        ),
        Config(
            "encoder_pre_ln_24",
            "nn.TransformerEncoder",
            "pre-LN, 24 layers, d = 64, independent layers",
            partial(TokenEncoder, 24, True),
            tokens(v),
            seeds=6,
        ),
        Config(
            "encoder_post_ln_24",
            "nn.TransformerEncoder",
            "post-LN, 24 layers, d = 64, independent layers",
            partial(TokenEncoder, 24, False),
            tokens(v),
            seeds=6,
        ),
        Config(
            "encoder_post_ln_6_gelu_seq_first",
            "nn.TransformerEncoder",
            "post-LN, GELU, (T, N, d) layout",
            partial(TokenEncoder, 6, False, activation="gelu", batch_first=False),
            tokens(v),
            seeds=6,
        ),
        Config(
            "encoder_pre_ln_2",
            "nn.TransformerEncoder",
            "pre-LN, 2 layers, d = 32, 2 heads, independent layers",
            partial(TokenEncoder, 2, True, d=32, heads=2),
            tokens(v, n=4, t=8),
            seeds=4,
            quick=True,
        ),
        Config(
            "deepnorm_24",
            "DeepNorm",
            "post-LN with α = (2N)^¼, β = (8N)^-¼, 24 layers",
            partial(DeepNormEncoder, 24),
            tokens(v),
            seeds=6,
        ),
        Config(
            "gpt2_4",
            "Hugging Face",
            "GPT2LMHeadModel from a config: 4 layers, d = 64",
            partial(gpt2, 4),
            tokens(64),
            seeds=6,
        ),
        Config(
            "gpt2_12",
            "Hugging Face",
            "GPT2LMHeadModel from a config: 12 layers, d = 64",
            partial(gpt2, 12),
            tokens(64),
            seeds=6,
        ),
        Config(
            "bert_4",
            "Hugging Face",
            "BertForMaskedLM from a config: 4 layers, d = 64",
            partial(bert, 4),
            tokens(64),
            seeds=6,
        ),
        Config(
            "gpt2_4_dropout",
            "Hugging Face",
            "GPT2LMHeadModel, 4 layers, d = 64, its default dropout 0.1 (train mode)",
            partial(gpt2, 4, dropout=0.1),
            tokens(64),
            seeds=6,
        ),
        Config(
            "bert_4_dropout",
            "Hugging Face",
            "BertForMaskedLM, 4 layers, d = 64, its default dropout 0.1 (train mode)",
            partial(bert, 4, dropout=0.1),
            tokens(64),
            seeds=6,
        ),
        Config(
            "gpt2_2_small",
            "Hugging Face",
            "GPT2LMHeadModel from a config: 2 layers, d = 32",
            partial(gpt2, 2, 32, 2),
            tokens(64, n=4, t=8),
            seeds=4,
            quick=True,
        ),
    ]


def _copies() -> list[Config]:
    """Chains of identical copies: nn.TransformerEncoder as built, a deep-copied block."""
    v = 32
    return [
        Config(
            "encoder_pre_ln_6_stock",
            "identical copies",
            "nn.TransformerEncoder as built: pre-LN, its 6 layers start identical, d = 64",
            partial(TokenEncoder, 6, True, independent=False),
            tokens(v),
            seeds=8,
        ),
        Config(
            "encoder_pre_ln_24_stock",
            "identical copies",
            "nn.TransformerEncoder as built: pre-LN, its 24 layers start identical, d = 64",
            partial(TokenEncoder, 24, True, independent=False),
            tokens(v),
            seeds=36,  # heavy-tailed over seeds at 24 layers (sd 0.2–0.3 decade)
        ),
        Config(
            "encoder_pre_ln_2_stock",
            "identical copies",
            "nn.TransformerEncoder as built: pre-LN, 2 identical layers, d = 32, 2 heads",
            partial(TokenEncoder, 2, True, d=32, heads=2, independent=False),
            tokens(v),
            seeds=4,
            quick=True,
        ),
        Config(
            "residual_relu_12_copies",
            "identical copies",
            "12 deep copies of one block x + α·W₂ relu(W₁ x), α = 1/√L, width 128, σw² = 2",
            _res(12, nn.ReLU, 1 / math.sqrt(12), 2.0, copies=True),
            features(),
            seeds=8,
        ),
        Config(
            "residual_tanh_20_alpha_1_copies",
            "identical copies",
            "20 deep copies of one block x + W₂ tanh(W₁ x), width 128, σw² = 1",
            _res(20, nn.Tanh, 1.0, 1.0, copies=True),
            features(),
            seeds=8,
        ),
        Config(
            "encoder_post_ln_6_stock",
            "identical copies",
            "nn.TransformerEncoder as built: post-LN, its 6 layers start identical, d = 64",
            partial(TokenEncoder, 6, False, independent=False),
            tokens(v),
            seeds=8,
        ),
        Config(
            "residual_relu_12_shared",
            "identical copies",
            "one block x + α·W₂ relu(W₁ x) applied at 12 depths (shared), α = 1/√L, width 128",
            _res(12, nn.ReLU, 1 / math.sqrt(12), 2.0, shared=True),
            features(),
            seeds=8,
        ),
        Config(
            "encoder_pre_ln_6_shared",
            "identical copies",
            "one pre-LN nn.TransformerEncoderLayer applied at 6 depths (ALBERT-style), d = 64",
            partial(TokenEncoder, 6, True, shared=True),
            tokens(v),
            seeds=8,
        ),
        Config(
            "residual_relu_12_post_ln_copies",
            "outside the theory",
            "12 deep copies of one block, x ← LN(x + W₂ relu(W₁ x)), the norms outside the copies",
            _res(12, nn.ReLU, 1.0, 2.0, post_norm="ln", copies=True),
            features(),
            seeds=6,
            expect="uncertain",
        ),
    ]


def images(n: int = 16, side: int = 32) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A fixed batch of standard Gaussian RGB images (n, 3, side, side)."""
    return lambda: (torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0)),)


def _zoo_resnet(depth: int, width: int = 64):
    from benchmarks.zoo.resnet import ResNet

    return ResNet(depth, width)


def _zoo_vgg16_bn():
    from benchmarks.zoo.cnn import vgg16

    return vgg16("he", True, 1, 32)


def _convnets() -> list[Config]:
    out = [
        Config(
            "vgg16_bn",
            "conv nets with BatchNorm",
            "VGG-16 with BN (13 convs, 5 max poolings, 3 linear), He init, 32x32, batch 16",
            _zoo_vgg16_bn,
            images(16, 32),
            seeds=4,
        ),
        Config(
            "preact_resnet18",
            "conv nets with BatchNorm",
            "pre-activation ResNet-18 (He et al. 2016b, CIFAR stem), width 64, 16x16, batch 16",
            partial(PreActResNet, 18, 64),
            images(16, 16),
            seeds=6,
        ),
        Config(
            "preact_resnet34",
            "conv nets with BatchNorm",
            "pre-activation ResNet-34 (CIFAR stem), width 64, 16x16, batch 16",
            partial(PreActResNet, 34, 64),
            images(16, 16),
            seeds=6,
        ),
        Config(
            "conv_bn_relu_4",
            "conv nets with BatchNorm",
            "4 x (3x3 conv, BN, ReLU), 2x2 max pooling after every second, GAP, 16x16",
            partial(conv_bn_chain, 64, 4),
            images(16, 16),
            seeds=4,
            quick=True,
        ),
        Config(
            "conv_bn_flatten",
            "conv nets with BatchNorm",
            "conv-BN-ReLU, max pooling, strided conv-BN-ReLU, flatten (64x4x4) into a 2-layer MLP",
            conv_bn_flatten,
            images(16, 16),
            seeds=4,
            quick=True,
        ),
    ]
    for depth in (18, 34, 50):
        out.append(
            Config(
                f"resnet{depth}",
                "conv nets with BatchNorm",
                f"ResNet-{depth} as in He et al. 2016 (ReLU after each addition, max-pooled "
                "stem), width 64, 32x32, batch 16",
                partial(_zoo_resnet, depth),
                images(16, 32),
                seeds=6,
            )
        )
    out.append(
        Config(
            "preact_resnet18_imagenet_stem",
            "conv nets with BatchNorm",
            "pre-activation ResNet-18 with the max-pooled ImageNet stem, 32x32, batch 16",
            partial(PreActResNet, 18, 64, "imagenet"),
            images(16, 32),
            seeds=6,
        )
    )
    return out


def sequences(t: int, batch_first: bool = True) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A fixed batch of 16 standard Gaussian sequences of t steps, 32 features."""

    def batch() -> tuple[torch.Tensor, ...]:
        x = torch.randn(16, t, 32, generator=torch.Generator().manual_seed(0))
        return (x if batch_first else x.transpose(0, 1).contiguous(),)

    return batch


def _recurrent() -> list[Config]:
    def rnn(name, text, t, cell=nn.RNN, first=True, quick=False, expect="predicted", **kw):
        kw.setdefault("hidden", 128)
        # a profile read at every step is nearly flat, within the 0.1-decade floor: 12 seeds
        seeds = 4 if quick else 12 if kw.get("read") == "all" else 6
        return Config(name, "recurrent", text, partial(SequenceClassifier, cell, 32,
                      batch_first=first, **kw), sequences(t, first), seeds=seeds,
                      quick=quick, expect=expect)

    head = "width 128, PyTorch's default init, a linear head on the last step"
    return [
        rnn("rnn_tanh_20", f"nn.RNN tanh, 20 steps, {head}", 20, quick=True),
        rnn("rnn_tanh_100", f"nn.RNN tanh, 100 steps, {head}", 100),
        rnn("rnn_tanh_5", f"nn.RNN tanh, 5 steps, {head} (not vanishing yet)", 5),
        rnn("rnn_tanh_10", f"nn.RNN tanh, 10 steps, {head} (vanishing: a warning)", 10),
        rnn("rnn_relu_20_seq_first", f"nn.RNN ReLU, 20 steps, (T, N, F) layout, {head}", 20,
            first=False, nonlinearity="relu"),
        rnn("rnn_tanh_2_layers_20", f"nn.RNN tanh, 2 layers, 20 steps, {head}", 20, layers=2),
        rnn("rnn_relu_2_layers_h_n", "nn.RNN ReLU, 2 layers, 30 steps, width 128, default "
            "init, a linear head on both layers' final states h_n", 30, layers=2,
            nonlinearity="relu", read="h_n"),
        rnn("rnn_tanh_every_step_50", "nn.RNN tanh, 50 steps, width 128, default init, a "
            "linear read-out of every step (sequence labelling)", 50, read="all"),
        rnn("rnn_tanh_100_width_512", "nn.RNN tanh, 100 steps, width 512, PyTorch's default "
            "init, a linear head on the last step", 100, hidden=512),
        rnn("rnn_tanh_sigma_0.5_100", "nn.RNN tanh, 100 steps, W_hh ~ N(0, 0.5/h) "
            "(χ* = 0.40), width 128, a head on the last step", 100, sigma_hh2=0.5,
            expect="uncertain"),
        rnn("rnn_tanh_sigma_1_100", "nn.RNN tanh, 100 steps, W_hh ~ N(0, 1/h) (χ* = 0.70, "
            "near the edge of chaos), width 128, a head on the last step", 100,
            sigma_hh2=1.0, expect="uncertain"),
        rnn("lstm_20", f"nn.LSTM, 20 steps, {head}", 20, cell=nn.LSTM),
        rnn("gru_20", f"nn.GRU, 20 steps, {head}", 20, cell=nn.GRU, quick=True),
        rnn("lstm_50", f"nn.LSTM, 50 steps, {head}", 50, cell=nn.LSTM),
        rnn("gru_100", f"nn.GRU, 100 steps, {head}", 100, cell=nn.GRU),
        rnn("lstm_50_width_256", "nn.LSTM, 50 steps, width 256, PyTorch's default init, a "
            "linear head on the last step", 50, cell=nn.LSTM, hidden=256),
        rnn("lstm_forget_bias_1_50", "nn.LSTM, 50 steps, width 128, forget-gate bias 1, a "
            "linear head on the last step", 50, cell=nn.LSTM, forget_bias=1.0),
        rnn("gru_every_step_30", "nn.GRU, 30 steps, width 128, default init, a linear "
            "read-out of every step", 30, cell=nn.GRU, read="all"),
        rnn("lstm_seq_first_h_n_30", "nn.LSTM, 30 steps, (T, N, F) layout, width 128, "
            "default init, a linear head on h_n", 30, cell=nn.LSTM, first=False, read="h_n"),
    ]


CONFIGS: list[Config] = [
    *_residual_mlps(), *_normalised(), *_transformers(), *_convnets(), *_recurrent(),
    *_copies(),
]
BY_NAME: dict[str, Config] = {c.name: c for c in CONFIGS}
assert len(BY_NAME) == len(CONFIGS), "configuration names must be unique"
