"""What the autograd graph of an output says about a model: shortcuts, trunk, attention, loss.

:func:`read_graph` walks the graph of a tensor the model produced (the loss) once and answers:

- **shortcuts.** An addition node (``AddBackward0``) where two paths join, one of which crosses
  parametrised layers that the other skips, is a *residual join* (He et al. 2016): for each
  input branch take the set of layers whose parameters it reaches; the join is residual when
  the branches share layers (they fork from a common tensor), differ, and the skip path adds
  at most a projection (:data:`PROJECTION_LAYERS`, a 1×1 conv and its norm) while the block
  path adds more. This tells ``x + f(x)`` from ``tok_emb + pos_emb`` (unrelated inputs), from
  ``x + 0.044715 * x**3`` (no layer on either path) and from ``x @ W + b`` (one side a
  parameter seen through shape operations only). A concatenation node (``CatBackward0``)
  whose inputs pass the same test is a *dense join*: ``cat([x, f(x)])`` (DenseNet, Huang et
  al. 2017; the skips of a U-Net) carries x to the output unchanged as a shortcut does. A
  shortcut whose skip path starts at the model's input (no autograd node) is not seen.
- **the trunk.** The residual joins in the order the signal crosses them, input side first:
  the residual stream, where ‖∂L/∂h‖ is the signal the whole net shares. For each join, the
  branch layer *nearest the join* in the graph is the one whose output the branch adds to
  the stream (its last norm in a ResNet, the layer that owns a layer-scale vector in a
  ConvNeXt); its δ is the stream's when it feeds the addition directly.
- **attention**: a softmax over a product of two parameter-dependent tensors, or a fused
  scaled-dot-product kernel.
- **gates**: a sigmoid whose output (or ``1 − σ``) multiplies another signal
  (``MulBackward0`` of two tensors): the transform and carry gates of a highway layer
  (Srivastava et al. 2015), the gates of an LSTM or GRU cell written out, a
  squeeze-and-excitation scale. A gate near 0 or 1 is a gate closed or open, not a
  saturating activation on the signal path; the layer whose output the sigmoid reads (the
  one its activation statistics are attributed to) is kept.
- **reuse**: how many operations read each layer's parameters (the edges into a parameter's
  gradient accumulator). A weight read at every step of a sequence (an RNN cell written as
  a loop, ``h = tanh(W h + U x_t)``) is a recurrence over time whatever the module types;
  a convolution or a linear layer applied once to the whole sequence is read once.
- **the loss**: cross-entropy (``NllLoss`` of a ``LogSoftmax``) at the root, with the
  number of classes and the loss of a uniform guess, ln(classes) per target (read from the
  nodes' metadata, which outlives ``backward()``; targets equal to ``ignore_index`` are left
  out of a summed loss's count only before it).

Everything is found from node types and parameter identity, never class names.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradwatch.layers import own_parameters, parametrization_modules

#: Layers a projection shortcut may hold (a 1×1 convolution and its norm, He et al. 2016).
PROJECTION_LAYERS = 2
#: Autograd node names that add two tensors (the join of a residual connection).
_ADD_NODES = ("AddBackward0", "AddBackward1")
#: Autograd node names that concatenate tensors (the join of a dense connection).
_CAT_NODES = ("CatBackward0",)
#: Autograd node name prefixes of operations that only move or reshape values.
_SHAPE_OPS = (
    "View", "Reshape", "Expand", "Split", "Select", "Unsqueeze", "Squeeze", "Transpose",
    "TBackward", "Permute", "Slice", "Unbind", "Chunk", "Clone", "Unflatten", "UnsafeView",
    "Alias", "AsStrided", "ToCopy",
)
#: Autograd node names of a softmax (attention weights) and of fused attention kernels.
_SOFTMAX_NODES = ("SoftmaxBackward0", "SafeSoftmaxBackward0")
_FUSED_ATTENTION_PREFIX = "ScaledDotProduct"
#: Autograd node names of a product of two tensors (the q·kᵀ scores of attention).
_MATMUL_NODES = ("BmmBackward0", "MmBackward0", "MatmulBackward0", "UnsafeViewBackward0")
#: Autograd node names of a negative log-likelihood and of a log-softmax.
_NLL_NODES = ("NllLossBackward0", "NllLoss2DBackward0")
_LOG_SOFTMAX_NODES = ("LogSoftmaxBackward0",)
#: Autograd node names of an elementwise product of two tensors, and of a sigmoid.
_MUL_NODES = ("MulBackward0",)
_SIGMOID_NODES = ("SigmoidBackward0",)
#: What may sit between a gate's sigmoid and the product (``1 − σ``, ``−σ``, views).
_GATE_PASS = ("RsubBackward", "NegBackward", *_SHAPE_OPS)
#: ``reduction`` codes of ``nll_loss`` (torch's at::Reduction enum).
_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


@dataclass
class Join:
    """A shortcut's join in the graph.

    Attributes:
        node: the autograd node (``AddBackward0`` or ``CatBackward0``); hooks registered on
            it see ∂L/∂(the sum) during backward.
        kind: "residual" (an addition) or "dense" (a concatenation).
        branch: the layers on the block path, in registration order (a projection
            shortcut's layers left out).
        nearest: the branch layer nearest the join in the graph (None when not found).
        skip: the autograd node of the skip path's side.
    """

    node: Any
    kind: str
    branch: list[str]
    nearest: str | None
    skip: Any = None


@dataclass
class GraphFacts:
    """What :func:`read_graph` found.

    Attributes:
        joins: the shortcuts' joins, input side first (a join comes after every join it
            depends on).
        attention: whether the graph computes attention.
        parametrised: whether the output depends on a parameter of the model.
        loss: for a cross-entropy root, ``{"kind": "cross_entropy", "classes": C,
            "reduction": "mean" | "sum", "targets": n, "chance": ln(C) (× n for a sum)}``;
            None otherwise.
        gates: the layers whose output feeds a gate's sigmoid (see the module doc), in
            the order the walk met them.
        reads: for each layer whose parameters feed more than one operation, the most
            operations any one of its parameters feeds (a weight tied to two places: 2; a
            cell applied at each of T steps: T).
    """

    joins: list[Join] = field(default_factory=list)
    attention: bool = False
    gates: list[str] = field(default_factory=list)
    loss: dict[str, Any] | None = None
    parametrised: bool = False
    reads: dict[str, int] = field(default_factory=dict)

    @property
    def residual(self) -> list[Join]:
        """The residual joins (additions), input side first."""
        return [j for j in self.joins if j.kind == "residual"]

    @property
    def dense(self) -> list[Join]:
        """The dense joins (concatenations), input side first."""
        return [j for j in self.joins if j.kind == "dense"]


def layer_order(model: nn.Module) -> tuple[dict[int, str], dict[str, int]]:
    """(parameter id -> owning layer name, layer name -> registration index)."""
    owner: dict[int, str] = {}
    order: dict[str, int] = {}
    inside = parametrization_modules(model)
    for name, m in model.named_modules():
        if name in inside:
            continue  # their tensors are the parametrized layer's
        own = own_parameters(m)
        label = name or "(root)"
        if own:
            order.setdefault(label, len(order))
        for p in own:
            owner.setdefault(id(p), label)
    return owner, order


def read_graph(model: nn.Module, output: torch.Tensor) -> GraphFacts:
    """Walk the autograd graph of ``output`` (a tensor ``model`` produced) once.

    Returns an empty :class:`GraphFacts` when ``output`` has no graph.
    """
    root = output.grad_fn
    if root is None:
        return GraphFacts()
    owner, order = layer_order(model)
    bit = {name: 1 << i for name, i in order.items()}
    names = sorted(order, key=order.__getitem__)
    reach, pure, nodes, node_layer = _walk(root, owner, bit)
    facts = GraphFacts(loss=_loss_of(root), parametrised=bool(reach.get(root, 0)),
                       reads=_reads(nodes, node_layer))
    below_join: dict[Any, bool] = {}  # whether a node reaches a join (post-order: children first)
    fresh: dict[Any, bool] = {}  # a join whose skip path reaches no earlier join
    for node in nodes:
        kind = type(node).__name__
        children = [c for c, _ in node.next_functions if c is not None]
        below_join[node] = any(below_join.get(c, False) for c in children)
        if kind in _ADD_NODES or kind in _CAT_NODES:
            join = _join(node, kind in _CAT_NODES, reach, pure, names, bit, node_layer)
            if join is not None:
                facts.joins.append(join)
                fresh[node] = not below_join.get(join.skip, False)
                below_join[node] = True
        elif kind in _MUL_NODES and len(children) == 2:
            for layer in _gate_layers(children, reach, pure, node_layer):
                if layer not in facts.gates:
                    facts.gates.append(layer)
        elif kind.startswith(_FUSED_ATTENTION_PREFIX):
            facts.attention = True
        elif kind in _SOFTMAX_NODES and not facts.attention:
            facts.attention = _scores_of_two_paths(node, reach)
    facts.joins = _without_loops(facts.joins, fresh)
    return facts


def _reads(nodes: list[Any], node_layer: dict[Any, str]) -> dict[str, int]:
    """Layer -> the most edges into one of its parameters' accumulators, where above 1."""
    edges: dict[Any, int] = {}
    for node in nodes:
        for child, _ in node.next_functions:
            if child is not None and child in node_layer:
                edges[child] = edges.get(child, 0) + 1
    out: dict[str, int] = {}
    for acc, n in edges.items():
        layer = node_layer[acc]
        if n > 1 and n > out.get(layer, 0):
            out[layer] = n
    return out


