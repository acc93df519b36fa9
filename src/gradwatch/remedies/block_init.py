"""Init remedies for blocks the structure reveals: residual branches and LSTM gates.

:func:`zero_init_last_norm_` finds the residual branches in the model's autograd graph
(:func:`gradwatch.structure.describe`) and zeroes the scale of the norm that ends each one, so
every block starts as the identity (Goyal et al. 2017). :func:`forget_gate_bias_` opens the
forget gate of every LSTM (Gers et al. 2000; Jozefowicz et al. 2015).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.remedies._apply import InitRecord
from gradwatch.remedies._targets import check_model, restore_on_error
from gradwatch.structure import describe, is_norm


def _output_of(model: nn.Module, inputs: Any) -> torch.Tensor:
    args = inputs if isinstance(inputs, tuple | list) else (inputs,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise GradwatchTypeError(
            "inputs must be a tensor or a tuple of tensors for model(*inputs); the residual "
            "branches are read from the autograd graph of one forward pass"
        )
    with torch.enable_grad():
        out = model(*args)
    if isinstance(out, tuple | list):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    elif isinstance(out, dict):
        out = next((o for o in out.values() if isinstance(o, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor) or out.grad_fn is None:
        raise GradwatchValueError(
            "inputs: the model's output has no autograd graph (no parameter requires grad); "
            "unfreeze the model before zero_init_last_norm_"
        )
    return out


def zero_init_last_norm_(model: nn.Module, inputs: Any) -> InitRecord:
    """Zero the scale (γ) and shift (β) of the norm layer that ends each residual branch.

    Each block ``y = x + N(f(x))`` then starts as the identity, ``y = x``: a deep residual net
    starts as a shallow one and the back-propagated signal reaches every block unchanged.
    Goyal et al. (2017) report it for ResNet-50 ("zero γ"); torchvision calls it
    ``zero_init_residual``. Branches are found in the autograd graph of ``model(*inputs)``;
    a branch that does not end with a norm layer (pre-LN transformer blocks, Fixup-style
    blocks) is left alone.

    Args:
        model: the network, changed in place (train/eval mode and buffers are restored after
            the forward pass that reads the graph).
        inputs: a batch, ``model(*inputs)`` for a tuple.

    Returns:
        Name of each zeroed norm layer → {"scheme": "zero", "std": 0.0}.

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module or ``inputs`` not tensors.
        GradwatchValueError: no residual branch ends with a norm layer with a scale.

    References:
        Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour";
        He et al. 2016, "Deep Residual Learning for Image Recognition".
    """
    check_model(model)
    modules = dict(model.named_modules())
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    out = _output_of(model, inputs)
    with torch.no_grad():
        for b, saved in buffers:  # the forward pass must not move BN running statistics
            b.copy_(saved)
    branches = describe(model, out)["residual_branches"]
    last_norms = []
    for branch in branches:
        last = modules.get(branch[-1] if branch[-1] != "(root)" else "") if branch else None
        if last is not None and is_norm(last) and getattr(last, "weight", None) is not None:
            last_norms.append(branch[-1])
    if not last_norms:
        raise GradwatchValueError(
            f"model: none of its {len(branches)} residual branches ends with a norm layer "
            "that has a scale; use fixup_init_ for residual nets without norms"
        )
    records: InitRecord = {}
    with restore_on_error(model), torch.no_grad():
        for name in dict.fromkeys(last_norms):
            norm = modules[name]
            norm.weight.zero_()
            if getattr(norm, "bias", None) is not None:
                norm.bias.zero_()
            records[name] = {"scheme": "zero", "std": 0.0}
    return records


def forget_gate_bias_(model: nn.Module, value: float = 1.0) -> InitRecord:
    """Set the forget-gate bias of every nn.LSTM / nn.LSTMCell to ``value``.

    The cell state follows ``c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t``: its gradient through time is
    multiplied by the forget gate ``f_t = σ(b_f + ...)`` at each step. With PyTorch's default
    init ``f_t ≈ σ(0) = 1/2``, so the gradient halves at every step; ``b_f = 1`` gives
    ``σ(1) ≈ 0.73`` and lets the carry reach back much further. PyTorch adds two biases,
    ``b_ih + b_hh``: ``b_ih`` gets ``value`` and ``b_hh`` 0 on the forget rows (the second
    quarter; gate order i, f, g, o).

    Args:
        model: the network, changed in place.
        value: the forget-gate bias (a finite number; 1 in Jozefowicz et al.).

    Returns:
        Name of each changed bias parameter → {"scheme": "forget_gate_bias", "value": value}.

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module, ``value`` not a number.
        GradwatchValueError: the model has no LSTM with biases, or ``value`` is not finite.

    References:
        Gers, Schmidhuber & Cummins 2000, "Learning to Forget"; Jozefowicz, Zaremba &
        Sutskever 2015, "An Empirical Exploration of Recurrent Network Architectures".
    """
    check_model(model)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise GradwatchTypeError(f"value must be a number, got {type(value).__name__}")
    if not abs(value) < float("inf"):
        raise GradwatchValueError(f"value must be finite, got {value!r}; 1.0 is the usual one")
    records: InitRecord = {}
    with restore_on_error(model), torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, nn.LSTM | nn.LSTMCell):
                continue
            h = m.hidden_size
            for pname, p in m.named_parameters(recurse=False):
                if not pname.startswith("bias_"):
                    continue
                p[h : 2 * h] = float(value) if pname.startswith("bias_ih") else 0.0
                full = f"{name}.{pname}" if name else pname
                records[full] = {"scheme": "forget_gate_bias", "value": float(value)}
    if not records:
        raise GradwatchValueError(
            "model has no nn.LSTM or nn.LSTMCell with biases; forget_gate_bias_ applies to "
            "LSTMs (use bias=True)"
        )
    return records
