"""What a model is made of, from torch.nn module types and the autograd graph, never class names.

:func:`describe` answers the questions the diagnosis and the remedies ask about a model:
does it normalise (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm, LocalResponseNorm),
is it recurrent (nn.RNNBase, nn.RNNCellBase), does it attend (nn.MultiheadAttention, or a
softmax over a product of two data-dependent tensors in its graph), does it embed
(nn.Embedding), and does it have residual connections.

A **residual connection** is found in the autograd graph of an output (e.g. the loss): an
addition node (``AddBackward0``) where two paths join, one of which crosses parametrised
layers that the other skips. For each input branch of the addition, take the set of layers
whose parameters it reaches; the join is residual when one set is a non-empty strict subset of
the other (the skip path and the block path fork from a common tensor). This tells
``x + f(x)`` (He et al. 2016) from ``tok_emb + pos_emb`` (two unrelated inputs) and from
``x + 0.044715 * x**3`` (no layer on either path) and from ``x @ W + b`` (one side a parameter
seen through shape operations only); a projection shortcut (a 1×1 convolution and its norm on
the skip path) still counts. An addition whose skip path starts at the model's input (no
autograd node) is not seen, so the first block of a net that starts with one is missed.
Without an output only registered block types are seen (:func:`register_residual_type`),
and ``residual`` is None (unknown).

Users register their own types with :func:`register_norm_type` and
:func:`register_residual_type`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError

_NORM_TYPES: list[type[nn.Module]] = [
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
]
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES.append(nn.RMSNorm)
_RESIDUAL_TYPES: list[type[nn.Module]] = []
_RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)
_ATTENTION_TYPES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)

#: Residual branches kept in the description (a 96-block GPT-2 has 192 joins).
MAX_BRANCHES = 512
#: Layers a projection shortcut may hold (a 1×1 convolution and its norm, He et al. 2016).
PROJECTION_LAYERS = 2
#: Autograd node names that add two tensors (the join of a residual connection).
_ADD_NODES = ("AddBackward0", "AddBackward1")
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


def _check_type_arg(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise GradwatchTypeError(
            f"{name} must be a subclass of torch.nn.Module, got {cls!r}; pass the class "
            "itself, e.g. register_norm_type(MyNorm)"
        )


def register_norm_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Count modules of type ``cls`` (and subclasses) as normalization layers.

    Usable as a class decorator. Raises GradwatchTypeError when ``cls`` is not an nn.Module
    subclass.
    """
    _check_type_arg("cls", cls)
    if cls not in _NORM_TYPES:
        _NORM_TYPES.append(cls)
    return cls


def register_residual_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Count modules of type ``cls`` as residual blocks (``y = x + f(x)`` inside forward).

    Needed only where no autograd graph is at hand (``describe(model)`` without ``output``,
    ``theory.predict``). Usable as a class decorator.
    """
    _check_type_arg("cls", cls)
    if cls not in _RESIDUAL_TYPES:
        _RESIDUAL_TYPES.append(cls)
    return cls


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (torch.nn types or registered ones)."""
    return isinstance(module, tuple(_NORM_TYPES))


def is_recurrent(module: nn.Module) -> bool:
    """Whether ``module`` is a recurrent layer (nn.RNN, nn.LSTM, nn.GRU or a cell)."""
    return isinstance(module, _RECURRENT_TYPES)


def is_residual_block(module: nn.Module) -> bool:
    """Whether ``module`` is of a registered residual block type."""
    return bool(_RESIDUAL_TYPES) and isinstance(module, tuple(_RESIDUAL_TYPES))


def _name(name: str) -> str:
    return name or "(root)"