def _without_loops(joins: list[Join], fresh: dict[Any, bool]) -> list[Join]:
    """Drop the additions of a loop over time, ``h = λ·h + u_t``, which look like shortcuts.

    In a residual stream each join's skip path carries the earlier joins (``x_(k+1) = x_k +
    f(x_k)``). The state update of a recurrence written as a loop adds a fresh input ``u_t``
    (whose path reaches no earlier join) to a branch that carries the state, with the same
    layers at every step: such joins (same branch layers, fresh skip, more than one) are the
    time axis of the model, measured as such at its input, not depth.
    """
    count: dict[tuple[str, ...], int] = {}
    for j in joins:
        if fresh.get(j.node):
            key = tuple(j.branch)
            count[key] = count.get(key, 0) + 1
    return [j for j in joins if not (fresh.get(j.node) and count.get(tuple(j.branch), 0) > 1)]


def _walk(root: Any, owner: dict[int, str], bit: dict[str, int]):
    """Iterative post-order walk: the set of layers each node reaches (a bitmask)."""
    reach: dict[Any, int] = {}
    pure: dict[Any, bool] = {}
    node_layer: dict[Any, str] = {}
    nodes: list[Any] = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if node is None or (node in reach and not done):
            continue
        if done:
            mask = 0
            var = getattr(node, "variable", None)
            if var is not None and id(var) in owner:
                node_layer[node] = owner[id(var)]
                mask = bit[owner[id(var)]]
            children = [c for c, _ in node.next_functions if c is not None]
            for child in children:
                mask |= reach.get(child, 0)
            reach[node] = mask
            # a parameter seen through shape operations only (a bias added by hand): no data
            pure[node] = var is not None or (
                type(node).__name__.startswith(_SHAPE_OPS)
                and bool(children)
                and all(pure[c] for c in children)
            )
            nodes.append(node)
            continue
        reach[node] = 0  # mark as visiting
        stack.append((node, True))
        for child, _ in node.next_functions:
            if child is not None and child not in reach:
                stack.append((child, False))
    return reach, pure, nodes, node_layer


