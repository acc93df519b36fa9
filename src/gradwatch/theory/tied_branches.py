"""The residual branches of a chain of identical copies, run on several depths at once.

A chain of identical copies (:mod:`~gradwatch.theory.tied`) is a residual stream
s_{j+1} = s_j + α_j g_j(s_j) whose branches g_j of one kind are the same random function
at every depth. The cross-depth moments E[g(s_i) g(s_j)ᵀ] and the backward cross terms
E[J_iᵀ G J_j] are what the mean-field rules give when one branch reads the two depths as
one longer input: its positions are (depth, position) pairs, so a weight matrix acts on
both depths with the same weights, elementwise maps and norms act per row, and attention is
kept within a depth by a block-diagonal mask. :class:`BranchRunner` traces a branch once
per number of depths and interprets that trace with the given input moments (and, going
back, the given gradient moments) through :func:`~gradwatch.theory.engine.interpret`.

A branch is the copy itself when the residual sum is outside it (x + α·block(x)), or a
part of an ``nn.TransformerEncoderLayer`` with ``norm_first=True``:
x ↦ dropout₁(self_attn(norm₁(x))) and x ↦ dropout₂(linear₂(dropout(activation(linear₁(norm₂(x)))))),
read from the layer's own modules (the torch layer's forward, written out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.theory.engine import Interpretation, interpret
from gradwatch.theory.trace import Trace, record
from gradwatch.theory.values import Grad, Stats

#: Score added between positions of different depths (keeps attention within a depth).
NEG = float("-inf")


class AttentionBranch(nn.Module):
    """x ↦ dropout₁(self_attn(norm₁(x))) of an ``nn.TransformerEncoderLayer``.

    Post-LN: without norm₁, which then acts on the stream after the sum. Reads batch-first
    (N, depths·T, d) inputs; ``mask`` is the (depths·T)² additive mask (None: one depth, no
    mask), ``padding`` the key padding mask tiled over the depths.
    """

    def __init__(self, layer: nn.TransformerEncoderLayer, mask: Any = None, padding: Any = None):
        super().__init__()
        self.layer = layer
        self.mask = mask
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The branch on (N, depths·T, d)."""
        layer = self.layer
        h = layer.norm1(x) if layer.norm_first else x
        first = layer.self_attn.batch_first
        if not first:
            h = h.transpose(0, 1)
        y = layer.self_attn(
            h, h, h, attn_mask=self.mask, key_padding_mask=self.padding, need_weights=False
        )[0]
        if not first:
            y = y.transpose(0, 1)
        return layer.dropout1(y)


class FeedForwardBranch(nn.Module):
    """x ↦ dropout₂(linear₂(dropout(activation(linear₁(norm₂(x)))))) (post-LN: without norm₂)."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The branch on (N, depths·T, d)."""
        layer = self.layer
        h = layer.linear1(layer.norm2(x) if layer.norm_first else x)
        return layer.dropout2(layer.linear2(layer.dropout(layer.activation(h))))


class CopyBranch(nn.Module):
    """The copy itself (its residual sum is outside it), on (N, depths·T, d) inputs."""

    def __init__(self, block: nn.Module, flat: bool):
        super().__init__()
        self.block = block
        self.flat = flat  # the chain's stream is (N, d): one position per example

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The copy on (N, depths·T, d), or (N, d) for one depth of a flat stream."""
        return self.block(x)


@dataclass
class Kind:
    """One kind of branch: how to build it for k depths, and its layers' names.

    ``prefix`` is the wrapper's path to the copy's modules ("layer." or "block."): a layer
    named ``prefix + rest`` in the wrapper is ``<copy name>.rest`` in the model.
    """

    label: str
    build: Any  # Callable[[int], nn.Module]: the wrapper reading k depths
    prefix: str
    norm: nn.LayerNorm | None = None  # on the stream after the sum (post-LN)


def block_mask(k: int, T: int, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The additive (k·T)² mask of k depths: the layer's own mask within, -inf across."""
    if k == 1:
        return mask
    out = torch.full((k * T, k * T), NEG)
    inner = torch.zeros(T, T) if mask is None else mask
    if inner.dtype == torch.bool:
        inner = torch.zeros(T, T).masked_fill(inner, NEG)
    for i in range(k):
        out[i * T : (i + 1) * T, i * T : (i + 1) * T] = inner.float()
    return out


def transformer_kinds(
    layer: nn.TransformerEncoderLayer, T: int, mask: Any, padding: Any
) -> list[Kind]:
    """The two branches of an encoder layer (attention, then feed-forward).

    Post-LN: each with the norm that follows its sum on the stream.
    """

    def attention(k: int) -> nn.Module:
        pad = None if padding is None else padding.repeat(1, k)
        return AttentionBranch(layer, block_mask(k, T, mask), pad)

    post = not layer.norm_first
    return [
        Kind("attention", attention, "layer.", layer.norm1 if post else None),
        Kind(
            "feed-forward",
            lambda k: FeedForwardBranch(layer),
            "layer.",
            layer.norm2 if post else None,
        ),
    ]


def copy_kind(block: nn.Module, flat: bool) -> Kind:
    """The copy as its own branch (x + α·block(x))."""
    return Kind("block", lambda k: CopyBranch(block, flat), "block.")


@dataclass
class Run:
    """One interpretation of a branch over k depths."""

    interp: Interpretation
    trace: Trace
    k: int
    T: int

    def out_stats(self) -> Stats | None:
        """Moments of the branch output over the k·T (depth, position) rows."""
        from gradwatch.theory import rules

        v = self.interp.output
        return rules.stats_of(self.interp.ctx, v) if v is not None else None

    def input_grad(self) -> Grad | None:
        """Gradient moments at the branch input (None when nothing came back)."""
        return self.interp.grads.get(id(self.interp.values[id(self.trace.inputs[0])]))


class BranchRunner:
    """Interprets one kind of branch over 1 or 2 depths, its traces recorded once."""

    def __init__(self, kind: Kind, B: int, T: int, d: int, flat: bool, samples: int, dtype):
        self.kind, self.B, self.T, self.d, self.flat = kind, B, T, d, flat
        self.samples, self.dtype = samples, dtype
        self.traces: dict[int, Trace] = {}

    def trace(self, k: int) -> Trace:
        """The branch's recorded forward pass over k depths (recorded once)."""
        if k not in self.traces:
            gen = torch.Generator().manual_seed(0)
            if self.flat and k == 1:
                x = torch.randn(self.B, self.d, generator=gen)
            else:
                x = torch.randn(self.B, k * self.T, self.d, generator=gen)
            x = x.to(self.dtype).requires_grad_(True)  # a signal: gradients flow back to it
            self.traces[k] = record(self.kind.build(k), (x,), train_mode=True)
        return self.traces[k]

    def run(self, A: np.ndarray, mu: np.ndarray, grad: Grad | None = None) -> Run:
        """Interpret the branch on input moments A (k·T square), mu (k·T,)."""
        k = A.shape[0] // self.T
        trace = self.trace(k)
        st = Stats(A=A, C=None, mu=mu, present=np.ones(A.shape[0], dtype=bool))
        interp = interpret(trace, readout=grad, samples=self.samples, source=st)
        return Run(interp, trace, k, self.T)