def describe(model: nn.Module, output: torch.Tensor | None = None) -> dict[str, Any]:
    """Describe ``model``'s structure; JSON-safe.

    Args:
        model: the network.
        output: optional tensor produced by ``model`` (e.g. the loss) whose autograd graph is
            read for residual connections and attention.

    Returns:
        a dict with ``norm_layers``, ``recurrent_layers`` (each with ``type`` and, for
        nn.RNN, ``nonlinearity``), ``attention_layers``, ``embedding_layers`` (qualified
        module names), ``has_norm``, ``recurrent``, ``attention`` (bool), ``residual``
        (True/False from the graph, True from a registered block type, None when unknown),
        ``residual_joins`` (number of residual additions found), ``residual_branches``
        (for each join, the layers on the block path in registration order, a projection
        shortcut's layers left out; at most :data:`MAX_BRANCHES` joins),
        ``lstm_forget_bias`` (mean forget-gate bias of each nn.LSTM) and ``from_graph``.

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module, or ``output`` is not a tensor.
    """
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; pass the network"
        )
    if output is not None and not isinstance(output, torch.Tensor):
        raise GradwatchTypeError(
            f"output must be a torch.Tensor produced by the model (e.g. the loss) or None, got "
            f"{type(output).__name__}"
        )
    norm, recurrent, attention, embedding, blocks = [], {}, [], [], []
    forget: dict[str, float] = {}
    for name, m in model.named_modules():
        if is_norm(m):
            norm.append(_name(name))
        if is_recurrent(m):
            info: dict[str, Any] = {"type": type(m).__name__}
            if isinstance(m, nn.RNN):
                info["nonlinearity"] = m.nonlinearity
            recurrent[_name(name)] = info
            if isinstance(m, nn.LSTM) and m.hidden_size > 0:
                forget[_name(name)] = _lstm_forget_bias(m)
        if isinstance(m, _ATTENTION_TYPES):
            attention.append(_name(name))
        if isinstance(m, nn.Embedding | nn.EmbeddingBag):
            embedding.append(_name(name))
        if is_residual_block(m):
            blocks.append(_name(name))
    out: dict[str, Any] = {
        "norm_layers": norm,
        "has_norm": bool(norm),
        "recurrent_layers": recurrent,
        "recurrent": bool(recurrent),
        "attention_layers": attention,
        "attention": bool(attention),
        "embedding_layers": embedding,
        "residual_block_modules": blocks,
        "residual": True if blocks else None,
        "residual_joins": 0,
        "residual_branches": [],
        "lstm_forget_bias": forget,
        "from_graph": False,
    }
    if output is not None and output.grad_fn is not None:
        joins, branches, attends = _read_graph(model, output)
        out["from_graph"] = True
        out["residual_joins"] = joins
        out["residual_branches"] = branches[:MAX_BRANCHES]
        out["residual"] = bool(joins) or bool(blocks)
        out["attention"] = out["attention"] or attends
    return out


def _lstm_forget_bias(m: nn.LSTM) -> float:
    """Mean of b_ih + b_hh over the forget gate (rows H:2H; PyTorch's gate order i, f, g, o)."""
    h = m.hidden_size
    vals = []
    for layer in range(m.num_layers):
        total = 0.0
        for kind in ("ih", "hh"):
            b = getattr(m, f"bias_{kind}_l{layer}", None)
            if b is not None:
                total = total + b.detach()[h : 2 * h].double()
        if isinstance(total, torch.Tensor):
            vals.append(float(total.mean()))
    return sum(vals) / len(vals) if vals else 0.0


def _read_graph(model: nn.Module, output: torch.Tensor) -> tuple[int, list[list[str]], bool]:
    """Residual joins (and their block-path layers) and whether attention is in the graph."""
    owner: dict[int, str] = {}
    order: dict[str, int] = {}
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if own:
            order.setdefault(_name(name), len(order))
        for p in own:
            owner.setdefault(id(p), _name(name))
    # iterative post-order walk: the set of layers each node reaches (bitmask over layers)
    bit = {name: 1 << i for name, i in order.items()}
    reach: dict[Any, int] = {}
    pure: dict[Any, bool] = {}
    nodes: list[Any] = []
    stack: list[tuple[Any, bool]] = [(output.grad_fn, False)]
    while stack:
        node, done = stack.pop()
        if node is None or (node in reach and not done):
            continue
        if done:
            mask = 0
            var = getattr(node, "variable", None)
            if var is not None and id(var) in owner:
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
    names = sorted(order, key=order.__getitem__)
    joins, branches, attends = 0, [], False
    for node in nodes:
        kind = type(node).__name__
        if kind in _ADD_NODES:
            sides = [c for c, _ in node.next_functions if c is not None]
            masks = [reach.get(c, 0) for c in sides]
            if len(masks) == 2 and not any(pure.get(c, False) for c in sides):
                if _is_residual_join(*masks):
                    joins += 1
                    a, b = masks
                    only_a, only_b = a & ~b, b & ~a
                    block = only_a if bin(only_a).count("1") > bin(only_b).count("1") else only_b
                    branches.append([n for n in names if bit[n] & block])
        elif kind.startswith(_FUSED_ATTENTION_PREFIX):
            attends = True
        elif kind in _SOFTMAX_NODES and not attends:
            attends = _scores_of_two_paths(node, reach)
    return joins, branches, attends


def _is_residual_join(a: int, b: int) -> bool:
    """Whether an addition of branches reaching layer sets ``a`` and ``b`` is ``x + f(x)``.

    The branches fork from a common tensor (their sets share layers) and differ; the skip path
    adds no layer (a strict subset: the identity shortcut) or at most a projection of
    :data:`PROJECTION_LAYERS` layers (He et al. 2016's 1×1 conv + BN shortcut) while the block
    path adds more.
    """
    if not (a & b) or a == b:
        return False
    only_a, only_b = bin(a & ~b).count("1"), bin(b & ~a).count("1")
    skip, block = sorted((only_a, only_b))
    return skip <= PROJECTION_LAYERS and block > skip


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