def _join(node, dense, reach, pure, names, bit, node_layer) -> Join | None:
    sides = [c for c, _ in node.next_functions if c is not None]
    if not dense and (len(sides) != 2 or any(pure.get(c, False) for c in sides)):
        return None
    masks = [reach.get(c, 0) for c in sides]
    best: tuple[int, int] | None = None  # (skip side, block side) indices
    for i, a in enumerate(masks):
        for j, b in enumerate(masks):
            if i != j and _is_shortcut(a, b) and (best is None or _bits(b & ~a) > _bits(
                masks[best[1]] & ~masks[best[0]]
            )):
                best = (i, j)
    if best is None:
        return None
    skip, block = masks[best[0]], masks[best[1]]
    only = block & ~skip
    branch = [n for n in names if bit[n] & only]
    nearest = _nearest_layer(sides[best[1]], only, reach, node_layer)
    return Join(node=node, kind="dense" if dense else "residual", branch=branch, nearest=nearest,
                skip=sides[best[0]])


def _gate_layers(factors: list[Any], reach, pure, node_layer) -> list[str]:
    """The layers read by a sigmoid that one factor of a product of two tensors comes from.

    A factor that is a parameter seen through views only (a learnt scale) gates nothing.
    """
    if any(pure.get(c, False) for c in factors):
        return []
    out = []
    for node in factors:
        for _ in range(8):  # 1 − σ, views
            name = type(node).__name__
            if name in _SIGMOID_NODES or not name.startswith(_GATE_PASS):
                break
            nxt = [c for c, _ in node.next_functions if c is not None]
            if len(nxt) != 1:
                break
            node = nxt[0]
        if type(node).__name__ in _SIGMOID_NODES:
            layer = _nearest_layer(node, reach.get(node, 0), reach, node_layer)
            if layer is not None:
                out.append(layer)
    return out


