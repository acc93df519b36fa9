"""Catching attention calls during a forward pass: which layer attends, with which q and k.

Attention is found from what the model does, not from class names: every call of
``F.scaled_dot_product_attention`` (Hugging Face GPT-2, BERT, Llama and most hand-written
attention) and of ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, which
``nn.TransformerEncoderLayer`` and ``nn.TransformerDecoderLayer`` use) made while the
model's forward pass runs. During a recorded forward pass only (detail steps), a
``torch.overrides.TorchFunctionMode`` sees those calls and module hooks keep the stack of
modules running; each call is reduced at once (:func:`gradwatch.stats.attention.
attention_row`) and attributed to the innermost running module that called it: to that
module if it owns parameters (``nn.MultiheadAttention``), else to the first layer inside it
in registration order (GPT-2's ``c_attn``, Llama's ``q_proj``, BERT's ``query``). Between
recorded passes nothing is installed but the model's own root hooks.

The mode and the module hooks are removed by a forward hook that runs even when the forward
pass raises (``always_call=True``), and again by :meth:`AttentionCapture.stop`.

The mode sees every torch call of the pass (on a 200-layer MLP it cost more than the rest of a
detail step), so it is set only where attention can happen: :func:`can_attend` says from the
module types whether a model's forward pass can call attention at all, and
:attr:`AttentionCapture.calls` counts the calls of the armed passes, so that a tap can stand
the capture down for a model whose passes make none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from gradwatch.monitor.hookkit import disown, own
from gradwatch.stats.attention import attention_row, mha_queries_keys

_MHA_ARGS = (
    "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
    "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
    "out_proj_bias", "training", "key_padding_mask", "need_weights", "attn_mask",
    "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
)
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
              "enable_gqa")


#: torch.nn modules whose forward passes call attention (the others of torch.nn never do).
_ATTENDING = (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder,
              nn.TransformerDecoder, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def can_attend(model: nn.Module) -> bool:
    """Whether ``model``'s forward pass can call attention, from its modules' types.

    False only when every module is one of torch.nn's own (``torch.nn.*`` classes, not
    subclassed: their forward code is PyTorch's) and none of them is an attention module:
    such a model runs no code that could call ``scaled_dot_product_attention``. Any other
    module type (a user's class, a subclass, another library's) may call it.
    """
    for m in model.modules():
        cls = type(m)
        if isinstance(m, _ATTENDING) or not cls.__module__.startswith("torch.nn."):
            return True
    return False


def _bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    out = dict(zip(names, args, strict=False))
    out.update(kwargs)
    return out


class _Mode(TorchFunctionMode):
    """Sees every torch function call of the forward pass; keeps the attention ones."""

    def __init__(self, capture: AttentionCapture):
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.capture.on_sdpa(_bind(_SDPA_ARGS, args, kwargs))
        elif func is F.multi_head_attention_forward:
            self.capture.on_mha(_bind(_MHA_ARGS, args, kwargs))
        return func(*args, **kwargs)


class AttentionCapture:
    """Records one row per attention call of a recorded forward pass.

    Args:
        model: the watched model.
        layer_of: qualified module name -> layer index (the Monitor's layers).
        warn: called with (what, exception) when a call cannot be reduced; training goes on.
    """

    def __init__(
        self,
        model: nn.Module,
        layer_of: dict[str, int],
        warn: Callable[[str, BaseException], None] | None = None,
    ):
        self.model = model
        self.warn = warn
        self.rows: list[tuple[int, int, torch.Tensor]] = []  # (layer, heads, row)
        self.passes = 0  # armed forward passes so far
        self.calls = 0  # attention calls seen in them
        self.active = False
        self._stack: list[nn.Module] = []
        self._mode: _Mode | None = None
        self._globals: list[RemovableHandle] = []
        self._owner: dict[int, int | None] = {}  # id(module) -> layer index (None: none)
        names = {id(m): n for n, m in model.named_modules()}
        self._names = names
        self._layer_of = layer_of
        self._handles = [  # owned: copies and pickles of the model leave them out
            own(model.register_forward_pre_hook(self._enter)),
            own(model.register_forward_hook(self._exit, always_call=True)),
        ]
        self.armed = False  # set by the Monitor for the forward passes of recorded steps

    # -- lifecycle -----------------------------------------------------------------------
    def remove(self) -> None:
        """Remove every hook (the model is as it was)."""
        self.stop()
        disown(self._handles)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def take(self) -> list[tuple[int, int, torch.Tensor]]:
        """The rows recorded since the last call (and forget them)."""
        rows, self.rows = self.rows, []
        return rows

    # -- the recorded forward pass ----------------------------------------------------------
    def _enter(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():  # read nothing: a guard on `armed` would recompile
            return
        if not self.armed or self.active or not torch.is_grad_enabled():
            return
        self.active = True
        self.passes += 1
        self._stack = [module]  # its own global pre-hook ran before this one
        self._globals = [
            nn.modules.module.register_module_forward_pre_hook(self._push),
            nn.modules.module.register_module_forward_hook(self._pop, always_call=True),
        ]
        self._mode = _Mode(self)
        self._mode.__enter__()

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.compiler.is_compiling():
            self.stop()

    def stop(self) -> None:
        """Leave the recorded forward pass: pop the mode, remove the module hooks."""
        if not self.active:
            return
        self.active = False
        for h in self._globals:
            h.remove()
        self._globals = []
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(None, None, None)
        self._stack = []

    def _push(self, module: nn.Module, args: Any) -> None:
        if id(module) in self._names:
            self._stack.append(module)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    # -- attribution -------------------------------------------------------------------------
    def _layer(self) -> int | None:
        """The layer of the innermost running module (see the module docstring)."""
        if not self._stack:
            return None
        mod = self._stack[-1]
        key = id(mod)
        if key not in self._owner:
            self._owner[key] = self._first_layer(mod)
        return self._owner[key]

    def _first_layer(self, mod: nn.Module) -> int | None:
        for sub in mod.modules():
            name = self._names.get(id(sub))
            if name is not None:
                li = self._layer_of.get(name or "(root)")
                if li is not None:
                    return li
        return None

    # -- the calls ----------------------------------------------------------------------------
    def on_sdpa(self, a: dict[str, Any]) -> None:
        """A call of ``F.scaled_dot_product_attention``."""
        self.calls += 1
        li = self._layer()
        if li is None:
            return
        try:
            q = a["query"]
            row = attention_row(
                q, a["key"], a.get("attn_mask"), bool(a.get("is_causal", False)),
                a.get("scale"), bool(a.get("enable_gqa", False)),
            )
            heads = q.shape[-3] if q.dim() >= 3 else 1
        except Exception as exc:  # noqa: BLE001 - never take training down
            self._fail("attention statistics", exc)
            return
        self.rows.append((li, heads if q.dim() >= 4 else 1, row))

    def on_mha(self, a: dict[str, Any]) -> None:
        """A call of ``F.multi_head_attention_forward``."""
        self.calls += 1
        li = self._layer()
        if li is None:
            return
        try:
            h = int(a["num_heads"])
            q, k, mask = mha_queries_keys(
                a["query"], a["key"], h, a.get("in_proj_weight"), a.get("in_proj_bias"),
                a.get("bias_k"), bool(a.get("add_zero_attn", False)),
                a.get("key_padding_mask"), a.get("attn_mask"),
                bool(a.get("use_separate_proj_weight", False)),
                a.get("q_proj_weight"), a.get("k_proj_weight"),
            )
            row = attention_row(q, k, mask)
        except Exception as exc:  # noqa: BLE001 - never take training down
            self._fail("attention statistics", exc)
            return
        self.rows.append((li, h, row))

    def _fail(self, what: str, exc: BaseException) -> None:
        if self.warn is not None:
            self.warn(what, exc)
