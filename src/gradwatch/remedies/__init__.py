"""Remedies for vanishing and exploding gradients, applied to a model.

Initialisation (in place, each returns what it changed): :func:`init_` by name, or
:func:`he_init_`, :func:`xavier_init_`, :func:`lecun_init_`, :func:`standard_init_`,
:func:`orthogonal_init_`, :func:`lsuv_init_`, :func:`fixup_init_`,
:func:`zero_init_residual_branches_`, :func:`zero_init_last_norm_` (residual branches found in
the autograd graph), :func:`forget_gate_bias_` (LSTMs).

Structure: :func:`swap_activation` (in place), :func:`insert_norm` and
:func:`add_residual` (return a new model, the input untouched), :class:`Residual`.

Attention: :func:`qk_layernorm_` (LayerNorm on each head's queries and keys, in place, for
``nn.MultiheadAttention``; :data:`QK_LAYERNORM_RECIPE` for attention written by hand).

Training loop: :func:`clip_grad_norm_`, :func:`clip_grad_value_`,
:func:`adaptive_clip_grad_`, and :func:`clip_on_step` to clip before every optimizer step;
:func:`z_loss` (a loss wrapper), :func:`warmup` (a linear lr warmup), :func:`lower_lr_` and
:func:`adam_eps_` (in place, on an optimizer); :class:`Trial`, the short seeded trainings
with which :func:`fix` verifies what a one-batch check cannot judge.
"""

from gradwatch.remedies._gains import activation_gain
from gradwatch.remedies.activation import ACTIVATIONS, swap_activation
from gradwatch.remedies.block_init import forget_gate_bias_, zero_init_last_norm_
from gradwatch.remedies.clipping import (
    ClipHook,
    ClipResult,
    adaptive_clip_grad_,
    clip_grad_norm_,
    clip_grad_value_,
    clip_on_step,
)
from gradwatch.remedies.fix import FixReport, fix
from gradwatch.remedies.fixup import fixup_init_, zero_init_residual_branches_
from gradwatch.remedies.init import SCHEMES, init_
from gradwatch.remedies.init_schemes import (
    he_init_,
    lecun_init_,
    orthogonal_init_,
    standard_init_,
    xavier_init_,
)
from gradwatch.remedies.lsuv import lsuv_init_
from gradwatch.remedies.normalization import insert_norm
from gradwatch.remedies.qk_norm import RECIPE as QK_LAYERNORM_RECIPE
from gradwatch.remedies.qk_norm import QKNormMultiheadAttention, qk_layernorm_
from gradwatch.remedies.residual import Residual, add_residual
from gradwatch.remedies.training_loop import ZLoss, adam_eps_, lower_lr_, warmup, z_loss
from gradwatch.remedies.trials import TRIAL_REMEDIES, Trial

__all__ = [
    "ACTIVATIONS",
    "QK_LAYERNORM_RECIPE",
    "SCHEMES",
    "TRIAL_REMEDIES",
    "ClipHook",
    "ClipResult",
    "FixReport",
    "QKNormMultiheadAttention",
    "Residual",
    "Trial",
    "ZLoss",
    "adam_eps_",
    "activation_gain",
    "adaptive_clip_grad_",
    "add_residual",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_on_step",
    "fix",
    "fixup_init_",
    "forget_gate_bias_",
    "he_init_",
    "init_",
    "insert_norm",
    "lecun_init_",
    "lower_lr_",
    "lsuv_init_",
    "orthogonal_init_",
    "qk_layernorm_",
    "standard_init_",
    "swap_activation",
    "warmup",
    "xavier_init_",
    "z_loss",
    "zero_init_last_norm_",
    "zero_init_residual_branches_",
]
