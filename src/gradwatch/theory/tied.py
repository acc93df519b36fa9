"""Chains of identical copies: a residual stream whose blocks start with the same weights.

``nn.TransformerEncoder`` deep-copies its layer, so its layers start identical; a residual
MLP built by deep-copying one block does the same. Each block then applies the same random
function at every depth: its outputs add coherently across depth and the backward cross
terms between depths do not vanish, so the independent-weights rules are wrong there. This
module finds such a chain and predicts it with the cross-depth recursion of
:mod:`~gradwatch.theory.tied_recursion`.

A chain is found from the parameters and the recorded forward pass, not from class names:

- sibling modules (children of one module) of the same type whose parameters and buffers
  hold identical values are the copies, in registration order; every weight matrix that
  starts identical to another must belong to them. One module applied at several depths
  (ALBERT-style sharing: one set of parameters) is a chain of its calls, when it is the
  only module (below the model) called more than once (:func:`find_repeated`);
- each copy is called once, in order, and the stream goes from one to the next either
  through the copy (its output is the next copy's input: the residual sum is inside it, as
  in ``nn.TransformerEncoderLayer``), or around it: the next input is an ``add`` of the
  copy's input and α times its output (x + α·block(x)), α read from the values.

A copy with the sum inside it is decomposed only when it is an
``nn.TransformerEncoderLayer`` with ``norm_first=True`` (the pre-LN layer: x + attention
and x + feed-forward, read from its own modules). The post-LN layer (a LayerNorm on the
stream after each sum) and a copy with BatchNorm, attention, convolutions or recurrent
layers inside an outer residual sum are left outside, with the reason.

The model is interpreted as usual (:func:`~gradwatch.theory.engine.interpret`) with a
splice: at the chain's output the stream's moments from the recursion replace the
independent-weights ones, and when the backward pass reaches the chain's input the
recursion's gradient there is added, so what precedes and follows the chain (embeddings,
a final norm, the read-out) keeps its own rules.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from gradwatch.theory import rules
from gradwatch.theory.tied_branches import BranchRunner, Kind, copy_kind, transformer_kinds
from gradwatch.theory.tied_recursion import Back, Norm, Stream, backward, forward
from gradwatch.theory.trace import Trace
from gradwatch.theory.values import Context, Field, Grad, Stats, Unknown, Value

#: Module types a copy may not contain when the residual sum is outside it.
NOT_ROWWISE = (
    nn.MultiheadAttention,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.RNNBase,
)
#: Relative tolerance of the residual scale α read from the values.
ALPHA_RTOL = 1e-4


def _same(a: nn.Module, b: nn.Module) -> bool:
    if type(a) is not type(b):
        return False
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    if pa.keys() != pb.keys() or ba.keys() != bb.keys() or not pa:
        return False
    return all(
        x.shape == y.shape and torch.equal(x.detach(), y.detach())
        for d1, d2 in ((pa, pb), (ba, bb))
        for x, y in ((d1[k], d2[k]) for k in d1)
    )


@dataclass
class Chain:
    """Identical copies called one after the other along a residual stream."""

    names: list[str]
    copies: list[nn.Module]
    calls: list[list[tuple]] = field(default_factory=list)  # per copy: (args, kwargs, out)
    kinds: list[Kind] = field(default_factory=list)
    alpha: float = 1.0
    x0: torch.Tensor | None = None
    xL: torch.Tensor | None = None

    @property
    def param_ids(self) -> set[int]:
        """Ids of the copies' parameters (predicted by the recursion, not as shared weights)."""
        return {id(p) for c in self.copies for p in c.parameters()}

    @property
    def shared(self) -> bool:
        """One module applied at several depths (its parameters are the same tensors)."""
        return len(set(self.names)) < len(self.names)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Record the copies' calls, in order, while the model runs."""
        unique = list(dict.fromkeys(self.copies))
        seq: list[tuple[int, tuple]] = []

        def hook(u: int):
            def fn(_m, args, kwargs, out):
                seq.append((u, (args, kwargs, out)))

            return fn

        handles = [m.register_forward_hook(hook(u), with_kwargs=True) for u, m in enumerate(unique)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        expected = [unique.index(c) for c in self.copies]
        self._in_order = [u for u, _ in seq] == expected
        self.calls = [[call] for _, call in seq]

    def verify(self, trace: Trace) -> str:
        """Read how the stream passes the copies ("" when it is a chain the theory covers)."""
        L = len(self.copies)
        if not self._in_order or len(self.calls) != L:
            return "the identical copies are not each called once, in order"
        ins = [c[0][0][0] if c[0][0] else None for c in self.calls]
        outs = [c[0][2] for c in self.calls]
        if not all(isinstance(t, torch.Tensor) for t in ins + outs):
            return "the identical copies do not take and return one tensor"
        if all(ins[i + 1] is outs[i] for i in range(L - 1)):
            return self._inside(ins, outs)
        return self._around(trace, ins, outs)

    def _inside(self, ins: list, outs: list) -> str:
        layer = self.copies[0]
        if not (
            isinstance(layer, nn.TransformerEncoderLayer)
            and type(layer).forward is nn.TransformerEncoderLayer.forward
        ):
            return (
                "each identical copy holds its residual sum inside it, and only the pre-LN "
                "nn.TransformerEncoderLayer is decomposed into its branches"
            )
        for norm in () if layer.norm_first else (layer.norm1, layer.norm2):
            if stream_norm(norm) is None:
                return (
                    "the LayerNorms on the stream of a post-LN chain of identical copies have "
                    "gains or biases that differ between features"
                )
        kw = self.calls[0][0][1]
        mask, pad = kw.get("src_mask"), kw.get("src_key_padding_mask")
        T = ins[0].shape[1] if layer.self_attn.batch_first else ins[0].shape[0]
        if mask is None and kw.get("is_causal"):
            mask = nn.Transformer.generate_square_subsequent_mask(T)
        self.kinds = transformer_kinds(layer, T, mask, pad)
        self.alpha, self.x0, self.xL = 1.0, ins[0], outs[-1]
        return ""

    def _around(self, trace: Trace, ins: list, outs: list) -> str:
        if any(isinstance(m, NOT_ROWWISE) for c in self.copies[:1] for m in c.modules()):
            return (
                "the identical copies contain attention, BatchNorm, convolutions or recurrent "
                "layers inside an outer residual sum; the cross-depth recursion covers "
                "blocks that act on each position alone"
            )
        nxt = []
        for i, (x, y) in enumerate(zip(ins, outs, strict=True)):
            found = _sum_after(trace, x, y)
            if found is None or (i + 1 < len(ins) and found[0] is not ins[i + 1]):
                return "the stream does not pass the identical copies as x + α·copy(x)"
            nxt.append(found)
        alphas = [a for _, a in nxt]
        if any(abs(a - alphas[0]) > ALPHA_RTOL * abs(alphas[0]) for a in alphas):
            return "the residual scale differs between the identical copies"
        self.kinds = [copy_kind(self.copies[0], flat=ins[0].dim() == 2)]
        self.alpha, self.x0, self.xL = alphas[0], ins[0], nxt[-1][0]
        return ""


def stream_norm(norm: nn.Module) -> Norm | None:
    """A LayerNorm with one gain and one bias for all features (None otherwise)."""
    if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
        return None
    gain, bias = 1.0, 0.0
    if norm.weight is not None:
        w = norm.weight.detach()
        if not bool((w == w[0]).all()):
            return None
        gain = float(w[0])
    if norm.bias is not None:
        b = norm.bias.detach()
        if not bool((b == b[0]).all()):
            return None
        bias = float(b[0])
    return Norm(gain=gain, bias=bias, eps=float(norm.eps))


def _sum_after(trace: Trace, x: torch.Tensor, y: torch.Tensor) -> tuple | None:
    """The ``add`` whose inputs include x and whose output is x + α y: (output, α)."""
    yd = y.detach().double()
    den = float((yd * yd).sum())
    if den == 0.0:
        return None
    for op in trace.ops:
        if not op.name.startswith("add") or not any(a is x for a in op.args):
            continue
        out = op.out
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            continue
        diff = out.detach().double() - x.detach().double()
        alpha = float((diff * yd).sum()) / den
        resid = float(((diff - alpha * yd) ** 2).sum())
        if resid <= 1e-8 * max(float((diff * diff).sum()), 1e-30):
            return out, alpha
    return None


def find_chain(model: nn.Module, copies: list[str]) -> tuple[Chain | None, str]:
    """The chain of identical sibling modules that holds every identical weight matrix.

    Returns (chain, "") or (None, why not).
    """
    groups: list[list[tuple[str, nn.Module]]] = []
    for pname, parent in model.named_modules():
        kids = list(parent.named_children())
        used: set[int] = set()
        for i, (n1, m1) in enumerate(kids):
            if i in used:
                continue
            group = [(n1, m1)]
            for j in range(i + 1, len(kids)):
                if j not in used and _same(m1, kids[j][1]):
                    group.append(kids[j])
                    used.add(j)
            if len(group) > 1:
                prefix = f"{pname}." if pname else ""
                groups.append([(prefix + n, m) for n, m in group])
    covering = [
        g for g in groups if all(any(c == n or c.startswith(n + ".") for n, _ in g) for c in copies)
    ]
    if not covering:
        return None, "the identical weight matrices are not one set of sibling copies"
    best = min(covering, key=len)
    return Chain([n for n, _ in best], [m for _, m in best]), ""


def find_repeated(model: nn.Module, inputs: tuple, train_mode: bool) -> Chain | None:
    """One module applied at several depths (ALBERT-style sharing): a chain of its calls.

    The outermost module (below the model) called more than once, when it is the only one;
    None otherwise.
    """
    from gradwatch.theory.trace import record

    counts: dict[str, int] = {}
    mods = {n: m for n, m in model.named_modules() if n and any(True for _ in m.parameters())}

    def hook(name: str):
        def fn(*_):
            counts[name] = counts.get(name, 0) + 1

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    try:
        record(model, inputs, train_mode=train_mode)
    except (RuntimeError, IndexError, TypeError, ValueError):
        return None
    finally:
        for h in handles:
            h.remove()
    repeated = [n for n, c in counts.items() if c > 1]
    outer = [n for n in repeated if not any(n.startswith(r + ".") for r in repeated)]
    if len(outer) != 1:
        return None
    name = outer[0]
    return Chain([name] * counts[name], [mods[name]] * counts[name])


class Splice:
    """Replaces the chain's moments in an interpretation (see the module docstring)."""

    def __init__(self, chain: Chain, samples: int):
        self.chain = chain
        self.samples = samples
        self.start: int | None = None
        self.x0_value: Value | None = None
        self.xL_value: Value | None = None
        self.stream: Stream | None = None
        self.reason = ""
        self.layers: dict[str, dict[str, float]] = {}

    def on_value(self, t: torch.Tensor, v: Value, ctx: Context, values: dict) -> Value:
        """Note the chain's input; give its output the recursion's moments."""
        if t is self.chain.x0 and self.x0_value is None:
            self.start = len(ctx.tape)
            self.x0_value = v
        elif t is self.chain.xL and self.x0_value is not None:
            return self._forward(t, v, ctx)
        return v

    def _forward(self, t: torch.Tensor, v: Value, ctx: Context) -> Value:
        st = rules.stats_of(ctx, self.x0_value)
        if st is None or not bool(np.all(st.present)):
            self.reason = "the input of the chain of identical copies is not a signal"
            self.start = None
            return Unknown(self.reason)
        x0 = self.chain.x0
        U = len(self.chain.copies) * len(self.chain.kinds)
        self.kinds = [j % len(self.chain.kinds) for j in range(U)]
        self.alphas = [self.chain.alpha] * U
        T = st.A.shape[0]
        self.runners = [
            BranchRunner(k, ctx.space.B, T, int(x0.shape[-1]), x0.dim() == 2, self.samples,
                         x0.dtype)
            for k in self.chain.kinds
        ]  # fmt: skip
        norms = [
            stream_norm(self.chain.kinds[b].norm) if self.chain.kinds[b].norm is not None else None
            for b in self.kinds
        ]
        self.stream = forward(self.runners, self.kinds, self.alphas, st.A, st.mu, norms)
        top = Stats(
            A=self.stream.s(U, U),
            C=np.outer(self.stream.mu_s[U], self.stream.mu_s[U]) if ctx.space.track_cross else None,
            mu=self.stream.mu_s[U],
            present=st.present.copy(),
        )
        rid = getattr(v, "rid", None)
        if rid is None:  # the independent-weights rules lost the stream (weights reused)
            rid = getattr(self.x0_value, "rid", None)
        if rid is None or tuple(rid.shape) != tuple(t.shape):
            self.reason = "the rows of the chain's output cannot be followed"
            self.start = None
            return Unknown(self.reason)
        self.xL_value = Field(top, rid, frozenset({"tied-chain"}), frozenset({"tied-chain"}))
        return self.xL_value

    def inject(self, ctx: Context, grads: dict) -> None:
        """Send the gradient at the chain's output back to its input, and fill the layers."""
        g = grads.get(id(self.xL_value)) if self.xL_value is not None else None
        if g is None or self.stream is None:
            return
        back = backward(self.runners, self.kinds, self.alphas, self.stream, g)
        gc = np.zeros_like(back.gamma[0]) if ctx.space.track_cross else None
        g0 = Grad(back.gamma[0], gc, ones=back.ones[0], own=back.own[0])
        prev = grads.get(id(self.x0_value))
        grads[id(self.x0_value)] = g0 if prev is None else prev.add(g0)
        self._layers(back)
        self._norms(back, ctx.space.B)

    def _norms(self, back: Back, B: int) -> None:
        """The norms on the stream (post-LN): their output is the stream after the sum."""
        n_kinds = len(self.chain.kinds)
        for j, b in enumerate(self.kinds):
            norm = self.chain.kinds[b].norm
            if norm is None:
                continue
            rel = next(n for n, m in self.chain.copies[0].named_modules() if m is norm)
            name = f"{self.chain.names[j // n_kinds]}.{rel}"
            q = float(np.mean(np.diag(self.stream.s(j + 1, j + 1))))
            entry = self.layers.setdefault(name, {"norm2": 0.0, "q": q})  # summed over depths
            entry["norm2"] += B * float(np.trace(back.gamma[j + 1]))

    def _layers(self, back: Back) -> None:
        n_kinds = len(self.chain.kinds)
        for j, run in enumerate(back.runs):
            copy = self.chain.names[j // n_kinds]
            kind = self.chain.kinds[j % n_kinds]
            interp = run.interp
            for name, _, out, _ in run.trace.layer_outputs:
                full = _rename(name, kind.prefix, copy)
                if full is None:
                    continue
                val = interp.value_of(out)
                g = interp.grad_norm2(val)
                entry = self.layers.setdefault(full, {"norm2": 0.0})
                entry["norm2"] += g if math.isfinite(g) else math.nan
                entry.setdefault("q", interp.forward_q(val))
            for pid, wg in () if self.chain.shared else interp.ctx.weight_grads.items():
                pname = run.trace.params.get(pid, "")
                full = _rename(pname.rsplit(".", 1)[0], kind.prefix, copy)
                if full is not None:
                    entry = self.layers.setdefault(full, {"norm2": math.nan})
                    entry["weight_grad2"] = entry.get("weight_grad2", 0.0) + wg


def _rename(name: str, prefix: str, copy: str) -> str | None:
    """A layer name in a branch's trace as the copy's layer name in the model."""
    if name == prefix.rstrip("."):
        return copy
    if name.startswith(prefix):
        return f"{copy}.{name[len(prefix) :]}"
    return None