def _bits(mask: int) -> int:
    return bin(mask).count("1")


def _is_shortcut(skip: int, block: int) -> bool:
    """Whether branches reaching layer sets ``skip`` and ``block`` are ``x`` and ``f(x)``.

    The branches fork from a common tensor (their sets share layers) and differ; the skip path
    adds no layer (a strict subset: the identity shortcut) or at most a projection of
    :data:`PROJECTION_LAYERS` layers while the block path adds more.
    """
    if not (skip & block) or skip == block:
        return False
    extra_skip, extra_block = _bits(skip & ~block), _bits(block & ~skip)
    return extra_skip <= PROJECTION_LAYERS and extra_block > extra_skip


def _nearest_layer(start: Any, only: int, reach: dict[Any, int], node_layer) -> str | None:
    """The block-path layer whose parameter is fewest graph steps from ``start``.

    Breadth first, through nodes that still reach a block-only layer (the skip path and what
    lies below the fork are not entered).
    """
    seen = {start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        layer = node_layer.get(node)
        if layer is not None and reach.get(node, 0) & only:
            return layer
        for child, _ in node.next_functions:
            if child is not None and child not in seen and reach.get(child, 0) & only:
                seen.add(child)
                queue.append(child)
    return None


def _scores_of_two_paths(softmax: Any, reach: dict[Any, int]) -> bool:
    """Whether a softmax reads a product of two parameter-dependent tensors (q·kᵀ)."""
    frontier = [c for c, _ in softmax.next_functions if c is not None]
    for _ in range(6):  # scaling, masking and views sit between the product and the softmax
        nxt = []
        for node in frontier:
            if type(node).__name__ in _MATMUL_NODES:
                parts = [reach.get(c, 0) for c, _ in node.next_functions if c is not None]
                if len(parts) >= 2 and all(parts):
                    return True
            nxt += [c for c, _ in node.next_functions if c is not None]
        frontier = nxt
    return False


def _loss_of(root: Any) -> dict[str, Any] | None:
    """Cross-entropy at the root of the graph: its classes and the loss of a uniform guess."""
    if type(root).__name__ not in _NLL_NODES:
        return None
    child = next((c for c, _ in root.next_functions if c is not None), None)
    # the log-softmax may sit behind views (a (N, T, C) output flattened for the loss)
    for _ in range(4):
        if child is None or type(child).__name__ in _LOG_SOFTMAX_NODES:
            break
        if not type(child).__name__.startswith(_SHAPE_OPS):
            return None
        child = next((c for c, _ in child.next_functions if c is not None), None)
    if child is None or type(child).__name__ not in _LOG_SOFTMAX_NODES:
        return None
    try:
        reduction = _REDUCTIONS.get(int(root._saved_reduction), "none")
        ignore = int(root._saved_ignore_index)
        dim = int(child._saved_dim)
        shape = list(child._input_metadata[0].shape)  # the log-probabilities' shape
    except (AttributeError, RuntimeError, IndexError, TypeError):
        return None
    if not shape:
        return None
    dim = dim % len(shape)
    classes = int(shape[dim])
    if reduction == "none" or classes < 2:
        return None
    targets = math.prod(shape) // classes
    if ignore >= 2**63:  # saved as an unsigned 64-bit integer (-100 -> 2**64 - 100)
        ignore -= 2**64
    try:  # before backward the targets are still there: leave out the ignored ones
        targets = int((root._saved_target != ignore).sum())
    except RuntimeError:  # after backward (a Monitor reads the graph then): all of them
        pass
    per = math.log(classes)
    return {
        "kind": "cross_entropy",
        "classes": classes,
        "reduction": reduction,
        "targets": targets,
        "chance": per if reduction == "mean" else per * targets,
    }
